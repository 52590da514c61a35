"""Kinetics-Sounds builder and the Kaldi fbank: real MP4/WAV/JPEG fixtures."""

import os
import shutil

import ml_collections
import numpy as np
import pytest

from data import audio as media
from data import kinetics_sounds as ks
from data import prepare as prep
from tests import data_fixtures as fx

CLASSES = ('drumming', 'playing_flute', 'singing')


def _cfg(manual, data_dir, **kw):
  base = dict(manual_dir=str(manual), data_dir=str(data_dir), image_size=32,
              num_classes=3, num_workers=2)
  base.update(kw)
  return ml_collections.ConfigDict(base)


# ---- Kaldi fbank ---------------------------------------------------------------------


def _kaldi_reference(x, sr, num_bins, window_type):
  """Kaldi's fbank written out loop by loop (feature-window.cc, mel-computations.cc)."""
  win, shift = int(sr * 0.025), int(sr * 0.010)
  padded = 1
  while padded < win:
    padded *= 2
  a = 2 * np.pi / (win - 1)
  def window(i):
    hann = 0.5 - 0.5 * np.cos(a * i)
    return hann ** 0.85 if window_type == 'povey' else hann
  mel = lambda f: 1127.0 * np.log(1.0 + f / 700.0)  # pylint: disable=unnecessary-lambda-assignment
  lo, hi = mel(20.0), mel(sr / 2)
  delta = (hi - lo) / (num_bins + 1)
  n = np.arange(padded)
  out = []
  for f in range(1 + (len(x) - win) // shift):
    w = np.array(x[f * shift:f * shift + win], np.float64)
    w -= w.mean()
    for i in range(win - 1, 0, -1):
      w[i] -= 0.97 * w[i - 1]
    w[0] -= 0.97 * w[0]
    w = np.array([w[i] * window(i) for i in range(win)])
    buf = np.zeros(padded)
    buf[:win] = w
    power = [abs(np.sum(buf * np.exp(-2j * np.pi * k * n / padded))) ** 2
             for k in range(padded // 2)]
    row = []
    for b in range(num_bins):
      left, center, right = lo + b * delta, lo + (b + 1) * delta, lo + (b + 2) * delta
      e = 0.0
      for k in range(padded // 2):
        m = mel(k * sr / padded)
        if left < m < right:
          e += power[k] * ((m - left) / (center - left) if m <= center
                           else (right - m) / (right - center))
      row.append(np.log(max(e, np.finfo(np.float32).eps)))
    out.append(row)
  return np.array(out)


@pytest.mark.parametrize('window_type', ['povey', 'hanning'])
def test_kaldi_fbank_matches_loop_reference(window_type):
  sr = 8000
  x = np.random.default_rng(0).uniform(-0.5, 0.5, 560)
  got = media.kaldi_fbank(x, sr, num_mel_bins=10, window_type=window_type)
  ref = _kaldi_reference(x, sr, 10, window_type)
  assert got.shape == (1 + (560 - 200) // 80, 10) == ref.shape
  np.testing.assert_allclose(got, ref, rtol=2e-5, atol=2e-5)


def test_kaldi_fbank_properties():
  sr = 16000
  # 10 ms shift, 25 ms window, snip_edges: 1 + (N - 400) // 160 frames.
  assert media.kaldi_fbank(np.zeros(16000), sr).shape == (98, 128)
  assert media.kaldi_fbank(np.zeros(399), sr).shape == (0, 128)
  # A constant frame is removed by the DC offset removal: log(FLT_EPSILON) everywhere.
  np.testing.assert_allclose(media.kaldi_fbank(np.full(4000, 0.3), sr),
                             np.log(np.finfo(np.float32).eps), rtol=1e-6)
  # A 1 kHz tone peaks in the bin whose centre is nearest 1 kHz on the mel scale.
  t = np.arange(sr) / sr
  fb = media.kaldi_fbank(0.5 * np.sin(2 * np.pi * 1000 * t), sr)
  lo, hi = media.mel_scale(20.0), media.mel_scale(8000.0)
  centers = lo + (np.arange(128) + 1) * (hi - lo) / 129
  assert abs(int(np.argmax(fb[50])) - int(np.argmin(abs(centers - media.mel_scale(1000.0))))) <= 1
  # Mel filters: triangles peaking at 1 (up to bin spacing) and zero at Nyquist.
  banks = media.kaldi_mel_banks(128, 512, sr)
  assert banks.shape == (128, 257) and np.all(banks[:, -1] == 0) and banks.max() <= 1.0
  # Povey's window is the Hann window to the power 0.85.
  np.testing.assert_allclose(media.kaldi_window('povey', 400),
                             media.kaldi_window('hanning', 400) ** 0.85)
  with pytest.raises(ValueError, match='window_type'):
    media.kaldi_window('hann', 10)


def test_log_mel_input_pads_then_normalises():
  x = np.random.default_rng(1).standard_normal(16000 * 2) * 0.1
  out = ks.log_mel_input(x, 16000)
  assert out.shape == (1024, 128) and out.dtype == np.float32
  pad_value = (0.0 - ks.FBANK_MEAN) / (2 * ks.FBANK_STD)
  n = 1 + (32000 - 400) // 160
  np.testing.assert_allclose(out[n:], pad_value, rtol=1e-6)
  fb = media.kaldi_fbank(x - x.mean(), 16000, window_type='hanning')
  np.testing.assert_allclose(out[:n], (fb - ks.FBANK_MEAN) / (2 * ks.FBANK_STD), rtol=1e-5)
  long = ks.log_mel_input(np.zeros(16000 * 12), 16000)
  assert long.shape == (1024, 128)  # Cut to 1,024 frames.


def test_decode_audio_from_mp4(tmp_path):
  path = str(tmp_path / 'clip.mp4')
  fx.write_video(path, seconds=1.0, fps=10, codec='mpeg4', audio_codec='aac', seed=2)
  x = media.decode_audio(path, 16000)  # A 400 Hz tone at amplitude 0.3, AAC-coded.
  assert abs(x.size - 16000) < 1500 and x.dtype == np.float32
  seg = x[2000:14000]
  peak = np.fft.rfftfreq(seg.size, 1 / 16000)[np.argmax(np.abs(np.fft.rfft(seg)))]
  assert abs(peak - 400) < 5
  np.testing.assert_allclose(seg.std(), 0.3 / np.sqrt(2), rtol=0.1)


# ---- build and load --------------------------------------------------------------------


@pytest.fixture(scope='module')
def video_build(tmp_path_factory):
  root = tmp_path_factory.mktemp('ks_src')
  fx.make_ks_tree(str(root), CLASSES, {'train': 2, 'test': 1}, layout='video')
  cfg = _cfg(root, tmp_path_factory.mktemp('ks_tfds'), validation_fraction=0.2)
  ks.prepare(cfg)
  return cfg


def test_video_layout_build(video_build):
  cfg = video_build
  inf = ks.info(cfg)
  assert inf['class_names'] == list(CLASSES) and inf['num_classes'] == 3
  assert inf['shapes'] == {'audio': (1024, 128, 1), 'visual': (3, 32, 32, 3)}
  sizes = {s: len(ks.load_split(cfg, s)) for s in ('train', 'validation', 'test')}
  assert sizes == {'train': 5, 'validation': 1, 'test': 3}  # Validation carved from 6.
  train_ids = {str(ks.load_split(cfg, 'train')[i]['clip_id']) for i in range(5)}
  val_id = str(ks.load_split(cfg, 'validation')[0]['clip_id'])
  assert val_id not in train_ids
  src = ks.load_split(cfg, 'test')
  for i in range(len(src)):
    ex = src[i]
    cls = str(ex['clip_id']).split('/')[1]
    assert CLASSES[int(ex['label'])] == cls
    assert ex['audio'].shape == (1024, 128) and len(ex['frames']) == 2  # 2 s at 1 fps.
  out = ks.make_preprocess(cfg, train=True)(src[0], np.random.default_rng(0))
  assert out['audio'].shape == (1024, 128, 1) and out['audio'].dtype == np.float32
  assert out['visual'].shape == (3, 32, 32, 3) and out['visual'].dtype == np.float32
  assert out['label'].dtype == np.int32
  ev = ks.make_preprocess(cfg, train=False)
  np.testing.assert_array_equal(ev(src[0], None)['visual'], ev(src[0], None)['visual'])
  # Default shapes stay the paper's.
  assert ks.info(ml_collections.ConfigDict({'data_dir': cfg.data_dir}))['shapes'] == {
      'audio': (1024, 128, 1), 'visual': (3, 224, 224, 3)}


def test_frames_layout_with_val_folder(tmp_path):
  root = tmp_path / 'src'
  fx.make_ks_tree(str(root), CLASSES, {'train': 1, 'val': 1, 'test': 1}, layout='frames')
  cfg = _cfg(root, tmp_path / 'tfds')
  ks.prepare(cfg)
  assert {s: len(ks.load_split(cfg, s)) for s in ('train', 'validation', 'test')} == {
      'train': 3, 'validation': 3, 'test': 3}
  ex = ks.load_split(cfg, 'train')[0]
  name = str(ex['clip_id'])  # e.g. train/drumming/drumming_train_0
  samples, sr = media.load_wav(str(root / (name + '.wav')))
  expected = ks.log_mel_input(media.resample(samples, sr, 16000), 16000)
  np.testing.assert_allclose(ex['audio'].astype(np.float32), expected, atol=2e-3)


def test_class_count_and_layout_errors(tmp_path):
  root = tmp_path / 'src'
  fx.make_ks_tree(str(root), CLASSES, {'train': 1, 'test': 1}, layout='frames')
  with pytest.raises(ValueError, match='found 3 class folders.*expected 31'):
    ks.prepare(_cfg(root, tmp_path / 'tfds', num_classes=31))
  os.makedirs(root / 'test' / 'unknown_class')
  with pytest.raises(ValueError, match='unknown_class'):
    ks.prepare(_cfg(root, tmp_path / 'tfds'))
  shutil.rmtree(root / 'test' / 'unknown_class')
  shutil.rmtree(root / 'train' / 'singing' / 'singing_train_0')  # WAV without frames.
  with pytest.raises(prep.BadFileError, match='singing_train_0'):
    ks.prepare(_cfg(root, tmp_path / 'tfds'))
  with pytest.raises(FileNotFoundError, match='not prepared'):
    ks.load_split(_cfg(root, tmp_path / 'tfds'), 'train')
  shutil.rmtree(root / 'test')
  with pytest.raises(FileNotFoundError, match='test'):
    ks.prepare(_cfg(root, tmp_path / 'tfds'))
