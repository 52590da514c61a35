"""Never lose a run: SIGKILL + relaunch is bit-exact; SIGTERM saves and says how to resume."""

import json
import os
import signal
import subprocess
import sys
import time

import chex
import jax
import numpy as np
import pytest

from redreg_jax import checkpoint as ckpt_lib
from redreg_jax import train
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cmd(method, workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "launch.py"),
          f"--config=configs/synthetic.py:{method},smoke,tiny", f"--workdir={workdir}",
          "--config.num_epochs=3", *extra]


def _finished_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())


def _final_params(method, workdir):
  exp = train.Experiment(tiny_config(method, num_epochs=3))
  ckpt = ckpt_lib.Checkpointer(str(workdir))
  state, _ = ckpt.restore(exp.init_state())
  ckpt.close()
  return jax.device_get(state)


def _records(workdir, split):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


@pytest.mark.parametrize("method,extra", [
    ("joint", ()), ("redreg", ()),
    # The RLC probe every 3 steps, checkpoints every 2: the probe baseline is restored.
    ("joint", ("--config.train.probe_every_steps=3",))])
def test_sigkill_then_relaunch_is_bit_exact(method, extra, tmp_path):
  ref, cut = tmp_path / "ref", tmp_path / "cut"
  r = subprocess.run(_cmd(method, ref, *extra), cwd=ROOT, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  total = 3 * 4  # 3 epochs x (64 / 16) steps.
  proc = subprocess.Popen(_cmd(method, cut, *extra), cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while time.time() < deadline and not any(4 < s < total for s in _finished_steps(cut)):
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_finished_steps(cut))
  assert killed_at < total, "the run finished before it could be killed"
  r = subprocess.run(_cmd(method, cut, *extra), cwd=ROOT, capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  assert f"Resumed from {cut}/checkpoints at step" in r.stderr
  a, b = _final_params(method, ref), _final_params(method, cut)
  chex.assert_trees_all_equal(a.params, b.params)
  chex.assert_trees_all_equal(a.opt_state, b.opt_state)
  chex.assert_trees_all_equal(a.batch_stats, b.batch_stats)
  for split in ("train", "train_epoch", "validation", "test"):
    assert _records(ref, split) == _records(cut, split), split
  assert json.loads((ref / "summary.json").read_text())["test"] == \
      json.loads((cut / "summary.json").read_text())["test"]


def test_sigterm_saves_and_says_how_to_resume(tmp_path):
  workdir = tmp_path / "run"
  proc = subprocess.Popen(_cmd("joint", workdir, "--config.num_epochs=50"), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 600
  while time.time() < deadline and not _finished_steps(workdir):
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-2000:]  # Stopped, resumable (launch.EXIT_STOPPED).
  assert "Stopped by SIGTERM" in err and "Resume with the same command" in err
  steps = _finished_steps(workdir)
  assert steps and not (workdir / "summary.json").exists()
  # Relaunching continues from the saved step.
  proc = subprocess.Popen(_cmd("joint", workdir, "--config.num_epochs=50"), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  while time.time() < deadline + 300 and max(_finished_steps(workdir)) <= max(steps):
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert f"Resumed from {workdir}/checkpoints at step {max(steps)}" in err
  assert "Stopped by SIGINT" in err


def test_changed_config_refused_unless_allowed(tmp_path):
  workdir = tmp_path / "run"
  r = subprocess.run(_cmd("joint", workdir, "--config.num_epochs=1"), cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  before = (workdir / "config.json").read_text()
  r = subprocess.run(_cmd("joint", workdir, "--config.num_epochs=1", "--config.optim.lr=0.5"),
                     cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode != 0
  assert "different config (optim.lr)" in r.stderr and "--allow_config_change" in r.stderr
  assert (workdir / "config.json").read_text() == before
  # --eval_only evaluates a saved checkpoint on any split and prints the metrics table.
  r = subprocess.run(_cmd("joint", workdir, "--config.num_epochs=1", "--eval_only=best",
                          "--split=all"), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  rows = {l.split()[0]: l.split()[1:] for l in r.stdout.splitlines() if l.strip()}
  assert {"train", "validation", "test"} <= set(rows)
  summary = json.loads((workdir / "summary.json").read_text())
  assert abs(float(rows["test"][0]) - summary["test"]["accuracy"]) < 1e-4
  r = subprocess.run(_cmd("joint", tmp_path / "empty", "--eval_only"), cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 1 and "No best checkpoint" in r.stderr
