"""Diagnostic figures (redreg_jax.plots) from hand-written workdirs, and t-SNE on a real run."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from redreg_jax import plots
from tests.helpers import tiny_config

MODS = ("audio", "visual")
STEPS_PER_EPOCH, EPOCHS = 5, 3


def _png_ok(path):
  """A readable, non-blank PNG."""
  assert os.path.getsize(path) > 0
  with Image.open(path) as im:
    assert im.format == "PNG" and im.mode in ("RGB", "RGBA")
    assert im.size[0] > 200 and im.size[1] > 200
    pixels = np.asarray(im.convert("L"), np.float32)
  assert pixels.std() > 1.0  # Something was drawn.


def _fake_run(root, method, seed, *, redreg=False, inforeg=False, rlc=True, best_epoch=1,
              visual_twins=True):
  """A workdir as train.py writes it, with made-up but plausible numbers."""
  d = os.path.join(root, f"{method}_s{seed}")
  os.makedirs(d)
  rng = np.random.default_rng(seed)
  lines = []
  for epoch in range(EPOCHS):
    for i in range(STEPS_PER_EPOCH):
      step = epoch * STEPS_PER_EPOCH + i + 1
      rec = {"step": step, "epoch": epoch, "split": "train", "loss": 2.0 / step,
             "accuracy": min(1.0, 0.1 * step), "grad_norm": 1.0}
      for m in MODS:
        rec[f"accuracy_{m}"] = float(rng.uniform())
        if rlc and step % 2 == 0:
          rec[f"rlc_{m}"] = float(rng.uniform(0.2, 0.5))
        if redreg:
          valid = float(m == "audio" or (visual_twins and step < 4))
          rec.update({f"p_{m}": 0.5, f"S_{m}": float(rng.normal(0, 0.05)),
                      f"red_raw_{m}": valid * float(rng.uniform(0.5, 2)),
                      f"red_norm_{m}": valid * float(rng.uniform(0.5, 2)),
                      f"red_valid_{m}": valid, f"r_{m}": 0.0})
        if inforeg:
          rec[f"trace_{m}"] = float(100.0 / step) if m == "audio" else float(10.0 / step)
      if redreg:
        rec.update(sim=0.4, tau=0.3, gate_open=float(epoch == 2 and i > 1),
                   gate_closed_by_warmup=float(epoch < 2), gate_closed_by_window=float(step < 6),
                   gate_closed_by_monitor=0.0, gate_closed_by_coinfo=float(i == 0),
                   dominant=0, correction_norm=0.0, beta_eff=0.9)
      lines.append(rec)
    step = (epoch + 1) * STEPS_PER_EPOCH
    ep = {"step": step, "epoch": epoch, "split": "train_epoch", "loss": 1.0 / (epoch + 1)}
    if redreg:
      ep.update(gate_open_fraction=0.6 if epoch == 2 else 0.0,
                gate_closed_by_warmup=float(epoch < 2), gate_closed_by_window=0.2,
                gate_closed_by_monitor=0.0, gate_closed_by_coinfo=0.4)
    lines.append(ep)
    val = {"step": step, "epoch": epoch, "split": "validation", "accuracy": 0.5 + 0.1 * epoch,
           "accuracy_audio": 0.5 + 0.1 * epoch, "accuracy_visual": 0.2 + 0.05 * epoch,
           "macro_f1": 0.4, "confusion_matrix": [[1, 0], [0, 1]]}
    lines.append(val)
  # The final evaluation of the best checkpoint: split 'validation' again, best epoch, last step.
  final = {"step": EPOCHS * STEPS_PER_EPOCH, "epoch": best_epoch, "accuracy": 0.123,
           "accuracy_audio": 0.5, "accuracy_visual": 0.2, "macro_f1": 0.4}
  lines += [dict(final, split="validation"), dict(final, split="test")]
  with open(os.path.join(d, "metrics.jsonl"), "w", encoding="utf-8") as f:
    f.write("\n".join(json.dumps(r) for r in lines) + "\n")
  with open(os.path.join(d, "config.json"), "w", encoding="utf-8") as f:
    json.dump({"method": method, "seed": seed, "modalities": []}, f)
  with open(os.path.join(d, "summary.json"), "w", encoding="utf-8") as f:
    json.dump({"method": method, "seed": seed, "best_epoch": best_epoch,
               "test": {"accuracy": 0.61, "accuracy_audio": 0.6, "accuracy_visual": 0.3}}, f)
  return d


def test_two_runs_overlaid(tmp_path):
  a = _fake_run(str(tmp_path), "redreg", 0, redreg=True)
  b = _fake_run(str(tmp_path), "inforeg", 1, inforeg=True)
  out = str(tmp_path / "figs")
  paths = plots.make_figures([a, b], out, smooth=0.6)
  assert sorted(os.path.basename(p) for p in paths) == [
      "accuracy.png", "fisher_traces.png", "gate_activity.png", "redreg_diagnostics.png"]
  for p in paths:
    assert os.path.dirname(p) == out
    _png_ok(p)


def test_run_without_redreg_keys(tmp_path, capsys):
  a = _fake_run(str(tmp_path), "joint", 0, rlc=False)
  out = str(tmp_path / "figs")
  assert plots.main([a, f"--out={out}", "--labels=baseline"]) == 0
  captured = capsys.readouterr()
  assert captured.out.split() == [os.path.join(out, "accuracy.png")]
  for name in ("redreg_diagnostics", "gate_activity", "fisher_traces"):
    assert f"skipped {name}.png" in captured.err
  _png_ok(os.path.join(out, "accuracy.png"))

  # With RLC (logged for every method) the RedReg panels are drawn, DGR/RS noted missing.
  b = _fake_run(str(tmp_path), "joint", 1)
  assert "redreg_diagnostics.png" in [os.path.basename(p) for p in plots.make_figures([b], out)]


def test_rs_panel_says_why_it_is_empty_and_panels_have_y_labels(tmp_path, monkeypatch):
  run = plots.load_run(_fake_run(str(tmp_path), "redreg", 0, redreg=True, visual_twins=False))
  figs = []
  monkeypatch.setattr(plots, "_save", lambda fig, out_dir, name: figs.append(fig) or name)
  plots.redreg_figure([run], plots._colors(1), str(tmp_path), 0.0)  # pylint: disable=protected-access
  axes = figs[0].axes
  by_title = {ax.get_title().split("\n")[0]: ax for ax in axes}
  rs_visual = by_title["RS (redundancy score): visual"]
  assert "twins never ran for visual" in rs_visual.get_title()
  assert any("never the dominant" in t.get_text() for t in rs_visual.texts)
  assert not by_title["RS (redundancy score): audio"].texts  # Audio's twins ran.
  assert [ax.get_ylabel() for ax in axes[:3]] == ["RLC", "S", "redundancy score"]


def test_load_run_separates_final_eval_and_dedupes_resumes(tmp_path):
  d = _fake_run(str(tmp_path), "redreg", 0, redreg=True, best_epoch=1)
  with open(os.path.join(d, "metrics.jsonl"), "a", encoding="utf-8") as f:
    # A resume re-logs step 7 (loss now 'nan', as the logger writes non-finite floats),
    # and a killed writer leaves half a line.
    f.write(json.dumps({"step": 7, "epoch": 1, "split": "train", "loss": "nan"}) + "\n")
    f.write('{"step": 8, "epo')
  run = plots.load_run(d)
  assert [r["step"] for r in run.train] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
  x, y = plots.series(run.train, "loss")
  assert np.isnan(y[list(x).index(7)])
  # Per-epoch validation only: the final best-checkpoint record (accuracy 0.123) is not in it.
  assert [r["epoch"] for r in run.validation] == [0, 1, 2]
  assert 0.123 not in [r["accuracy"] for r in run.validation]
  assert run.modalities == list(MODS)
  # RS is only measured for the valid (dominant) modality: masked steps are dropped.
  x, _ = plots.series(run.train, "red_norm_visual", mask_key="red_valid_visual")
  assert list(x) == [1, 2, 3]


def test_smooth_ema():
  y = np.array([1.0, 1.0, 1.0])
  np.testing.assert_allclose(plots.smooth_ema(y, 0.9), y)  # Debiased: no pull towards 0.
  y = np.array([0.0, 10.0, float("nan"), 10.0])
  # By hand, w=0.5: acc 0, 5, (skip), 7.5 over norms 0.5, 0.75, 0.875.
  np.testing.assert_allclose(plots.smooth_ema(y, 0.5),
                             [0.0, 5 / 0.75, 5 / 0.75, 7.5 / 0.875])
  np.testing.assert_array_equal(plots.smooth_ema(y, 0.0), y)
  with pytest.raises(ValueError, match="smoothing weight"):
    plots.smooth_ema(y, 1.0)


def test_errors_are_one_clear_line(tmp_path, capsys):
  out = str(tmp_path / "figs")
  assert plots.main([str(tmp_path / "missing"), f"--out={out}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is not a directory" in err

  empty = tmp_path / "empty"
  empty.mkdir()
  assert plots.main([str(empty), f"--out={out}"]) == 2
  assert "holds no metrics.jsonl" in capsys.readouterr().err

  (empty / "metrics.jsonl").write_text("", encoding="utf-8")
  assert plots.main([str(empty), f"--out={out}"]) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and "is empty" in err

  a = _fake_run(str(tmp_path), "joint", 0)
  assert plots.main([a, f"--out={out}", "--labels=x,y"]) == 2
  assert "2 labels for 1 runs" in capsys.readouterr().err
  assert not os.path.exists(out)


def test_sweep_root_expands_to_runs(tmp_path):
  root = tmp_path / "runs"
  root.mkdir()
  for seed in (0, 1):
    _fake_run(str(root), "joint", seed)
  runs = plots.find_workdirs([str(root)])
  assert [os.path.basename(r) for r in runs] == ["joint_s0", "joint_s1"]
  labels = plots._default_labels([plots.load_run(r) for r in runs])  # pylint: disable=protected-access
  assert labels == ["joint s0", "joint s1"]


def test_tsne_from_a_saved_workdir(tmp_path, capsys):
  """config.json + a best checkpoint, as train.py writes them -> features -> t-SNE PNG.

  The checkpoint holds the initial state: compiling a train step as well would take this
  test past a minute on a 2-core machine, and restore/evaluate/embed are what is tested.
  """
  from redreg_jax import checkpoint, train, tsne  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  config = tiny_config("joint")
  train._write_config(workdir, config)  # pylint: disable=protected-access
  state = train.Experiment(config).init_state()
  ckpt = checkpoint.Checkpointer(workdir)
  ckpt.save(7, state, {"best_accuracy": 0.5, "best_step": 7, "best_epoch": 0}, best=True)
  ckpt.close()

  # JSON turned the config's tuples into lists: the experiment must still rebuild from it.
  data = tsne.extract_features(workdir, "test", "best")
  n = config.data.num_test
  assert data["step"] == 0 and data["modalities"] == MODS
  assert data["label"].shape == (n,) and data["metrics"]["num_examples"] == n
  for m in MODS:
    x = data["features"][m]
    assert x.shape[0] == n and x.dtype == np.float32 and np.all(np.isfinite(x))
  out = tsne.plot_tsne(data, str(tmp_path / "tsne" / "t.png"), max_points=24)
  _png_ok(out)
  with Image.open(out) as im:
    assert im.size[0] > 2 * im.size[1]  # Three panels side by side: fused, audio, visual.
  err = capsys.readouterr().err  # Progress: one line per phase and per panel.
  assert "restored the best checkpoint (step 0)" in err and "t-SNE panel 3/3" in err

  with pytest.raises(tsne.TsneError, match="holds no checkpoint"):
    tsne.extract_features(workdir, "test", "latest")
  with pytest.raises(tsne.TsneError, match="not a run workdir"):
    tsne.tsne_figure(str(tmp_path), str(tmp_path / "x.png"))
  with pytest.raises(tsne.TsneError, match="max_points"):
    tsne.tsne_figure(workdir, str(tmp_path / "x.png"), max_points=2)
