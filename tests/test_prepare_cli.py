"""`python -m data.prepare` as users run it: each bad file class gets a named error line.

Runs the module in a subprocess (its argument parsing, its error handling and its
exit code), on fixtures in the datasets' real formats, and checks that no traceback
reaches the user and that no half-written build counts as prepared.
"""

import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import soundfile as sf

from tests import data_fixtures as fx
from tests.test_data_cg_mnist import write_idx_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = fx.cremad_clip_names(actors=(1001, 1002), per_actor=3)  # 6 clips.


def _prepare(*args):
  out = subprocess.run([sys.executable, '-m', 'data.prepare', *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  return out.returncode, out.stdout, out.stderr


def _assert_clean_error(rc, err, *named):
  assert rc == 1, err[-3000:]
  assert 'Traceback' not in err, err[-3000:]
  assert any(l.startswith('error: ') for l in err.splitlines()), err[-3000:]
  for thing in named:
    lines = [l for l in err.splitlines() if str(thing) in l]
    assert lines, f'{thing} not named in:\n{err}'
    assert all(len(l) < 400 for l in lines)  # One readable line per file.


def test_cremad_names_every_bad_file_class_in_the_first_pass(tmp_path):
  src = tmp_path / 'src'
  fx.make_cremad_official(str(src), NAMES, video_seconds=2.0)
  truncated_video = src / 'VideoFlash' / (NAMES[0] + '.flv')
  fx.truncate_file(str(truncated_video), 0.5)
  garbage_wav = src / 'AudioWAV' / (NAMES[1] + '.wav')
  garbage_wav.write_bytes(b'RIFF\x00\x00garbage')
  nan_wav = src / 'AudioWAV' / (NAMES[2] + '.wav')
  x = np.zeros(16000, np.float32)
  x[100] = np.nan
  sf.write(str(nan_wav), x, 16000, subtype='FLOAT')
  truncated_wav = src / 'AudioWAV' / (NAMES[3] + '.wav')
  fx.truncate_file(str(truncated_wav), 0.6)
  rc, _, err = _prepare('cremad', f'--manual_dir={src}', f'--data_dir={tmp_path / "tfds"}')
  _assert_clean_error(rc, err, truncated_video, garbage_wav, nan_wav, truncated_wav)
  assert '4 bad source file(s)' in err  # All named at once: the cheap first pass.
  assert 'truncated' in [l for l in err.splitlines() if str(truncated_video) in l][0]
  assert 'non-finite' in [l for l in err.splitlines() if str(nan_wav) in l][0]
  assert not any('incomplete' not in p and p.startswith('1.') for _, _, fs in
                 os.walk(tmp_path / 'tfds') for p in fs)


def test_cg_mnist_truncated_idx_file_is_one_line(tmp_path):
  manual = write_idx_folder(str(tmp_path / 'src'), False)
  path = os.path.join(manual, 't10k-images-idx3-ubyte')
  fx.truncate_file(path, 0.5)
  rc, _, err = _prepare('cg_mnist', f'--manual_dir={manual}', f'--data_dir={tmp_path / "t"}')
  _assert_clean_error(rc, err, path)
  assert len([l for l in err.splitlines() if l.startswith('error: ')]) == 1
  assert 'truncated' in err


def test_cmu_mosi_truncated_and_tampered_pickles_are_one_line(tmp_path):
  src = tmp_path / 'src'
  src.mkdir()
  path = src / 'mosi_raw.pkl'
  fx.make_mosi_pickle(str(path), sizes={'train': 2, 'valid': 1, 'test': 1}, T=3)
  fx.truncate_file(str(path), 0.5)
  rc, _, err = _prepare('cmu_mosi', f'--manual_dir={src}', f'--data_dir={tmp_path / "t"}')
  _assert_clean_error(rc, err, path)
  # A pickle that names a global outside numpy's arrays is refused before it runs.
  marker = tmp_path / 'ran'
  with open(path, 'wb') as f:
    pickle.dump({'train': shutil.rmtree, 'marker': str(marker)}, f)
  rc, _, err = _prepare('cmu_mosi', f'--manual_dir={src}', f'--data_dir={tmp_path / "t"}')
  _assert_clean_error(rc, err, path)
  assert 'rmtree' in err and src.exists()
