"""redreg_jax.report on hand-written summary.json files (no training)."""

import csv
import json
import os

import numpy as np
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
  assert by_method["joint"]["accuracy"] == (pytest.approx(70.0), None)  # One run: no std.


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
  assert "| joint | 70.00 | 75.00 | 25.00 | 65.00 | 1 | 10 |" in lines

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
  assert "| joint [visual only] | 50.00 | — | 50.00 | 45.00 | 1 | 10 |" \
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


# ------------------------------------------------------------------- grid sweeps ---

def _config(method, seed, **fields):
  """A config.json as train.py writes it (nested), with dotted-field overrides."""
  c = {"method": method, "seed": seed, "modalities": [], "num_epochs": 3,
       "model": {"fusion": "concat", "width": 0.125},
       "optim": {"lr": 0.01, **({"threshold": 0.15} if method == "redreg" else {})},
       "train": {"input_threads": 2, "log_every_steps": 1}}
  for field, value in fields.items():
    node = c
    *path, last = field.split(".")
    for p in path:
      node = node.setdefault(p, {})
    node[last] = value
  return c


def _write_run(root, name, summary, config=None):
  d = _write(root, name, summary)
  if config is not None:
    with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
      json.dump(config, f)
  return d


def _with_shapley(summary, audio, visual):
  for split in ("validation", "test"):
    summary[split].update(shapley_audio=audio, shapley_visual=visual,
                          shapley_share_audio=audio / (audio + visual),
                          shapley_share_visual=visual / (audio + visual),
                          imbalance_gap=abs(audio - visual))
  return summary


@pytest.fixture
def grid_sweep(tmp_path):
  """redreg over optim.threshold in {0.05, 0.5} x seeds {0, 1}, and one joint reference."""
  root = str(tmp_path / "grid")
  accs = {0.05: (0.80, 0.84), 0.5: (0.60, 0.70)}
  for thr, (a0, a1) in accs.items():
    for seed, acc in enumerate((a0, a1)):
      # The train.* bookkeeping differs by seed here: it must not split the rows.
      _write_run(root, f"redreg/optim.threshold={thr}/seed_{seed}",
                 _summary("redreg", seed, acc, 0.9, 0.3, 0.7),
                 _config("redreg", seed, **{"optim.threshold": thr,
                                            "train.input_threads": seed + 1}))
  _write_run(root, "joint/seed_0", _summary("joint", 0, 0.70, 0.75, 0.25, 0.65),
             _config("joint", 0))
  return root


def test_grid_rows_per_point_from_config_json(grid_sweep, capsys):
  runs = report.find_summaries([grid_sweep])
  assert report.duplicate_seed_warnings(runs) == []  # Seeds repeat across points only.
  rows = report.table_rows(runs)
  assert [(r["method"], r["grid"]) for r in rows] == [
      ("joint", {"optim.threshold": None}), ("redreg", {"optim.threshold": 0.05}),
      ("redreg", {"optim.threshold": 0.5})]
  assert rows[1]["accuracy"] == pytest.approx((82.0, 8 ** 0.5))
  assert rows[2]["accuracy"] == pytest.approx((65.0, 50 ** 0.5))
  assert rows[1]["runs"] == 2 and rows[1]["seeds"] == "0,1"
  md = report.to_markdown(rows).splitlines()
  assert "| method | optim.threshold | accuracy | accuracy_audio | accuracy_visual | macro_f1 " \
      "| runs | wall s/run |" in md
  assert "| joint | — | 70.00 | 75.00 | 25.00 | 65.00 | 1 | 10 |" \
      in md
  assert any(l.startswith("| redreg | 0.05 | 82.00 ± 2.83 |") for l in md)
  assert any(l.startswith("| redreg | 0.5 | 65.00 ± 7.07 |") for l in md)
  # --by=none: the old grouping, every threshold averaged together.
  rows = report.table_rows(runs, by="none")
  assert [(r["method"], r["runs"]) for r in rows] == [("joint", 1), ("redreg", 4)]
  assert report.duplicate_seed_warnings(runs, by="none")  # Seeds 0 and 1 twice each.
  # CSV: the swept field is a column after method ('' where the row lacks it).
  assert report.main([grid_sweep, "--csv=" + os.path.join(grid_sweep, "t.csv")]) == 0
  assert capsys.readouterr().err == ""
  with open(os.path.join(grid_sweep, "t.csv"), newline="", encoding="utf-8") as f:
    table = list(csv.reader(f))
  assert table[0][:3] == ["dataset", "method", "optim.threshold"]
  assert [row[2] for row in table[1:]] == ["", "0.05", "0.5"]


def test_config_json_wins_over_dir_names_and_path_is_the_fallback(tmp_path):
  root = str(tmp_path)
  # A misleading directory name: config.json says 0.05.
  _write_run(root, "a/optim.threshold=9/seed_0", _summary("redreg", 0, 0.8, 0.9, 0.3, 0.7),
             _config("redreg", 0, **{"optim.threshold": 0.05}))
  _write_run(root, "a/optim.threshold=1.5/seed_0", _summary("redreg", 0, 0.6, 0.9, 0.3, 0.7),
             _config("redreg", 0, **{"optim.threshold": 1.5}))
  rows = report.table_rows(report.find_summaries([os.path.join(root, "a")]))
  assert [r["grid"] for r in rows] == [{"optim.threshold": 0.05}, {"optim.threshold": 1.5}]
  # No config.json: the sweep's FIELD=V[,FIELD2=V2] directory, percent-decoded.
  for i, part in enumerate(["model.fusion=film,optim.lr_decay_epochs=%284%2C%29",
                            "model.fusion=concat,optim.lr_decay_epochs=%288%2C%29"]):
    _write_run(root, f"b/joint/{part}/seed_0", _summary("joint", 0, 0.5 + 0.1 * i, 0.9, 0.3,
                                                        0.7))
  rows = report.table_rows(report.find_summaries([os.path.join(root, "b")]))
  assert [r["grid"] for r in rows] == [
      {"model.fusion": "concat", "optim.lr_decay_epochs": [8]},
      {"model.fusion": "film", "optim.lr_decay_epochs": [4]}]
  md = report.to_markdown(rows)
  assert "| method | model.fusion | optim.lr_decay_epochs | accuracy |" in md
  assert "| joint | film | [4] | 50.00 |" in md


def test_by_explicit_fields_and_product_grid(tmp_path):
  root = str(tmp_path)
  for fusion in ("concat", "film"):
    for thr in (0.5, 0.05):
      for seed in (0, 1):
        acc = 0.5 + thr / 10 + (0.1 if fusion == "film" else 0.0)
        _write_run(root, f"redreg/model.fusion={fusion},optim.threshold={thr}/seed_{seed}",
                   _summary("redreg", seed, acc, 0.9, 0.3, 0.7),
                   _config("redreg", seed, **{"model.fusion": fusion,
                                              "optim.threshold": thr}))
  runs = report.find_summaries([root])
  rows = report.table_rows(runs)  # Auto: both fields, numbers sorted by value.
  assert [tuple(r["grid"].values()) for r in rows] == [
      ("concat", 0.05), ("concat", 0.5), ("film", 0.05), ("film", 0.5)]
  assert all(r["runs"] == 2 for r in rows)
  rows = report.table_rows(runs, by=["optim.threshold"])  # Fusions averaged together.
  assert [(r["grid"], r["runs"]) for r in rows] == [({"optim.threshold": 0.05}, 4),
                                                    ({"optim.threshold": 0.5}, 4)]
  assert report.main([root, "--by=optim.threshold"]) == 0


def test_shapley_columns_and_gap(tmp_path):
  root = str(tmp_path)
  for seed, (a, v) in enumerate([(0.5, 0.1), (0.3, 0.1)]):
    _write(root, f"joint/seed_{seed}",
           _with_shapley(_summary("joint", seed, 0.8, 0.9, 0.3, 0.7), a, v))
  _write(root, "old/seed_0", _summary("redreg", 0, 0.8, 0.9, 0.3, 0.7))  # From before Shapley.
  rows = {r["method"]: r for r in report.table_rows(report.find_summaries([root]))}
  j = rows["joint"]
  assert j["shapley_audio"] == pytest.approx((40.0, 200 ** 0.5))
  assert j["shapley_visual"] == pytest.approx((10.0, 0.0))
  assert j["imbalance_gap"] == pytest.approx((30.0, 200 ** 0.5))
  assert j["shapley_share_audio"][0] == pytest.approx(100 * (5 / 6 + 3 / 4) / 2)
  assert "shapley_audio" not in rows["redreg"]
  md = report.to_markdown(list(rows.values())).splitlines()
  assert "| method | accuracy | accuracy_audio | accuracy_visual | macro_f1 | shapley_audio | " \
      "shapley_visual | imbalance_gap | runs | wall s/run |" in md
  assert any(l.startswith("| joint |") and "| 40.00 ± 14.14 | 10.00 ± 0.00 | 30.00 ± 14.14 |"
             in l for l in md)
  assert any(l.startswith("| redreg |") and l.endswith("| — | — | — | 1 | 10 |") for l in md)
  csv_path = str(tmp_path / "t.csv")
  report.write_csv(list(rows.values()), csv_path)
  with open(csv_path, newline="", encoding="utf-8") as f:
    table = {r["method"]: r for r in csv.DictReader(f)}
  assert table["joint"]["shapley_share_visual_mean"] != "" and \
      table["redreg"]["imbalance_gap_mean"] == ""


def test_sweep_plots_one_png_per_field(grid_sweep, tmp_path, capsys):
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from redreg_jax import plots  # pylint: disable=g-import-not-at-top
  rows = report.table_rows(report.find_summaries([grid_sweep]))
  paths = plots.sweep_figures(rows, str(tmp_path / "figs"))
  assert [os.path.basename(p) for p in paths] == ["sweep_optim.threshold.png"]
  with Image.open(paths[0]) as im:
    assert im.size[0] > 600 and im.size[1] > 200
    assert np.asarray(im.convert("L"), np.float32).std() > 1.0
  # From the command line; runs without a grid give a note, not an error.
  assert report.main([grid_sweep, f"--plots={tmp_path / 'cli'}"]) == 0
  assert "sweep_optim.threshold.png" in capsys.readouterr().err
  plain = str(tmp_path / "plain")
  _write(plain, "joint/seed_0", _summary("joint", 0, 0.7, 0.7, 0.3, 0.7))
  assert report.main([plain, f"--plots={tmp_path / 'none'}"]) == 0
  assert "no swept field" in capsys.readouterr().err


def test_many_runs_show_progress_few_stay_quiet(tmp_path, capsys, monkeypatch):
  root = str(tmp_path / "runs")
  for seed in range(4):
    _write(root, f"redreg/seed_{seed}", _summary("redreg", seed, 0.8, 0.9, 0.3, 0.7))
  assert len(report.find_summaries([root])) == 4
  assert capsys.readouterr().err == ""  # Below PROGRESS_EVERY runs: nothing.
  monkeypatch.setattr(report, "PROGRESS_EVERY", 2)
  report.find_summaries([root, root])  # The same runs twice are read once.
  err = capsys.readouterr().err.splitlines()
  assert [line.split(" (")[0] for line in err] == ["report: read 2/4 runs",
                                                  "report: read 4/4 runs"]
