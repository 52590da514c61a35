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
  runs = []
  for d in dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{d} is not a directory (pass workdirs or their parents).")
    for path in sorted(glob.glob(os.path.join(d, "**", "summary.json"), recursive=True)):
      with open(path, encoding="utf-8") as f:
        s = json.load(f)
      s["_path"] = os.path.dirname(path)
      runs.append(s)
  return runs


def _modalities(run, split):
  return sorted(k[len("accuracy_"):] for k in run[split] if k.startswith("accuracy_"))


def table_rows(runs, split="test"):
  groups = collections.OrderedDict()
  for r in runs:
    groups.setdefault((r["dataset"], r["method"]), []).append(r)
  rows = []
  for (dataset, method), rs in groups.items():
    mods = _modalities(rs[0], split)
    cols = ["accuracy"] + [f"accuracy_{m}" for m in mods] + ["macro_f1"]
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
    metric_cols = [k for k in rs[0] if isinstance(rs[0][k], tuple)]
    out.append(f"**{dataset}** ({split} split, %, mean ± std over seeds)\n")
    out.append("| method | " + " | ".join(metric_cols) + " | runs | wall s/run |")
    out.append("|---" * (len(metric_cols) + 3) + "|")
    for r in rs:
      cells = [f"{r[c][0]:.2f} ± {r[c][1]:.2f}" for c in metric_cols]
      out.append(f"| {r['method']} | " + " | ".join(cells) + f" | {r['runs']} | "
                 f"{r['wall_s']:.0f} |")
    out.append("")
  return "\n".join(out)


def write_csv(rows, path):
  keys = []
  for r in rows:
    for k in r:
      if k not in keys:
        keys.append(k)
  with open(path, "w", newline="", encoding="utf-8") as f:
    w = csv.writer(f)
    header = []
    for k in keys:
      header += [f"{k}_mean", f"{k}_std"] if isinstance(rows[0].get(k), tuple) else [k]
    w.writerow(header)
    for r in rows:
      line = []
      for k in keys:
        v = r.get(k, "")
        line += [f"{v[0]:.4f}", f"{v[1]:.4f}"] if isinstance(v, tuple) else [v]
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
  except FileNotFoundError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not runs:
    print(f"error: no summary.json found under {args.dirs}; run the sweep first.",
          file=sys.stderr)
    return 2
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
