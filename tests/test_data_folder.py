"""Tests of the bring-your-own folder format (data/folder.py) on tiny arrays."""

import json
import os
import pickle
import shutil

import ml_collections
import numpy as np
import pytest

from data import folder
from data import safe_paths

K = 3
SHAPES = {'audio': (6, 5, 1), 'visual': (2, 4, 4, 3)}


def _arrays(n, seed):
  rng = np.random.default_rng(seed)
  return {'audio': rng.normal(size=(n, *SHAPES['audio'])).astype(np.float32),
          'visual': rng.integers(0, 255, size=(n, *SHAPES['visual'])).astype(np.uint8),
          'label': rng.integers(0, K, size=n).astype(np.int64)}


@pytest.fixture
def splits():
  return {'train': _arrays(7, 0), 'validation': _arrays(3, 1), 'test': _arrays(4, 2)}


def _cfg(path, **kw):
  return ml_collections.ConfigDict(dict(data_dir=str(path), **kw))


def _write(tmp_path, splits, **kw):
  folder.write_folder_dataset(str(tmp_path), splits, ['a', 'b', 'c'], shard_size=3, **kw)
  return tmp_path


def _edit_manifest(path, fn):
  mpath = os.path.join(path, folder.MANIFEST)
  with open(mpath) as f:
    manifest = json.load(f)
  fn(manifest)
  with open(mpath, 'w') as f:
    json.dump(manifest, f)


def test_round_trip(tmp_path, splits):
  path = _write(tmp_path, splits)
  info = folder.info(_cfg(path))
  assert info == dict(modalities=('audio', 'visual'), num_classes=K,
                      shapes=SHAPES, class_names=['a', 'b', 'c'],
                      name='folder:' + os.path.basename(os.path.normpath(str(path))))
  manifest = folder.read_manifest(str(path))
  assert manifest['splits']['train'] == ['train-00000.npz', 'train-00001.npz',
                                         'train-00002.npz']
  for split, arrays in splits.items():
    src = folder.load_split(_cfg(path), split)
    assert len(src) == len(arrays['label'])
    for i in range(len(src)):  # crosses shard boundaries (shard_size 3)
      ex = src[i]
      np.testing.assert_array_equal(ex['audio'], arrays['audio'][i])
      np.testing.assert_array_equal(ex['visual'], arrays['visual'][i])
      assert ex['label'] == arrays['label'][i] and ex['label'].dtype == np.int32
    np.testing.assert_array_equal(src[-1]['audio'], arrays['audio'][-1])
    with pytest.raises(IndexError):
      src[len(src)]


def test_uncompressed_shards_are_memory_mapped(tmp_path, splits):
  path = _write(tmp_path, splits)
  arrays = folder._npy_members(os.path.join(path, 'train-00000.npz'))
  assert isinstance(arrays['visual'], np.memmap)
  # Compressed shards still load (into memory).
  np.savez_compressed(os.path.join(path, 'train-00000.npz'),
                      **{k: v[:3] for k, v in splits['train'].items()})
  src = folder.load_split(_cfg(path), 'train')
  np.testing.assert_array_equal(src[1]['visual'], splits['train']['visual'][1])


def test_source_pickles_by_path(tmp_path, splits):
  src = folder.load_split(_cfg(_write(tmp_path, splits)), 'test')
  blob = pickle.dumps(src)
  assert len(blob) < 1000  # the path, not the arrays
  np.testing.assert_array_equal(pickle.loads(blob)[2]['audio'], src[2]['audio'])


def test_preprocess_casts_and_standardizes(tmp_path, splits):
  path = _write(tmp_path, splits, standardize=True)
  ex = folder.load_split(_cfg(path), 'train')[0]
  out = folder.make_preprocess(_cfg(path), train=True)(ex, np.random.default_rng(0))
  assert set(out) == {'audio', 'visual', 'label'}
  assert out['audio'].dtype == out['visual'].dtype == np.float32
  assert out['label'].dtype == np.int32
  spec = folder.read_manifest(str(path))['modalities']['visual']
  np.testing.assert_allclose(out['visual'], (ex['visual'] - spec['mean']) / spec['std'],
                             rtol=1e-5, atol=1e-6)
  plain = folder.make_preprocess(_cfg(path, standardize=False), train=False)(ex, None)
  np.testing.assert_array_equal(plain['visual'], ex['visual'].astype(np.float32))
  # Per-channel stats written by hand broadcast over [T, H, W, C].
  _edit_manifest(path, lambda m: m['modalities']['visual'].update(
      mean=[1.0, 2.0, 3.0], std=[2.0, 2.0, 2.0]))
  out = folder.make_preprocess(_cfg(path), train=False)(ex, None)
  np.testing.assert_allclose(out['visual'][..., 2], (ex['visual'][..., 2] - 3.0) / 2.0)


def test_missing_manifest_and_data_dir(tmp_path):
  with pytest.raises(FileNotFoundError, match='No manifest.json in .*write_folder_dataset'):
    folder.info(_cfg(tmp_path))
  with pytest.raises(folder.FolderFormatError, match='data_dir is not set'):
    folder.load_split(ml_collections.ConfigDict({}), 'train')


def test_missing_shard(tmp_path, splits):
  path = _write(tmp_path, splits)
  os.remove(os.path.join(path, 'test-00001.npz'))
  with pytest.raises(FileNotFoundError, match='test-00001.npz listed in .*manifest.json'):
    folder.load_split(_cfg(path), 'test')


def test_shards_must_stay_inside_the_folder(tmp_path, splits):
  path = _write(tmp_path / 'ds', splits)
  # A readable shard outside the folder: only the path check keeps it out.
  shutil.copy(os.path.join(path, 'test-00000.npz'), tmp_path / 'elsewhere.npz')
  os.symlink(tmp_path / 'elsewhere.npz', os.path.join(path, 'link.npz'))
  os.symlink(os.path.join(path, 'test-00000.npz'), os.path.join(path, 'alias.npz'))
  root = os.path.realpath(path)
  for entry in ('../elsewhere.npz', str(tmp_path / 'elsewhere.npz'), 'link.npz'):
    _edit_manifest(path, lambda m, bad=entry: m['splits'].update(test=['test-00000.npz', bad]))
    for load in (lambda: folder.load_split(_cfg(path), 'test'),
                 lambda: folder.info(_cfg(path))):
      with pytest.raises(ValueError) as e:
        load()
      msg = str(e.value)
      assert isinstance(e.value, safe_paths.UnsafePathError) and '\n' not in msg
      assert repr(entry) in msg and f'the dataset folder {root}' in msg
      assert 'manifest.json (splits.test)' in msg
  # A symlink that stays inside the folder is an ordinary shard.
  _edit_manifest(path, lambda m: m['splits'].update(test=['alias.npz']))
  assert len(folder.load_split(_cfg(path), 'test')) == 3


def test_shape_mismatch_with_manifest(tmp_path, splits):
  path = _write(tmp_path, splits)
  _edit_manifest(path, lambda m: m['modalities']['audio'].update(shape=[6, 4, 1]))
  with pytest.raises(folder.FolderFormatError,
                     match=r"'audio' has per-example shape \[6, 5, 1\], the manifest says"):
    folder.load_split(_cfg(path), 'train')


def test_row_count_mismatch(tmp_path, splits):
  path = _write(tmp_path, splits)
  bad = {k: v[:3] for k, v in splits['test'].items()}
  bad['label'] = bad['label'][:2]
  np.savez(os.path.join(path, 'test-00000.npz'), **bad)
  with pytest.raises(folder.FolderFormatError, match="has 3 rows but \"label\" has 2"):
    folder.load_split(_cfg(path), 'test')


def test_label_out_of_range(tmp_path, splits):
  path = _write(tmp_path, splits)
  bad = {k: v[:3].copy() for k, v in splits['train'].items()}
  bad['label'][1] = K
  np.savez(os.path.join(path, 'train-00000.npz'), **bad)
  with pytest.raises(folder.FolderFormatError, match=r'label 3 at row 1 is outside \[0, 3\)'):
    folder.load_split(_cfg(path), 'train')


def test_shard_missing_a_modality(tmp_path, splits):
  path = _write(tmp_path, splits)
  np.savez(os.path.join(path, 'validation-00000.npz'),
           audio=splits['validation']['audio'], label=splits['validation']['label'])
  with pytest.raises(folder.FolderFormatError,
                     match="no array for modality 'visual' of the manifest"):
    folder.load_split(_cfg(path), 'validation')


def test_manifest_field_errors(tmp_path, splits):
  path = _write(tmp_path, splits)
  _edit_manifest(path, lambda m: m.pop('num_classes'))
  with pytest.raises(folder.FolderFormatError, match="field 'num_classes' is missing"):
    folder.info(_cfg(path))
  _edit_manifest(path, lambda m: m.update(num_classes=K, class_names=['a']))
  with pytest.raises(folder.FolderFormatError, match="field 'class_names' must list"):
    folder.info(_cfg(path))
  _edit_manifest(path, lambda m: m.update(class_names=['a', 'b', 'c']))
  _edit_manifest(path, lambda m: m['modalities']['visual'].update(mean=[1.0, 2.0]))
  with pytest.raises(folder.FolderFormatError, match='modalities.visual.mean.*broadcast'):
    folder.info(_cfg(path))
  _edit_manifest(path, lambda m: m['modalities']['visual'].pop('mean'))
  with pytest.raises(folder.FolderFormatError, match="no split 'dev'"):
    folder.load_split(_cfg(path), 'dev')


def test_writer_rejects_bad_input(tmp_path, splits):
  bad = dict(splits)
  bad['test'] = dict(splits['test'], label=splits['test']['label'] + K)
  with pytest.raises(ValueError, match='outside'):
    folder.write_folder_dataset(str(tmp_path / 'a'), bad, ['a', 'b', 'c'])
  bad['test'] = {k: v for k, v in splits['test'].items() if k != 'visual'}
  with pytest.raises(ValueError, match='modalities'):
    folder.write_folder_dataset(str(tmp_path / 'b'), bad, ['a', 'b', 'c'])
  _write(tmp_path / 'c', splits)
  with pytest.raises(FileExistsError, match='overwrite=True'):
    _write(tmp_path / 'c', splits)


def test_nonfinite_input_is_refused_with_split_and_example_index(tmp_path, splits):
  path = _write(tmp_path, splits)
  bad = {k: v[3:6].copy() for k, v in splits['train'].items()}  # Shard 1: examples 3-5.
  bad['audio'][1, 2, 0, 0] = np.inf
  np.savez(os.path.join(path, 'train-00001.npz'), **bad)
  with pytest.raises(folder.FolderFormatError) as e:
    folder.load_split(_cfg(path), 'train')
  msg = str(e.value)
  assert "'train' example 4" in msg and 'train-00001.npz row 1' in msg and "'audio'" in msg
  assert msg.count('\n') == 0
  # Integer modalities cannot hold NaN; the other splits are unaffected.
  assert len(folder.load_split(_cfg(path), 'test')) == 4


def test_zero_row_shard_is_one_line(tmp_path, splits):
  path = _write(tmp_path, splits)
  empty = {k: v[:0] for k, v in splits['test'].items()}
  np.savez(os.path.join(path, 'test-00001.npz'), **empty)
  with pytest.raises(folder.FolderFormatError, match=r'test-00001.npz has 0 rows') as e:
    folder.load_split(_cfg(path), 'test')
  assert str(e.value).count('\n') == 0
