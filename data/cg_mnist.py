"""Colored-and-Gray MNIST (CG-MNIST) from any MNIST-format IDX files, as a TFDS build.

  python -m data.cg_mnist --manual_dir=/path/to/mnist --data_dir=~/tensorflow_datasets
  python -m data.prepare cg_mnist --manual_dir=/path/to/mnist --data_dir=~/tensorflow_datasets

The benchmark of PMR (Fan et al. 2023, §5.1) and MMPareto (Wei & Hu 2024, §4.1 and
appendix B): every example is one digit image seen twice, a `gray` modality (the image as
it is) and a `color` modality (the same image with its strokes painted in a colour). In
training the colour is determined by the class, in validation and test it is only weakly
correlated with it, so a model that learns the colour shortcut fails at test time.

Source. `manual_dir` holds the four files of an MNIST-format release (MNIST,
Fashion-MNIST, KMNIST, ...), each raw or gzipped (`.gz`); the raw file wins if both exist:

  train-images-idx3-ubyte  train-labels-idx1-ubyte  t10k-images-idx3-ubyte
  t10k-labels-idx1-ubyte   (the `train-images.idx3-ubyte` spelling is accepted too)

They are parsed here with numpy (IDX: big-endian magic 0x00000803 for uint8 images
[N, 28, 28], 0x00000801 for uint8 labels [N]); a missing, corrupt (bad gzip, bad magic,
wrong dims, labels outside 0-9) or truncated file stops preparation with one error line
naming the file. Nothing is downloaded.

Colouring. PMR's released `dataset/CGMNIST.py` reads the colour modality from Kim et al.
2019 ("Learning Not to Learn", LNTL §4.1) `mnist_10color_jitter_var_0.030.npy` (MMPareto's
README links the same file) and pairs it by index with torchvision's MNIST for the gray
modality, so both modalities show the same digit image. LNTL's construction: ten distinct
mean colours, one per class; each training image draws one colour c ~ N(mean, sigma^2 I),
sigma^2 = 0.03, and only the foreground (the strokes) is coloured, the background stays
black; test images get a mean colour drawn independently of the label (PMR §5.1: "weakly
color-correlated"). LNTL releases only the .npy files, not its generation code or its ten
RGB values, so this builder re-creates the construction with its own palette
(`MEAN_COLORS`), for image i with colour index k_i:

  c_i ~ N(MEAN_COLORS[k_i], color_var * I),
  color[i, y, x, :] = round(gray[i, y, x] * clip(c_i, 0, 1))

  train       k_i = label_i (colour fully determined by the class).
  validation  k_i = label_i with probability `test_color_correlation`, otherwise a
  and test    uniformly random one of the 9 other classes' colours.

The default test_color_correlation = 0.1 = 1/10 makes k_i uniform over the ten colours
and independent of the label: LNTL's (so PMR's and MMPareto's) test-set construction.
Higher values give a weaker shift. `gray` is the source image, unchanged.

Splits. `test` is the t10k files (10,000 images for MNIST). `validation` is a seeded
`validation_fraction` (10%) of the train files held out from `train`; it is coloured
like test (weak correlation), because checkpoint selection on train-style colouring would
reward the shortcut. PMR's code selects on its test set; here selection is on validation
only and test is never used to select. MNIST gives train 54,000 / validation 6,000 / test
10,000. All colours and the carve are drawn from `color_seed`: the same seed and options
give byte-identical builds.

Data config fields (defaults in brackets). Stored options (each distinct value is its
own build, named by the non-default ones): color_var [0.03], test_color_correlation
[0.1], validation_fraction [0.1], color_seed [0]. Load-time: data_dir
['~/tensorflow_datasets'], manual_dir (prepare only), train_subsample and
validation_subsample [0 = all]: a seeded (color_seed) random subset of that many
training / validation examples, for CPU budgets (test is always used whole).

Stored example: gray uint8 [28, 28, 1], color uint8 [28, 28, 3], label int, color_class
int (k_i), id int (unique across splits: train/validation the row of the train files,
test N_train + its row of the t10k files), source_index int (row of its IDX file).
`make_preprocess` scales both to [0, 1] and standardises them with PMR's constants (gray:
MNIST mean 0.1307, std 0.3081; color: (0.4914, 0.4822, 0.4465) / (0.2023, 0.1994,
0.2010)); no augmentation.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import os
import sys
import zlib
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data import prepare as prep

NAME = 'cg_mnist'
MODALITIES = ('gray', 'color')
NUM_CLASSES = 10
SIZE = 28
SPLITS = ('train', 'validation', 'test')
STORAGE_DEFAULTS = {'color_var': 0.03, 'test_color_correlation': 0.1,
                    'validation_fraction': 0.1, 'color_seed': 0}
# Our own ten mean colours (LNTL's RGB values are not published): the cube's primaries
# and secondaries plus orange, violet, white and teal, pairwise >= 0.5 apart in RGB.
MEAN_COLORS = np.array([
    (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0),
    (1.0, 0.0, 1.0), (0.0, 1.0, 1.0), (1.0, 0.5, 0.0), (0.5, 0.0, 1.0),
    (1.0, 1.0, 1.0), (0.0, 0.5, 0.5)], np.float32)
# PMR's input normalisation (dataset/CGMNIST.py).
GRAY_MEAN, GRAY_STD = 0.1307, 0.3081
COLOR_MEAN = np.array((0.4914, 0.4822, 0.4465), np.float32)
COLOR_STD = np.array((0.2023, 0.1994, 0.2010), np.float32)

IMAGES_MAGIC, LABELS_MAGIC = 0x00000803, 0x00000801
FILES = {('train', 'images'): 'train-images-idx3-ubyte',
         ('train', 'labels'): 'train-labels-idx1-ubyte',
         ('test', 'images'): 't10k-images-idx3-ubyte',
         ('test', 'labels'): 't10k-labels-idx1-ubyte'}
_PAINT_CHUNK = 4096  # Images painted at once: bounds the float32 working set (~40 MB).


# ---------------------------------------------------------------------------- IDX ---


def find_idx_file(root: str, base: str) -> str:
  """The path of IDX file `base` in `root`: raw, then `.gz`, also with the dotted spelling."""
  dotted = base.replace('-idx', '.idx')  # e.g. train-images.idx3-ubyte
  for name in (base, base + '.gz', dotted, dotted + '.gz'):
    path = os.path.join(root, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f'{NAME}: missing {base} (or {base}.gz) in {root}: it must hold '
                          'the four MNIST-format IDX files')


def _read_bytes(path: str) -> bytes:
  """The file's bytes, gunzipped if it ends in .gz; one-line errors for bad gzip."""
  try:
    if path.endswith('.gz'):
      with gzip.open(path, 'rb') as f:
        return f.read()
    with open(path, 'rb') as f:
      return f.read()
  except EOFError as e:
    raise prep.BadFileError(f'{NAME}: {path} is truncated (gzip stream ends early: {e})') from e
  except (gzip.BadGzipFile, zlib.error, OSError) as e:
    raise prep.BadFileError(f'{NAME}: {path} is corrupt (not readable as '
                            f'{"gzip" if path.endswith(".gz") else "a file"}: {e})') from e


def read_idx(path: str, magic: int, ndim: int) -> np.ndarray:
  """Reads a uint8 IDX array, checking its magic number, rank and length.

  Args:
    path: the file, raw or gzipped (`.gz`).
    magic: the expected magic number (0x00000803 images, 0x00000801 labels).
    ndim: the expected number of dimensions (3 images, 1 labels).

  Returns:
    uint8 array of the dimensions in the header.
  """
  data = _read_bytes(path)
  header = 4 + 4 * ndim
  if len(data) < 4:
    raise prep.BadFileError(f'{NAME}: {path} is truncated ({len(data)} bytes, no IDX header)')
  found = int.from_bytes(data[:4], 'big')
  if found != magic:
    raise prep.BadFileError(f'{NAME}: {path} is not a uint8 IDX file of rank {ndim} '
                            f'(magic 0x{found:08x}, expected 0x{magic:08x})')
  if len(data) < header:
    raise prep.BadFileError(f'{NAME}: {path} is truncated ({len(data)} bytes, header '
                            f'needs {header})')
  dims = tuple(int(v) for v in np.frombuffer(data, '>u4', count=ndim, offset=4))
  need = int(np.prod(dims)) if dims else 0
  have = len(data) - header
  if have < need:
    raise prep.BadFileError(f'{NAME}: {path} is truncated ({have} data bytes, dims {dims} '
                            f'need {need})')
  if have > need:
    raise prep.BadFileError(f'{NAME}: {path} is corrupt ({have - need} bytes after the '
                            f'{need} its dims {dims} describe)')
  return np.frombuffer(data, np.uint8, count=need, offset=header).reshape(dims)


def load_idx_pair(root: str, part: str) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, 28, 28], labels int64 [N]) of 'train' or 'test' from `root`."""
  img_path = find_idx_file(root, FILES[(part, 'images')])
  lab_path = find_idx_file(root, FILES[(part, 'labels')])
  images = read_idx(img_path, IMAGES_MAGIC, 3)
  labels = read_idx(lab_path, LABELS_MAGIC, 1).astype(np.int64)
  if images.shape[1:] != (SIZE, SIZE):
    raise prep.BadFileError(f'{NAME}: {img_path} holds {images.shape[1]}x{images.shape[2]} '
                            f'images, expected {SIZE}x{SIZE}')
  if images.shape[0] != labels.shape[0]:
    raise prep.BadFileError(f'{NAME}: {img_path} has {images.shape[0]} images but '
                            f'{lab_path} has {labels.shape[0]} labels')
  if labels.size and labels.max() >= NUM_CLASSES:
    raise prep.BadFileError(f'{NAME}: {lab_path} has label {int(labels.max())}; CG-MNIST '
                            f'needs {NUM_CLASSES} classes (labels 0-{NUM_CLASSES - 1})')
  return images, labels


# ----------------------------------------------------------------------- colouring ---


def color_classes(labels: np.ndarray, correlation: float, rng: np.random.Generator
                  ) -> np.ndarray:
  """k_i: the label w.p. `correlation`, else a uniformly random other class.

  Args:
    labels: int [N] classes in 0..9.
    correlation: probability of the class's own colour (1 in train).
    rng: the split's colour stream.

  Returns:
    int64 [N] colour index per example.
  """
  labels = np.asarray(labels, np.int64)
  own = rng.random(labels.size) < correlation
  # label + 1..9 (mod 10): each of the 9 other classes with probability 1/9.
  other = (labels + rng.integers(1, NUM_CLASSES, labels.size)) % NUM_CLASSES
  return np.where(own, labels, other)


def paint(gray: np.ndarray, classes: np.ndarray, color_var: float,
          rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Colours each image's strokes with c_i ~ N(MEAN_COLORS[k_i], color_var I), clipped.

  Args:
    gray: uint8 [N, 28, 28] source images.
    classes: int [N] colour index k_i.
    color_var: sigma^2 of the colour jitter (LNTL/PMR: 0.03).
    rng: the split's colour stream.

  Returns:
    (uint8 [N, 28, 28, 3] coloured images, float32 [N, 3] the colour c_i used).
  """
  n = gray.shape[0]
  jitter = rng.standard_normal((n, 3)).astype(np.float32) * np.float32(np.sqrt(color_var))
  rgb = np.clip(MEAN_COLORS[np.asarray(classes, np.int64)] + jitter, 0.0, 1.0)
  out = np.empty(gray.shape + (3,), np.uint8)
  for s in range(0, n, _PAINT_CHUNK):  # Multiplicative: background 0 stays black.
    g = gray[s:s + _PAINT_CHUNK, :, :, None].astype(np.float32)
    out[s:s + _PAINT_CHUNK] = np.rint(g * rgb[s:s + _PAINT_CHUNK, None, None, :]).astype(
        np.uint8)
  return out, rgb


_SPLIT_SALT = {'train': 10, 'validation': 11, 'test': 12}


def build_splits(train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray],
                 options: dict[str, Any]) -> dict[str, dict[str, np.ndarray]]:
  """Carves validation from train and colours every split (a pure function of its inputs).

  Args:
    train: (images [N, 28, 28], labels [N]) of the train files.
    test: the same for the t10k files.
    options: the stored options (see STORAGE_DEFAULTS).

  Returns:
    split -> {'gray' [n, 28, 28, 1], 'color' [n, 28, 28, 3], 'label', 'color_class',
    'id', 'source_index'} in source order.
  """
  seed = int(options['color_seed'])
  n_train = train[1].size
  rest, held = prep.carve(np.arange(n_train), float(options['validation_fraction']), seed,
                          salt=1)
  parts = {'train': (train, rest, 0), 'validation': (train, held, 0),
           'test': (test, np.arange(test[1].size), n_train)}
  out = {}
  for split, ((images, labels), rows, id_offset) in parts.items():
    rng = np.random.default_rng([seed, _SPLIT_SALT[split]])
    corr = 1.0 if split == 'train' else float(options['test_color_correlation'])
    classes = color_classes(labels[rows], corr, rng)
    color, _ = paint(images[rows], classes, float(options['color_var']), rng)
    out[split] = dict(gray=images[rows][..., None], color=color, label=labels[rows],
                      color_class=classes, id=rows + id_offset, source_index=rows)
  return out


# ------------------------------------------------------------------------- builder ---


@dataclasses.dataclass
class CgMnistConfig(tfds.core.BuilderConfig):
  """The options that change what is stored."""
  color_var: float = 0.03
  test_color_correlation: float = 0.1
  validation_fraction: float = 0.1
  color_seed: int = 0


class CgMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """CG-MNIST from MNIST-format IDX files; see the module docstring."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'LNTL-style colouring, validation carved from train.'}
  BUILDER_CONFIGS = [CgMnistConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def __init__(self, *, skip_bad: bool = False, **kwargs):
    del skip_bad  # Whole files: nothing can be partly skipped.
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Colored-and-gray MNIST (PMR/MMPareto benchmark) from IDX files.',
        features=tfds.features.FeaturesDict({
            'gray': tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.uint8),
            'color': tfds.features.Tensor(shape=(SIZE, SIZE, 3), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'color_class': np.int32,
            'id': np.int32,
            'source_index': np.int32,
        }),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # Source order: example i of a split is its i-th row.
    )

  def _split_generators(self, dl_manager):
    root = os.fspath(dl_manager.manual_dir)
    cfg = self.builder_config
    options = {k: getattr(cfg, k) for k in STORAGE_DEFAULTS}
    check_options(options)
    train, test = load_idx_pair(root, 'train'), load_idx_pair(root, 'test')
    splits = build_splits(train, test, options)
    self.info.metadata.update(
        options=options, mean_colors=MEAN_COLORS.tolist(),
        source_files=[os.path.basename(find_idx_file(root, f)) for f in FILES.values()])
    return {s: self._generate_examples(splits[s]) for s in SPLITS}

  def _generate_examples(self, arrays: dict[str, np.ndarray]):
    for i in range(arrays['label'].size):
      yield i, {k: (v[i] if v.ndim > 1 else int(v[i])) for k, v in arrays.items()}


# ---------------------------------------------------------------------- public API ---


def check_options(options: dict[str, Any]) -> None:
  """One-line ValueErrors for out-of-range stored options."""
  if not float(options['color_var']) >= 0:
    raise ValueError(f'{NAME}: color_var={options["color_var"]} must be >= 0')
  if not 0.0 <= float(options['test_color_correlation']) <= 1.0:
    raise ValueError(f'{NAME}: test_color_correlation={options["test_color_correlation"]} '
                     'must be in [0, 1]')
  if not 0.0 < float(options['validation_fraction']) < 1.0:
    raise ValueError(f'{NAME}: validation_fraction={options["validation_fraction"]} must '
                     'be in (0, 1): validation is carved from train')


def storage_options(data_cfg) -> dict[str, Any]:
  """The stored options of `data_cfg`, typed as STORAGE_DEFAULTS."""
  return {k: type(v)(prep.cfg_get(data_cfg, k, v)) for k, v in STORAGE_DEFAULTS.items()}


def builder(data_cfg, **kwargs) -> CgMnist:
  """The TFDS builder for `data_cfg` (its stored options pick the build)."""
  return prep.make_builder(CgMnist, CgMnistConfig, data_cfg, storage_options(data_cfg),
                           STORAGE_DEFAULTS, **kwargs)


def prepare(data_cfg, skip_bad: bool = False) -> CgMnist:
  """Reads the IDX files in `manual_dir`, colours them and writes the build (no-op if done)."""
  manual = prep.manual_dir(data_cfg, NAME, 'the four MNIST-format IDX files')
  options = storage_options(data_cfg)
  check_options(options)
  b = builder(data_cfg, skip_bad=skip_bad)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return b


def info(data_cfg) -> dict:  # pylint: disable=unused-argument
  """Modalities, classes and the per-example shapes `make_preprocess` returns."""
  return dict(modalities=MODALITIES, num_classes=NUM_CLASSES,
              shapes={'gray': (SIZE, SIZE, 1), 'color': (SIZE, SIZE, 3)},
              class_names=[str(k) for k in range(NUM_CLASSES)])


def load_split(data_cfg, split: str) -> prep.SubsetSource:
  """Random-access source of dicts of numpy arrays for 'train'|'validation'|'test'."""
  prep.check_choice('split name', split, SPLITS)
  b = builder(data_cfg)
  if not b.is_prepared():
    raise prep.not_prepared_error(
        NAME, b, data_cfg, prep.set_flags(storage_options(data_cfg), STORAGE_DEFAULTS))
  source = b.as_data_source(split)
  idx = None
  k = int(prep.cfg_get(data_cfg, f'{split}_subsample', 0)) if split != 'test' else 0
  if 0 < k < len(source):
    # Seeded, fixed across runs: every method and training seed sees the same subset.
    seed = int(storage_options(data_cfg)['color_seed'])
    salt = 20 if split == 'train' else 21
    idx = np.sort(np.random.default_rng([seed, salt]).permutation(len(source))[:k])
  return prep.SubsetSource(source, idx, prep.to_numpy, name=f'{NAME}:{split}')


def make_preprocess(data_cfg, train: bool):  # pylint: disable=unused-argument
  """fn(example, rng) -> {'gray' [28,28,1], 'color' [28,28,3] float32, 'label' int32}.

  Both modalities are standardised with PMR's constants; train and eval alike (no
  augmentation, as in PMR's code).
  """

  def preprocess(example: dict, rng: np.random.Generator | None = None) -> dict:
    del rng
    gray = np.asarray(example['gray'], np.float32) / 255.0
    color = np.asarray(example['color'], np.float32) / 255.0
    return {'gray': (gray - np.float32(GRAY_MEAN)) / np.float32(GRAY_STD),
            'color': (color - COLOR_MEAN) / COLOR_STD,
            'label': np.int32(example['label'])}

  return preprocess


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog='python -m data.cg_mnist',
                                   description=__doc__.split('\n\n')[0])
  parser.add_argument('--manual_dir', required=True,
                      help='folder with the four MNIST-format IDX files (raw or .gz)')
  parser.add_argument('--data_dir', default='~/tensorflow_datasets',
                      help='root folder of prepared data (%(default)s)')
  for key, default in STORAGE_DEFAULTS.items():
    parser.add_argument(f'--{key}', type=type(default), default=default,
                        help=f'stored option (default %(default)s)')
  args = parser.parse_args(argv)
  cfg = prep.make_data_cfg(args.manual_dir, args.data_dir)
  for key in STORAGE_DEFAULTS:
    cfg[key] = getattr(args, key)
  try:
    b = prepare(cfg)
  except (prep.BadFileError, FileNotFoundError, ValueError) as e:
    sys.exit(f'error: {e}')
  sizes = {s: b.info.splits[s].num_examples for s in SPLITS}
  print(f'{NAME}: prepared {sizes} in {b.data_dir}')


if __name__ == '__main__':
  main()
