"""AV-digits: spoken digits (FSDD) paired with handwritten digit images (sklearn).

A small real audio-visual benchmark with a strong modality (speech) and a weak,
tunable one (images). Every example is one recording of the Free Spoken Digit
Dataset paired with one of scikit-learn's `load_digits` 8x8 images of the same
digit (those images ship with scikit-learn; nothing is downloaded).

Get the audio (once, by hand; nothing here downloads it):

  git clone https://github.com/Jakobovski/free-spoken-digit-dataset
  python -m data.av_digits --manual_dir=free-spoken-digit-dataset \
      --data_dir=~/tensorflow_datasets

`manual_dir` is the clone: `<manual_dir>/recordings/{digit}_{speaker}_{take}.wav`,
mono 8 kHz (6 speakers x 10 digits x 50 takes = 3,000 files; CC BY-SA 4.0).

Splits. FSDD's own split: takes 0-4 are `test`, takes 5-49 are train; per digit a
seeded `val_fraction` (default 10%) of the train recordings becomes `validation`.
Full FSDD gives train 2,430 / validation 270 / test 300.

Pairing. Per digit, load_digits' images (~180 per digit, 1,797 in all) are
shuffled with the seed and cut into three disjoint pools, one per split, sized in
proportion to that split's recordings of the digit; no image appears in two splits.
Within a split the pool is smaller than the number of recordings (e.g. ~146 images
for 243 train recordings of a digit), so images repeat: recordings (in seeded
order) take the pool's images cyclically, each image used floor or ceil of
recordings/pool times. The same seed gives the same pairing.

Audio (stored, fixed): the waveform centre-padded with zeros or centre-cropped to
1 s (8,000 samples), centred STFT (zero padding n_fft/2 each side), periodic Hann
window, n_fft 256, hop 64 -> 129 frequency bins x 126 frames (31.25 Hz x 8 ms),
log(|S| + 1e-7), float32 [129, 126]. 20 of the 3,000 recordings exceed 1 s and
lose their edges; multi-channel files are mixed down. Every wav is checked first
(readable, 8 kHz, non-empty, finite): unusable files are named in the error, or
left out and listed with --skip_bad.

Visual (stored clean): the 8x8 image, uint8 in 0..16. `make_preprocess` scales it
to [0, 1], upsamples it to `image_size` and degrades it, which sets how weak the
visual modality is: a random square covering `visual_occlusion` of the image area
is set to 0 (background), then Gaussian noise of std `visual_noise_std` is added.
Training draws fresh degradation from the caller's rng; evaluation seeds it with
(`eval_seed`, example id) so evaluation is deterministic.

Data config fields (all optional):
  data_dir          root of the prepared data ('~/tensorflow_datasets').
  pair_seed         pairing and validation-split seed (0); changes the data.
  val_fraction      fraction of train recordings per digit for validation (0.1).
  image_size        side of the upsampled image (32).
  interpolation     'nearest' or 'bilinear' ('nearest').
  visual_noise_std  std of additive Gaussian noise, [0, 1] pixel units (1.0).
  visual_occlusion  fraction of the image area masked by a random square (0.25).
  audio_normalize   standardise the log-spectrogram with AUDIO_MEAN/AUDIO_STD (True).
  eval_seed         seed of the evaluation-time degradation (0).

Stored example (as returned by `load_split`): audio float32 [129, 126],
image uint8 [8, 8], label int (digit), id int (unique across splits),
image_index int (row of load_digits), speaker bytes, take int, recording bytes.
Files are TFDS `array_record`, read without TensorFlow (`builder.as_data_source()`
or `tfds.data_source('av_digits/<config>', data_dir=...)`).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Any, Callable, NamedTuple

import numpy as np
import soundfile as sf
import tensorflow_datasets as tfds
import tqdm

NAME = 'av_digits'
MODALITIES = ('audio', 'visual')
CLASS_NAMES = tuple(str(d) for d in range(10))
SPLITS = ('train', 'validation', 'test')
DEFAULT_DATA_DIR = '~/tensorflow_datasets'
FSDD_URL = 'https://github.com/Jakobovski/free-spoken-digit-dataset'

SAMPLE_RATE = 8000
NUM_SAMPLES = 8000  # 1 s.
N_FFT = 256
HOP = 64
LOG_EPS = 1e-7
NUM_FREQ = N_FFT // 2 + 1  # 129
NUM_FRAMES = NUM_SAMPLES // HOP + 1  # 126 with centred frames.
TEST_TAKES = 5  # FSDD's split: takes 0-4 are test.
# Mean/std of the log-spectrogram over the FSDD train+validation recordings
# (takes 5-49), fixed constants as Kinetics-Sounds' fbank normalisation is.
AUDIO_MEAN = -10.5252
AUDIO_STD = 6.1989

DEFAULTS = dict(
    data_dir=DEFAULT_DATA_DIR, pair_seed=0, val_fraction=0.1, image_size=32,
    interpolation='nearest', visual_noise_std=1.0, visual_occlusion=0.25,
    audio_normalize=True, eval_seed=0)

_FILE_RE = re.compile(r'^(\d)_([A-Za-z0-9]+)_(\d+)\.wav$')


def _get(data_cfg, key: str) -> Any:
  return data_cfg.get(key, DEFAULTS[key]) if data_cfg is not None else DEFAULTS[key]


# ------------------------------------------------------------------- audio ---


def log_spectrogram(wave: np.ndarray) -> np.ndarray:
  """Fixed-size log-magnitude spectrogram of an 8 kHz waveform.

  Args:
    wave: float [N] samples in [-1, 1] at 8 kHz, any length.

  Returns:
    float32 [129, 126]: log(|STFT| + 1e-7), frequency x time.
  """
  x = np.asarray(wave, np.float32)
  # Centre the word in the 1 s window so short and long recordings align.
  if x.shape[0] >= NUM_SAMPLES:
    start = (x.shape[0] - NUM_SAMPLES) // 2
    x = x[start:start + NUM_SAMPLES]
  else:
    left = (NUM_SAMPLES - x.shape[0]) // 2
    x = np.pad(x, (left, NUM_SAMPLES - x.shape[0] - left))
  x = np.pad(x, (N_FFT // 2, N_FFT // 2))  # centred frames
  frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP]
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)  # periodic Hann
  mag = np.abs(np.fft.rfft(frames * window, axis=-1))  # [T, F]
  return np.log(mag.T + LOG_EPS).astype(np.float32)


# -------------------------------------------------------------- recordings ---


class Recording(NamedTuple):
  path: str
  digit: int
  speaker: str
  take: int


class BadRecordingsError(ValueError):
  """Some FSDD files could not be used."""


def _check_wave(path: str) -> str | None:
  """Returns why the file is unusable, or None if it is fine."""
  try:
    wave, sr = sf.read(path, dtype='float32', always_2d=True)
  except Exception as e:  # soundfile raises several types for corrupt files.
    return f'unreadable ({type(e).__name__}: {e})'
  if sr != SAMPLE_RATE:
    return f'sample rate {sr} Hz, expected {SAMPLE_RATE} Hz'
  if wave.shape[0] == 0:
    return 'no samples'
  if not np.all(np.isfinite(wave)):
    return 'non-finite samples'
  return None


def _read_wave(path: str) -> np.ndarray:
  wave, _ = sf.read(path, dtype='float32', always_2d=True)
  return wave.mean(axis=1)  # multi-channel files are mixed down


def scan_recordings(manual_dir: str, skip_bad: bool = False
                    ) -> tuple[list[Recording], list[tuple[str, str]]]:
  """Lists and validates `<manual_dir>/recordings/*.wav`.

  Args:
    manual_dir: a clone of the Free Spoken Digit Dataset.
    skip_bad: drop unusable files instead of raising.

  Returns:
    (recordings sorted by digit, speaker, take; [(file name, reason)] skipped).
  """
  rec_dir = os.path.join(os.path.expanduser(manual_dir), 'recordings')
  if not os.path.isdir(rec_dir):
    raise FileNotFoundError(
        f'No recordings/ folder in {manual_dir!r}. Clone {FSDD_URL} and pass the '
        'clone as --manual_dir.')
  names = sorted(n for n in os.listdir(rec_dir) if n.lower().endswith('.wav'))
  if not names:
    raise FileNotFoundError(f'No .wav files in {rec_dir}. Clone {FSDD_URL}.')
  good, bad = [], []
  for name in tqdm.tqdm(names, desc=f'Checking {len(names)} wav files',
                        unit='file', file=sys.stderr):
    match = _FILE_RE.match(name)
    path = os.path.join(rec_dir, name)
    reason = (None if match else 'name is not {digit}_{speaker}_{take}.wav')
    reason = reason or _check_wave(path)
    if reason:
      bad.append((name, reason))
    else:
      good.append(Recording(path, int(match[1]), match[2], int(match[3])))
  if bad and not skip_bad:
    listing = '\n'.join(f'  {n}: {r}' for n, r in bad)
    raise BadRecordingsError(
        f'{len(bad)} unusable file(s) in {rec_dir}:\n{listing}\n'
        'Fix or delete them, or rerun with --skip_bad to leave them out.')
  good.sort(key=lambda r: (r.digit, r.speaker, r.take))
  return good, bad


# ----------------------------------------------------------------- pairing ---


def _num_val(n: int, fraction: float) -> int:
  if n < 2:
    return 0
  return min(n - 1, max(1, int(round(fraction * n))))


def _pool_sizes(num_images: int, counts: list[int]) -> list[int]:
  """Splits num_images in proportion to counts (largest remainder, >= 1 if used)."""
  used = [c > 0 for c in counts]
  if num_images < sum(used):
    raise ValueError(f'{num_images} images cannot cover {sum(used)} splits.')
  sizes = [1 if u else 0 for u in used]
  spare = num_images - sum(sizes)
  share = np.array(counts, float) / max(sum(counts), 1) * spare
  extra = np.floor(share).astype(int)
  order = np.argsort(-(share - extra), kind='stable')
  for i in order[:spare - extra.sum()]:
    extra[i] += 1
  return [s + int(e) for s, e in zip(sizes, extra)]


def assign_splits(recordings: list[Recording], images_target: np.ndarray,
                  pair_seed: int, val_fraction: float
                  ) -> dict[str, list[tuple[int, Recording, int]]]:
  """Splits recordings and pairs each with an image of the same digit.

  Args:
    recordings: sorted recordings; a recording's position is its example id.
    images_target: [N] digit of every load_digits image.
    pair_seed: seed of the validation carve-out and the pairing.
    val_fraction: fraction of each digit's train recordings for validation.

  Returns:
    split -> [(example id, recording, image index)].
  """
  out = {s: [] for s in SPLITS}
  for digit in range(10):
    ids = [i for i, r in enumerate(recordings) if r.digit == digit]
    test = [i for i in ids if recordings[i].take < TEST_TAKES]
    train = [i for i in ids if recordings[i].take >= TEST_TAKES]
    # Independent streams per digit and purpose: one digit's files do not
    # perturb another digit's pairing.
    perm = np.random.default_rng([pair_seed, digit, 0]).permutation(len(train))
    n_val = _num_val(len(train), val_fraction)
    by_split = dict(train=[train[j] for j in sorted(perm[n_val:])],
                    validation=[train[j] for j in sorted(perm[:n_val])],
                    test=test)
    images = np.flatnonzero(images_target == digit)
    images = np.random.default_rng([pair_seed, digit, 1]).permutation(images)
    sizes = _pool_sizes(len(images), [len(by_split[s]) for s in SPLITS])
    start = 0
    for k, split in enumerate(SPLITS):
      pool = images[start:start + sizes[k]]
      start += sizes[k]
      members = by_split[split]
      order = np.random.default_rng([pair_seed, digit, 2 + k]).permutation(len(members))
      for j, m in enumerate(order):
        out[split].append((members[m], recordings[members[m]], int(pool[j % len(pool)])))
  for split in SPLITS:
    if not out[split]:
      raise ValueError(
          f'No recordings fall in split {split!r}: FSDD takes 0-{TEST_TAKES - 1} are '
          f'test, takes >= {TEST_TAKES} train/validation (val_fraction={val_fraction}).')
    out[split].sort(key=lambda t: t[0])
  return out


def _load_digit_images() -> tuple[np.ndarray, np.ndarray]:
  from sklearn.datasets import load_digits  # ships with scikit-learn, no download
  digits = load_digits()
  return digits.images.astype(np.uint8), digits.target.astype(np.int64)


# ----------------------------------------------------------------- builder ---


class AvDigitsConfig(tfds.core.BuilderConfig):
  """Pairing seed and validation fraction; both change the stored data."""

  def __init__(self, *, pair_seed: int = 0, val_fraction: float = 0.1, **kwargs):
    if not 0.0 < val_fraction < 0.5:
      raise ValueError(f'val_fraction={val_fraction}: must be in (0, 0.5).')
    super().__init__(**kwargs)
    self.pair_seed = int(pair_seed)
    self.val_fraction = float(val_fraction)


def config_name(pair_seed: int, val_fraction: float) -> str:
  pct = format(val_fraction * 100, 'g').replace('.', 'p')
  return f'seed{int(pair_seed)}_val{pct}pct'


_DEFAULT_CONFIG = AvDigitsConfig(
    name=config_name(0, 0.1), pair_seed=0, val_fraction=0.1,
    description='Pairing seed 0, 10% of train as validation.')


def builder_config(pair_seed: int = 0, val_fraction: float = 0.1) -> AvDigitsConfig:
  """The builder config for a pairing seed and validation fraction."""
  if int(pair_seed) == 0 and float(val_fraction) == 0.1:
    return _DEFAULT_CONFIG
  return AvDigitsConfig(
      name=config_name(pair_seed, val_fraction), pair_seed=pair_seed,
      val_fraction=val_fraction,
      description=f'Pairing seed {pair_seed}, {val_fraction:g} of train as validation.')


# skip_registration: `python -m data.av_digits` runs this file as __main__;
# registering there and again on a later `import data.av_digits` would clash.
# Unregistered, TFDS still reads the prepared files by name from data_dir.
class AvDigits(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """FSDD recordings paired with sklearn digit images."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [_DEFAULT_CONFIG]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'git clone {FSDD_URL} and pass the clone as manual_dir; it must hold '
      'recordings/{digit}_{speaker}_{take}.wav.')

  def __init__(self, *, skip_bad: bool = False, config=None, **kwargs):
    self._skip_bad = skip_bad
    # By name for predefined configs: TFDS re-creates the builder from these
    # arguments when a data source is pickled (e.g. into loader workers) and
    # rejects a copy of a predefined config object.
    if isinstance(config, AvDigitsConfig) and config.name in self.builder_configs:
      config = config.name
    super().__init__(config=config, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split('\n\n')[0],
        features=tfds.features.FeaturesDict({
            # Raw bytes: a 16k-float FloatList costs ~15 ms per example to
            # serialise; bytes are copied.
            'audio': tfds.features.Tensor(shape=(NUM_FREQ, NUM_FRAMES), dtype=np.float32,
                                          encoding=tfds.features.Encoding.BYTES),
            'image': tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
            'label': tfds.features.ClassLabel(names=list(CLASS_NAMES)),
            'id': np.int32,
            'image_index': np.int32,
            'speaker': tfds.features.Text(),
            'take': np.int32,
            'recording': tfds.features.Text(),
        }),
        homepage=FSDD_URL,
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    recordings, bad = scan_recordings(dl_manager.manual_dir, self._skip_bad)
    images, target = _load_digit_images()
    assigned = assign_splits(recordings, target, self.builder_config.pair_seed,
                             self.builder_config.val_fraction)
    self.info.metadata.update(
        skipped_files=[f'{n}: {r}' for n, r in bad],
        audio=dict(sample_rate=SAMPLE_RATE, num_samples=NUM_SAMPLES, n_fft=N_FFT,
                   hop=HOP, log_eps=LOG_EPS))
    self._skipped = bad
    return {s: self._generate_examples(assigned[s], images) for s in SPLITS}

  def _generate_examples(self, members, images):
    for example_id, rec, image_index in members:
      yield os.path.basename(rec.path), {
          'audio': log_spectrogram(_read_wave(rec.path)),
          'image': images[image_index],
          'label': rec.digit,
          'id': example_id,
          'image_index': image_index,
          'speaker': rec.speaker,
          'take': rec.take,
          'recording': os.path.basename(rec.path),
      }


def _builder(data_dir: str, pair_seed: int, val_fraction: float, **kwargs) -> AvDigits:
  return AvDigits(data_dir=os.path.expanduser(data_dir),
                  config=builder_config(pair_seed, val_fraction), **kwargs)


def prepare_command(data_dir: str, pair_seed: int = 0, val_fraction: float = 0.1) -> str:
  cmd = (f'python -m data.av_digits --manual_dir=/path/to/free-spoken-digit-dataset '
         f'--data_dir={data_dir}')
  if int(pair_seed) != 0:
    cmd += f' --pair_seed={pair_seed}'
  if float(val_fraction) != 0.1:
    cmd += f' --val_fraction={val_fraction:g}'
  return cmd


def prepare(manual_dir: str, data_dir: str = DEFAULT_DATA_DIR, *, pair_seed: int = 0,
            val_fraction: float = 0.1, skip_bad: bool = False) -> str:
  """Builds the array_record files; a no-op if already prepared.

  An interrupted run leaves only a temporary `incomplete.*` folder (TFDS renames
  the finished folder atomically), so rerunning the same command starts over.

  Args:
    manual_dir: a clone of the Free Spoken Digit Dataset.
    data_dir: root folder of the prepared data.
    pair_seed: pairing and validation-split seed.
    val_fraction: fraction of each digit's train recordings for validation.
    skip_bad: leave unusable wav files out (listed) instead of failing.

  Returns:
    The folder holding the prepared dataset.
  """
  manual_dir = os.path.expanduser(manual_dir)
  if not os.path.isdir(os.path.join(manual_dir, 'recordings')):
    raise FileNotFoundError(
        f'No recordings/ folder in {manual_dir!r}. Clone {FSDD_URL} and pass the '
        'clone as --manual_dir.')
  builder = _builder(data_dir, pair_seed, val_fraction, skip_bad=skip_bad)
  if builder.is_prepared():
    print(f'{NAME}: already prepared in {builder.data_dir}')
    return builder.data_dir
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format='array_record')
  skipped = getattr(builder, '_skipped', [])
  if skipped:
    print(f'{NAME}: skipped {len(skipped)} unusable file(s):')
    for n, r in skipped:
      print(f'  {n}: {r}')
  sizes = {s: builder.info.splits[s].num_examples for s in SPLITS}
  print(f'{NAME}: prepared {sizes} in {builder.data_dir}')
  return builder.data_dir


# ---------------------------------------------------------------- contract ---


def info(data_cfg) -> dict:
  """Modalities, classes and the shapes `make_preprocess` returns."""
  size = int(_get(data_cfg, 'image_size'))
  return dict(modalities=MODALITIES, num_classes=len(CLASS_NAMES),
              shapes={'audio': (NUM_FREQ, NUM_FRAMES, 1), 'visual': (1, size, size, 1)},
              class_names=list(CLASS_NAMES))


def load_split(data_cfg, split: str):
  """Random-access source (len, __getitem__ -> dict of numpy) for one split."""
  if split not in SPLITS:
    raise ValueError(f'split={split!r}: must be one of {SPLITS}.')
  data_dir = _get(data_cfg, 'data_dir')
  pair_seed, val_fraction = _get(data_cfg, 'pair_seed'), _get(data_cfg, 'val_fraction')
  builder = _builder(data_dir, pair_seed, val_fraction)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f'{NAME} is not prepared: looked in {builder.data_dir}. Prepare it with: '
        f'{prepare_command(data_dir, pair_seed, val_fraction)}')
  return builder.as_data_source(split)


def _resize_matrix(size_in: int, size_out: int, method: str) -> np.ndarray:
  """[out, in] interpolation weights with half-pixel centres."""
  centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  if method == 'nearest':
    src = np.clip(np.floor(centres + 0.5), 0, size_in - 1).astype(int)
    return np.eye(size_in, dtype=np.float32)[src]
  if method == 'bilinear':
    lo = np.floor(centres)
    frac = centres - lo
    m = np.zeros((size_out, size_in), np.float32)
    rows = np.arange(size_out)
    np.add.at(m, (rows, np.clip(lo, 0, size_in - 1).astype(int)), 1 - frac)
    np.add.at(m, (rows, np.clip(lo + 1, 0, size_in - 1).astype(int)), frac)
    return m
  raise ValueError(f"interpolation={method!r}: must be 'nearest' or 'bilinear'.")


def degrade(image: np.ndarray, noise_std: float, occlusion: float,
            rng: np.random.Generator) -> np.ndarray:
  """Masks a random square of `occlusion` of the area, then adds noise.

  Args:
    image: float32 [H, W] in [0, 1].
    noise_std: std of the additive Gaussian noise.
    occlusion: fraction of the area set to 0, in [0, 1].
    rng: source of the square's position and the noise.

  Returns:
    float32 [H, W].
  """
  out = np.array(image, np.float32)
  h, w = out.shape
  side = int(round(np.sqrt(occlusion * h * w)))
  # Always draw the same numbers so one knob does not reshuffle the other.
  y0 = rng.integers(0, h - min(side, h) + 1)
  x0 = rng.integers(0, w - min(side, w) + 1)
  noise = rng.standard_normal((h, w), dtype=np.float32)
  if side > 0:
    out[y0:y0 + side, x0:x0 + side] = 0.0
  return out + np.float32(noise_std) * noise


def make_preprocess(data_cfg, train: bool) -> Callable[[dict, np.random.Generator], dict]:
  """Returns fn(example, rng) -> {'audio', 'visual', 'label'} as the model takes them.

  Training degrades the image with `rng` (fresh every call); evaluation ignores
  `rng` and seeds from (eval_seed, example id), so every evaluation sees the
  same inputs.
  """
  size = int(_get(data_cfg, 'image_size'))
  resize = _resize_matrix(8, size, _get(data_cfg, 'interpolation'))
  noise_std = float(_get(data_cfg, 'visual_noise_std'))
  occlusion = float(_get(data_cfg, 'visual_occlusion'))
  if noise_std < 0 or not 0 <= occlusion <= 1:
    raise ValueError(f'visual_noise_std={noise_std} must be >= 0 and '
                     f'visual_occlusion={occlusion} in [0, 1].')
  normalize = bool(_get(data_cfg, 'audio_normalize'))
  eval_seed = int(_get(data_cfg, 'eval_seed'))

  def preprocess(example: dict, rng: np.random.Generator | None = None) -> dict:
    audio = np.asarray(example['audio'], np.float32)
    if normalize:
      audio = (audio - AUDIO_MEAN) / AUDIO_STD
    if train:
      if rng is None:
        raise ValueError('Training preprocessing needs an np.random.Generator rng.')
      gen = rng
    else:
      gen = np.random.default_rng([eval_seed, int(example['id'])])
    image = np.asarray(example['image'], np.float32) / 16.0
    image = resize @ image @ resize.T
    image = degrade(image, noise_std, occlusion, gen)
    return {'audio': audio[:, :, None],
            'visual': image[None, :, :, None],
            'label': np.int32(example['label'])}

  return preprocess


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(
      prog='python -m data.av_digits', description=__doc__.split('\n\n')[0])
  parser.add_argument('--manual_dir', required=True,
                      help=f'clone of {FSDD_URL} (holds recordings/).')
  parser.add_argument('--data_dir', default=DEFAULT_DATA_DIR,
                      help='root folder of prepared data (%(default)s).')
  parser.add_argument('--pair_seed', type=int, default=0)
  parser.add_argument('--val_fraction', type=float, default=0.1)
  parser.add_argument('--skip_bad', action='store_true',
                      help='leave unusable wav files out (listed) instead of failing.')
  args = parser.parse_args(argv)
  try:
    prepare(args.manual_dir, args.data_dir, pair_seed=args.pair_seed,
            val_fraction=args.val_fraction, skip_bad=args.skip_bad)
  except (BadRecordingsError, FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')


if __name__ == '__main__':
  main()
