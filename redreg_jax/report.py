r"""Results tables from workdirs: Markdown and CSV, mean ± std over seeds.

  python -m redreg_jax.report runs/synthetic [more dirs ...] [--csv=table.csv] [--split=test]

Every `summary.json` below the given directories is one run; runs are grouped by
(dataset, method) and each metric is reported as mean ± std over the group (std over
seeds, ddof 1; 0 for a single run), with the number of runs and mean wall time.
"""

from __future__ import annotations

import argparse
import collections
import csv
import glob
import json
import os
import sys

import numpy as np


def find_summaries(dirs):
  runs, seen = [], set()
  for d in dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{d} is not a directory (pass workdirs or their parents).")
    for path in sorted(glob.glob(os.path.join(d, "**", "summary.json"), recursive=True)):
      if os.path.realpath(path) in seen:  # Nested or repeated dirs: count each run once.
        continue
      seen.add(os.path.realpath(path))
      try:
        with open(path, encoding="utf-8") as f:
          s = json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e.msg}); delete it and re-run that "
                         "workdir's command to rewrite it.") from None
      s["_path"] = os.path.dirname(path)
      runs.append(s)
  return runs


def _modalities(run, split):
  return tuple(sorted(k[len("accuracy_"):] for k in run[split] if k.startswith("accuracy_")))


def _groups(runs, split):
  """{(dataset, method, modalities): runs}, and the modalities seen per dataset."""
  groups = collections.OrderedDict()
  all_mods = collections.defaultdict(set)
  for r in runs:
    # Unimodal baselines (config.modalities) share the method name: the modalities tell.
    mods = _modalities(r, split)
    all_mods[r["dataset"]].update(mods)
    groups.setdefault((r["dataset"], r["method"], mods), []).append(r)
  return groups, all_mods


def duplicate_seed_warnings(runs, split="test"):
  """One line per group where runs share a seed: their spread is not a spread over seeds."""
  out = []
  for (dataset, method, _), rs in _groups(runs, split)[0].items():
    seeds = collections.Counter(r["seed"] for r in rs)
    for seed, n in seeds.items():
      if n > 1:
        paths = ", ".join(r["_path"] for r in rs if r["seed"] == seed)
        out.append(f"warning: {n} {method} runs on {dataset} share seed {seed} ({paths}); "
                   "pass only one run per seed (e.g. one sweep root).")
  return out


def _row_order(groups, all_mods):
  """Per dataset: unimodal baselines first, then methods in `methods.METHODS` order."""
  from redreg_jax import methods  # pylint: disable=g-import-not-at-top
  known = list(methods.METHODS)
  datasets = list(dict.fromkeys(d for d, _, _ in groups))
  def key(group):
    dataset, method, mods = group
    return (datasets.index(dataset), set(mods) == all_mods[dataset],
            known.index(method) if method in known else len(known), method, mods)
  return sorted(groups, key=key)


def table_rows(runs, split="test"):
  groups, all_mods = _groups(runs, split)
  rows = []
  for dataset, method, mods in _row_order(groups, all_mods):
    rs = groups[(dataset, method, mods)]
    cols = ["accuracy"] + [f"accuracy_{m}" for m in mods] + ["macro_f1"]
    if set(mods) != all_mods[dataset]:
      method = f"{method} [{'+'.join(mods)} only]"
    row = {"dataset": dataset, "method": method, "runs": len(rs),
           "seeds": ",".join(str(r["seed"]) for r in rs),
           "wall_s": float(np.mean([r["wall_seconds"] for r in rs]))}
    for c in cols:
      vals = np.array([100.0 * r[split][c] for r in rs])
      row[c] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else 0.0)
    rows.append(row)
  return rows


def to_markdown(rows, split="test") -> str:
  out = []
  for dataset in dict.fromkeys(r["dataset"] for r in rows):
    rs = [r for r in rows if r["dataset"] == dataset]
    metric_cols = _metric_cols(rs)
    out.append(f"**{dataset}** ({split} split, %, mean ± std over seeds)\n")
    out.append("| method | " + " | ".join(metric_cols) + " | runs | wall s/run |")
    out.append("|---" * (len(metric_cols) + 3) + "|")
    for r in rs:
      cells = [f"{r[c][0]:.2f} ± {r[c][1]:.2f}" if c in r else "—" for c in metric_cols]
      out.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['runs']} | "
                 f"{r['wall_s']:.0f} |")
    out.append("")
  return "\n".join(out)


def _metric_cols(rows):
  """(mean, std) columns over all rows (modality sets may differ): accuracies first."""
  cols = list(dict.fromkeys(k for r in rows for k, v in r.items() if isinstance(v, tuple)))
  # accuracy, then accuracy_<m> by modality name, then the rest as first seen.
  return sorted(cols, key=lambda c: (not c.startswith("accuracy"), c != "accuracy",
                                     c if c.startswith("accuracy_") else ""))


def write_csv(rows, path):
  ordered = _metric_cols(rows)
  metric_cols = set(ordered)
  keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k not in metric_cols]
  keys = keys[:keys.index("wall_s")] + ordered + keys[keys.index("wall_s"):]
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    header = []
    for k in keys:
      header += [f"{k}_mean", f"{k}_std"] if k in metric_cols else [k]
    w.writerow(header)
    for r in rows:
      line = []
      for k in keys:
        v = r.get(k)
        if k in metric_cols:
          line += [f"{v[0]:.4f}", f"{v[1]:.4f}"] if v is not None else ["", ""]
        else:
          line.append("" if v is None else v)
      w.writerow(line)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("dirs", nargs="+")
  p.add_argument("--split", default="test", choices=("test", "validation"))
  p.add_argument("--csv", default=None, help="also write the table as CSV here")
  p.add_argument("--markdown", default=None, help="also write the Markdown table here")
  args = p.parse_args(argv)
  try:
    runs = find_summaries(args.dirs)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not runs:
    print(f"error: no summary.json found under {args.dirs}; run the sweep first.",
          file=sys.stderr)
    return 2
  for w in duplicate_seed_warnings(runs, args.split):
    print(w, file=sys.stderr)
  rows = table_rows(runs, args.split)
  md = to_markdown(rows, args.split)
  print(md)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(md)
  if args.csv:
    write_csv(rows, args.csv)
  return 0


if __name__ == "__main__":
  sys.exit(main())
