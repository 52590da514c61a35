"""Reads pickles of numpy arrays without running the code a pickle may name.

A pickle is a program: each global it names (module.name) is imported and
called while loading, so a tampered file can run any command. The MultiBench
affect pickles (data/cmu_mosi.py) only hold dicts of numpy arrays, so `load`
resolves only the globals those need (ALLOWED) and refuses any other before it
is imported or called. This is the one module in the project that unpickles.
"""

from __future__ import annotations

import _compat_pickle
import functools
import importlib
import pickle
from typing import Any

import numpy as np


# Callers catch corrupt files with this, so that only this module imports pickle.
UnpicklingError = pickle.UnpicklingError


class UnsafePickleError(pickle.UnpicklingError):
  """The pickle names a global outside ALLOWED; nothing of that global ran."""


def _numpy_core(module: str):
  """numpy's `module` under numpy 2's `numpy._core`, or 1.x's `numpy.core`."""
  try:
    return importlib.import_module(f'numpy._core.{module}')
  except ImportError:
    return importlib.import_module(f'numpy.core.{module}')


def _latin1_encode(path: str, text: str, encoding: str = 'latin1') -> bytes:
  """Stand-in for `_codecs.encode` that only turns latin1 text back into bytes.

  Args:
    path: the pickle being read, for the message.
    text: the text Python 3 writes for a bytes object at protocol <= 2.
    encoding: must be latin1, the only codec pickle itself writes.

  Returns:
    The original bytes.
  """
  if encoding.lower().replace('-', '').replace('_', '') not in ('latin1', 'iso88591'):
    raise UnsafePickleError(f'{path}: refused to unpickle: it calls _codecs.encode with '
                            f'codec {encoding!r}; only latin1 is allowed.')
  return text.encode('latin1')


_multiarray = _numpy_core('multiarray')
_numeric = _numpy_core('numeric')

# (module, name) as Python 3 spells it (Python 2 names are mapped first, as
# pickle does) -> the object to use. Why each entry is here:
ALLOWED: dict[tuple[str, str], Any] = {
    # ndarray.__reduce__ (protocols 0-4): _reconstruct(ndarray, (0,), b'b') makes an
    # empty array that ndarray.__setstate__ then fills. numpy.core before numpy 2.
    ('numpy.core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _multiarray._reconstruct,
    ('numpy', 'ndarray'): np.ndarray,  # The array type _reconstruct is given.
    # Every array's dtype is pickled as numpy.dtype(code, align, copy) + state.
    ('numpy', 'dtype'): np.dtype,
    # Numpy scalars (e.g. a np.float32 label or id element): scalar(dtype, raw bytes).
    ('numpy.core.multiarray', 'scalar'): _multiarray.scalar,
    ('numpy._core.multiarray', 'scalar'): _multiarray.scalar,
    # ndarray.__reduce_ex__ at protocol 5 (Python 3.14's default): _frombuffer(buffer,
    # dtype, shape, order) views the in-band bytes as an array.
    ('numpy.core.numeric', '_frombuffer'): _numeric._frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _numeric._frombuffer,
    # Builtin containers and scalars that protocols < 4 (bytearray: < 5) write as
    # calls rather than opcodes; bytes() is how protocol <= 2 writes b''.
    ('builtins', 'set'): set,
    ('builtins', 'frozenset'): frozenset,
    ('builtins', 'bytearray'): bytearray,
    ('builtins', 'bytes'): bytes,
    ('builtins', 'complex'): complex,
    # Python 3 writes bytes (e.g. array buffers) at protocol <= 2 as
    # _codecs.encode(text, 'latin1'); a latin1-only stand-in keeps other codecs out.
    ('_codecs', 'encode'): _latin1_encode,
}


def _python3_name(module: str, name: str) -> tuple[str, str]:
  """Python 2 spellings (`__builtin__.set`, `copy_reg`...) as pickle maps them."""
  if (module, name) in _compat_pickle.NAME_MAPPING:
    return _compat_pickle.NAME_MAPPING[(module, name)]
  return _compat_pickle.IMPORT_MAPPING.get(module, module), name


class _RestrictedUnpickler(pickle.Unpickler):
  """Unpickler whose globals come only from ALLOWED."""

  def __init__(self, file, path: str):
    # latin1 maps Python 2 byte strings (numpy buffers) 1:1 to text numpy accepts;
    # Python 3 pickles hold no such strings, so it changes nothing for them.
    super().__init__(file, encoding='latin1')
    self._path = path

  def find_class(self, module: str, name: str):
    key = _python3_name(module, name)
    if key not in ALLOWED:
      raise UnsafePickleError(
          f'{self._path}: refused to unpickle: it names the global {module}.{name}, which '
          'is not allowed (only numpy arrays, dtypes and scalars and builtin containers); '
          'it was not imported or run. Get the file from the original release.')
    if key == ('_codecs', 'encode'):
      return functools.partial(_latin1_encode, self._path)
    return ALLOWED[key]

  def persistent_load(self, pid):
    raise UnsafePickleError(f'{self._path}: refused to unpickle: it uses persistent ids')


def load(path: str) -> Any:
  """Unpickles `path`, allowing only the globals in ALLOWED.

  Args:
    path: a pickle of numpy arrays in builtin containers (Python 2 or 3, any protocol).

  Returns:
    The unpickled object.

  Raises:
    UnsafePickleError: the file names any other global (one line naming the
      file and module.name); that global is never imported or called.
  """
  with open(path, 'rb') as f:
    return _RestrictedUnpickler(f, path).load()
