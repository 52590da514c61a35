"""Bad input gets one clear error and loses nothing: NaN losses, missing data."""

import json
import os
import subprocess
import sys

import jax
import numpy as np

from redreg_jax import checkpoint as ckpt_lib
from redreg_jax import train
from tests.helpers import launch, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_launch = launch


def test_nonfinite_loss_stops_with_named_step_and_keeps_last_good_checkpoint(tmp_path):
  # lr 1e3 blows up within the first epoch; checkpoints every 2 steps before that.
  r = _launch("configs/synthetic.py:joint,smoke,tiny", tmp_path, "--config.optim.lr=1e3",
              "--config.optim.momentum=0.99")
  assert r.returncode == 1, r.stderr[-2000:]
  line = [l for l in r.stderr.splitlines() if l.startswith("error:")][0]
  assert "Non-finite values at step" in line and "skip_nonfinite" in r.stderr
  assert any(m in line for m in ("audio", "visual", "head", "loss"))
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  latest = ckpt.latest_step()
  if latest is not None:  # Whatever was saved is finite.
    exp = train.Experiment(tiny_config("joint"))
    state, _ = ckpt.restore(exp.init_state())
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(jax.device_get(state.params)))
  ckpt.close()
  assert not (tmp_path / "summary.json").exists()


def test_skip_nonfinite_counts_skipped_steps(tmp_path):
  r = _launch("configs/synthetic.py:joint,smoke,tiny", tmp_path, "--config.optim.lr=1e3",
              "--config.optim.momentum=0.99", "--config.train.skip_nonfinite=true",
              "--config.train.max_skipped_fraction=1.0")
  assert r.returncode == 0, r.stderr[-2000:]
  summary = json.loads((tmp_path / "summary.json").read_text())
  assert summary["skipped_steps"] > 0
  assert "step skipped" in r.stderr and "steps skipped so far" in r.stderr  # Never silent.


def test_missing_dataset_names_folder_and_command(tmp_path):
  r = _launch("configs/cremad.py:joint", tmp_path / "run",
              f"--config.data.data_dir={tmp_path / 'tfds'}")
  assert r.returncode == 1
  assert "cremad is not prepared" in r.stderr and "python -m data.prepare cremad" in r.stderr
  assert str(tmp_path / "tfds") in r.stderr
  assert "dataset_info.json" not in r.stderr  # TFDS's own warning would only confuse.
  assert not (tmp_path / "run").exists()  # Nothing written.


def test_output_into_a_closed_pipe_prints_no_traceback():
  """`python launch.py --help | head`: the reader leaves early; no BrokenPipeError.

  `true` exits without reading, long before Python has started, so the write fails. The
  usage text is longer than stdout's buffer, so the failure comes inside main(), as it
  does for any long output (a report over many runs); every entry point shares
  `cli.run`, which ends such a command quietly with 141."""
  proc = subprocess.run(f"{sys.executable} launch.py --help | true", shell=True, cwd=ROOT,
                        capture_output=True, text=True, timeout=120, check=False)
  assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
