r"""Diagnostic figures from run workdirs (several runs overlaid).

  python -m redreg_jax.plots runs/synthetic/joint runs/synthetic/redreg --out=figures \
      [--labels=joint,redreg] [--smooth=0.6]

Writes PNGs into --out:
  redreg_diagnostics.png  RLC (rlc_<m>), DGR (S_<m>) and RS (red_norm_<m>, else
                          red_raw_<m>) per modality over steps: RedReg paper Fig.1/Fig.3.
  accuracy.png            validation accuracy, fused and per modality, per epoch.
  fisher_traces.png       InfoReg's Tr(F_m) estimate (trace_<m>) over steps.
  gate_activity.png       fraction of steps the RedReg gate was open per epoch, and the
                          fraction each factor kept it closed.
A figure none of the runs has data for is skipped with a note on stderr. A directory
without metrics.jsonl is searched for runs below it (e.g. a sweep root).

Grid sweeps (`redreg_jax.sweep --grid`): `sweep_figures(report.table_rows(...), out)`,
or `python -m redreg_jax.report ROOT --plots=DIR`, writes one PNG per swept field,
sweep_<field>.png (sweep_<dataset>_<field>.png for several datasets): the split's
accuracy, fused and per modality branch, against the field's values, one line per method
(and per value of the other swept fields), error bars the std over seeds. Rows that do
not vary the field (e.g. a `joint` reference without `optim.threshold`) are dashed
horizontal lines.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os
import re
import sys
from typing import Sequence

import numpy as np

try:
  import matplotlib
  from matplotlib.figure import Figure  # Figure + savefig uses Agg; no pyplot global state.
  from matplotlib.ticker import MaxNLocator
except ImportError as e:
  raise ImportError("redreg_jax.plots needs matplotlib: pip install 'matplotlib>=3.8' "
                    "(or pip install -e '.[plots]').") from e

GATE_FACTORS = ("warmup", "window", "monitor", "coinfo")
# (title, key prefixes tried in order): RedReg paper Fig.1/Fig.3 panels.
REDREG_PANELS = (("RLC (representation-logit coupling)", ("rlc_",)),
                 ("DGR (effective gain growth rate S)", ("S_",)),
                 ("RS (redundancy score)", ("red_norm_", "red_raw_")))
# y-axis label per panel (same order).
REDREG_YLABELS = ("RLC", "S", "redundancy score")


class RunDirError(ValueError):
  """A directory that holds no readable run."""


@dataclasses.dataclass
class Run:
  """The records of one workdir, split by kind and de-duplicated after resumes."""
  path: str
  config: dict
  summary: dict | None
  train: list[dict]        # per logged step, sorted by step
  train_epoch: list[dict]  # per epoch, sorted by epoch
  validation: list[dict]   # per-epoch validation, sorted by epoch
  label: str = ""

  @property
  def modalities(self) -> list[str]:
    recs = self.validation or self.train
    keys = recs[-1] if recs else {}
    return [k[len("accuracy_"):] for k in keys if k.startswith("accuracy_")]


# ---------------------------------------------------------------------------------------
# Reading workdirs.
# ---------------------------------------------------------------------------------------

def _number(v):
  """JSON value -> float; the logger writes non-finite floats as 'nan'/'inf' strings."""
  if isinstance(v, bool):
    return float(v)
  if isinstance(v, (int, float)):
    return float(v)
  if isinstance(v, str):
    try:
      return float(v)
    except ValueError:
      return None
  return None


def _read_jsonl(path: str) -> list[dict]:
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  out = []
  for i, line in enumerate(lines):
    if not line.strip():
      continue
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError as e:
      if i == len(lines) - 1:  # A run still writing (or killed mid-line): drop the tail.
        break
      raise RunDirError(f"{path} line {i + 1} is not valid JSON ({e.msg}).") from None
  return out


def _read_json(path: str):
  if not os.path.exists(path):
    return None
  with open(path, encoding="utf-8") as f:
    return json.load(f)


def load_run(workdir: str) -> Run:
  """Reads config.json, summary.json and metrics.jsonl of one workdir."""
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.isfile(path):
    raise RunDirError(f"{workdir} has no metrics.jsonl (not a run workdir; pass the --workdir "
                      "given to launch.py).")
  records = _read_jsonl(path)
  if not records:
    raise RunDirError(f"{path} is empty: the run has not logged a step yet.")
  by_split: dict[str, list[dict]] = {}
  for r in records:
    by_split.setdefault(r.get("split", "train"), []).append(r)
  # A resumed run re-logs the steps after its checkpoint: the last record of a step wins.
  train = list({r["step"]: r for r in by_split.get("train", [])}.values())
  train_epoch = list({r["epoch"]: r for r in by_split.get("train_epoch", [])}.values())
  # The final evaluation of the best checkpoint is also split 'validation' but logged with
  # the best epoch and the last step; per-epoch records share (step, epoch) with train_epoch.
  epoch_ends = {(r["step"], r["epoch"]) for r in train_epoch}
  validation = list({r["epoch"]: r for r in by_split.get("validation", [])
                     if (r.get("step"), r.get("epoch")) in epoch_ends}.values())
  return Run(path=workdir, config=_read_json(os.path.join(workdir, "config.json")) or {},
             summary=_read_json(os.path.join(workdir, "summary.json")),
             train=sorted(train, key=lambda r: r["step"]),
             train_epoch=sorted(train_epoch, key=lambda r: r["epoch"]),
             validation=sorted(validation, key=lambda r: r["epoch"]))


def find_workdirs(dirs: Sequence[str]) -> list[str]:
  """Each dir as a workdir, or the workdirs below it; raises RunDirError if none."""
  if not dirs:
    raise RunDirError("no run directories given.")
  out = []
  for d in dirs:
    if not os.path.isdir(d):
      raise RunDirError(f"{d} is not a directory (pass run workdirs or a sweep root).")
    if os.path.isfile(os.path.join(d, "metrics.jsonl")):
      out.append(d)
      continue
    found = sorted(os.path.dirname(p) for p in glob.glob(
        os.path.join(d, "**", "metrics.jsonl"), recursive=True))
    if not found:
      raise RunDirError(f"{d} holds no metrics.jsonl (no run has been started there).")
    out += found
  return out


def _default_labels(runs: Sequence[Run]) -> list[str]:
  labels = []
  for r in runs:
    src = r.config or r.summary or {}
    method, seed = src.get("method"), src.get("seed")
    mods = r.config.get("modalities") or ()
    label = os.path.basename(os.path.normpath(r.path)) if method is None else str(method)
    if mods:  # Unimodal / subset baselines share the method name: say which encoders.
      label += f"[{'+'.join(mods)}]"
    labels.append(label if seed is None else f"{label} s{seed}")
  dup = {l for l in labels if labels.count(l) > 1}
  return [f"{l} ({os.path.basename(os.path.normpath(r.path))})" if l in dup else l
          for l, r in zip(labels, runs)]


# ---------------------------------------------------------------------------------------
# Series helpers.
# ---------------------------------------------------------------------------------------

def series(records: Sequence[dict], key: str, x: str = "step", mask_key: str | None = None):
  """(x, y) arrays of the records holding a numeric `key` (rows with mask_key == 0 dropped)."""
  xs, ys = [], []
  for r in records:
    y = _number(r.get(key))
    if y is None or x not in r:
      continue
    if mask_key is not None and _number(r.get(mask_key)) == 0.0:
      continue
    xs.append(r[x])
    ys.append(y)
  return np.asarray(xs, np.float64), np.asarray(ys, np.float64)


def smooth_ema(y: np.ndarray, weight: float) -> np.ndarray:
  """TensorBoard-style debiased EMA; weight 0 returns y. Non-finite points are skipped."""
  if not 0.0 <= weight < 1.0:
    raise ValueError(f"smoothing weight must be in [0, 1), got {weight}.")
  if weight == 0.0 or y.size == 0:
    return y
  out = np.empty_like(y)
  acc, norm = 0.0, 0.0
  for i, v in enumerate(y):
    if math.isfinite(v):
      acc = weight * acc + (1.0 - weight) * v
      norm = weight * norm + (1.0 - weight)
    out[i] = acc / norm if norm > 0 else v
  return out


def _has(records, key) -> bool:
  return any(_number(r.get(key)) is not None for r in records)


def _colors(n: int):
  cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
  return [cmap(i % cmap.N) for i in range(n)]


def _plot_steps(ax, run: Run, key: str, color, smooth: float, mask_key=None) -> int:
  """Plots one logged series; returns how many points it drew."""
  if mask_key is not None and not _has(run.train, mask_key):
    mask_key = None
  x, y = series(run.train, key, mask_key=mask_key)
  if not x.size:
    return 0
  # Sparse series (e.g. RLC every probe_every_steps, or a short run) get markers.
  marker = dict(marker="o", markersize=2.5) if len(x) < 60 else {}
  if smooth > 0:
    ax.plot(x, y, color=color, alpha=0.25, linewidth=0.8)
    ax.plot(x, smooth_ema(y, smooth), color=color, label=run.label, linewidth=1.4, **marker)
  else:
    ax.plot(x, y, color=color, label=run.label, linewidth=1.2, **marker)
  return int(x.size)


def _missing_note(ax, title: str, missing: list[str], total: int,
                  never_ran: Sequence[str] = (), modality: str = "") -> None:
  """Title with which runs lack the series; a note in an empty panel saying why."""
  notes = [f"not logged by: {', '.join(missing)}"] if missing and len(missing) < total else []
  if never_ran:  # RedReg's twins run for the dominant modality only (Eq.17-20).
    notes.append(f"twins never ran for {modality} in: {', '.join(never_ran)}")
  if len(missing) == total:
    ax.set_title(f"{title}\n(not logged by any run)", fontsize=9)
    ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes,
            color="gray")
    return
  ax.set_title(title + "".join(f"\n({n})" for n in notes), fontsize=9)
  if len(missing) + len(never_ran) >= total and never_ran:
    ax.text(0.5, 0.5, f"no score: {modality} was never the dominant\nmodality, so its "
            "noisy twins never ran", ha="center", va="center", transform=ax.transAxes,
            color="gray", fontsize=8)


def _save(fig: Figure, out_dir: str, name: str) -> str:
  path = os.path.join(out_dir, name)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  return path


def _legend(axes) -> None:
  """One legend with every run, on the first panel that has data."""
  handles, first = {}, None
  for ax in np.ravel(axes):
    for h, l in zip(*ax.get_legend_handles_labels()):
      handles.setdefault(l, h)
      first = first or ax
  if handles:
    first.legend(list(handles.values()), list(handles), fontsize=7, loc="best")


def _style(ax, xlabel: str) -> None:
  ax.set_xlabel(xlabel, fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)
  if xlabel == "epoch":
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# ---------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------

def _modalities(runs: Sequence[Run]) -> list[str]:
  return list(dict.fromkeys(m for r in runs for m in r.modalities))


def redreg_figure(runs: Sequence[Run], colors, out_dir: str, smooth: float) -> str | None:
  """RLC, DGR and RS per modality over steps (RedReg paper Fig.1/Fig.3)."""
  mods = _modalities(runs)
  key_of = {}  # (run index, panel, modality) -> the logged key used
  for i, r in enumerate(runs):
    for p, (_, prefixes) in enumerate(REDREG_PANELS):
      for m in mods:
        key = next((pre + m for pre in prefixes if _has(r.train, pre + m)), None)
        if key:
          key_of[i, p, m] = key
  if not key_of:
    return None
  fig = Figure(figsize=(4.2 * len(REDREG_PANELS), 2.9 * len(mods)))
  axes = fig.subplots(len(mods), len(REDREG_PANELS), squeeze=False)
  for row, m in enumerate(mods):
    for p, (title, _) in enumerate(REDREG_PANELS):
      ax = axes[row, p]
      missing, never_ran = [], []
      for i, r in enumerate(runs):
        key = key_of.get((i, p, m))
        if key is None:
          missing.append(r.label)
          continue
        # With twins='dominant' only the dominant modality's RS is measured each step.
        mask = f"red_valid_{m}" if key.startswith("red_") else None
        if not _plot_steps(ax, r, key, colors[i], smooth, mask_key=mask) and mask:
          never_ran.append(r.label)
      _missing_note(ax, f"{title}: {m}", missing, len(runs), never_ran, m)
      ax.set_ylabel(REDREG_YLABELS[p], fontsize=8)
      _style(ax, "step")
  _legend(axes)
  return _save(fig, out_dir, "redreg_diagnostics.png")


def accuracy_figure(runs: Sequence[Run], colors, out_dir: str) -> str | None:
  """Validation accuracy per epoch: fused and each modality's branch."""
  mods = _modalities(runs)
  keys = ["accuracy"] + [f"accuracy_{m}" for m in mods]
  if not any(_has(r.validation, k) for r in runs for k in keys):
    return None
  fig = Figure(figsize=(4.2 * len(keys), 3.3))
  axes = fig.subplots(1, len(keys), squeeze=False)
  for ax, key in zip(axes[0], keys):
    missing = []
    for i, r in enumerate(runs):
      x, y = series(r.validation, key, x="epoch")
      if not x.size:
        missing.append(r.label)
        continue
      label = r.label
      test = (r.summary or {}).get("test", {}).get(key)
      if test is not None:
        label += f" (test {100 * test:.1f}%)"
      ax.plot(x, 100 * y, marker="o", markersize=3, color=colors[i], label=label)
      best = (r.summary or {}).get("best_epoch")
      if best is not None and best in x:
        ax.plot([best], [100 * y[list(x).index(best)]], marker="*", markersize=11,
                color=colors[i])
    name = "fused" if key == "accuracy" else key[len("accuracy_"):]
    _missing_note(ax, f"validation accuracy: {name} (★ best epoch)", missing, len(runs))
    ax.set_ylabel("%", fontsize=8)
    _style(ax, "epoch")
    ax.legend(fontsize=7, loc="best")
  return _save(fig, out_dir, "accuracy.png")


def fisher_figure(runs: Sequence[Run], colors, out_dir: str, smooth: float) -> str | None:
  """InfoReg's per-modality Fisher-trace estimate Tr(F_m) (InfoReg Eq.7, 13) over steps."""
  mods = [m for m in _modalities(runs) if any(_has(r.train, f"trace_{m}") for r in runs)]
  if not mods:
    return None
  fig = Figure(figsize=(4.6 * len(mods), 3.3))
  axes = fig.subplots(1, len(mods), squeeze=False)
  for ax, m in zip(axes[0], mods):
    missing = []
    for i, r in enumerate(runs):
      if not _has(r.train, f"trace_{m}"):
        missing.append(r.label)
        continue
      _plot_steps(ax, r, f"trace_{m}", colors[i], smooth)
    _missing_note(ax, f"Fisher trace Tr(F), epoch running mean: {m}", missing, len(runs))
    y = np.concatenate([series(r.train, f"trace_{m}")[1] for r in runs])
    y = y[np.isfinite(y)]
    if y.size and np.all(y > 0):
      ax.set_yscale("log")  # Traces shrink by orders of magnitude after the early phase.
    ax.set_ylabel("Tr(F)", fontsize=8)
    _style(ax, "step")
  _legend(axes)
  return _save(fig, out_dir, "fisher_traces.png")


def gate_figure(runs: Sequence[Run], colors, out_dir: str) -> str | None:
  """RedReg's gate (Eq.25) per epoch: open fraction for every run, then closing factors."""
  gated = [i for i, r in enumerate(runs) if _has(r.train_epoch, "gate_open_fraction")]
  if not gated:
    return None
  fig = Figure(figsize=(4.4 * (1 + len(gated)), 3.3))
  axes = fig.subplots(1, 1 + len(gated), squeeze=False)[0]
  ax = axes[0]
  for i in gated:
    x, y = series(runs[i].train_epoch, "gate_open_fraction", x="epoch")
    ax.plot(x, y, marker="o", markersize=3, color=colors[i], label=runs[i].label)
  missing = [r.label for i, r in enumerate(runs) if i not in gated]
  _missing_note(ax, "gate open (fraction of steps)", missing, len(runs))
  ax.set_ylim(-0.05, 1.05)
  ax.legend(fontsize=7, loc="best")
  styles = dict(zip(GATE_FACTORS, ("o-", "s--", "^-.", "d:")))
  factor_colors = dict(zip(GATE_FACTORS, _colors(10)[6:]))  # Apart from the first runs'.
  for ax, i in zip(axes[1:], gated):
    for f in GATE_FACTORS:
      # Factors are not exclusive: several can hold the gate closed on the same step.
      x, y = series(runs[i].train_epoch, f"gate_closed_by_{f}", x="epoch")
      if x.size:
        ax.plot(x, y, styles[f], markersize=3, color=factor_colors[f], label=f)
    ax.set_title(f"{runs[i].label}: gate closed by (fraction)", fontsize=9)
    ax.set_ylim(-0.05, 1.05)
    ax.legend(fontsize=7, loc="best")
  for ax in axes:
    ax.set_ylabel("fraction of steps", fontsize=8)
    _style(ax, "epoch")
  return _save(fig, out_dir, "gate_activity.png")


def _sweep_x(values):
  """Plot positions of grid values: numeric as themselves, anything else as categories."""
  numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
  if numeric:
    return {json.dumps(v): float(v) for v in values}, None
  order = list(dict.fromkeys(json.dumps(v) for v in values))
  return {k: float(i) for i, k in enumerate(order)}, order


def sweep_figures(rows: Sequence[dict], out_dir: str, split: str = "test") -> list[str]:
  """Accuracy (fused and each branch) against every swept value; one PNG per field.

  Args:
    rows: `report.table_rows(...)` rows; each has a 'grid' {field: value or None} and
      (mean, std) accuracies in %.
    out_dir: created if needed.
    split: the split the rows were computed on (for the axis labels).
  Returns:
    Paths of the PNGs written (none when no row varies a field).
  """
  from redreg_jax import report  # pylint: disable=g-import-not-at-top
  datasets = list(dict.fromkeys(r["dataset"] for r in rows))
  paths = []
  for dataset in datasets:
    rs = [r for r in rows if r["dataset"] == dataset]
    fields = list(dict.fromkeys(f for r in rs for f in r.get("grid", {})))
    mods = sorted({k[len("accuracy_"):] for r in rs for k in r if k.startswith("accuracy_")})
    keys = ["accuracy"] + [f"accuracy_{m}" for m in mods]
    for field in fields:
      swept = [r for r in rs if r["grid"].get(field) is not None]
      # A field only some rows vary: plot against it only if more than one value is seen.
      if len({json.dumps(r["grid"][field]) for r in swept}) < 2:
        continue
      pos, categories = _sweep_x([r["grid"][field] for r in swept])
      # One line per (method, values of the other swept fields).
      lines: dict[str, list[dict]] = {}
      for r in swept:
        others = ", ".join(f"{f}={report.format_value(v)}" for f, v in r["grid"].items()
                           if f != field and v is not None)
        lines.setdefault(r["method"] + (f" ({others})" if others else ""), []).append(r)
      refs = [r for r in rs if r["grid"].get(field) is None]
      colors = _colors(len(lines) + len(refs))
      fig = Figure(figsize=(4.4 * len(keys), 3.5))
      axes = fig.subplots(1, len(keys), squeeze=False)[0]
      xs_all = sorted(set(pos.values()))
      for ax, key in zip(axes, keys):
        for i, (label, lrs) in enumerate(lines.items()):
          pts = sorted((pos[json.dumps(r["grid"][field])], r[key][0], r[key][1] or 0.0)
                       for r in lrs if key in r)
          if not pts:
            continue
          x, y, err = (np.asarray(c, np.float64) for c in zip(*pts))
          ax.errorbar(x, y, yerr=err, marker="o", markersize=3.5, capsize=3, color=colors[i],
                      label=label)
        for j, r in enumerate(refs):
          if key in r:
            mean, std = r[key][0], r[key][1] or 0.0
            c = colors[len(lines) + j]
            ax.axhline(mean, color=c, linestyle="--", linewidth=1.1,
                       label=f"{r['method']} (no {field} sweep)")
            ax.axhspan(mean - std, mean + std, color=c, alpha=0.1)
        name = "fused" if key == "accuracy" else f"{key[len('accuracy_'):]} branch"
        ax.set_title(f"{dataset}: {name} accuracy", fontsize=9)
        ax.set_ylabel(f"{split} accuracy (%), mean ± std over seeds", fontsize=8)
        _style(ax, field)
        if categories is not None:
          ax.set_xticks(range(len(categories)))
          ax.set_xticklabels([report.format_value(json.loads(c)) for c in categories])
        elif xs_all[0] > 0 and xs_all[-1] / xs_all[0] >= 10:
          ax.set_xscale("log")  # e.g. thresholds 0.05 ... 1.5: spread the small values.
          ax.set_xticks(xs_all)
          ax.set_xticklabels([f"{x:g}" for x in xs_all])
          ax.minorticks_off()
        else:
          ax.set_xticks(xs_all)
        ax.legend(fontsize=7, loc="best")
      os.makedirs(out_dir, exist_ok=True)
      stem = re.sub(r"[^A-Za-z0-9._+-]", "_", field)
      if len(datasets) > 1:
        stem = re.sub(r"[^A-Za-z0-9._+-]", "_", dataset) + "_" + stem
      paths.append(_save(fig, out_dir, f"sweep_{stem}.png"))
  return paths


def make_figures(dirs: Sequence[str], out_dir: str, labels: Sequence[str] | None = None,
                 smooth: float = 0.0, notes=None) -> list[str]:
  """Writes the diagnostic PNGs for the runs in `dirs` into out_dir; returns their paths.

  Args:
    dirs: run workdirs (or directories holding workdirs below them).
    out_dir: created if needed.
    labels: one legend label per run (default: method and seed from config.json).
    smooth: EMA weight in [0, 1) for per-step curves (0: raw).
    notes: optional list that receives one line per figure skipped for lack of data.
  Returns:
    Paths of the PNGs written.
  Raises:
    RunDirError: a directory is missing, holds no run, or has an empty metrics.jsonl.
  """
  if not 0.0 <= smooth < 1.0:
    raise ValueError(f"smooth must be in [0, 1) (EMA weight), got {smooth}.")
  runs = [load_run(d) for d in find_workdirs(dirs)]
  names = _default_labels(runs) if labels is None else list(labels)
  if len(names) != len(runs):
    raise RunDirError(f"{len(names)} labels for {len(runs)} runs "
                      f"({', '.join(r.path for r in runs)}); give one label per run.")
  for r, name in zip(runs, names):
    r.label = name
  os.makedirs(out_dir, exist_ok=True)
  colors = _colors(len(runs))
  made = {
      "redreg_diagnostics.png (no rlc_/S_/red_ keys: not RedReg runs)":
          redreg_figure(runs, colors, out_dir, smooth),
      "accuracy.png (no validation records yet)": accuracy_figure(runs, colors, out_dir),
      "fisher_traces.png (no trace_<m> keys: not InfoReg runs)":
          fisher_figure(runs, colors, out_dir, smooth),
      "gate_activity.png (no gate_open_fraction: not RedReg runs)":
          gate_figure(runs, colors, out_dir),
  }
  if notes is not None:
    notes += [f"skipped {k}" for k, v in made.items() if v is None]
  return [p for p in made.values() if p is not None]


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("dirs", nargs="+", help="run workdirs (or a sweep root)")
  p.add_argument("--out", required=True, help="directory for the PNGs")
  p.add_argument("--labels", default=None, help="comma-separated, one per run")
  p.add_argument("--smooth", type=float, default=0.0,
                 help="EMA weight in [0, 1) for per-step curves, e.g. 0.6 (default 0: raw)")
  args = p.parse_args(argv)
  labels = [l.strip() for l in args.labels.split(",")] if args.labels else None
  notes: list[str] = []
  try:
    paths = make_figures(args.dirs, args.out, labels, smooth=args.smooth, notes=notes)
  except (RunDirError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for n in notes:
    print(n, file=sys.stderr)
  for path in paths:
    print(path)
  return 0


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
