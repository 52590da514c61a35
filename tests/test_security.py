"""Untrusted data files cannot run code or reach outside their folder.

The restricted unpickler (data/safe_pickle.py), path confinement
(data/safe_paths.py), and a scan of the library for other ways to load pickles
or evaluate text.
"""

import ast
import os
import pathlib
import pickle
import re

import numpy as np
import pytest

from data import safe_paths
from data import safe_pickle
from tests import data_fixtures as fx

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _write_marker(path):
  """The payload a malicious pickle calls: proof that code ran."""
  with open(path, 'w') as f:
    f.write('ran')
  return {}


class _Payload:
  """Unpickles as fn(*args): what a tampered dataset file would ship."""

  def __init__(self, fn, *args):
    self.fn, self.args = fn, args

  def __reduce__(self):
    return self.fn, self.args


def _dump(path, obj, protocol=None):
  with open(path, 'wb') as f:
    pickle.dump(obj, f, protocol=protocol)
  return str(path)


# ---------------------------------------------------------------- unpickler ---


@pytest.mark.parametrize('protocol', [0, 2, pickle.HIGHEST_PROTOCOL])
def test_marker_function_is_refused_and_never_runs(tmp_path, protocol):
  marker = tmp_path / 'marker'
  # Arrays first: the refusal must come however deep the payload sits.
  obj = {'train': {'audio': np.zeros((2, 3), np.float32)},
         'valid': [_Payload(_write_marker, str(marker))]}
  path = _dump(tmp_path / 'mosi_data.pkl', obj, protocol)
  with pytest.raises(safe_pickle.UnsafePickleError) as e:
    safe_pickle.load(path)
  msg = str(e.value)
  assert '\n' not in msg
  assert path in msg and f'{_write_marker.__module__}._write_marker' in msg
  assert not marker.exists()
  # The payload is live: an ordinary unpickler runs it.
  with open(path, 'rb') as f:
    pickle.load(f)
  assert marker.read_text() == 'ran'


def test_os_system_is_refused_and_never_runs(tmp_path):
  marker = tmp_path / 'marker'
  path = _dump(tmp_path / 'mosi_raw.pkl', {'train': _Payload(os.system, f'touch {marker}')})
  with pytest.raises(safe_pickle.UnsafePickleError,
                     match=re.escape(f'{path}: refused to unpickle: it names the global '
                                     f'{os.system.__module__}.system')):
    safe_pickle.load(path)
  assert not marker.exists()


@pytest.mark.parametrize('blob, name', [
    # Python 2 spelling of eval, mapped like pickle maps it, still refused.
    (b'\x80\x02c__builtin__\neval\nU\x041+1 \x85R.', '__builtin__.eval'),
    (b'cbuiltins\ngetattr\n(cbuiltins\nobject\nV__class__\ntR.', 'builtins.getattr'),
    (pickle.dumps(_Payload(os.popen, 'true'), protocol=4), 'os.popen'),
    (pickle.dumps(_Payload(np.load, 'x.npy', None, True), protocol=4), 'numpy.load'),
])
def test_other_globals_are_refused(tmp_path, blob, name):
  path = tmp_path / 'x.pkl'
  path.write_bytes(blob)
  with pytest.raises(safe_pickle.UnsafePickleError, match=re.escape(name)):
    safe_pickle.load(str(path))


def test_codecs_encode_is_latin1_only(tmp_path):
  path = tmp_path / 'x.pkl'
  path.write_bytes(b'\x80\x02c_codecs\nencode\nX\x02\x00\x00\x00abX\x05\x00\x00\x00rot13\x86R.')
  with pytest.raises(safe_pickle.UnsafePickleError, match="x.pkl: .*codec 'rot13'"):
    safe_pickle.load(str(path))


def _assert_same(a, b):
  assert type(a) is type(b), (type(a), type(b))
  if isinstance(a, dict):
    assert a.keys() == b.keys()
    for k in a:
      _assert_same(a[k], b[k])
  elif isinstance(a, (list, tuple)):
    assert len(a) == len(b)
    for x, y in zip(a, b):
      _assert_same(x, y)
  elif isinstance(a, np.ndarray):
    assert a.dtype == b.dtype and a.shape == b.shape
    np.testing.assert_array_equal(a, b)
  elif isinstance(a, float) and np.isnan(a):
    assert np.isnan(b)
  else:
    assert a == b


@pytest.mark.parametrize('protocol', range(pickle.HIGHEST_PROTOCOL + 1))
def test_multibench_layout_loads_at_every_protocol(tmp_path, protocol):
  data = fx.make_mosi_pickle(str(tmp_path / 'fixture.pkl'),
                             sizes={'train': 3, 'valid': 2, 'test': 2}, T=4)
  # What MultiBench-like files may also hold: byte-string and object ids, numpy
  # and Python scalars, empty arrays, sets, bytes (b'' is special at protocol <= 2).
  data['train']['id_bytes'] = np.array([b'a\xff', b'b', b'c'])
  data['train']['id_object'] = np.array([b'vid0', 'vid1', 2], dtype=object)
  data['extra'] = {'scalar': np.float32(1.5), 'int': np.int64(-3), 'py': [1, 2.5, 'x', None],
                   'empty': np.zeros((0, 3), np.float64), 'set': {1, 2}, 'frozen': frozenset({3}),
                   'bytes': b'\x00\xff', 'no_bytes': b'', 'buf': bytearray(b'ab'), 'c': 1 + 2j,
                   'fortran': np.asfortranarray(np.arange(6.0).reshape(2, 3)), 'tuple': (1,)}
  path = _dump(tmp_path / 'mosi_data.pkl', data, protocol)
  _assert_same(data, safe_pickle.load(path))


def _python2_pickle(values: np.ndarray, clip_id: bytes) -> bytes:
  """Protocol 2 bytes as Python 2's cPickle writes {'audio': float32 array, 'id': str, 'set': set}.

  Python 2 byte strings (SHORT_BINSTRING 'U') carry the array buffer and the
  id; Python 3 needs encoding='latin1' to read them.
  """
  raw = values.astype('<f4').tobytes()
  assert len(raw) < 256 and len(clip_id) < 256
  dtype_state = b'(K\x03U\x01<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb'
  return b''.join([
      b'\x80\x02}(',                                      # PROTO 2, EMPTY_DICT, MARK
      b'U\x05audio',                                      # key
      b'cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85U\x01b\x87R',
      b'(K\x01K', bytes([values.size]), b'\x85',        # state: version 1, shape (n,)
      b'cnumpy\ndtype\nU\x02f4K\x00K\x01\x87R', dtype_state,
      b'\x89U', bytes([len(raw)]), raw, b'tb',          # not fortran, buffer; BUILD
      b'U\x02idU', bytes([len(clip_id)]), clip_id,
      b'U\x03setc__builtin__\nset\n]K\x07a\x85R',        # set([7]) via __builtin__.set
      b'u.',                                              # SETITEMS, STOP
  ])


def test_python2_latin1_pickle(tmp_path):
  values = np.array([1.5, -2.0, 3.25], np.float32)  # Buffer bytes 0xc0, 0xc0...: not ASCII.
  path = tmp_path / 'mosi_raw.pkl'
  path.write_bytes(_python2_pickle(values, b'caf\xe9_3'))
  with pytest.raises(UnicodeDecodeError):  # Python 3's default ASCII cannot read it.
    pickle.loads(path.read_bytes())
  out = safe_pickle.load(str(path))
  assert out['id'] == 'caf\xe9_3' and out['set'] == {7}
  assert out['audio'].dtype == np.float32
  np.testing.assert_array_equal(out['audio'], values)


def test_allow_list_is_numpy_and_builtins_only():
  modules = {m for m, _ in safe_pickle.ALLOWED}
  assert modules == {'numpy', 'numpy.core.multiarray', 'numpy._core.multiarray',
                     'numpy.core.numeric', 'numpy._core.numeric', 'builtins', '_codecs'}
  assert {n for m, n in safe_pickle.ALLOWED if m == 'builtins'} == {
      'set', 'frozenset', 'bytearray', 'bytes', 'complex'}


# -------------------------------------------------------------------- paths ---


def test_confine(tmp_path):
  ds = tmp_path / 'ds'
  (ds / 'sub').mkdir(parents=True)
  (ds / 'sub' / 'a.npz').write_bytes(b'')
  (tmp_path / 'elsewhere.npz').write_bytes(b'')
  (ds / 'inside_link.npz').symlink_to(ds / 'sub' / 'a.npz')
  (ds / 'outside_link.npz').symlink_to(tmp_path / 'elsewhere.npz')
  (ds / 'dir_link').symlink_to(tmp_path)
  root = os.path.realpath(ds)
  assert safe_paths.confine(str(ds), 'sub/a.npz', 'm.json') == os.path.join(root, 'sub', 'a.npz')
  assert safe_paths.confine(str(ds), 'sub/../sub/a.npz', 'm.json').endswith('a.npz')
  assert safe_paths.confine(str(ds), 'inside_link.npz', 'm.json') == os.path.join(
      root, 'sub', 'a.npz')
  for entry in ('../elsewhere.npz', 'sub/../../elsewhere.npz', str(tmp_path / 'elsewhere.npz'),
                '/etc/passwd', 'outside_link.npz', 'dir_link/elsewhere.npz', '.', ''):
    with pytest.raises(safe_paths.UnsafePathError) as e:
      safe_paths.confine(str(ds), entry, 'm.json')
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith('m.json: ')
    assert repr(entry) in msg and root in msg
  # A folder that is itself a symlink is fine: only entries must stay inside it.
  (tmp_path / 'ds_link').symlink_to(ds)
  assert safe_paths.confine(str(tmp_path / 'ds_link'), 'sub/a.npz', 'm.json') == os.path.join(
      root, 'sub', 'a.npz')


# ---------------------------------------------------------------- the scan ---

SCANNED = ('redreg_jax', 'data', 'configs', 'launch.py')
# The one module allowed to unpickle.
PICKLE_READER = 'data/safe_pickle.py'
# Modules that (also) deserialise pickles or marshal code.
PICKLE_MODULES = {'pickle', '_pickle', 'cPickle', 'cloudpickle', 'dill', 'joblib', 'shelve',
                  'marshal'}
# Array readers that must say allow_pickle=False explicitly.
ARRAY_READERS = {'numpy.load', 'jax.numpy.load', 'numpy.lib.npyio.load',
                 'numpy.lib.format.read_array'}
UNSAFE_CALLS = {'torch.load', 'pandas.read_pickle', 'builtins.eval', 'builtins.exec'}


def find_unsafe(source: str, filename: str, pickle_ok: bool = False) -> list[str]:
  """Unsafe loads in `source` (parsed, so comments, strings and literal_eval do not count).

  Args:
    source: Python source text.
    filename: for the messages.
    pickle_ok: the file may use pickle (the restricted reader).

  Returns:
    One 'file:line: what' per finding.
  """
  tree = ast.parse(source, filename)
  names = {}  # local name -> the dotted name it stands for
  found = []
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        local = a.asname or a.name.split('.')[0]
        names[local] = a.name if a.asname else local
        if a.name.split('.')[0] in PICKLE_MODULES and not pickle_ok:
          found.append(f'{filename}:{node.lineno}: imports {a.name}')
    elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
      for a in node.names:
        names[a.asname or a.name] = f'{node.module}.{a.name}'
      if node.module.split('.')[0] in PICKLE_MODULES and not pickle_ok:
        found.append(f'{filename}:{node.lineno}: imports from {node.module}')

  def dotted(node):
    if isinstance(node, ast.Name):
      return names.get(node.id, f'builtins.{node.id}')
    if isinstance(node, ast.Attribute):
      base = dotted(node.value)
      return base and f'{base}.{node.attr}'
    return None

  for node in ast.walk(tree):
    if not isinstance(node, ast.Call):
      continue
    name = dotted(node.func) or ''
    if name in ARRAY_READERS:
      flag = [k.value for k in node.keywords if k.arg == 'allow_pickle']
      if not (flag and isinstance(flag[0], ast.Constant) and flag[0].value is False):
        found.append(f'{filename}:{node.lineno}: {name} without allow_pickle=False')
    elif name in UNSAFE_CALLS:
      found.append(f'{filename}:{node.lineno}: calls {name}')
    elif name.split('.')[0] in PICKLE_MODULES and not pickle_ok:
      found.append(f'{filename}:{node.lineno}: calls {name}')
  return found


@pytest.mark.parametrize('source', [
    'import numpy as np\nx = np.load(p, allow_pickle=True)',
    'import numpy as np\nx = np.load(p)',
    'import numpy\nx = numpy.load(p, mmap_mode="r", **kw)',
    'import numpy as onp\nonp.lib.format.read_array(f, allow_pickle=True)',
    'from numpy import load\nload(p)',
    'import pickle\n',
    'import pickle as pk\npk.loads(b)',
    'from pickle import loads\n',
    'import torch\nm = torch.load(p)',
    'y = eval(text)',
    'exec(code)',
    'import pandas as pd\npd.read_pickle(p)',
])
def test_scan_flags(source):
  assert find_unsafe(source, 'x.py')


@pytest.mark.parametrize('source', [
    'import ast\nv = ast.literal_eval(text)',
    'import ast\nfrom ast import literal_eval\nv = literal_eval(text)',
    'import numpy as np\nx = np.load(p, allow_pickle=False)',
    'import numpy as np\nx = np.lib.format.read_array(f, allow_pickle=False)',
    '# pickle.load(f) and eval(x) in a comment\n"""np.load(p, allow_pickle=True)"""\n',
    'model.eval()\nspec.loader.exec_module(m)',
    'import json\njson.load(f)',
])
def test_scan_passes(source):
  assert find_unsafe(source, 'x.py') == []


def test_library_loads_no_pickles_and_evaluates_no_text():
  files = []
  for entry in SCANNED:
    p = ROOT / entry
    files += [p] if p.is_file() else sorted(p.rglob('*.py'))
  assert ROOT / PICKLE_READER in files and ROOT / 'launch.py' in files
  found = []
  for p in files:
    rel = p.relative_to(ROOT).as_posix()
    found += find_unsafe(p.read_text(), rel, pickle_ok=rel == PICKLE_READER)
  assert not found, 'unsafe loads (only data/safe_pickle.py may unpickle):\n' + '\n'.join(found)
