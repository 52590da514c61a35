"""CMU-MOSI (Zadeh et al. 2016) feature sequences from MultiBench pickles, as a TFDS build.

Where to get it: the MultiBench repository (github.com/pliang279/MultiBench,
"Affective computing" datasets) links the processed CMU-MOSI pickles
`mosi_raw.pkl` and `mosi_data.pkl` (2,199 clips; the same features as the
CMU Multimodal SDK). Nothing is downloaded here. The pickles are read by
data/safe_pickle.py: numpy arrays in builtin containers load, a pickle naming
any other code is refused.

Layout expected under `manual_dir`:

  manual_dir/mosi_raw.pkl   or   manual_dir/mosi_data.pkl
    a pickled dict {'train', 'valid', 'test'} -> dict with
      'vision' [N, T, Dv], 'audio' [N, T, Da], 'text' [N, T, Dt] float arrays
      (mosi_data.pkl: Dv 35 FACET, Da 74 COVAREP, Dt 300 GloVe, T 50),
      'labels' [N, 1, 1] sentiment in [-3, 3], 'id' [N] or [N, k] clip ids.
  If both files are present, choose with `pickle_name`.

Stored per clip: the three sequences as float32 (NaN/inf, which COVAREP audio
features contain, replaced by 0 as MultiBench does for -inf; counts kept in
the build's metadata), the sentiment score, the binary label
(sentiment > 0: positive = 1) and the clip id. Modality names follow the
library: 'audio', 'visual' (the pickle's 'vision'), 'text'. Splits: the
pickle's train / valid (-> 'validation') / test.

Binary label and zero sentiment: MultiBench's binary accuracy drops clips
with sentiment exactly 0 ("exclude_zero") at evaluation; its training labels
treat them as non-positive. Default here: zero counts as negative
(`zero_label='negative'`, keeps all 2,199 clips, docs/reproducing.md §Data); `zero_label='drop'`
leaves zero-sentiment clips out of every split at load time.

data_cfg fields (defaults in brackets):
  data_dir, manual_dir (prepare only), zero_label ['negative' | 'drop'];
  stored option pickle_name [None = the one present].
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from data import prepare as prep
from data import safe_pickle

NAME = 'cmu_mosi'
PICKLES = ('mosi_raw.pkl', 'mosi_data.pkl')
# pickle key -> library modality name.
MODALITY_KEYS = {'audio': 'audio', 'vision': 'visual', 'text': 'text'}
MODALITIES = ('audio', 'visual', 'text')
# Shapes of mosi_data.pkl, reported by `info` before the data is prepared.
DEFAULT_SHAPES = {'audio': (50, 74), 'visual': (50, 35), 'text': (50, 300)}
SPLITS = {'train': 'train', 'valid': 'validation', 'test': 'test'}
STORAGE_DEFAULTS = {'pickle_name': ''}


@dataclasses.dataclass
class CmuMosiConfig(tfds.core.BuilderConfig):
  pickle_name: str = ''


def _clip_id(raw) -> str:
  """MultiBench ids are strings, bytes or small arrays (video id, segment)."""
  if isinstance(raw, bytes):
    return raw.decode('utf-8', 'replace')
  arr = np.asarray(raw)
  if arr.ndim == 0:
    v = arr.item()
    return v.decode('utf-8', 'replace') if isinstance(v, bytes) else str(v)
  return '_'.join(_clip_id(x) for x in arr.reshape(-1))


def load_pickle(path: str) -> dict:
  """Reads a MultiBench pickle (also Python 2 pickles) and checks its layout.

  The file goes through data.safe_pickle, so it can hold numpy arrays in builtin
  containers but cannot run code: a pickle naming any other global is refused.

  Args:
    path: mosi_raw.pkl or mosi_data.pkl.

  Returns:
    The dict {'train', 'valid', 'test'} -> dict of arrays.
  """
  try:
    data = safe_pickle.load(path)
  except safe_pickle.UnsafePickleError as e:
    raise prep.BadFileError(f'{NAME}: {e}') from None
  except (safe_pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as e:
    # TypeError: allowed numpy constructors given malformed arguments.
    raise prep.BadFileError(f'{NAME}: cannot unpickle {path} (corrupt or truncated?): {e}') from e
  if not isinstance(data, dict) or not set(SPLITS) <= set(data):
    keys = sorted(data) if isinstance(data, dict) else type(data).__name__
    raise prep.BadFileError(f'{NAME}: {path} is not a MultiBench pickle: expected keys '
                            f"'train', 'valid', 'test', found {keys}")
  for split in SPLITS:
    d = data[split]
    need = set(MODALITY_KEYS) | {'labels'}
    if not isinstance(d, dict) or not need <= set(d):
      found = sorted(d) if isinstance(d, dict) else type(d).__name__
      raise prep.BadFileError(f'{NAME}: {path}[{split!r}] must hold {sorted(need)}, '
                              f'found {found}')
    n = len(d['labels'])
    for k in MODALITY_KEYS:
      if np.asarray(d[k]).ndim != 3 or len(d[k]) != n:
        raise prep.BadFileError(
            f'{NAME}: {path}[{split!r}][{k!r}] must be [N={n}, T, D], got shape '
            f'{np.asarray(d[k]).shape}')
  return data


class CmuMosi(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """CMU-MOSI feature sequences; see the module docstring for the layout."""

  name = NAME
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'MultiBench pickles, NaN/inf sanitised.'}
  BUILDER_CONFIGS = [CmuMosiConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def __init__(self, *, skip_bad: bool = False, **kwargs):
    self._bad = prep.BadFiles(NAME, skip_bad)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    seq = lambda: tfds.features.Tensor(  # pylint: disable=unnecessary-lambda-assignment
        shape=(None, None), dtype=np.float32, encoding=tfds.features.Encoding.BYTES)
    return tfds.core.DatasetInfo(
        builder=self,
        description='CMU-MOSI MultiBench feature sequences with binary sentiment labels.',
        features=tfds.features.FeaturesDict({
            'audio': seq(), 'visual': seq(), 'text': seq(),
            'sentiment': tfds.features.Scalar(dtype=np.float32),
            'label': tfds.features.ClassLabel(names=['negative', 'positive']),
            'clip_id': tfds.features.Text(),
        }),
        metadata=tfds.core.MetadataDict(),
        # Generation order = pickle order, so stored sentiments index examples.
        disable_shuffling=True,
        homepage='https://github.com/pliang279/MultiBench',
    )

  def _pickle_path(self, root: str) -> str:
    name = self.builder_config.pickle_name
    if name:
      path = os.path.join(root, name)
      if not os.path.isfile(path):
        raise FileNotFoundError(f'{NAME}: {path} does not exist')
      return path
    present = [p for p in PICKLES if os.path.isfile(os.path.join(root, p))]
    if not present:
      raise FileNotFoundError(f'{NAME}: neither {" nor ".join(PICKLES)} is in {root}')
    if len(present) > 1:
      raise ValueError(f'{NAME}: both {" and ".join(present)} are in {root}; choose one '
                       'with --set pickle_name=<file>')
    return os.path.join(root, present[0])

  def _split_generators(self, dl_manager):
    path = self._pickle_path(os.fspath(dl_manager.manual_dir))
    data = load_pickle(path)
    self.info.metadata['pickle'] = os.path.basename(path)
    self.info.metadata['shapes'] = {
        MODALITY_KEYS[k]: list(np.asarray(data['train'][k]).shape[1:]) for k in MODALITY_KEYS}
    self.info.metadata['nonfinite_replaced'] = {}
    self.info.metadata['sentiments'] = {}
    return {SPLITS[s]: self._generate_examples(data[s], SPLITS[s]) for s in SPLITS}

  def _generate_examples(self, d: dict, split: str):
    n = len(d['labels'])
    labels = np.asarray(d['labels'], np.float32).reshape(n, -1)[:, 0]
    ids = d.get('id')
    replaced = {}
    arrays = {}
    for k, m in MODALITY_KEYS.items():
      x = np.asarray(d[k], np.float32)
      bad = ~np.isfinite(x)
      replaced[m] = int(bad.sum())
      # COVAREP features hold -inf/NaN for unvoiced frames; MultiBench zeroes them.
      arrays[m] = np.where(bad, 0.0, x).astype(np.float32)
    for i in range(n):
      clip = _clip_id(ids[i]) if ids is not None else f'{split}_{i}'
      yield f'{i:06d}', {
          **{m: arrays[m][i] for m in MODALITIES},
          'sentiment': float(labels[i]),
          'label': int(labels[i] > 0),
          'clip_id': clip,
      }
    self.info.metadata['nonfinite_replaced'][split] = replaced
    self.info.metadata['sentiments'][split] = [float(v) for v in labels]


# ---- public API ---------------------------------------------------------------


def storage_options(data_cfg) -> dict[str, Any]:
  return {'pickle_name': str(prep.cfg_get(data_cfg, 'pickle_name', ''))}


def builder(data_cfg, **kwargs) -> CmuMosi:
  """The TFDS builder for `data_cfg` (pickle_name picks the build)."""
  return prep.make_builder(CmuMosi, CmuMosiConfig, data_cfg, storage_options(data_cfg),
                           STORAGE_DEFAULTS, **kwargs)


def prepare(data_cfg, skip_bad: bool = False) -> CmuMosi:
  """Validates the pickle and writes the build; returns the prepared builder.

  `skip_bad` is accepted for a uniform CLI; a single pickle cannot be partly skipped.
  """
  manual = prep.manual_dir(data_cfg, NAME, 'mosi_raw.pkl or mosi_data.pkl')
  b = builder(data_cfg, skip_bad=skip_bad)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
  return b


def info(data_cfg) -> dict:
  """Modalities, classes and per-example [T, D] shapes (read from the build if prepared)."""
  shapes = dict(DEFAULT_SHAPES)
  b = builder(data_cfg) if prep.cfg_get(data_cfg, 'data_dir') else None
  if b is not None and b.is_prepared():
    shapes = {m: tuple(s) for m, s in b.info.metadata['shapes'].items()}
  return dict(modalities=MODALITIES, num_classes=2, shapes=shapes,
              class_names=['negative', 'positive'])


def load_split(data_cfg, split: str) -> prep.SubsetSource:
  """Random-access source of dicts of numpy arrays for 'train'|'validation'|'test'."""
  prep.check_choice('split name', split, ('train', 'validation', 'test'))
  policy = prep.check_choice('zero_label', prep.cfg_get(data_cfg, 'zero_label', 'negative'),
                             ('negative', 'drop'))
  b = builder(data_cfg)
  if not b.is_prepared():
    raise prep.not_prepared_error(
        NAME, b, data_cfg, prep.set_flags(storage_options(data_cfg), STORAGE_DEFAULTS))
  idx = None
  if policy == 'drop':
    sentiments = np.asarray(b.info.metadata['sentiments'][split], np.float32)
    idx = np.flatnonzero(sentiments != 0)
  return prep.SubsetSource(b.as_data_source(split), idx, prep.to_numpy,
                           name=f'{NAME}:{split}')


def make_preprocess(data_cfg, train: bool):  # pylint: disable=unused-argument
  """fn(example, rng) -> {'audio','visual','text': [T, D] float32, 'label': int32}.

  Features are used as stored in train and eval alike (no augmentation).
  """

  def preprocess(example: dict, rng: np.random.Generator | None = None) -> dict:
    del rng
    out = {m: np.asarray(example[m], np.float32) for m in MODALITIES}
    out['label'] = np.int32(example['label'])
    return out

  return preprocess
