"""CREMA-D builder: real WAV/FLV/JPEG fixtures, shapes, labels, splits, errors."""

import os
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from data import audio as media
from data import cremad
from data import prepare as prep
from tests import data_fixtures as fx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = fx.cremad_clip_names(actors=(1001, 1002, 1003, 1004), per_actor=3)  # 12 clips.


def _cfg(manual, data_dir, **kw):
  return ml_collections.ConfigDict(dict(manual_dir=str(manual), data_dir=str(data_dir),
                                        image_size=32, num_workers=2, **kw))


@pytest.fixture(scope='module')
def official_tree(tmp_path_factory):
  root = tmp_path_factory.mktemp('cremad_src') / 'CREMA-D'
  fx.make_cremad_official(str(root), NAMES)
  return root


@pytest.fixture(scope='module')
def built(official_tree, tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('cremad_tfds')
  cfg = _cfg(official_tree, data_dir)
  cremad.prepare(cfg)
  return cfg


# ---- audio -----------------------------------------------------------------------


def test_stft_matches_direct_dft_and_frame_count():
  rng = np.random.default_rng(0)
  x = rng.standard_normal(66150)  # 3 s at 22,050 Hz.
  mag = media.stft_magnitude(x, 512, 353)
  assert mag.shape == (257, 188)  # 1 + 66150 // 353 frames with centring.
  padded = np.pad(x, 256)
  t = 100
  frame = padded[t * 353:t * 353 + 512] * media.hann_periodic(512)
  k = np.arange(257)[:, None]
  dft = np.abs(np.sum(frame * np.exp(-2j * np.pi * k * np.arange(512) / 512), axis=1))
  np.testing.assert_allclose(mag[:, t], dft, rtol=1e-9, atol=1e-9)


def test_cremad_spectrogram_tiles_resamples_and_logs():
  sr = 16000
  x = 0.5 * np.sin(2 * np.pi * 1000 * np.arange(int(1.2 * sr)) / sr).astype(np.float32)
  spec = media.cremad_log_spectrogram(x, sr)
  assert spec.shape == (257, 188) and spec.dtype == np.float32
  # 1 kHz at 22,050 Hz / 512 bins lands in bin round(1000 * 512 / 22050) = 23.
  assert np.argmax(spec[:, 94]) == 23
  # The 1.2 s clip is tiled, so the last frames are not silence.
  assert spec[23, -2] > 0.0
  # Silence hits the log floor log(1e-7).
  silent = media.cremad_log_spectrogram(np.zeros(sr, np.float32), sr)
  np.testing.assert_allclose(silent, np.log(1e-7), rtol=1e-6)


def test_tile_to_length_matches_official_for_long_clips():
  x = np.arange(40000, dtype=np.float32)
  np.testing.assert_array_equal(media.tile_to_length(x, 66150), np.tile(x, 3)[:66150])
  short = np.arange(10, dtype=np.float32)
  assert media.tile_to_length(short, 95).shape == (95,)


def test_decode_video_frames_at_3fps(official_tree):
  frames = media.decode_video_frames(str(official_tree / 'VideoFlash' / (NAMES[0] + '.flv')), 3)
  assert len(frames) == 6  # 2 s at 3 fps.
  assert frames[0].shape == (32, 32, 3) and frames[0].dtype == np.uint8
  # Frame k at 3 fps is source frame 8k of 24 fps, whose red level is 80k mod 256.
  red = [int(f[:, 20:, 0].mean()) for f in frames]
  np.testing.assert_allclose(red, [(80 * k) % 256 for k in range(6)], atol=12)


# ---- build and load --------------------------------------------------------------


def test_build_shapes_labels_and_actors(built):
  src = cremad.load_split(built, 'train')
  ex = src[0]
  assert ex['audio'].shape == (257, 188) and ex['audio'].dtype == np.float32
  assert ex['frames'].dtype == object and len(ex['frames']) == 6
  assert ex['label'].dtype == np.int32 and ex['actor'].dtype == np.int32
  for split in ('train', 'validation', 'test'):
    s = cremad.load_split(built, split)
    for i in range(len(s)):
      e = s[i]
      name = str(e['clip_id'])
      assert cremad.EMOTIONS[int(e['label'])] == name.split('_')[2]
      assert int(e['actor']) == int(name[:4])
  inf = cremad.info(built)
  assert inf['modalities'] == ('audio', 'visual') and inf['num_classes'] == 6
  assert inf['shapes'] == {'audio': (257, 188, 1), 'visual': (3, 32, 32, 3)}
  # Defaults stay the paper's.
  assert cremad.info(ml_collections.ConfigDict())['shapes']['visual'] == (3, 224, 224, 3)


def test_random_split_sizes_and_determinism(built):
  sizes = {s: len(cremad.load_split(built, s)) for s in ('train', 'validation', 'test')}
  n_test = round(12 * 744 / 7442)
  n_val = round(0.1 * (12 - n_test))
  assert sizes == {'train': 12 - n_test - n_val, 'validation': n_val, 'test': n_test}
  meta = {'clip_ids': [f'{1001 + i % 91}_DFA_ANG_XX' for i in range(7442)],
          'actors': [1001 + i % 91 for i in range(7442)], 'labels': [5] * 7442}
  full = cremad.split_indices(meta, ml_collections.ConfigDict({'validation_fraction': 0.0}))
  assert (len(full['train']), len(full['test'])) == (6698, 744)  # The papers' split.
  a = cremad.split_indices(meta, ml_collections.ConfigDict({'seed': 1}))
  b = cremad.split_indices(meta, ml_collections.ConfigDict({'seed': 1}))
  c = cremad.split_indices(meta, ml_collections.ConfigDict({'seed': 2}))
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a['test'], c['test'])
  # The test set does not move when only the validation fraction changes.
  np.testing.assert_array_equal(full['test'], cremad.split_indices(
      meta, ml_collections.ConfigDict({'validation_fraction': 0.0}))['test'])
  union = np.concatenate([a['train'], a['validation'], a['test']])
  assert np.unique(union).size == 7442


def test_speaker_split_is_disjoint(built):
  cfg = ml_collections.ConfigDict(dict(built))
  cfg.split = 'speaker'
  actors = {s: {int(cremad.load_split(cfg, s)[i]['actor'])
                for i in range(len(cremad.load_split(cfg, s)))}
            for s in ('train', 'validation', 'test')}
  assert actors['train'] and actors['validation'] and actors['test']
  assert not actors['train'] & actors['test']
  assert not actors['train'] & actors['validation']
  assert not actors['validation'] & actors['test']
  assert actors['train'] | actors['validation'] | actors['test'] == {1001, 1002, 1003, 1004}


def test_csv_split(built, tmp_path):
  train, test = NAMES[:9], NAMES[9:]
  (tmp_path / 'train.csv').write_text(''.join(f'{n},{n.split("_")[2]}\n' for n in train))
  (tmp_path / 'test.csv').write_text(''.join(f'{n},{n.split("_")[2]}\n' for n in test))
  cfg = ml_collections.ConfigDict(dict(built))
  cfg.update(split='csv', csv_dir=str(tmp_path), validation_fraction=0.0)
  got = cremad.load_split(cfg, 'test')
  assert sorted(str(got[i]['clip_id']) for i in range(len(got))) == sorted(test)
  assert len(cremad.load_split(cfg, 'train')) == 9
  with pytest.raises(ValueError, match='validation_fraction'):
    cremad.load_split(cfg, 'validation')
  (tmp_path / 'test.csv').write_text('9999_DFA_ANG_XX,ANG\n')
  with pytest.raises(ValueError, match='9999_DFA_ANG_XX'):
    cremad.load_split(cfg, 'test')


def test_preprocess_train_and_eval(built):
  ex = cremad.load_split(built, 'train')[0]
  train_fn = cremad.make_preprocess(built, train=True)
  eval_fn = cremad.make_preprocess(built, train=False)
  a = train_fn(ex, np.random.default_rng(0))
  b = train_fn(ex, np.random.default_rng(0))
  c = train_fn(ex, np.random.default_rng(1))
  assert set(a) == {'audio', 'visual', 'label'}
  assert a['audio'].shape == (257, 188, 1) and a['audio'].dtype == np.float32
  assert a['visual'].shape == (3, 32, 32, 3) and a['visual'].dtype == np.float32
  assert a['label'].dtype == np.int32
  np.testing.assert_array_equal(a['visual'], b['visual'])  # Same rng, same sample.
  assert not np.array_equal(a['visual'], c['visual'])  # Augmentation is random.
  e1, e2 = eval_fn(ex, None), eval_fn(ex, np.random.default_rng(5))
  np.testing.assert_array_equal(e1['visual'], e2['visual'])  # Eval is deterministic.
  # ImageNet normalisation of a black pixel: (0 - mean) / std.
  np.testing.assert_allclose(e1['visual'].min(axis=(0, 1, 2)),
                             -media.IMAGENET_MEAN / media.IMAGENET_STD, atol=0.1)
  # Eval takes evenly spaced frames 0, mid, last of the 6 (red level 80k mod 256).
  red = (e1['visual'][:, :, 20:, 0] * media.IMAGENET_STD[0] + media.IMAGENET_MEAN[0]) * 255
  np.testing.assert_allclose(red.mean(axis=(1, 2)), [0, 160, 144], atol=14)


def test_pre_extracted_frames_layout(tmp_path):
  src = tmp_path / 'src'
  fx.make_cremad_frames(str(src), NAMES[:4], frames=5)
  cfg = _cfg(src, tmp_path / 'tfds', validation_fraction=0.0)
  b = cremad.prepare(cfg)
  assert b.info.metadata['visual_source'] == 'Image-03-FPS'
  s = cremad.load_split(cfg, 'train')
  ex = s[0]
  name = str(ex['clip_id'])
  stored = ex['frames'][0]
  with open(src / 'Image-03-FPS' / name / '00001.jpg', 'rb') as f:
    assert stored == f.read()  # Small JPEGs are kept byte for byte.
  assert len(ex['frames']) == 5
  # A truncated JPEG is named.
  jpg = src / 'Image-03-FPS' / NAMES[2] / '00003.jpg'
  fx.truncate_file(str(jpg), 0.4)
  with pytest.raises(prep.BadFileError, match=str(jpg)):
    cremad.prepare(_cfg(src, tmp_path / 'tfds_bad'))
  # A 1-fps folder needs fps=1, said clearly.
  os.rename(src / 'Image-03-FPS', src / 'Image-01-FPS')
  with pytest.raises(FileNotFoundError, match='fps=1'):
    cremad.prepare(_cfg(src, tmp_path / 'tfds2'))


def test_reads_without_tensorflow(built):
  code = (
      # Every import finder reports TensorFlow absent, as on a machine without it.
      "import sys\n"
      "class NoTF:\n"
      "  def __init__(self, inner): self.inner = inner\n"
      "  def find_spec(self, name, path=None, target=None):\n"
      "    if name.split('.')[0] == 'tensorflow': return None\n"
      "    return self.inner.find_spec(name, path, target)\n"
      "  def __getattr__(self, a): return getattr(self.inner, a)\n"
      "sys.meta_path[:] = [NoTF(f) for f in sys.meta_path]\n"
      "import ml_collections\n"
      "from data import cremad\n"
      f"cfg = ml_collections.ConfigDict({dict(built)!r})\n"
      "src = cremad.load_split(cfg, 'test')\n"
      "x = cremad.make_preprocess(cfg, train=False)(src[0], None)\n"
      "assert x['visual'].shape == (3, 32, 32, 3)\n"
      "assert 'tensorflow' not in sys.modules\n"
      "print('ok')\n")
  out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  assert 'ok' in out.stdout


# ---- errors ------------------------------------------------------------------------


def test_missing_folder_and_not_prepared(tmp_path):
  cfg = _cfg(tmp_path / 'nowhere', tmp_path / 'tfds')
  with pytest.raises(FileNotFoundError, match='nowhere'):
    cremad.prepare(cfg)
  with pytest.raises(FileNotFoundError) as e:
    cremad.load_split(cfg, 'train')
  msg = str(e.value)
  assert str(tmp_path / 'tfds') in msg and 'python -m data.prepare cremad' in msg
  (tmp_path / 'empty').mkdir()
  (tmp_path / 'empty' / 'README').write_text('x')
  with pytest.raises(FileNotFoundError, match='AudioWAV'):
    cremad.prepare(_cfg(tmp_path / 'empty', tmp_path / 'tfds'))


def test_corrupt_wav_and_unknown_label_named_in_one_error(official_tree, tmp_path):
  src = tmp_path / 'src'
  shutil.copytree(official_tree, src)
  bad_wav = src / 'AudioWAV' / (NAMES[1] + '.wav')
  bad_wav.write_bytes(b'RIFF\x00\x00garbage')
  shutil.copy(src / 'AudioWAV' / (NAMES[2] + '.wav'), src / 'AudioWAV' / '1001_DFA_XYZ_XX.wav')
  shutil.copy(src / 'VideoFlash' / (NAMES[2] + '.flv'), src / 'VideoFlash' / '1001_DFA_XYZ_XX.flv')
  os.remove(src / 'VideoFlash' / (NAMES[3] + '.flv'))
  cut_wav = src / 'AudioWAV' / (NAMES[4] + '.wav')
  fx.truncate_file(str(cut_wav), 0.6)
  cfg = _cfg(src, tmp_path / 'tfds')
  with pytest.raises(prep.BadFileError) as e:
    cremad.prepare(cfg)
  msg = str(e.value)
  assert str(bad_wav) in msg
  assert '1001_DFA_XYZ_XX.wav' in msg and "unknown emotion label 'XYZ'" in msg
  assert NAMES[3] + '.flv' in msg and 'missing' in msg
  assert str(cut_wav) in msg and 'truncated' in msg
  assert '--skip_bad' in msg
  # With --skip_bad the rest is built and the bad files are listed in data_dir.
  rc = prep.main(['cremad', f'--manual_dir={src}', f'--data_dir={tmp_path / "tfds"}',
                  '--skip_bad', '--set', 'image_size=32'])
  assert rc == 0
  listed = (tmp_path / 'tfds' / 'cremad_bad_files.txt').read_text()
  for bad in (str(bad_wav), '1001_DFA_XYZ_XX', NAMES[3], str(cut_wav)):
    assert bad in listed
  total = sum(len(cremad.load_split(cfg, s)) for s in ('train', 'validation', 'test'))
  assert total == len(NAMES) - 3


def test_truncated_video_interrupts_cleanly_and_rerun_works(official_tree, tmp_path):
  src = tmp_path / 'src'
  shutil.copytree(official_tree, src)
  video = src / 'VideoFlash' / (NAMES[5] + '.flv')
  fx.truncate_file(str(video), 0.5)
  cfg = _cfg(src, tmp_path / 'tfds')
  with pytest.raises(prep.BadFileError, match='truncated') as e:
    cremad.prepare(cfg)
  assert str(video) in str(e.value)
  # The half-written build does not count as prepared.
  with pytest.raises(FileNotFoundError, match='not prepared'):
    cremad.load_split(cfg, 'train')
  assert prep.main(['cremad', f'--manual_dir={src}', f'--data_dir={tmp_path / "tfds"}']) == 1
  shutil.copy(official_tree / 'VideoFlash' / (NAMES[5] + '.flv'), video)  # Fix, re-run.
  cremad.prepare(cfg)
  assert sum(len(cremad.load_split(cfg, s)) for s in ('train', 'validation', 'test')) == 12
