r"""How often a balancing method's regulation acted, from the runs' own metrics.jsonl.

  python -m redreg_jax.gate_stats runs/synthetic_w8 [more dirs ...] [--methods=redreg,...]

For every workdir below the given directories (one with a metrics.jsonl whose train
records carry RedReg's or InfoReg's diagnostics), per method over its seeds:

RedReg (the gate of Eq.25): the share of steps with the gate open; the share closed by
each factor (warm-up, window, monitor [r > R], co-information [sim vs tau]; several
factors can close one step, so these need not sum to the closed share); the range of
r_{m*} (Eq.21) of the dominant modality and of sim (Eq.23) on the steps after warm-up;
the first epoch in which co-information closed the gate on more than half of the steps;
the share of steps each modality was dominant.
InfoReg (Eq.11-16): the share of steps with alpha > 0 per modality.

docs/reproducing.md quotes this command's output for the released-code presets.
"""

from __future__ import annotations

import argparse
import collections
import glob
import itertools
import json
import os
import sys

import numpy as np

FACTORS = ("warmup", "window", "monitor", "coinfo")


def _train_records(workdir: str) -> list[dict]:
  out = []
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    for line in f:
      try:
        rec = json.loads(line)
      except json.JSONDecodeError:
        continue
      if rec.get("split") == "train":
        out.append(rec)
  return out


def _method_of(workdir: str) -> tuple[str, tuple[str, ...]]:
  with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
    cfg = json.load(f)
  return cfg.get("method", "?"), tuple(cfg.get("modalities") or ())


def redreg_stats(records: list[dict], modalities: list[str]) -> dict:
  """Gate statistics of one RedReg run (see the module docstring)."""
  recs = [r for r in records if "gate_open" in r]
  if not recs:
    return {}
  n = len(recs)
  out = {"steps": n, "open": sum(r["gate_open"] for r in recs) / n}
  for f in FACTORS:
    out[f"closed_by_{f}"] = sum(r[f"gate_closed_by_{f}"] for r in recs) / n
  after = [r for r in recs if not r["gate_closed_by_warmup"]]
  r_dom = [r[f"r_{modalities[int(r['dominant'])]}"] for r in after
           if r.get(f"red_valid_{modalities[int(r['dominant'])]}", 1.0)]
  sims = [r["sim"] for r in after]
  out["r_dom"] = (min(r_dom), float(np.median(r_dom)), max(r_dom)) if r_dom else None
  out["sim"] = (min(sims), float(np.median(sims)), max(sims)) if sims else None
  by_epoch = collections.defaultdict(list)
  for r in recs:
    by_epoch[int(r["epoch"])].append(r["gate_closed_by_coinfo"])
  closing = [e for e, v in sorted(by_epoch.items()) if np.mean(v) > 0.5]
  out["coinfo_closes_from_epoch"] = closing[0] if closing else None
  for i, m in enumerate(modalities):
    out[f"dominant_{m}"] = sum(int(r["dominant"]) == i for r in recs) / n
  return out


def inforeg_stats(records: list[dict], modalities: list[str]) -> dict:
  """Share of steps on which InfoReg's regulation (alpha > 0) acted, per modality."""
  recs = [r for r in records if f"alpha_{modalities[0]}" in r]
  if not recs:
    return {}
  return {"steps": len(recs), **{f"active_{m}": sum(r[f"alpha_{m}"] > 0 for r in recs)
                                 / len(recs) for m in modalities}}


def _modality_order(recs: list[dict], mods: list[str]) -> list[str]:
  """The transform's modality order, which `dominant` indexes (records sort their keys).

  m* = argmax_m p_m (the transform's dominant modality), so the order is the
  permutation under which `dominant` names the modality with the largest p_m most often.
  """
  if not all(f"p_{m}" in recs[0] for m in mods):
    return mods
  best, hits = mods, -1
  for perm in itertools.permutations(mods):
    n = sum(perm[int(r["dominant"])] == max(mods, key=lambda m: r[f"p_{m}"]) for r in recs
            if "dominant" in r)
    if n > hits:
      best, hits = list(perm), n
  return best


def _fmt_range(t):
  return "—" if t is None else f"{t[0]:.3g} / {t[1]:.3g} / {t[2]:.3g}"


def collect(dirs, methods=None) -> dict:
  """{method: [(workdir, stats)]} for every run below `dirs`."""
  found = collections.defaultdict(list)
  for d in dirs:
    for path in sorted(glob.glob(os.path.join(d, "**", "metrics.jsonl"), recursive=True)):
      wd = os.path.dirname(path)
      if not os.path.exists(os.path.join(wd, "config.json")):
        continue
      method, subset = _method_of(wd)
      if methods and method not in methods:
        continue
      recs = _train_records(wd)
      if not recs:
        continue
      mods = list(subset) or sorted({k[len("accuracy_"):] for k in recs[0]
                                     if k.startswith("accuracy_")})
      order = _modality_order(recs, mods)
      stats = redreg_stats(recs, order) or inforeg_stats(recs, mods)
      if stats:
        found[method].append((wd, stats))
  return found


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("dirs", nargs="+")
  p.add_argument("--methods", default="", help="comma-separated; default: every method")
  args = p.parse_args(argv)
  methods = [m for m in args.methods.split(",") if m]
  found = collect(args.dirs, methods)
  if not found:
    print("No run with RedReg or InfoReg diagnostics below " + ", ".join(args.dirs))
    return 1
  red = {m: v for m, v in found.items() if "open" in v[0][1]}
  info = {m: v for m, v in found.items() if "open" not in v[0][1]}
  if red:
    print("| method | runs | steps | gate open | closed: warm-up | window | monitor | "
          "co-info | r_{m*} min / median / max | sim min / median / max | "
          "co-info closes from epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, runs in red.items():
      st = [s for _, s in runs]
      mean = lambda k: 100 * np.mean([s[k] for s in st])
      rs = [s["r_dom"] for s in st if s["r_dom"]]
      sims = [s["sim"] for s in st if s["sim"]]
      r_rng = (min(r[0] for r in rs), float(np.median([r[1] for r in rs])),
               max(r[2] for r in rs)) if rs else None
      s_rng = (min(r[0] for r in sims), float(np.median([r[1] for r in sims])),
               max(r[2] for r in sims)) if sims else None
      epochs = [s["coinfo_closes_from_epoch"] for s in st]
      print(f"| `{m}` | {len(st)} | {st[0]['steps']} | {mean('open'):.1f}% | "
            + " | ".join(f"{mean(f'closed_by_{f}'):.1f}%" for f in FACTORS)
            + f" | {_fmt_range(r_rng)} | {_fmt_range(s_rng)} | "
            + ", ".join("never" if e is None else str(e) for e in epochs) + " |")
  if info:
    mods = sorted({k[len("active_"):] for v in info.values() for k in v[0][1]
                   if k.startswith("active_")})
    print("\n| method | runs | steps | " + " | ".join(f"alpha > 0: {m}" for m in mods) + " |")
    print("|---|---|---|" + "---|" * len(mods))
    for m, runs in info.items():
      st = [s for _, s in runs]
      print(f"| `{m}` | {len(st)} | {st[0]['steps']} | " + " | ".join(
          f"{100 * np.mean([s.get(f'active_{x}', 0.0) for s in st]):.1f}%" for x in mods)
            + " |")
  return 0


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
