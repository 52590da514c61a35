"""Kinetics-Sounds (31-class GeWu split) as a TFDS array_record build.

Where to get it: Kinetics-Sounds is a subset of Kinetics-400 (Kay et al. 2017;
Arandjelovic & Zisserman 2017). The 31-class version of the imbalance papers
(OGM-GE, PMR, MMPareto, InfoReg, RedReg) is distributed by the GeWu lab
(github.com/GeWu-Lab) as class/clip lists; the videos themselves come from the
Kinetics-400 release (download them yourself, e.g. with the Kinetics
downloaders, and keep the 31 classes). Nothing is downloaded here.

Layout expected under `manual_dir` (class names are taken from the folder
names of train/; their number must equal `num_classes`, 31 by default):

  manual_dir/
    train/<class>/<clip>.mp4          (also .mkv .webm .avi .flv; audio + video)
    val/<class>/<clip>.mp4            (optional; 'validation' or 'valid' also work)
    test/<class>/<clip>.mp4
  or, per clip, the audio track plus a folder of frames extracted at 1 fps:
    train/<class>/<clip>.wav
    train/<class>/<clip>/00001.jpg ...

Video files are decoded with PyAV: frames sampled at 1 fps, audio resampled to
`sample_rate` (16 kHz) mono. WAVs at other rates are resampled likewise.

Stored per clip: the official audio input, computed as the GeWu code does with
torchaudio.compliance.kaldi.fbank (mean-removed waveform, 128 mel bins, 25 ms
window, 10 ms shift, dither 0, window `window_type`), zero-padded or cut to
1,024 frames and normalised as (x - (-4.503877)) / (2 * 5.141276), kept as
float16 (rounding error < 1e-3 on the normalised scale, half the disk); every
1-fps frame as JPEG bytes (short side at most `frame_short_side`, 256 by
default); label; clip id. If val/ is absent, 'validation' is carved from train
at load time (seeded, `validation_fraction`).

data_cfg fields (defaults in brackets):
  data_dir, manual_dir (prepare only), seed [0], validation_fraction [0.1]
  (used only without a val/ folder), num_frames [3], image_size [224],
  consistent_crop [False]; stored options num_classes [31], sample_rate
  [16000], window_type ['hanning' as the official code; Kaldi's own default
  is 'povey'], audio_frames [1024], fps [1], frame_short_side [256],
  jpeg_quality [95]; prepare-only num_workers [#cores, <= 8].
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data import audio as media
from data import prepare as prep

NAME = 'kinetics_sounds'
# Normalisation constants of the official Kinetics-Sounds loader (docs/reproducing.md §Data).
FBANK_MEAN = -4.503877
FBANK_STD = 5.141276
NUM_MEL_BINS = 128
STORAGE_DEFAULTS = {'num_classes': 31, 'sample_rate': 16000, 'window_type': 'hanning',
                    'audio_frames': 1024, 'fps': 1, 'frame_short_side': 256,
                    'jpeg_quality': 95}
VIDEO_EXTS = ('.mp4', '.mkv', '.webm', '.avi', '.flv', '.mov')
SPLIT_DIRS = {'train': ('train',), 'validation': ('val', 'validation', 'valid'),
              'test': ('test',)}


@dataclasses.dataclass
class KineticsSoundsConfig(tfds.core.BuilderConfig):
  """Options that change what is stored (everything else is applied at load time)."""
  num_classes: int = 31
  sample_rate: int = 16000
  window_type: str = 'hanning'
  audio_frames: int = 1024
  fps: int = 1
  frame_short_side: int = 256
  jpeg_quality: int = 95


@dataclasses.dataclass(frozen=True)
class _Clip:
  key: str
  label: int
  video: str | None
  wav: str | None
  frames_dir: str | None


def log_mel_input(samples: np.ndarray, sample_rate: int, *, window_type: str = 'hanning',
                  num_frames: int = 1024) -> np.ndarray:
  """The official Kinetics-Sounds audio input: [num_frames, 128] float32.

  waveform - mean -> Kaldi fbank (128 bins, 25 ms / 10 ms, dither 0) -> zero-pad
  or cut to num_frames -> (x - mean) / (2 std) with the constants above.
  """
  x = np.asarray(samples, np.float64)
  x = x - x.mean()
  fb = media.kaldi_fbank(x, sample_rate, num_mel_bins=NUM_MEL_BINS, frame_length_ms=25.0,
                         frame_shift_ms=10.0, window_type=window_type, dither=0.0)
  fb = media.pad_or_trim(fb, num_frames, axis=0)  # Pads with 0 before normalising.
  return ((fb - FBANK_MEAN) / (2.0 * FBANK_STD)).astype(np.float32)


class KineticsSounds(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Kinetics-Sounds clips; see the module docstring for the layout."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official GeWu preprocessing (docs/reproducing.md §Data).'}
  BUILDER_CONFIGS = [KineticsSoundsConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def __init__(self, *, skip_bad: bool = False, num_workers: int | None = None, **kwargs):
    self._bad = prep.BadFiles(NAME, skip_bad)
    self._num_workers = num_workers or prep.default_workers()
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    cfg = self.builder_config
    return tfds.core.DatasetInfo(
        builder=self,
        description='Kinetics-Sounds (31 classes) with the official GeWu preprocessing.',
        features=tfds.features.FeaturesDict({
            'audio': tfds.features.Tensor(shape=(cfg.audio_frames, NUM_MEL_BINS),
                                          dtype=np.float16),
            'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            # Names come from the user's folders: kept in the metadata.
            'label': tfds.features.ClassLabel(num_classes=cfg.num_classes),
            'clip_id': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  # ---- discovery and validation --------------------------------------------

  def _split_dirs(self, root: str) -> dict[str, str]:
    found = {}
    for split, names in SPLIT_DIRS.items():
      for n in names:
        if os.path.isdir(os.path.join(root, n)):
          found[split] = os.path.join(root, n)
          break
    for split in ('train', 'test'):
      if split not in found:
        raise FileNotFoundError(
            f'{NAME}: {os.path.join(root, split)} does not exist; manual_dir must hold '
            'train/<class>/<clip>.mp4 and test/<class>/<clip>.mp4 (see data/kinetics_sounds.py)')
    return found

  def _classes(self, dirs: dict[str, str]) -> list[str]:
    expected = self.builder_config.num_classes
    per_split = {s: sorted(c for c in os.listdir(d) if os.path.isdir(os.path.join(d, c)))
                 for s, d in dirs.items()}
    classes = per_split['train']
    if len(classes) != expected:
      raise ValueError(
          f'{NAME}: found {len(classes)} class folders in {dirs["train"]}, expected '
          f'{expected} (the GeWu Kinetics-Sounds list). Fix the folder, or prepare with '
          f'--set num_classes={len(classes)} for another class list.')
    for s, cs in per_split.items():
      extra = sorted(set(cs) - set(classes))
      if extra:
        raise ValueError(f'{NAME}: {dirs[s]} has class folders that train/ lacks: '
                         f'{", ".join(extra)}')
    return classes

  def _discover(self, split_dir: str, split: str, classes: list[str]) -> list[_Clip]:
    clips = []
    for label, c in enumerate(classes):
      d = os.path.join(split_dir, c)
      if not os.path.isdir(d):
        continue
      entries = sorted(os.listdir(d), key=media.natural_key)
      videos = {os.path.splitext(e)[0]: os.path.join(d, e) for e in entries
                if e.lower().endswith(VIDEO_EXTS)}
      wavs = {os.path.splitext(e)[0]: os.path.join(d, e) for e in entries
              if e.lower().endswith('.wav')}
      folders = {e: os.path.join(d, e) for e in entries if os.path.isdir(os.path.join(d, e))}
      for stem in sorted(set(videos) | set(wavs) | set(folders), key=media.natural_key):
        key = f'{split}/{c}/{stem}'
        if stem in videos:
          clips.append(_Clip(key, label, videos[stem], None, None))
        elif stem in wavs and stem in folders:
          clips.append(_Clip(key, label, None, wavs[stem], folders[stem]))
        elif stem in wavs:
          self._bad.add(os.path.join(d, stem), f'missing: 1-fps frame folder for {wavs[stem]}')
        else:
          self._bad.add(os.path.join(d, stem + '.wav'),
                        f'missing: audio for frame folder {folders[stem]}')
    return clips

  def _check(self, clip: _Clip) -> tuple[str, str] | None:
    """Cheap checks run over every clip before the expensive pass."""
    if clip.video is not None:
      try:
        import av  # pylint: disable=g-import-not-at-top
        with av.open(clip.video) as c:
          if not c.streams.audio:
            return clip.video, 'no audio stream'
        media.check_video_complete(clip.video)  # Names a truncated copy in this pass.
      except media.MediaError as e:
        return clip.video, str(e)
      except Exception as e:  # av.error.*
        return clip.video, f'cannot open video: {e}'
      return None
    try:
      media.load_wav(clip.wav)
    except media.MediaError as e:
      return clip.wav, str(e)
    if not media.list_images(clip.frames_dir):
      return clip.frames_dir, 'frame folder holds no .jpg/.png images'
    return None

  # ---- generation ------------------------------------------------------------

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    dirs = self._split_dirs(root)
    classes = self._classes(dirs)
    per_split = {s: self._discover(d, s, classes) for s, d in dirs.items()}
    everything = [c for cs in per_split.values() for c in cs]
    checked = prep.ordered_parallel_map(self._check, everything, self._num_workers)
    bad = set()
    for clip, problem in zip(everything, prep.progress(checked, len(everything),
                                                        f'{NAME}: checking')):
      if problem:
        self._bad.add(*problem)
        bad.add(clip.key)
    self._bad.raise_if_any()  # One error naming every bad file found so far.
    self.info.metadata['class_names'] = classes
    out = {}
    for s, cs in per_split.items():
      good = [c for c in cs if c.key not in bad]
      if not good:
        raise FileNotFoundError(f'{NAME}: no usable clip in {dirs[s]}')
      out[s] = self._generate_examples(good)
    return out

  def _process(self, clip: _Clip):
    cfg = self.builder_config
    try:
      if clip.video is not None:
        samples = media.decode_audio(clip.video, cfg.sample_rate)
      else:
        samples, sr = media.load_wav(clip.wav)
        samples = media.resample(samples, sr, cfg.sample_rate)
      fbank = log_mel_input(samples, cfg.sample_rate, window_type=cfg.window_type,
                            num_frames=cfg.audio_frames)
    except media.MediaError as e:
      return clip, None, (clip.video or clip.wav, str(e))
    try:
      if clip.video is not None:
        raw = media.decode_video_frames(clip.video, cfg.fps)
        frames = [media.frame_bytes(f, cfg.frame_short_side, cfg.jpeg_quality) for f in raw]
      else:
        frames = media.read_frame_folder(clip.frames_dir, cfg.frame_short_side,
                                         cfg.jpeg_quality)
    except media.MediaError as e:
      return clip, None, (clip.video or clip.frames_dir, str(e))
    example = {'audio': fbank.astype(np.float16), 'frames': frames, 'label': clip.label,
               'clip_id': clip.key}
    reason = prep.nonfinite_reason(example)
    if reason:
      return clip, None, (clip.video or clip.wav, reason)
    return clip, example, None

  def _generate_examples(self, clips):
    for clip, example, problem in prep.ordered_parallel_map(
        self._process, clips, self._num_workers):
      if problem:
        self._bad.fail(*problem)  # Raises unless --skip_bad.
        continue
      yield clip.key, example
    self.info.metadata['skipped'] = [p for p, _ in self._bad.items]


# ---- public API ---------------------------------------------------------------


def storage_options(data_cfg) -> dict[str, Any]:
  return {k: type(v)(prep.cfg_get(data_cfg, k, v)) for k, v in STORAGE_DEFAULTS.items()}


def builder(data_cfg, **kwargs) -> KineticsSounds:
  """The TFDS builder for `data_cfg` (its storage options pick the build)."""
  opts = storage_options(data_cfg)
  media.kaldi_window(opts['window_type'], 4)  # Fails early on an unknown window.
  return prep.make_builder(KineticsSounds, KineticsSoundsConfig, data_cfg, opts,
                           STORAGE_DEFAULTS, **kwargs)


def prepare(data_cfg, skip_bad: bool = False) -> KineticsSounds:
  """Validates `manual_dir` and writes the build; returns the prepared builder."""
  manual = prep.manual_dir(data_cfg, NAME, 'train/<class>/<clip>.mp4 and test/...')
  b = builder(data_cfg, skip_bad=skip_bad, num_workers=prep.cfg_get(data_cfg, 'num_workers'))
  try:
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  finally:
    b._bad.write(os.path.expanduser(prep.cfg_get(data_cfg, 'data_dir')))  # pylint: disable=protected-access
  return b


def info(data_cfg) -> dict:
  """Modalities, classes and per-example input shapes after preprocessing.

  Class names are the folder names recorded at prepare time; before the data
  is prepared they are placeholders 'class_0' ... .
  """
  opts = storage_options(data_cfg)
  t = int(prep.cfg_get(data_cfg, 'num_frames', 3))
  s = int(prep.cfg_get(data_cfg, 'image_size', 224))
  names = [f'class_{i}' for i in range(opts['num_classes'])]
  b = builder(data_cfg) if prep.cfg_get(data_cfg, 'data_dir') else None
  if b is not None and b.is_prepared():
    names = list(b.info.metadata.get('class_names', names))
  return dict(modalities=('audio', 'visual'), num_classes=opts['num_classes'],
              shapes={'audio': (opts['audio_frames'], NUM_MEL_BINS, 1), 'visual': (t, s, s, 3)},
              class_names=names)


def load_split(data_cfg, split: str) -> prep.SubsetSource:
  """Random-access source of dicts of numpy arrays for 'train'|'validation'|'test'."""
  prep.check_choice('split name', split, ('train', 'validation', 'test'))
  b = builder(data_cfg)
  if not b.is_prepared():
    raise prep.not_prepared_error(
        NAME, b, data_cfg, prep.set_flags(storage_options(data_cfg), STORAGE_DEFAULTS))
  name = f'{NAME}:{split}'
  if split == 'test' or 'validation' in b.info.splits:
    return prep.SubsetSource(b.as_data_source(split), None, prep.to_numpy, name=name)
  # No val/ folder: carve validation out of train, seeded.
  n = b.info.splits['train'].num_examples
  rest, held = prep.carve(np.arange(n), float(prep.cfg_get(data_cfg, 'validation_fraction', 0.1)),
                          int(prep.cfg_get(data_cfg, 'seed', 0)))
  idx = rest if split == 'train' else held
  if idx.size == 0:
    raise ValueError(f'{NAME}: no validation split: the build has no val/ folder and '
                     'validation_fraction is 0; set validation_fraction > 0')
  return prep.SubsetSource(b.as_data_source('train'), idx, prep.to_numpy, name=name)


def make_preprocess(data_cfg, train: bool):
  """fn(example, rng) -> {'audio': [1024,128,1], 'visual': [T,S,S,3] float32, 'label': int32}."""
  return media.make_av_preprocess(data_cfg, train)
