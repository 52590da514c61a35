"""The sweep command runs methods x seeds into the tree the report reads, and resumes."""

import os
import subprocess
import sys

from redreg_jax import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_sweep_then_report(tmp_path):
  cmd = [sys.executable, "-m", "redreg_jax.sweep", "--config=configs/synthetic.py",
         "--methods=joint", "--seeds=0,1", f"--root={tmp_path}", "--config_arg=smoke,tiny",
         "--set=num_epochs=1"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  for seed in (0, 1):
    assert (tmp_path / "joint" / f"seed_{seed}" / "summary.json").exists()
  rows = report.table_rows(report.find_summaries([str(tmp_path)]))
  assert len(rows) == 1 and rows[0]["runs"] == 2 and rows[0]["seeds"] == "0,1"
  # A second call finds both runs done and runs nothing.
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.count("done, skipped") == 2
