"""Bring-your-own data: a folder of `.npz` shards described by `manifest.json`.

Format. A folder holding `manifest.json` and `.npz` shards:

  my_data/
    manifest.json
    train-00000.npz  train-00001.npz  validation-00000.npz  test-00000.npz

  manifest.json:
  {
    "modalities": {
      "audio":  {"shape": [257, 188, 1]},
      "visual": {"shape": [3, 224, 224, 3], "mean": [0.485, 0.456, 0.406],
                 "std": [0.229, 0.224, 0.225]}
    },
    "num_classes": 6,
    "class_names": ["ANG", "DIS", "FEA", "HAP", "NEU", "SAD"],
    "splits": {"train": ["train-00000.npz", "train-00001.npz"],
               "validation": ["validation-00000.npz"],
               "test": ["test-00000.npz"]}
  }

- `modalities`: name -> per-example `shape` (audio [F, T, 1] spectrogram, visual
  [T, H, W, C] frames, or any other modality, e.g. text [L, D] or a feature vector
  [D]; the trainer picks a ResNet-18, Transformer or MLP encoder by rank, see
  configs/folder.py). Their order is the modality order. Optional `mean` and `std`
  (a number, or nested lists that broadcast to `shape`, e.g. per channel)
  standardise that modality at load time.
- `num_classes` K and `class_names` (K strings).
- `splits`: split name -> shard file names relative to the folder; `train`,
  `validation` and `test` are the names the trainer asks for. Every name must
  resolve (symlinks followed) to a file inside the folder; others are refused.
- Each shard is an `.npz` with one array per modality, [N, *shape], any numeric
  dtype (e.g. uint8 frames), and `label`, integer [N] in [0, K). Extra arrays are
  ignored. Shards saved uncompressed (`np.savez`) are memory-mapped, so a dataset
  can exceed RAM; compressed members are read into memory.

Convert your arrays with `write_folder_dataset(out_dir, {'train': {'audio': A,
'visual': V, 'label': y}, ...}, class_names)`, then train with the data config
fields `name='folder'`, `data_dir=<the folder>` and optionally
`standardize=False` to ignore the manifest's mean/std.
"""

from __future__ import annotations

import json
import math
import os
import zipfile
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from data import safe_paths

NAME = 'folder'
MANIFEST = 'manifest.json'
SPLITS = ('train', 'validation', 'test')


class FolderFormatError(ValueError):
  """The folder does not follow the format in this module's docstring."""


# ---------------------------------------------------------------- manifest ---


def _folder(data_cfg) -> str:
  path = data_cfg.get('data_dir', None) if data_cfg is not None else None
  if not path:
    raise FolderFormatError(
        "data.data_dir is not set: point it to the folder holding manifest.json "
        "(see data/folder.py).")
  return os.path.expanduser(str(path))


def read_manifest(folder: str) -> dict:
  """Reads and validates `<folder>/manifest.json`."""
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f'No {MANIFEST} in {folder}: write the folder with '
        'data.folder.write_folder_dataset or by hand (format: data/folder.py).')
  try:
    with open(path) as f:
      manifest = json.load(f)
  except json.JSONDecodeError as e:
    raise FolderFormatError(f'{path} is not valid JSON ({e}); fix the file.') from None

  def need(cond: bool, field: str, what: str):
    if not cond:
      raise FolderFormatError(f'{path}: field {field!r} {what}.')

  need(isinstance(manifest, dict), '<root>', 'must be a JSON object')
  for field in ('modalities', 'num_classes', 'class_names', 'splits'):
    need(field in manifest, field, 'is missing')
  mods = manifest['modalities']
  need(isinstance(mods, dict) and mods, 'modalities',
       'must map modality names to {"shape": [...]}')
  for name, spec in mods.items():
    need(name != 'label', f'modalities.{name}', "is reserved for the labels")
    need(isinstance(spec, dict) and 'shape' in spec, f'modalities.{name}.shape', 'is missing')
    shape = spec['shape']
    need(isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape),
         f'modalities.{name}.shape', f'must be a list of positive integers, got {shape!r}')
    for stat in ('mean', 'std'):
      if stat in spec:
        try:
          np.broadcast_to(np.asarray(spec[stat], np.float32), shape)
        except ValueError:
          need(False, f'modalities.{name}.{stat}',
               f'does not broadcast to shape {shape}')
    if 'std' in spec:
      need(np.all(np.asarray(spec['std'], np.float32) > 0), f'modalities.{name}.std',
           'must be > 0')
  k = manifest['num_classes']
  need(isinstance(k, int) and k >= 2, 'num_classes', f'must be an integer >= 2, got {k!r}')
  names = manifest['class_names']
  need(isinstance(names, list) and len(names) == k, 'class_names',
       f'must list num_classes={k} names, got {names!r}')
  splits = manifest['splits']
  need(isinstance(splits, dict) and splits, 'splits', 'must map split names to shard lists')
  for split, shards in splits.items():
    need(isinstance(shards, list) and shards and all(isinstance(s, str) for s in shards),
         f'splits.{split}', 'must be a non-empty list of .npz file names')
    for s in shards:
      # The manifest is data: it must not point the reader at files outside the folder.
      safe_paths.confine(folder, s, f'{path} (splits.{split})')
  return manifest


# ------------------------------------------------------------------ shards ---


def _npy_members(path: str) -> dict[str, np.ndarray]:
  """Arrays of an .npz, memory-mapped where stored uncompressed."""
  out = {}
  with zipfile.ZipFile(path) as zf, open(path, 'rb') as raw:
    for info in zf.infolist():
      if not info.filename.endswith('.npy'):
        continue
      key = info.filename[:-4]
      if info.compress_type != zipfile.ZIP_STORED:
        with zf.open(info) as f:
          out[key] = np.lib.format.read_array(f, allow_pickle=False)
        continue
      # Local header: 30 fixed bytes, then name and extra field (lengths at 26, 28).
      raw.seek(info.header_offset)
      local = raw.read(30)
      start = info.header_offset + 30 + int.from_bytes(local[26:28], 'little') + \
          int.from_bytes(local[28:30], 'little')
      raw.seek(start)
      version = np.lib.format.read_magic(raw)
      if version not in ((1, 0), (2, 0)):  # 3.0: utf-8 structured names, rare
        with zf.open(info) as f:
          out[key] = np.lib.format.read_array(f, allow_pickle=False)
        continue
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, fortran, dtype = read_header(raw)
      if dtype.hasobject:
        raise FolderFormatError(f'{path}: array {key!r} holds Python objects; '
                                'save numeric arrays only.')
      out[key] = np.memmap(path, dtype=dtype, mode='r', offset=raw.tell(), shape=shape,
                           order='F' if fortran else 'C')
  return out


def _open_shard(path: str, manifest: dict, manifest_path: str) -> dict[str, np.ndarray]:
  """Loads one shard and checks it against the manifest."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'Shard {path} listed in {manifest_path} does not exist; '
                            'restore it or remove it from "splits".')
  try:
    arrays = _npy_members(path)
  except (zipfile.BadZipFile, ValueError, OSError) as e:
    if isinstance(e, FolderFormatError):
      raise
    raise FolderFormatError(f'{path} is not a readable .npz ({e}); rewrite it.') from None
  if 'label' not in arrays:
    raise FolderFormatError(f'{path} has no "label" array (has {sorted(arrays)}); '
                            'add integer labels [N].')
  label = np.asarray(arrays['label'])
  if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
    raise FolderFormatError(f'{path}: "label" must be integer [N], got {label.dtype} '
                            f'{label.shape}.')
  if label.shape[0] == 0:
    raise FolderFormatError(f'{path} has 0 rows; remove it from "splits" in '
                            f'{manifest_path} or write examples into it.')
  k = manifest['num_classes']
  bad = np.flatnonzero((label < 0) | (label >= k))
  if bad.size:
    raise FolderFormatError(
        f'{path}: label {int(label[bad[0]])} at row {int(bad[0])} is outside [0, {k}) '
        f'({bad.size} bad rows); relabel to 0..{k - 1} or raise num_classes.')
  out = {'label': label}
  for name, spec in manifest['modalities'].items():
    if name not in arrays:
      raise FolderFormatError(
          f'{path} has no array for modality {name!r} of the manifest (has '
          f'{sorted(arrays)}); add it or drop the modality from {manifest_path}.')
    arr = arrays[name]
    if tuple(arr.shape[1:]) != tuple(spec['shape']):
      raise FolderFormatError(
          f'{path}: {name!r} has per-example shape {list(arr.shape[1:])}, the manifest '
          f'says {spec["shape"]}; fix the shard or modalities.{name}.shape.')
    if arr.shape[0] != label.shape[0]:
      raise FolderFormatError(
          f'{path}: {name!r} has {arr.shape[0]} rows but "label" has '
          f'{label.shape[0]}; every array needs one row per example.')
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == np.bool_):
      raise FolderFormatError(f'{path}: {name!r} has non-numeric dtype {arr.dtype}.')
    out[name] = arr
  return out


class FolderSource:
  """Random access over a split's shards: len() and [i] -> dict of numpy arrays."""

  def __init__(self, folder: str, split: str, check_finite: bool = True):
    self._folder, self._split = folder, split
    manifest = read_manifest(folder)
    if split not in manifest['splits']:
      raise FolderFormatError(
          f'{os.path.join(folder, MANIFEST)} has no split {split!r} (has '
          f'{sorted(manifest["splits"])}); add it under "splits".')
    mpath = os.path.join(folder, MANIFEST)
    self._modalities = tuple(manifest['modalities'])
    # read_manifest has confined every shard entry to the folder.
    self._paths = [os.path.join(folder, s) for s in manifest['splits'][split]]
    self._shards = [_open_shard(p, manifest, mpath) for p in self._paths]
    self._ends = np.cumsum([len(s['label']) for s in self._shards])
    if check_finite:  # Once per process that opens the split, not per worker reopen.
      self._check_finite(mpath)

  def _check_finite(self, manifest_path: str, rows: int = 4096) -> None:
    """Refuses NaN/inf in any floating-point modality, naming split and example index.

    A non-finite input would otherwise surface as a NaN loss many steps later (or,
    for an inf that saturates a softmax, as a silent constant prediction). Shards are
    scanned in chunks of `rows` examples, so memory stays flat on large shards.
    """
    start = 0
    for shard, path in zip(self._shards, self._paths):
      n = len(shard['label'])
      for m in self._modalities:
        arr = shard[m]
        if not np.issubdtype(arr.dtype, np.inexact):
          continue
        for lo in range(0, n, rows):
          block = np.asarray(arr[lo:lo + rows]).reshape(min(rows, n - lo), -1)
          bad = np.flatnonzero(~np.all(np.isfinite(block), axis=1))
          if bad.size:
            row = lo + int(bad[0])
            raise FolderFormatError(
                f'{self._split!r} example {start + row} ({path} row {row}) has a '
                f'non-finite value (NaN or inf) in {m!r}; fix or drop that example '
                f'(split {self._split!r} of {manifest_path}).')
      start += n

  def __len__(self) -> int:
    return int(self._ends[-1])

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    index = int(index)
    n = len(self)
    if index < 0:
      index += n
    if not 0 <= index < n:
      raise IndexError(f'index {index} out of range for {n} examples')
    k = int(np.searchsorted(self._ends, index, side='right'))
    row = index - (int(self._ends[k - 1]) if k else 0)
    shard = self._shards[k]
    out = {m: np.array(shard[m][row]) for m in self._modalities}  # copy out of the mmap
    out['label'] = np.int32(shard['label'][row])
    return out

  # Memory maps would pickle their whole contents; reopen from the path instead
  # (e.g. in data-loader worker processes).
  def __getstate__(self):
    return {'folder': self._folder, 'split': self._split}

  def __setstate__(self, state):
    # The pickling process scanned these shards for non-finite values already.
    self.__init__(state['folder'], state['split'], check_finite=False)

  def __repr__(self) -> str:
    return f'FolderSource({self._folder!r}, split={self._split!r}, n={len(self)})'


# ---------------------------------------------------------------- contract ---


def info(data_cfg) -> dict:
  """Modalities, classes and per-example shapes from the manifest."""
  folder = _folder(data_cfg)
  manifest = read_manifest(folder)
  mods = manifest['modalities']
  return dict(modalities=tuple(mods), num_classes=manifest['num_classes'],
              shapes={m: tuple(spec['shape']) for m, spec in mods.items()},
              class_names=list(manifest['class_names']),
              # Every folder dataset is data.name='folder': name it by its directory.
              name='folder:' + os.path.basename(os.path.normpath(folder)))


def load_split(data_cfg, split: str) -> FolderSource:
  """Random-access source over one split's shards (validated on open)."""
  return FolderSource(_folder(data_cfg), split)


def make_preprocess(data_cfg, train: bool) -> Callable[[dict, Any], dict]:
  """Returns fn(example, rng) -> float32 modalities (standardised if the manifest says) + int32 label."""
  del train  # no augmentation: the arrays are used as given
  manifest = read_manifest(_folder(data_cfg))
  standardize = bool(data_cfg.get('standardize', True))
  stats = {}
  for name, spec in manifest['modalities'].items():
    mean = np.asarray(spec.get('mean', 0.0), np.float32) if standardize else np.float32(0)
    std = np.asarray(spec.get('std', 1.0), np.float32) if standardize else np.float32(1)
    stats[name] = (mean, std)

  def preprocess(example: dict, rng=None) -> dict:
    del rng
    out = {}
    for name, (mean, std) in stats.items():
      out[name] = ((np.asarray(example[name], np.float32) - mean) / std).astype(np.float32)
    out['label'] = np.int32(example['label'])
    return out

  return preprocess


# ------------------------------------------------------------------ writer ---


def write_folder_dataset(out_dir: str, splits: Mapping[str, Mapping[str, np.ndarray]],
                         class_names: Sequence[str], shard_size: int = 1000, *,
                         standardize: bool = False, overwrite: bool = False) -> str:
  """Writes arrays as a folder dataset (format in this module's docstring).

  Args:
    out_dir: folder to create or fill.
    splits: split name -> {modality: [N, *shape], 'label': int [N]}; every split
      has the same modalities and per-example shapes.
    class_names: K names; labels must lie in [0, K).
    shard_size: examples per .npz shard.
    standardize: store the train split's scalar mean and std per modality in the
      manifest, so loading standardises.
    overwrite: replace an existing manifest.json in out_dir.

  Returns:
    The path of the written manifest.json.
  """
  if shard_size < 1:
    raise ValueError(f'shard_size={shard_size}: must be >= 1.')
  k = len(class_names)
  if k < 2:
    raise ValueError(f'class_names has {k} entries; need at least 2 classes.')
  if not splits:
    raise ValueError('splits is empty; pass e.g. {"train": {...}, "test": {...}}.')
  manifest_path = os.path.join(out_dir, MANIFEST)
  if os.path.exists(manifest_path) and not overwrite:
    raise FileExistsError(f'{manifest_path} exists; pass overwrite=True to replace it.')

  first = next(iter(splits))
  names = [m for m in splits[first] if m != 'label']
  shapes = {m: list(np.shape(splits[first][m])[1:]) for m in names}
  for split, arrays in splits.items():
    if 'label' not in arrays:
      raise ValueError(f'splits[{split!r}] has no "label" array.')
    label = np.asarray(arrays['label'])
    if label.ndim != 1 or not np.issubdtype(label.dtype, np.integer):
      raise ValueError(f'splits[{split!r}]["label"] must be integer [N], got '
                       f'{label.dtype} {label.shape}.')
    if label.size == 0:
      raise ValueError(f'splits[{split!r}] has no examples.')
    if label.min() < 0 or label.max() >= k:
      raise ValueError(f'splits[{split!r}]["label"] has values outside [0, {k}) '
                       f'({label.min()}..{label.max()}).')
    if sorted(m for m in arrays if m != 'label') != sorted(names):
      raise ValueError(f'splits[{split!r}] has modalities {sorted(arrays)}, '
                       f'expected {sorted(names)} + label.')
    for m in names:
      shape = np.shape(arrays[m])
      if list(shape[1:]) != shapes[m] or shape[0] != label.shape[0]:
        raise ValueError(f'splits[{split!r}][{m!r}] has shape {list(shape)}, expected '
                         f'[{label.shape[0]}, *{shapes[m]}].')

  os.makedirs(out_dir, exist_ok=True)
  manifest = {'modalities': {m: {'shape': shapes[m]} for m in names},
              'num_classes': k, 'class_names': [str(c) for c in class_names],
              'splits': {}}
  if standardize:
    stat_split = 'train' if 'train' in splits else first
    for m in names:
      x = np.asarray(splits[stat_split][m], np.float64)
      manifest['modalities'][m].update(mean=float(x.mean()), std=float(x.std()) or 1.0)
  for split, arrays in splits.items():
    n = len(arrays['label'])
    files = []
    for i in range(math.ceil(n / shard_size)):
      rows = slice(i * shard_size, (i + 1) * shard_size)
      fname = f'{split}-{i:05d}.npz'
      np.savez(os.path.join(out_dir, fname),
               **{m: np.asarray(arrays[m])[rows] for m in [*names, 'label']})
      files.append(fname)
    manifest['splits'][split] = files
  # The manifest goes last and atomically: a half-written folder has none.
  tmp = manifest_path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(manifest, f, indent=2)
  os.replace(tmp, manifest_path)
  return manifest_path
