"""CREMA-D (Cao et al. 2014) as a TFDS array_record build, preprocessed as the papers do.

Where to get it: the CREMA-D release of the CheyneyComputerScience/CREMA-D
GitHub repository (Open Database License; the media live in Git LFS, so clone
with `git lfs` or download `AudioWAV/` and `VideoFlash/`). 7,442 clips of 91
actors (ids 1001-1091), six emotions; clip names `1001_DFA_ANG_XX`
(actor_sentence_emotion_level).

Layouts accepted under `manual_dir` (pick one visual source):

  manual_dir/
    AudioWAV/1001_DFA_ANG_XX.wav ...          16 kHz mono WAVs (required)
    VideoFlash/1001_DFA_ANG_XX.flv ...        official videos, decoded with PyAV
                                              and sampled at `fps` (default 3)
  or, instead of VideoFlash/, frames extracted beforehand (the OGM-GE layout):
    Image-03-FPS/1001_DFA_ANG_XX/00001.jpg ...   (3 fps; or Image-01-FPS with fps=1)

Optional, for the papers' exact split: the OGM-GE list files `train.csv` and
`test.csv` (lines `1088_IOM_NEU_XX,NEU`; 6,698 / 744 clips) in `csv_dir`.

Stored per clip: the log-magnitude STFT of the official code ([257, 188]
float32; data.audio.cremad_log_spectrogram), every frame at `fps` as JPEG
bytes (original 480x360 resolution unless `frame_short_side` > 0), the label,
the actor id and the clip name. Frame sampling and augmentation happen on the
fly in `make_preprocess`. Splits are computed at load time from the stored
clip list, so one build serves every split option:

  split='random'  (default) seeded random split with the papers' proportions,
                  round(N * 744 / 7442) test clips (exactly 744 of 7,442);
  split='csv'     the train.csv/test.csv lists found in `csv_dir`;
  split='speaker' speaker-disjoint: round(91 * test_fraction) actors held out;
and 'validation' is carved from train (seeded; by actor for 'speaker').

data_cfg fields (defaults in brackets):
  data_dir, manual_dir (prepare only), split ['random'], seed [0],
  validation_fraction [0.1] (0 = no validation split), test_fraction
  [744/7442], csv_dir [None], num_frames [3], image_size [224],
  consistent_crop [False]; stored options fps [3], frame_short_side [0 = keep],
  jpeg_quality [95]; prepare-only visual_source ['auto' | 'VideoFlash' |
  'Image-03-FPS' | 'Image-01-FPS'], num_workers [#cores, <= 8].
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data import audio as media
from data import prepare as prep

NAME = 'cremad'
# Class order of the official OGM-GE / InfoReg / RedReg code.
EMOTIONS = ('NEU', 'HAP', 'SAD', 'FEA', 'DIS', 'ANG')
CLASS_NAMES = ('neutral', 'happy', 'sad', 'fear', 'disgust', 'anger')
# The papers' random split: 744 of 7,442 clips for test (docs/reproducing.md §Data).
PAPER_TEST_FRACTION = 744 / 7442
STORAGE_DEFAULTS = {'fps': 3, 'frame_short_side': 0, 'jpeg_quality': 95}
AUDIO_SHAPE = (257, 188)  # [freq bins, frames] of cremad_log_spectrogram.
CLIP_RE = re.compile(r'^(\d{4})_([A-Z]{3})_([A-Z]{3})_([A-Z]{2})$')


@dataclasses.dataclass
class CremadConfig(tfds.core.BuilderConfig):
  """Options that change what is stored (everything else is applied at load time)."""
  fps: int = 3
  frame_short_side: int = 0
  jpeg_quality: int = 95


@dataclasses.dataclass(frozen=True)
class _Clip:
  name: str
  actor: int
  label: int
  wav: str
  video: str | None
  frames_dir: str | None


class Cremad(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """CREMA-D audio-visual emotion clips; see the module docstring for the layout."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Official-code preprocessing (docs/reproducing.md §Data).'}
  BUILDER_CONFIGS = [CremadConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def __init__(self, *, skip_bad: bool = False, num_workers: int | None = None,
               visual_source: str = 'auto', **kwargs):
    self._bad = prep.BadFiles(NAME, skip_bad)
    self._num_workers = num_workers or prep.default_workers()
    self._visual_source = visual_source
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='CREMA-D with the official OGM-GE/RedReg preprocessing.',
        features=tfds.features.FeaturesDict({
            'audio': tfds.features.Tensor(shape=AUDIO_SHAPE, dtype=np.float32),
            # JPEG bytes of every frame at `fps`; decoded only when sampled.
            'frames': tfds.features.Sequence(tfds.features.Tensor(shape=(), dtype=np.object_)),
            'label': tfds.features.ClassLabel(names=EMOTIONS),
            'actor': tfds.features.Scalar(dtype=np.int32),
            'clip_id': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        # Keep generation order (sorted clip names): load-time splits index the
        # stored examples through the clip list saved in the metadata.
        disable_shuffling=True,
        homepage='https://github.com/CheyneyComputerScience/CREMA-D',
    )

  # ---- discovery and validation --------------------------------------------

  def _resolve_visual(self, root: str) -> str:
    fps = self.builder_config.fps
    folder = f'Image-{fps:02d}-FPS'
    source = self._visual_source
    if source not in ('auto', 'VideoFlash') and not re.fullmatch(r'Image-\d\d-FPS', source):
      raise ValueError(f"data config field `visual_source`={source!r}: allowed values are "
                       "'auto', 'VideoFlash', 'Image-03-FPS', 'Image-01-FPS'")
    if source == 'auto':
      if os.path.isdir(os.path.join(root, 'VideoFlash')):
        return 'VideoFlash'
      if os.path.isdir(os.path.join(root, folder)):
        return folder
      others = sorted(d for d in os.listdir(root) if re.fullmatch(r'Image-\d\d-FPS', d))
      hint = ''.join(f' Found {d}: prepare with --set fps={int(d[6:8])} to use it.'
                     for d in others)
      raise FileNotFoundError(
          f'{NAME}: no visual data in {root}: expected VideoFlash/*.flv or '
          f'{folder}/<clip>/*.jpg.{hint}')
    if not os.path.isdir(os.path.join(root, source)):
      raise FileNotFoundError(f'{NAME}: visual_source folder {os.path.join(root, source)} '
                              'does not exist')
    if source != 'VideoFlash' and source != folder:
      raise ValueError(f'{NAME}: visual_source={source} holds frames at another rate '
                       f'than fps={fps}; prepare with --set fps={int(source[6:8])}')
    return source

  def _discover(self, root: str) -> tuple[list[_Clip], str]:
    wav_dir = os.path.join(root, 'AudioWAV')
    if not os.path.isdir(wav_dir):
      raise FileNotFoundError(
          f'{NAME}: {wav_dir} does not exist; manual_dir must hold AudioWAV/ and '
          'VideoFlash/ (or Image-03-FPS/) of the CREMA-D release')
    visual = self._resolve_visual(root)
    vis_dir = os.path.join(root, visual)
    wavs = sorted(f for f in os.listdir(wav_dir) if f.lower().endswith('.wav'))
    if not wavs:
      raise FileNotFoundError(f'{NAME}: no .wav files in {wav_dir}')
    if visual == 'VideoFlash':
      vis_names = {os.path.splitext(f)[0] for f in os.listdir(vis_dir)
                   if f.lower().endswith('.flv')}
    else:
      vis_names = {d for d in os.listdir(vis_dir) if os.path.isdir(os.path.join(vis_dir, d))}
    clips, wav_names = [], set()
    for f in wavs:
      name = os.path.splitext(f)[0]
      wav_names.add(name)
      path = os.path.join(wav_dir, f)
      m = CLIP_RE.match(name)
      if not m:
        self._bad.add(path, 'file name is not <actor>_<sentence>_<emotion>_<level> '
                      '(e.g. 1001_DFA_ANG_XX)')
        continue
      if m.group(3) not in EMOTIONS:
        self._bad.add(path, f'unknown emotion label {m.group(3)!r} in the file name; '
                      f'expected one of {", ".join(EMOTIONS)}')
        continue
      if name not in vis_names:
        missing = (os.path.join(vis_dir, name + '.flv') if visual == 'VideoFlash'
                   else os.path.join(vis_dir, name))
        self._bad.add(missing, f'missing: no visual data for {path}')
        continue
      clips.append(_Clip(
          name=name, actor=int(m.group(1)), label=EMOTIONS.index(m.group(3)), wav=path,
          video=os.path.join(vis_dir, name + '.flv') if visual == 'VideoFlash' else None,
          frames_dir=None if visual == 'VideoFlash' else os.path.join(vis_dir, name)))
    for name in sorted(vis_names - wav_names):
      self._bad.add(os.path.join(wav_dir, name + '.wav'),
                    f'missing: {visual}/{name} has no audio file')
    return clips, visual

  def _check(self, clip: _Clip) -> tuple[str, str] | None:
    """Cheap checks run over every clip before the expensive pass."""
    try:
      media.load_wav(clip.wav)
    except media.MediaError as e:
      return clip.wav, str(e)
    if clip.video is not None:
      try:
        media.check_video_complete(clip.video)  # Names a truncated copy in this pass.
      except media.MediaError as e:
        return clip.video, str(e)
    else:
      names = media.list_images(clip.frames_dir)
      if not names:
        return clip.frames_dir, 'frame folder holds no .jpg/.png images'
      for n in names:
        if os.path.getsize(os.path.join(clip.frames_dir, n)) == 0:
          return os.path.join(clip.frames_dir, n), 'empty image file'
    return None

  # ---- generation ------------------------------------------------------------

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    clips, visual = self._discover(root)
    checked = prep.ordered_parallel_map(self._check, clips, self._num_workers)
    good = []
    for clip, problem in zip(clips, prep.progress(checked, len(clips), f'{NAME}: checking')):
      if problem:
        self._bad.add(*problem)
      else:
        good.append(clip)
    self._bad.raise_if_any()  # One error naming every bad file found so far.
    if not good:
      raise FileNotFoundError(f'{NAME}: no usable clip in {root}')
    self.info.metadata['visual_source'] = visual
    return {'clips': self._generate_examples(good)}

  def _process(self, clip: _Clip):
    cfg = self.builder_config
    try:
      samples, sr = media.load_wav(clip.wav)
      spec = media.cremad_log_spectrogram(samples, sr)
    except media.MediaError as e:
      return clip, None, (clip.wav, str(e))
    try:
      if clip.video is not None:
        raw = media.decode_video_frames(clip.video, cfg.fps)
        frames = [media.frame_bytes(f, cfg.frame_short_side, cfg.jpeg_quality) for f in raw]
      else:
        frames = media.read_frame_folder(clip.frames_dir, cfg.frame_short_side,
                                         cfg.jpeg_quality)
    except media.MediaError as e:
      return clip, None, (clip.video or clip.frames_dir, str(e))
    if not frames:
      return clip, None, (clip.video or clip.frames_dir, 'no frames')
    example = {'audio': spec, 'frames': frames, 'label': clip.label,
               'actor': clip.actor, 'clip_id': clip.name}
    reason = prep.nonfinite_reason(example)
    if reason:
      return clip, None, (clip.wav, reason)
    return clip, example, None

  def _generate_examples(self, clips):
    ids, actors, labels = [], [], []
    for clip, example, problem in prep.ordered_parallel_map(
        self._process, clips, self._num_workers):
      if problem:
        self._bad.fail(*problem)  # Raises unless --skip_bad.
        continue
      ids.append(clip.name)
      actors.append(clip.actor)
      labels.append(clip.label)
      yield clip.name, example
    self.info.metadata.update(clip_ids=ids, actors=actors, labels=labels,
                              skipped=[p for p, _ in self._bad.items])


# ---- public API ---------------------------------------------------------------


def storage_options(data_cfg) -> dict[str, Any]:
  return {k: int(prep.cfg_get(data_cfg, k, v)) for k, v in STORAGE_DEFAULTS.items()}


def builder(data_cfg, **kwargs) -> Cremad:
  """The TFDS builder for `data_cfg` (its storage options pick the build)."""
  return prep.make_builder(Cremad, CremadConfig, data_cfg, storage_options(data_cfg),
                           STORAGE_DEFAULTS, **kwargs)


def prepare(data_cfg, skip_bad: bool = False) -> Cremad:
  """Validates `manual_dir` and writes the build; returns the prepared builder."""
  manual = prep.manual_dir(data_cfg, NAME, 'AudioWAV/ and VideoFlash/ (or Image-03-FPS/)')
  b = builder(data_cfg, skip_bad=skip_bad,
              num_workers=prep.cfg_get(data_cfg, 'num_workers'),
              visual_source=prep.cfg_get(data_cfg, 'visual_source', 'auto'))
  try:
    b.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
  finally:
    b._bad.write(os.path.expanduser(prep.cfg_get(data_cfg, 'data_dir')))  # pylint: disable=protected-access
  return b


def info(data_cfg) -> dict:
  """Modalities, classes and per-example input shapes after preprocessing."""
  t = int(prep.cfg_get(data_cfg, 'num_frames', 3))
  s = int(prep.cfg_get(data_cfg, 'image_size', 224))
  return dict(modalities=('audio', 'visual'), num_classes=len(EMOTIONS),
              shapes={'audio': AUDIO_SHAPE + (1,), 'visual': (t, s, s, 3)},
              class_names=list(CLASS_NAMES))


def _read_csv(path: str) -> list[tuple[str, str]]:
  rows = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      line = line.strip()
      if not line:
        continue
      parts = [p.strip() for p in line.split(',')]
      if len(parts) < 2:
        raise ValueError(f'{path}:{lineno}: expected `clip,EMOTION` (e.g. '
                         f'1088_IOM_NEU_XX,NEU), got {line!r}')
      rows.append((parts[0], parts[1]))
  return rows


def split_indices(meta: dict, data_cfg) -> dict[str, np.ndarray]:
  """Train/validation/test example indices for the split options of `data_cfg`.

  A pure function of the stored clip list and the options, so every run with
  the same seed sees the same split.
  """
  ids = list(meta['clip_ids'])
  actors = np.asarray(meta['actors'], np.int64)
  n = len(ids)
  mode = prep.check_choice('split', prep.cfg_get(data_cfg, 'split', 'random'),
                           ('random', 'speaker', 'csv'))
  seed = int(prep.cfg_get(data_cfg, 'seed', 0))
  val_frac = float(prep.cfg_get(data_cfg, 'validation_fraction', 0.1))
  test_frac = float(prep.cfg_get(data_cfg, 'test_fraction', PAPER_TEST_FRACTION))
  everything = np.arange(n)
  if mode == 'random':
    # Proportional to the papers' 6,698 / 744 for folders of any size.
    _, test = prep.carve(everything, test_frac, seed, salt=0)
    train = np.setdiff1d(everything, test)
    train, val = prep.carve(train, val_frac, seed, salt=1)
  elif mode == 'speaker':
    people = np.unique(actors)
    if people.size < 3:
      raise ValueError(f"split='speaker' needs at least 3 actors, found {people.size}")
    rest, test_people = prep.carve(people, test_frac, seed, salt=0)
    if test_people.size == 0:
      test_people, rest = rest[:1], rest[1:]
    rest, val_people = prep.carve(rest, val_frac, seed, salt=1)
    if val_frac > 0 and val_people.size == 0:
      val_people, rest = rest[:1], rest[1:]
    test = everything[np.isin(actors, test_people)]
    val = everything[np.isin(actors, val_people)]
    train = everything[np.isin(actors, rest)]
  else:
    csv_dir = os.path.expanduser(prep.require(
        data_cfg, 'csv_dir', "split='csv' reads train.csv and test.csv from this folder"))
    where = {c: i for i, c in enumerate(ids)}
    labels = np.asarray(meta['labels'])
    parts = {}
    for part in ('train', 'test'):
      path = os.path.join(csv_dir, f'{part}.csv')
      if not os.path.exists(path):
        raise FileNotFoundError(f"split='csv': {path} does not exist (expected the OGM-GE "
                                'list with lines like 1088_IOM_NEU_XX,NEU)')
      rows = _read_csv(path)
      missing = [c for c, _ in rows if c not in where]
      if missing:
        raise ValueError(
            f'{path} lists {len(missing)} clip(s) that are not in the prepared build, '
            f'e.g. {", ".join(missing[:5])}; prepare from the full release (or without '
            'skipping them), or remove them from the list')
      for c, emo in rows:
        if emo in EMOTIONS and EMOTIONS.index(emo) != labels[where[c]]:
          raise ValueError(f'{path}: {c} is labelled {emo} but its file name says '
                           f'{EMOTIONS[labels[where[c]]]}')
      parts[part] = np.asarray(sorted(where[c] for c, _ in rows), np.int64)
    if np.intersect1d(parts['train'], parts['test']).size:
      raise ValueError(f'{csv_dir}: train.csv and test.csv share clips')
    test = parts['test']
    train, val = prep.carve(parts['train'], val_frac, seed, salt=1)
  return {'train': np.sort(train), 'validation': np.sort(val), 'test': np.sort(test)}


def load_split(data_cfg, split: str) -> prep.SubsetSource:
  """Random-access source of dicts of numpy arrays for 'train'|'validation'|'test'."""
  prep.check_choice('split name', split, ('train', 'validation', 'test'))
  b = builder(data_cfg)
  if not b.is_prepared():
    opts = storage_options(data_cfg)
    raise prep.not_prepared_error(NAME, b, data_cfg,
                                  prep.set_flags(opts, STORAGE_DEFAULTS))
  idx = split_indices(dict(b.info.metadata), data_cfg)[split]
  if idx.size == 0:
    raise ValueError(f'{NAME}: the {split} split is empty with split='
                     f'{prep.cfg_get(data_cfg, "split", "random")!r} and '
                     f'validation_fraction={prep.cfg_get(data_cfg, "validation_fraction", 0.1)}; '
                     'set validation_fraction > 0 for a validation split')
  return prep.SubsetSource(b.as_data_source('clips'), idx, prep.to_numpy,
                           name=f'{NAME}:{split}')


def make_preprocess(data_cfg, train: bool):
  """fn(example, rng) -> {'audio': [257,188,1], 'visual': [T,S,S,3] float32, 'label': int32}."""
  return media.make_av_preprocess(data_cfg, train)
