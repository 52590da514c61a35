"""CMU-MOSI builder from a tiny pickle in the MultiBench layout."""

import pickle

import ml_collections
import numpy as np
import pytest

from data import cmu_mosi as mosi
from data import prepare as prep
from tests import data_fixtures as fx

SIZES = {'train': 8, 'valid': 3, 'test': 4}
DIMS = {'vision': 5, 'audio': 4, 'text': 7}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  src = tmp_path_factory.mktemp('mosi_src')
  raw = fx.make_mosi_pickle(str(src / 'mosi_data.pkl'), sizes=SIZES, T=6, dims=DIMS)
  cfg = ml_collections.ConfigDict({'manual_dir': str(src),
                                   'data_dir': str(tmp_path_factory.mktemp('mosi_tfds'))})
  mosi.prepare(cfg)
  return cfg, raw


def test_splits_shapes_labels_and_sanitising(built):
  cfg, raw = built
  inf = mosi.info(cfg)
  assert inf['modalities'] == ('audio', 'visual', 'text') and inf['num_classes'] == 2
  assert inf['shapes'] == {'audio': (6, 4), 'visual': (6, 5), 'text': (6, 7)}
  pre = mosi.make_preprocess(cfg, train=True)
  for split, key in (('train', 'train'), ('validation', 'valid'), ('test', 'test')):
    src = mosi.load_split(cfg, split)
    assert len(src) == SIZES[key]
    for i in range(len(src)):
      ex = src[i]
      sentiment = float(raw[key]['labels'][i, 0, 0])
      assert int(ex['label']) == int(sentiment > 0)  # Zero counts as negative.
      np.testing.assert_allclose(ex['sentiment'], sentiment, rtol=1e-6)
      np.testing.assert_array_equal(ex['text'], raw[key]['text'][i])
      np.testing.assert_array_equal(ex['visual'], raw[key]['vision'][i])
      out = pre(ex, None)
      assert set(out) == {'audio', 'visual', 'text', 'label'}
      assert out['audio'].dtype == np.float32 and out['label'].dtype == np.int32
      assert np.all(np.isfinite(out['audio']))
    first = src[0]['audio']
    assert first[0, 0] == 0.0 and first[1, 1] == 0.0  # The NaN and the -inf.
    np.testing.assert_array_equal(first[2:], raw[key]['audio'][0][2:])
  assert mosi.builder(cfg).info.metadata['nonfinite_replaced']['train']['audio'] == 2


def test_zero_label_drop(built):
  cfg, raw = built
  drop = ml_collections.ConfigDict(dict(cfg))
  drop.zero_label = 'drop'
  for split, key in (('train', 'train'), ('test', 'test')):
    src = mosi.load_split(drop, split)
    assert len(src) == int(np.sum(raw[key]['labels'] != 0))
    assert all(float(src[i]['sentiment']) != 0 for i in range(len(src)))
  drop.zero_label = 'maybe'
  with pytest.raises(ValueError, match="zero_label"):
    mosi.load_split(drop, 'train')


def test_errors(tmp_path):
  cfg = ml_collections.ConfigDict({'manual_dir': str(tmp_path / 'src'),
                                   'data_dir': str(tmp_path / 'tfds')})
  with pytest.raises(FileNotFoundError, match='src'):
    mosi.prepare(cfg)
  with pytest.raises(FileNotFoundError) as e:
    mosi.load_split(cfg, 'test')
  assert 'python -m data.prepare cmu_mosi' in str(e.value) and str(tmp_path / 'tfds') in str(e.value)
  (tmp_path / 'src').mkdir()
  (tmp_path / 'src' / 'notes.txt').write_text('x')
  with pytest.raises(FileNotFoundError, match='mosi_raw.pkl'):
    mosi.prepare(cfg)
  path = tmp_path / 'src' / 'mosi_raw.pkl'
  fx.make_mosi_pickle(str(path), sizes={'train': 2, 'valid': 1, 'test': 1}, T=3)
  fx.truncate_file(str(path), 0.5)
  with pytest.raises(prep.BadFileError, match='mosi_raw.pkl'):
    mosi.prepare(cfg)
  fx.make_mosi_pickle(str(tmp_path / 'src' / 'mosi_data.pkl'),
                      sizes={'train': 2, 'valid': 1, 'test': 1}, T=3)
  with pytest.raises(ValueError, match='pickle_name'):
    mosi.prepare(cfg)
  cfg.pickle_name = 'mosi_data.pkl'
  mosi.prepare(cfg)
  assert len(mosi.load_split(cfg, 'train')) == 2


def _write_marker(path):
  with open(path, 'w') as f:
    f.write('ran')


class _Payload:
  """Unpickles as _write_marker(path): a tampered pickle's code."""

  def __init__(self, path):
    self.path = path

  def __reduce__(self):
    return _write_marker, (self.path,)


def test_malicious_pickle_is_refused(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  raw = fx.make_mosi_pickle(str(src / 'mosi_data.pkl'), sizes={'train': 2, 'valid': 1, 'test': 1},
                            T=3)
  marker = tmp_path / 'marker'
  raw['test']['id'] = _Payload(str(marker))
  with open(src / 'mosi_data.pkl', 'wb') as f:
    pickle.dump(raw, f)
  cfg = ml_collections.ConfigDict({'manual_dir': str(src), 'data_dir': str(tmp_path / 'tfds')})
  with pytest.raises(prep.BadFileError) as e:
    mosi.prepare(cfg)
  msg = str(e.value)
  assert '\n' not in msg and str(src / 'mosi_data.pkl') in msg
  assert f'the global {_write_marker.__module__}._write_marker' in msg
  assert not marker.exists()


def test_protocol_2_pickle(tmp_path):
  raw = fx.make_mosi_pickle(str(tmp_path / 'mosi_data.pkl'), sizes={'train': 2, 'valid': 1,
                                                                   'test': 1}, T=3)
  with open(tmp_path / 'mosi_data.pkl', 'wb') as f:
    pickle.dump(raw, f, protocol=2)  # bytes as _codecs.encode, as older writers did.
  data = mosi.load_pickle(str(tmp_path / 'mosi_data.pkl'))
  for split in SIZES:
    for k, v in raw[split].items():
      np.testing.assert_array_equal(data[split][k], v)
      assert data[split][k].dtype == v.dtype
