"""Multi-host: two local processes (jax.distributed over loopback, gloo collectives) finish
a run with the same parameters as one process fed the same global batches."""

import json
import os
import re
import socket
import subprocess
import sys

import chex
import jax

from redreg_jax import checkpoint as ckpt_lib
from redreg_jax import train
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tests' own XLA flags (tests/conftest.py) with the device count left to _env.
FAST_XLA = re.sub(r"--xla_force_host_platform_device_count=\d+", "",
                  os.environ["XLA_FLAGS"]).strip()


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _cmd(workdir, *extra):
  return [sys.executable, os.path.join(ROOT, "launch.py"),
          "--config=configs/synthetic.py:redreg,smoke,tiny", f"--workdir={workdir}",
          "--config.train.input_threads=1", *extra]


def _env(devices):
  return dict(os.environ, JAX_PLATFORMS="cpu",
              XLA_FLAGS=f"--xla_force_host_platform_device_count={devices} {FAST_XLA}")


def _params(workdir):
  exp = train.Experiment(tiny_config("redreg"))
  ckpt = ckpt_lib.Checkpointer(str(workdir))
  state, _ = ckpt.restore(exp.init_state())
  ckpt.close()
  return jax.device_get(state.params)


def test_two_processes_match_one(tmp_path):
  single, multi = tmp_path / "single", tmp_path / "multi"
  r = subprocess.run(_cmd(single), cwd=ROOT, env=_env(2), capture_output=True, text=True,
                     timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  port = _free_port()
  procs = [subprocess.Popen(
      _cmd(multi, "--distributed", f"--coordinator_address=127.0.0.1:{port}",
           "--num_processes=2", f"--process_id={i}"),
      cwd=ROOT, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "devices=2" in outs[0][1]  # Process 0 logs; it sees both processes' devices.
  # Only process 0 logs and prints the summary table.
  assert "accuracy_visual" in outs[0][0] and "accuracy_visual" not in outs[1][0]
  assert "method=" not in outs[1][1]
  chex.assert_trees_all_close(_params(single), _params(multi), rtol=1e-5, atol=1e-6)
  a = json.loads((single / "summary.json").read_text())
  b = json.loads((multi / "summary.json").read_text())
  assert abs(a["test"]["accuracy"] - b["test"]["accuracy"]) < 1e-6
