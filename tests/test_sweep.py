"""The sweep command runs methods x seeds into the tree the report reads, and resumes."""

import json
import os
import subprocess
import sys

import pytest

from redreg_jax import report
from redreg_jax import sweep

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


def test_grid_sweep_runs_each_point_then_report_and_resume(tmp_path):
  """A real 2-point grid: its own run dir per point, Shapley values in every evaluation."""
  cmd = [sys.executable, "-m", "redreg_jax.sweep", "--config=configs/synthetic.py",
         "--methods=joint", "--seeds=0", f"--root={tmp_path}", "--config_arg=smoke,tiny",
         "--set=num_epochs=1", "--grid=data.snr_visual=0.2,1.0"]
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-2000:]
  for value in ("0.2", "1.0"):
    workdir = tmp_path / "joint" / f"data.snr_visual={value}" / "seed_0"
    config = json.loads((workdir / "config.json").read_text())
    assert config["data"]["snr_visual"] == float(value) and config["num_epochs"] == 1
    summary = json.loads((workdir / "summary.json").read_text())
    records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [rec for rec in records if rec["split"] in ("validation", "test")]
    assert len(evals) == 3  # One epoch, then the best checkpoint on validation and test.
    for res in [summary["validation"], summary["test"]] + evals:
      assert SHAPLEY_KEYS <= set(res), sorted(res)
      assert res["imbalance_gap"] == pytest.approx(
          abs(res["shapley_audio"] - res["shapley_visual"]))
  rows = report.table_rows(report.find_summaries([str(tmp_path)]))
  assert [(r["method"], r["grid"], r["runs"]) for r in rows] == [
      ("joint", {"data.snr_visual": 0.2}, 1), ("joint", {"data.snr_visual": 1.0}, 1)]
  assert {"shapley_audio", "shapley_visual", "imbalance_gap"} <= set(rows[0])
  r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert r.returncode == 0 and r.stdout.count("done, skipped") == 2, r.stdout


SHAPLEY_KEYS = {"shapley_audio", "shapley_visual", "shapley_share_audio",
                "shapley_share_visual", "imbalance_gap"}


def _dry(capsys, *flags):
  code = sweep.main(["--config=configs/synthetic.py", "--dry_run", *flags])
  out = capsys.readouterr()
  return code, [l for l in out.out.splitlines() if l.startswith("[sweep] ")], out.err


def test_dry_run_without_grid_keeps_the_plain_layout(tmp_path, capsys):
  code, lines, _ = _dry(capsys, "--methods=joint,redreg", "--seeds=0", f"--root={tmp_path}",
                        "--set=num_epochs=1", "--unimodal=audio")
  launch = os.path.join(ROOT, "launch.py")
  assert code == 0 and lines == [
      f"[sweep] {launch} --config=configs/synthetic.py:joint --workdir={tmp_path}/joint/seed_0 "
      "--config.seed=0 --config.num_epochs=1",
      f"[sweep] {launch} --config=configs/synthetic.py:redreg --workdir={tmp_path}/redreg/seed_0"
      " --config.seed=0 --config.num_epochs=1",
      f"[sweep] {launch} --config=configs/synthetic.py:joint "
      f"--workdir={tmp_path}/audio_only/joint/seed_0 --config.seed=0 --config.num_epochs=1 "
      "--config.modalities=('audio',)",
      "[sweep] dry run: nothing was run"]
  assert not os.listdir(tmp_path)


def test_dry_run_grid_layout_product_and_methods_without_the_field(tmp_path, capsys):
  code, lines, _ = _dry(capsys, "--methods=joint,redreg", "--seeds=0,1", f"--root={tmp_path}",
                        "--grid=optim.threshold=0.05,1.5",
                        "--grid=optim.lr_decay_epochs=(4,),(8,)")
  assert code == 0
  assert lines[0] == "[sweep] joint has no optim.threshold: swept over the rest"
  workdirs = [l.split("--workdir=")[1].split()[0] for l in lines if "--workdir=" in l]
  rel = [os.path.relpath(w, tmp_path) for w in workdirs]
  assert rel[:6] == ["joint/optim.lr_decay_epochs=%284%2C%29/seed_0",
                     "joint/optim.lr_decay_epochs=%288%2C%29/seed_0",
                     "redreg/optim.threshold=0.05,optim.lr_decay_epochs=%284%2C%29/seed_0",
                     "redreg/optim.threshold=0.05,optim.lr_decay_epochs=%288%2C%29/seed_0",
                     "redreg/optim.threshold=1.5,optim.lr_decay_epochs=%284%2C%29/seed_0",
                     "redreg/optim.threshold=1.5,optim.lr_decay_epochs=%288%2C%29/seed_0"]
  assert len(rel) == 12 and rel[6].endswith("seed_1")  # Seed by seed.
  cmd = next(l for l in lines if "threshold=1.5,optim.lr_decay_epochs=%288" in l)
  assert cmd.endswith("--config.seed=0 --config.optim.threshold=1.5 "
                      "--config.optim.lr_decay_epochs=(8,)")
  # A method with none of the grid fields runs once, in the plain layout (a reference row).
  code, lines, _ = _dry(capsys, "--methods=joint,redreg", "--seeds=0", f"--root={tmp_path}",
                        "--grid=optim.threshold=0.05,0.5")
  assert code == 0 and lines[0] == "[sweep] joint has no optim.threshold: runs once, ungridded"
  rel = [os.path.relpath(l.split("--workdir=")[1].split()[0], tmp_path) for l in lines
         if "--workdir=" in l]
  assert rel == ["joint/seed_0", "redreg/optim.threshold=0.05/seed_0",
                 "redreg/optim.threshold=0.5/seed_0"]


def test_grid_resumes_per_point(tmp_path, capsys):
  done = tmp_path / "redreg" / "optim.threshold=0.5" / "seed_0"
  done.mkdir(parents=True)
  (done / "summary.json").write_text("{}")
  _, lines, _ = _dry(capsys, "--methods=redreg", "--seeds=0", f"--root={tmp_path}",
                     "--grid=optim.threshold=0.05,0.5")
  assert "[sweep] redreg optim.threshold=0.5 seed 0: done, skipped" in lines
  assert sum("--workdir=" in l for l in lines) == 1


@pytest.mark.parametrize("flag, message", [
    ("--grid=optim.treshold=1", "optim.treshold in no method's config"),
    ("--grid=optim.threshold=abc", "Bad value for config field 'optim.threshold'"),
    ("--grid=optim.threshold", "expected FIELD=V1,V2"),
    ("--grid=optim.threshold=1,1", "repeated value"),
    ("--grid=seed=1,2", "--seeds"),
    ("--set=optim.threshold=1", "both in --set and --grid"),
])
def test_bad_grid_is_one_error_line(tmp_path, capsys, flag, message):
  extra = [flag] if flag.startswith("--grid") else [flag, "--grid=optim.threshold=0.5"]
  code, lines, err = _dry(capsys, "--methods=redreg", "--seeds=0", f"--root={tmp_path}", *extra)
  assert code == 2 and err.startswith("error: ") and message in err and err.count("\n") == 1
  assert not [l for l in lines if "--workdir=" in l]


def test_grid_values_split_at_top_level_commas_and_dirnames_are_injective():
  assert sweep.split_values("0.05, 0.15,1") == ["0.05", "0.15", "1"]
  assert sweep.split_values("(4,),(8, 9),'a,b',[1,2]") == ["(4,)", "(8, 9)", "'a,b'", "[1,2]"]
  assert sweep.parse_grid(["config.optim.beta=0.5,0.9"]) == [("optim.beta", ["0.5", "0.9"])]
  names = {sweep.point_dirname([("f", v)]) for v in ("(4,)", "[4,]", "4", "a/b", "a b")}
  assert len(names) == 5 and not any("/" in n for n in names)
  assert sweep.point_dirname([("a.b", "1"), ("c", "film")]) == "a.b=1,c=film"


def test_keep_going_runs_the_rest_and_lists_the_failures(tmp_path, capsys, monkeypatch):
  calls = []

  def fake_run(cmd, **kw):  # joint "diverges", redreg finishes.
    del kw
    calls.append(cmd)
    return subprocess.CompletedProcess(cmd, 1 if any(":joint" in c for c in cmd) else 0)

  monkeypatch.setattr(sweep.subprocess, "run", fake_run)
  args = ["--config=configs/synthetic.py", "--methods=joint,redreg", "--seeds=0,1",
          f"--root={tmp_path}"]
  assert sweep.main(args) == 1 and len(calls) == 1  # Stops at the first failure.
  calls.clear()
  assert sweep.main(args + ["--keep_going"]) == 1
  assert len(calls) == 4  # Every run was tried.
  err = capsys.readouterr().err
  assert "2 run(s) failed" in err and "joint seed 0 (exit 1" in err and "joint seed 1" in err
