"""Prepares a dataset from the user's local copy, and the plumbing the builders share.

Command line (run from the repository root):

  python -m data.prepare cremad --manual_dir=/data/CREMA-D --data_dir=/data/tfds
  python -m data.prepare kinetics_sounds --manual_dir=/data/ks --data_dir=/data/tfds
  python -m data.prepare cmu_mosi --manual_dir=/data/mosi --data_dir=/data/tfds
  python -m data.prepare cg_mnist --manual_dir=/data/mnist --data_dir=/data/tfds
  # options that change what is stored (see each module's docstring):
  python -m data.prepare cremad ... --set frame_short_side=256 --set num_workers=2
  # skip and list unreadable files instead of stopping at them:
  python -m data.prepare cremad ... --skip_bad

Preparation writes an array_record TFDS build under
`<data_dir>/<name>/<config>/<version>/`; TFDS writes into a temporary
`incomplete.*` folder and renames it only when every split is complete, so an
interrupted run leaves nothing that counts as prepared, and re-running the same
command starts over cleanly. Every source file is validated; a missing, corrupt
or truncated file stops the run with one error naming it (the cheap checks run
first over all files and name every bad file at once); `--skip_bad` skips them
and writes the list to `<data_dir>/<name>_bad_files.txt`.

The helpers below (config access, bad-file bookkeeping, storage config names,
index-subset sources, the not-prepared error) are used by data/cremad.py,
data/kinetics_sounds.py and data/cmu_mosi.py.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import os
import sys
import time
from typing import Any, Callable, Mapping, Sequence

import numpy as np

DATASETS = ('cremad', 'kinetics_sounds', 'cmu_mosi', 'cg_mnist')


# --------------------------------------------------------------------------
# Config access.
# --------------------------------------------------------------------------


def cfg_get(data_cfg, key: str, default: Any = None) -> Any:
  """data_cfg.get(key, default) for ConfigDicts, dicts and None-valued fields."""
  if data_cfg is None:
    return default
  value = data_cfg.get(key, default) if hasattr(data_cfg, 'get') else getattr(
      data_cfg, key, default)
  return default if value is None else value


def require(data_cfg, key: str, hint: str) -> Any:
  """Returns a required field or raises a ValueError that says how to set it."""
  value = cfg_get(data_cfg, key)
  if value in (None, ''):
    raise ValueError(f'data config field `{key}` is required: {hint}')
  return value


def check_choice(key: str, value: Any, allowed: Sequence[Any]) -> Any:
  """Raises a ValueError naming the field and its allowed values."""
  if value not in allowed:
    raise ValueError(f'data config field `{key}`={value!r}: allowed values are '
                     f'{", ".join(repr(a) for a in allowed)}')
  return value


def storage_config_name(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
  """Names a build by the storage options that differ from the defaults.

  'default' when all are default, else e.g. 'frame_short_side-256'. Options that
  only affect loading (splits, augmentation) are not part of the name, so one
  build serves every split and training setting.
  """
  parts = [f'{k}-{options[k]}' for k in sorted(options) if options[k] != defaults[k]]
  name = '_'.join(parts) if parts else 'default'
  return ''.join(c if c.isalnum() or c in '-_.' else '-' for c in name)


# --------------------------------------------------------------------------
# Bad source files.
# --------------------------------------------------------------------------


class BadFileError(RuntimeError):
  """One or more source files are missing, corrupt or truncated."""


class BadFiles:
  """Collects unreadable source files; raises unless told to skip them."""

  def __init__(self, name: str, skip: bool):
    self.name = name
    self.skip = skip
    self.items: list[tuple[str, str]] = []  # (path, reason)

  def add(self, path: str, reason: str) -> None:
    self.items.append((path, reason))

  def fail(self, path: str, reason: str) -> None:
    """Records a bad file found while generating; raises unless skipping."""
    self.add(path, reason)
    if not self.skip:
      raise BadFileError(
          f'{self.name}: bad source file {path}: {reason}\n'
          'Replace the file from the original release, or re-run with --skip_bad '
          'to leave it out (the list of skipped files is written to data_dir).')

  def raise_if_any(self) -> None:
    """After a validation pass: one error naming every bad file found so far."""
    if self.items and not self.skip:
      shown = '\n'.join(f'  {p}: {r}' for p, r in self.items[:30])
      more = f'\n  ... and {len(self.items) - 30} more' if len(self.items) > 30 else ''
      raise BadFileError(
          f'{self.name}: {len(self.items)} bad source file(s):\n{shown}{more}\n'
          'Replace them from the original release, or re-run with --skip_bad to '
          'leave them out (the list is written to data_dir).')

  def write(self, data_dir: str) -> str | None:
    """Writes `<data_dir>/<name>_bad_files.txt` (path<TAB>reason); returns its path."""
    path = os.path.join(data_dir, f'{self.name}_bad_files.txt')
    if not self.items:
      if os.path.exists(path):
        os.remove(path)  # A stale list from an earlier run would mislead.
      return None
    os.makedirs(data_dir, exist_ok=True)
    with open(path, 'w') as f:
      for p, r in self.items:
        f.write(f'{p}\t{r}\n')
    return path


def nonfinite_reason(arrays: Mapping[str, Any]) -> str | None:
  """'non-finite values (NaN or inf) in <key>' for the first float array that has any.

  The builders call it on each prepared example, so a NaN in a float WAV (or one an
  audio transform produced) stops preparation at the file that holds it, instead
  of surfacing as a NaN loss many steps into training.
  """
  for key, value in arrays.items():
    arr = np.asarray(value) if not isinstance(value, (list, tuple, str, bytes)) else None
    if arr is not None and np.issubdtype(arr.dtype, np.inexact) and not np.all(
        np.isfinite(arr)):
      return f'non-finite values (NaN or inf) in its {key}'
  return None


def progress(iterable, total: int | None = None, desc: str = ''):
  """tqdm progress bar when available (TFDS depends on it), else plain iteration."""
  try:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
  except ImportError:
    return iterable
  return tqdm(iterable, total=total, desc=desc, unit='file')


def ordered_parallel_map(fn: Callable, items: Sequence, num_workers: int,
                         chunk: int = 32):
  """Yields fn(item) in order, computing up to `chunk` items ahead on threads.

  Decoding (PyAV), JPEG coding (Pillow) and FFTs (numpy) release the GIL, so
  threads use the cores without pickling media between processes. Bounded
  look-ahead keeps memory flat however slowly the TFDS writer consumes.
  """
  if num_workers <= 1:
    for item in items:
      yield fn(item)
    return
  from concurrent import futures  # pylint: disable=g-import-not-at-top
  with futures.ThreadPoolExecutor(num_workers) as pool:
    pending = []
    it = iter(items)
    for item in it:
      pending.append(pool.submit(fn, item))
      if len(pending) >= chunk:
        yield pending.pop(0).result()
    for f in pending:
      yield f.result()


def default_workers() -> int:
  return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------


class SubsetSource:
  """Random-access view of `base` restricted to `indices`, with a per-item transform."""

  def __init__(self, base, indices: Sequence[int] | None = None,
               transform: Callable[[dict], dict] | None = None, name: str = ''):
    self._base = base
    self._indices = None if indices is None else np.asarray(indices, np.int64)
    self._transform = transform
    self._name = name

  def __len__(self) -> int:
    return len(self._base) if self._indices is None else int(self._indices.size)

  def __getitem__(self, i):
    n = len(self)
    i = int(i)
    if not -n <= i < n:
      raise IndexError(f'index {i} out of range for {self._name or "source"} of {n}')
    i %= n
    j = i if self._indices is None else int(self._indices[i])
    example = self._base[j]
    return self._transform(example) if self._transform else example

  def __repr__(self) -> str:
    return f'SubsetSource({self._name}, len={len(self)})'


def make_builder(builder_cls, config_cls, data_cfg, options, defaults, **kwargs):
  """The array_record TFDS builder whose build folder is named by the storage options."""
  name = storage_config_name(options, defaults)
  # TFDS refuses a config object named like a listed one: pass the name then.
  config = name if name == 'default' else config_cls(name=name, **options)
  data_dir = require(data_cfg, 'data_dir', 'the folder TFDS builds are written to')
  return builder_cls(data_dir=os.path.expanduser(data_dir), config=config,
                     file_format='array_record', **kwargs)


def manual_dir(data_cfg, name: str, holds: str) -> str:
  """The user's raw copy (`manual_dir`, expanded); a clear error if it is not there."""
  manual = os.path.expanduser(require(data_cfg, 'manual_dir', f'the folder with {holds}'))
  if not os.path.isdir(manual):
    raise FileNotFoundError(f'{name}: manual_dir {manual} does not exist. It must hold '
                            f'{holds}; see data/{name}.py')
  return manual


def not_prepared_error(name: str, builder, data_cfg, extra_flags: str = '') -> FileNotFoundError:
  """The error for a dataset that has no finished build under data_dir."""
  data_dir = cfg_get(data_cfg, 'data_dir')
  manual = cfg_get(data_cfg, 'manual_dir', None) or '<folder with your copy>'
  return FileNotFoundError(
      f'{name} is not prepared: no finished build in {builder.data_dir} '
      f'(data_dir={data_dir}). Prepare it once with:\n'
      f'  python -m data.prepare {name} --manual_dir={manual} --data_dir={data_dir}'
      f'{extra_flags}\n'
      f'(see data/{name}.py for the folder layout it expects).')


def set_flags(options: Mapping[str, Any], defaults: Mapping[str, Any]) -> str:
  """The `--set k=v` flags that reproduce non-default storage options."""
  return ''.join(f' --set {k}={options[k]}' for k in sorted(options)
                 if options[k] != defaults[k])


def to_numpy(example: Mapping[str, Any]) -> dict:
  """TFDS numpy example -> dict of numpy arrays (bytes lists become object arrays)."""
  out = {}
  for k, v in example.items():
    if isinstance(v, (list, tuple)):
      arr = np.empty(len(v), dtype=object)
      arr[:] = list(v)
      out[k] = arr
    elif isinstance(v, bytes):
      out[k] = np.asarray(v.decode('utf-8'))
    elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
      out[k] = np.int32(v)  # Labels and ids: the trainer's int32.
    elif isinstance(v, float):
      out[k] = np.float32(v)
    else:
      out[k] = np.asarray(v)
  return out


def carve(indices: np.ndarray, fraction: float, seed: int, salt: int = 1
          ) -> tuple[np.ndarray, np.ndarray]:
  """Splits `indices` into (rest, held_out) with round(fraction * n) held out, seeded."""
  indices = np.asarray(indices, np.int64)
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f'validation_fraction={fraction}: must be in [0, 1)')
  n_out = int(round(fraction * indices.size))
  perm = np.random.default_rng([seed, salt]).permutation(indices.size)
  held = np.sort(indices[perm[:n_out]])
  rest = np.sort(indices[perm[n_out:]])
  return rest, held


# --------------------------------------------------------------------------
# Command line.
# --------------------------------------------------------------------------


def _parse_value(text: str) -> Any:
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def make_data_cfg(manual_dir: str, data_dir: str, sets: Sequence[str] = ()):
  """A ConfigDict with manual_dir, data_dir and `key=value` overrides."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  cfg = ml_collections.ConfigDict({'manual_dir': manual_dir, 'data_dir': data_dir})
  for item in sets:
    if '=' not in item:
      raise SystemExit(f'--set expects key=value, got {item!r}')
    key, value = item.split('=', 1)
    cfg[key.strip()] = _parse_value(value.strip())
  return cfg


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m data.prepare',
      description='Prepare a dataset (TFDS array_record build) from a local copy.')
  parser.add_argument('name', choices=DATASETS)
  parser.add_argument('--manual_dir', required=True,
                      help="folder with your copy of the dataset (layout: see data/<name>.py)")
  parser.add_argument('--data_dir', required=True, help='where the TFDS build is written')
  parser.add_argument('--skip_bad', action='store_true',
                      help='skip missing/corrupt/truncated files and list them in data_dir')
  parser.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                      help='data config field, e.g. --set frame_short_side=256')
  args = parser.parse_args(argv)
  module = importlib.import_module(f'data.{args.name}')
  cfg = make_data_cfg(args.manual_dir, args.data_dir, args.set)
  start = time.time()
  try:
    builder = module.prepare(cfg, skip_bad=args.skip_bad)
  except (BadFileError, FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 1
  bad = os.path.join(args.data_dir, f'{module.NAME}_bad_files.txt')
  print(f'{module.NAME}: prepared in {time.time() - start:.0f} s at {builder.data_dir}')
  for split in ('train', 'validation', 'test'):
    try:  # Sizes under the split options given (defaults otherwise).
      print(f'  {split}: {len(module.load_split(cfg, split))} examples')
    except ValueError as e:
      print(f'  {split}: none ({e})')
  if os.path.exists(bad):
    with open(bad) as f:
      n = sum(1 for _ in f)
    print(f'  skipped {n} bad file(s), listed in {bad}')
  return 0


if __name__ == '__main__':
  # Run main from the imported module, not from __main__: the builders raise
  # data.prepare.BadFileError, which a __main__.BadFileError clause would not catch.
  from data import prepare as _prepare  # pylint: disable=g-import-not-at-top
  sys.exit(_prepare.main())
