"""gate_stats: shares of open/closed steps and signal ranges from metrics.jsonl."""

import json
import os

import pytest

from redreg_jax import gate_stats


def _write_run(d, method, records):
  os.makedirs(d, exist_ok=True)
  with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"method": method, "modalities": []}, f)
  with open(os.path.join(d, "metrics.jsonl"), "w", encoding="utf-8") as f:
    for r in records:
      f.write(json.dumps(r) + "\n")


def _red(step, epoch, open_, warm, coinfo, dom, r_a, r_v, sim):
  return {"step": step, "epoch": epoch, "split": "train", "accuracy_audio": 0.5,
          "accuracy_visual": 0.4, "p_audio": 0.6 if dom == 0 else 0.3, "r_audio": r_a, "red_valid_audio": 1.0,
          "p_visual": 0.4, "r_visual": r_v, "red_valid_visual": 1.0, "sim": sim,
          "gate_open": open_, "gate_closed_by_warmup": warm, "gate_closed_by_window": 0.0,
          "gate_closed_by_monitor": 0.0, "gate_closed_by_coinfo": coinfo, "dominant": dom}


def test_redreg_shares_and_ranges(tmp_path, capsys):
  recs = [_red(1, 0, 0.0, 1.0, 0.0, 0, 9.0, 9.0, 0.5),   # warm-up: not in the r range
          _red(2, 1, 1.0, 0.0, 0.0, 0, 0.4, 5.0, 0.6),
          _red(3, 1, 1.0, 0.0, 0.0, 1, 5.0, 0.8, 0.55),  # visual dominant: r_visual
          _red(4, 2, 0.0, 0.0, 1.0, 0, 1.2, 5.0, 0.3)]
  _write_run(str(tmp_path / "redreg" / "seed_0"), "redreg", recs)
  found = gate_stats.collect([str(tmp_path)])
  (_, st), = found["redreg"]
  assert st["open"] == pytest.approx(0.5)
  assert st["closed_by_warmup"] == pytest.approx(0.25)
  assert st["closed_by_coinfo"] == pytest.approx(0.25)
  assert st["r_dom"] == (0.4, 0.8, 1.2)
  assert st["sim"][0] == pytest.approx(0.3)
  assert st["coinfo_closes_from_epoch"] == 2
  assert st["dominant_audio"] == pytest.approx(0.75)
  assert gate_stats.main([str(tmp_path)]) == 0
  assert "| `redreg` | 1 | 4 | 50.0%" in capsys.readouterr().out


def test_inforeg_active_share(tmp_path):
  recs = [{"step": i, "epoch": 0, "split": "train", "accuracy_audio": 0.5,
           "accuracy_visual": 0.5, "alpha_audio": a, "alpha_visual": 0.0}
          for i, a in enumerate((0.0, 1.2, 1.1, 0.0))]
  _write_run(str(tmp_path / "inforeg" / "seed_0"), "inforeg", recs)
  (_, st), = gate_stats.collect([str(tmp_path)])["inforeg"]
  assert st["active_audio"] == pytest.approx(0.5) and st["active_visual"] == 0.0


def test_no_runs_is_one_line(tmp_path, capsys):
  assert gate_stats.main([str(tmp_path)]) == 1
  assert "No run" in capsys.readouterr().out
