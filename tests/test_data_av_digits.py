"""Tests of the AV-digits builder on a tiny generated FSDD folder (real WAV files)."""

import os
import pickle

import ml_collections
import numpy as np
import pytest
import soundfile as sf

from data import av_digits

SPEAKERS = ('alice', 'bob')
TAKES = 7  # takes 0-4 test, 5-6 train/validation


def _write_fake_fsdd(root, speakers=SPEAKERS, takes=TAKES):
  """Writes {digit}_{speaker}_{take}.wav tones at 8 kHz, FSDD's naming scheme."""
  rec = os.path.join(root, 'recordings')
  os.makedirs(rec, exist_ok=True)
  rng = np.random.default_rng(0)
  for d in range(10):
    for s, speaker in enumerate(speakers):
      for t in range(takes):
        n = int(rng.integers(2000, 9500))  # some shorter, some longer than 1 s
        time = np.arange(n) / av_digits.SAMPLE_RATE
        wave = 0.3 * np.sin(2 * np.pi * (300 + 150 * d + 20 * s) * time)
        wave += 0.01 * rng.standard_normal(n)
        sf.write(os.path.join(rec, f'{d}_{speaker}_{t}.wav'), wave, av_digits.SAMPLE_RATE,
                 subtype='PCM_16')
  return str(root)


def _cfg(data_dir, **kw):
  return ml_collections.ConfigDict(dict(data_dir=str(data_dir), **kw))


def _read_all(data_dir, **kw):
  return {s: [av_digits.load_split(_cfg(data_dir, **kw), s)[i]
              for i in range(len(av_digits.load_split(_cfg(data_dir, **kw), s)))]
          for s in av_digits.SPLITS}


@pytest.fixture(scope='module')
def fsdd(tmp_path_factory):
  return _write_fake_fsdd(tmp_path_factory.mktemp('fsdd'))


@pytest.fixture(scope='module')
def built(fsdd, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  av_digits.prepare(fsdd, data_dir)
  return data_dir, _read_all(data_dir)


def test_log_spectrogram_shape_and_peak():
  for n in (1000, 8000, 12345):
    time = np.arange(n) / av_digits.SAMPLE_RATE
    spec = av_digits.log_spectrogram(np.sin(2 * np.pi * 1000 * time))
    assert spec.shape == (129, 126) and spec.dtype == np.float32
    # 1 kHz at 31.25 Hz per bin is bin 32.
    assert np.argmax(spec.max(axis=1)) == 32
  assert np.all(av_digits.log_spectrogram(np.zeros(10)) == np.float32(np.log(1e-7)))


def test_splits_shapes_and_labels(built):
  data_dir, data = built
  # Per digit: 2 speakers x 5 test takes; 2 x 2 train takes, 1 to validation.
  assert {s: len(v) for s, v in data.items()} == {'train': 30, 'validation': 10, 'test': 100}
  _, target = av_digits._load_digit_images()
  for split, examples in data.items():
    for ex in examples:
      assert ex['audio'].shape == (129, 126) and ex['audio'].dtype == np.float32
      assert ex['image'].shape == (8, 8) and ex['image'].dtype == np.uint8
      assert ex['image'].max() <= 16
      name = ex['recording'].decode()
      assert name.startswith(f"{ex['label']}_") and ex['speaker'].decode() in SPEAKERS
      assert (ex['take'] < 5) == (split == 'test')
      assert target[ex['image_index']] == ex['label']  # image shows the same digit
    assert sorted({ex['label'] for ex in examples}) == list(range(10))
  ids = [ex['id'] for v in data.values() for ex in v]
  assert len(set(ids)) == len(ids)
  pools = {s: {ex['image_index'] for ex in v} for s, v in data.items()}
  assert not pools['train'] & pools['validation']
  assert not pools['train'] & pools['test']
  assert not pools['validation'] & pools['test']
  info = av_digits.info(_cfg(data_dir))
  assert info['modalities'] == ('audio', 'visual') and info['num_classes'] == 10
  assert info['class_names'] == [str(d) for d in range(10)]
  out = av_digits.make_preprocess(_cfg(data_dir), train=True)(
      data['train'][0], np.random.default_rng(0))
  assert set(out) == {'audio', 'visual', 'label'}
  for m in info['modalities']:
    assert out[m].shape == info['shapes'][m] and out[m].dtype == np.float32
  assert out['label'].dtype == np.int32 and out['label'] == data['train'][0]['label']


def test_pairing_is_deterministic_in_the_seed(built, fsdd, tmp_path):
  data_dir, data = built
  def pairs(d):
    return {s: sorted((ex['recording'], ex['image_index']) for ex in v) for s, v in d.items()}
  again = str(tmp_path / 'again')
  av_digits.prepare(fsdd, again)
  assert pairs(_read_all(again)) == pairs(data)
  # Another seed: another config folder beside the first, other pairs.
  av_digits.prepare(fsdd, data_dir, pair_seed=1)
  other = _read_all(data_dir, pair_seed=1)
  assert pairs(other) != pairs(data)
  assert os.path.isdir(os.path.join(data_dir, 'av_digits', 'seed1_val10pct', '1.0.0'))
  # Sources pickle (data-loader workers), for the predefined and a custom config.
  for seed in (0, 1):
    src = av_digits.load_split(_cfg(data_dir, pair_seed=seed), 'test')
    copy = pickle.loads(pickle.dumps(src))
    assert len(copy) == len(src) and copy[7]['recording'] == src[7]['recording']


def test_pool_sizes_follow_split_sizes():
  _, target = av_digits._load_digit_images()
  recs = [av_digits.Recording(f'{d}_x_{t}.wav', d, 'x', t)
          for d in range(10) for s in range(6) for t in range(50)]
  out = av_digits.assign_splits(recs, target, pair_seed=0, val_fraction=0.1)
  # Full FSDD's sizes: per digit 270 train takes, 27 of them to validation.
  assert [len(out[s]) for s in av_digits.SPLITS] == [2430, 270, 300]
  pool = (target == 3).sum()
  for split, n in zip(av_digits.SPLITS, (243, 27, 30)):
    used = [im for _, r, im in out[split] if r.digit == 3]
    assert len(used) == n
    # The split's pool is its share of the digit's images, used evenly.
    images, counts = np.unique(used, return_counts=True)
    assert abs(len(images) - pool * n / 300) <= 2  # 1 image reserved per split
    assert counts.max() - counts.min() <= 1


def _visual(data_dir, example, train=False, rng=None, **kw):
  fn = av_digits.make_preprocess(_cfg(data_dir, **kw), train=train)
  return fn(example, rng)['visual'][0, :, :, 0]


def test_degradation_knob(built):
  data_dir, data = built
  ex = data['test'][0]
  clean = np.kron(ex['image'] / 16.0, np.ones((4, 4)))  # nearest upsampling to 32x32
  np.testing.assert_allclose(
      _visual(data_dir, ex, visual_noise_std=0.0, visual_occlusion=0.0), clean, atol=1e-6)
  devs = [np.abs(_visual(data_dir, ex, visual_noise_std=s, visual_occlusion=0.0) - clean).mean()
          for s in (0.1, 0.5, 1.5)]
  assert devs[0] < devs[1] < devs[2]
  occluded = _visual(data_dir, ex, visual_noise_std=0.0, visual_occlusion=0.25)
  masked = (occluded == 0) & (clean > 0)
  assert masked.any() and np.all((occluded == clean) | (occluded == 0))
  assert (occluded != clean).sum() <= 16 * 16
  # Evaluation is deterministic per example; training draws fresh noise.
  np.testing.assert_array_equal(_visual(data_dir, ex), _visual(data_dir, ex))
  assert not np.array_equal(_visual(data_dir, ex), _visual(data_dir, data['test'][1]))
  rng = np.random.default_rng(0)
  assert not np.array_equal(_visual(data_dir, ex, True, rng), _visual(data_dir, ex, True, rng))
  bilinear = _visual(data_dir, ex, interpolation='bilinear', visual_noise_std=0.0,
                     visual_occlusion=0.0, image_size=16)
  assert bilinear.shape == (16, 16)
  np.testing.assert_allclose(bilinear.mean(), clean.mean(), atol=0.02)


def test_audio_normalization(built):
  data_dir, data = built
  ex = data['train'][0]
  raw = av_digits.make_preprocess(_cfg(data_dir, audio_normalize=False), False)(ex)['audio']
  norm = av_digits.make_preprocess(_cfg(data_dir), False)(ex)['audio']
  np.testing.assert_array_equal(raw[..., 0], ex['audio'])
  np.testing.assert_allclose(norm, (raw - av_digits.AUDIO_MEAN) / av_digits.AUDIO_STD,
                             rtol=1e-5, atol=1e-5)


def test_not_prepared_names_folder_and_command(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    av_digits.load_split(_cfg(tmp_path, pair_seed=3), 'train')
  msg = str(e.value)
  assert os.path.join(str(tmp_path), 'av_digits', 'seed3_val10pct') in msg
  assert 'python -m data.av_digits --manual_dir=' in msg
  assert f'--data_dir={tmp_path} --pair_seed=3' in msg
  with pytest.raises(FileNotFoundError, match='No recordings/ folder'):
    av_digits.prepare(str(tmp_path), str(tmp_path))


def test_corrupt_file_is_named_then_skipped(tmp_path, capsys, monkeypatch):
  fsdd = _write_fake_fsdd(tmp_path / 'fsdd', speakers=('carol',))
  with open(os.path.join(fsdd, 'recordings', '4_carol_2.wav'), 'wb') as f:
    f.write(b'RIFF not really a wave file')
  sf.write(os.path.join(fsdd, 'recordings', '5_carol_6.wav'), np.zeros(100), 16000)
  data_dir = str(tmp_path / 'tfds')
  with pytest.raises(SystemExit) as e:
    av_digits.main([f'--manual_dir={fsdd}', f'--data_dir={data_dir}'])
  msg = str(e.value)
  assert '4_carol_2.wav: unreadable' in msg and '5_carol_6.wav: sample rate 16000' in msg
  assert '--skip_bad' in msg
  # An interrupted build leaves nothing half-written; rerunning completes it.
  real = av_digits.log_spectrogram
  calls = []
  def interrupted(wave):
    calls.append(1)
    if len(calls) > 5:
      raise KeyboardInterrupt
    return real(wave)
  monkeypatch.setattr(av_digits, 'log_spectrogram', interrupted)
  with pytest.raises(KeyboardInterrupt):
    av_digits.prepare(fsdd, data_dir, skip_bad=True)
  monkeypatch.setattr(av_digits, 'log_spectrogram', real)
  assert not av_digits._builder(data_dir, 0, 0.1).is_prepared()
  capsys.readouterr()
  av_digits.main([f'--manual_dir={fsdd}', f'--data_dir={data_dir}', '--skip_bad'])
  out = capsys.readouterr().out
  assert 'skipped 2 unusable file(s)' in out and '4_carol_2.wav' in out
  data = _read_all(data_dir)
  names = {ex['recording'].decode() for v in data.values() for ex in v}
  assert len(names) == 68 and '4_carol_2.wav' not in names
  config_dir = os.path.join(data_dir, 'av_digits', 'seed0_val10pct')
  assert os.listdir(config_dir) == ['1.0.0']  # no incomplete.* left over
  av_digits.main([f'--manual_dir={fsdd}', f'--data_dir={data_dir}'])
  assert 'already prepared' in capsys.readouterr().out
