"""The sweep command runs methods x seeds into the tree the report reads, and resumes."""

import os
import subprocess
import sys

from redreg_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_then_report(tmp_path):
  cmd = [sys.executable, "-m", "redreg_jax.sweep", "--config=configs/synthetic.py",
         "--methods=joint", "--seeds=0,1", f"--root={tmp_path}", "--config_arg=smoke,tiny",
         "--set=num_epochs=1", "--unimodal=visual"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  for seed in (0, 1):
    assert (tmp_path / "joint" / f"seed_{seed}" / "summary.json").exists()
    assert (tmp_path / "visual_only" / "joint" / f"seed_{seed}" / "summary.json").exists()
  # Seed by seed: both runs of seed 0 come before any run of seed 1.
  order = [line.split("--config.seed=")[1][0] for line in r.stdout.splitlines()
           if line.startswith("[sweep] ") and "--config.seed=" in line]
  assert order == ["0", "0", "1", "1"], r.stdout
  rows = {r["method"]: r for r in report.table_rows(report.find_summaries([str(tmp_path)]))}
  assert set(rows) == {"joint", "joint [visual only]"}
  assert rows["joint"]["runs"] == 2 and rows["joint"]["seeds"] == "0,1"
  assert rows["joint [visual only]"]["runs"] == 2
  # A second call finds every run done and runs nothing.
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.count("done, skipped") == 4
