"""redreg_jax.report on hand-written summary.json files (no training)."""

import csv
import json
import os

import pytest

from redreg_jax import report


def _summary(method, seed, acc, acc_audio, acc_visual, f1, dataset="synthetic_av", wall=10.0,
             modalities=("audio", "visual")):
  split = {"accuracy": acc, "macro_f1": f1, "confusion_matrix": [[1, 0], [0, 1]],
           "num_examples": 2}
  for m, a in zip(("audio", "visual"), (acc_audio, acc_visual)):
    if m in modalities:
      split[f"accuracy_{m}"] = a
  return {"method": method, "dataset": dataset, "seed": seed, "steps": 24, "best_epoch": 2,
          "best_step": 24, "compile_seconds": 1.0, "wall_seconds": wall,
          "skipped_steps": 0, "validation": dict(split), "test": dict(split)}


def _write(root, name, summary):
  d = os.path.join(root, name)
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "summary.json"), "w", encoding="utf-8") as f:
    json.dump(summary, f)
  return d


@pytest.fixture
def sweep(tmp_path):
  root = str(tmp_path / "runs")
  # redreg: accuracy 80/84/88 -> mean 84, std (ddof 1) 4; macro-F1 70/70/76 -> 72 ± sqrt(12).
  for seed, (acc, f1) in enumerate([(0.80, 0.70), (0.84, 0.70), (0.88, 0.76)]):
    _write(root, f"redreg/seed_{seed}", _summary("redreg", seed, acc, 0.9, 0.3 + 0.1 * seed,
                                                 f1, wall=10.0 * (seed + 1)))
  _write(root, "joint/seed_0", _summary("joint", 0, 0.70, 0.75, 0.25, 0.65))
  return root


def test_mean_std_over_seeds(sweep):
  rows = report.table_rows(report.find_summaries([sweep]))
  by_method = {r["method"]: r for r in rows}
  assert set(by_method) == {"redreg", "joint"}
  r = by_method["redreg"]
  assert r["runs"] == 3 and r["seeds"] == "0,1,2"
  assert r["accuracy"] == pytest.approx((84.0, 4.0))
  assert r["accuracy_visual"] == pytest.approx((40.0, 10.0))
  assert r["macro_f1"] == pytest.approx((72.0, 12 ** 0.5))
  assert r["wall_s"] == pytest.approx(20.0)
  # A single run has no spread.
  assert by_method["joint"]["accuracy"] == pytest.approx((70.0, 0.0))


def test_rows_ordered_unimodal_first_then_method_table(sweep):
  _write(sweep, "visual_only/joint/seed_0",
         _summary("joint", 0, 0.5, None, 0.5, 0.5, modalities=("visual",)))
  _write(sweep, "mmpareto/seed_0", _summary("mmpareto", 0, 0.7, 0.7, 0.3, 0.7))
  _write(sweep, "aaa_custom/seed_0", _summary("aaa_custom", 0, 0.7, 0.7, 0.3, 0.7))
  rows = report.table_rows(report.find_summaries([sweep]))
  assert [r["method"] for r in rows] == ["joint [visual only]", "joint", "redreg", "mmpareto",
                                         "aaa_custom"]


def test_markdown_and_csv(sweep, tmp_path, capsys):
  csv_path, md_path = str(tmp_path / "t.csv"), str(tmp_path / "t.md")
  assert report.main([sweep, f"--csv={csv_path}", f"--markdown={md_path}"]) == 0
  printed = capsys.readouterr().out
  with open(md_path, encoding="utf-8") as f:
    md = f.read()
  assert printed == md + "\n"
  lines = md.splitlines()
  assert any(l.startswith("| method | accuracy | accuracy_audio | accuracy_visual | macro_f1")
             for l in lines)
  assert "| redreg | 84.00 ± 4.00 | 90.00 ± 0.00 | 40.00 ± 10.00 | 72.00 ± 3.46 | 3 | 20 |" \
      in lines
  assert "| joint | 70.00 ± 0.00 | 75.00 ± 0.00 | 25.00 ± 0.00 | 65.00 ± 0.00 | 1 | 10 |" in lines

  with open(csv_path, newline="", encoding="utf-8") as f:
    table = list(csv.DictReader(f))
  assert len(table) == 2
  redreg = next(r for r in table if r["method"] == "redreg")
  assert redreg["accuracy_mean"] == "84.0000" and redreg["accuracy_std"] == "4.0000"
  assert redreg["runs"] == "3" and redreg["dataset"] == "synthetic_av"


def test_unimodal_baseline_is_its_own_row(tmp_path):
  """A --config.modalities run shares the method name but not the columns."""
  root = str(tmp_path)
  _write(root, "joint", _summary("joint", 0, 0.70, 0.75, 0.25, 0.65))
  _write(root, "visual_only", _summary("joint", 0, 0.50, 0.0, 0.50, 0.45,
                                       modalities=("visual",)))
  rows = report.table_rows(report.find_summaries([root]))
  # Unimodal baselines come first: they are the reference the other rows are read against.
  assert [r["method"] for r in rows] == ["joint [visual only]", "joint"]
  md = report.to_markdown(rows)
  assert "| joint [visual only] | 50.00 ± 0.00 | — | 50.00 ± 0.00 | 45.00 ± 0.00 | 1 | 10 |" \
      in md.splitlines()
  csv_path = str(tmp_path / "t.csv")
  report.write_csv(rows, csv_path)
  with open(csv_path, newline="", encoding="utf-8") as f:
    table = list(csv.DictReader(f))
  assert table[0]["accuracy_visual_mean"] == "50.0000"
  assert table[0]["accuracy_audio_mean"] == "" and table[1]["accuracy_audio_mean"] == "75.0000"


def test_nested_dirs_count_each_run_once(sweep):
  runs = report.find_summaries([sweep, os.path.join(sweep, "redreg")])
  assert len(runs) == 4


def test_empty_dir_is_one_clear_error(tmp_path, capsys):
  assert report.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: no summary.json found under") and err.count("\n") == 1
  assert report.main([str(tmp_path / "missing")]) == 2
  assert "is not a directory" in capsys.readouterr().err


def test_corrupt_summary_names_the_file(tmp_path, capsys):
  d = tmp_path / "run"
  d.mkdir()
  (d / "summary.json").write_text('{"method": "jo', encoding="utf-8")
  assert report.main([str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "summary.json is not valid JSON" in err and str(d) in err


def test_runs_sharing_a_seed_are_flagged(sweep, tmp_path, capsys):
  _write(str(tmp_path / "other"), "redreg_again", _summary("redreg", 1, 0.5, 0.5, 0.5, 0.5))
  assert report.main([sweep, str(tmp_path / "other")]) == 0
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "2 redreg runs on synthetic_av share seed 1" in err
  assert "redreg_again" in err and "seed_1" in err
