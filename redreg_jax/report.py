r"""Results tables from workdirs: Markdown and CSV, mean ± std over seeds.

  python -m redreg_jax.report runs/synthetic [more dirs ...] [--csv=table.csv] [--split=test]
      [--by=auto|none|FIELD[,FIELD2]] [--plots=DIR]

Every `summary.json` below the given directories is one run; runs are grouped by
(dataset, method, modalities, grid point) and each metric is reported as mean ± std over
the group (std over seeds, ddof 1; a single run shows its value alone), with the number of runs and mean
wall time. Accuracies, Shapley values (`shapley_<m>`, accuracy points a modality adds,
see `metrics.modality_contributions`), their shares (`shapley_share_<m>`, CSV only) and
the imbalance gap (`imbalance_gap`, max - min Shapley value) are in %; a metric shows up
when every run of a row has it (runs from before Shapley values had none).

Grid points (`redreg_jax.sweep --grid`): the swept values are read from each run's
config.json (flattened to dotted fields, e.g. `optim.threshold`); a run without one
falls back to the FIELD=VALUE parts of its path (the sweep's layout, percent-decoded).
`--by=auto` (the default) detects the swept fields: within each (dataset, method,
modalities), the fields every run has that take more than one value, except `seed` and
the `train.*` bookkeeping (logging, checkpoints, input threads). Each swept field gets a
column after `method`; rows of one method are ordered by its values, a row that does
not vary a column shows its own value there, "—" when its config lacks the field.
`--by=FIELD[,FIELD2]` groups by exactly these fields instead; `--by=none` averages over
everything but (dataset, method, modalities), as before grids existed.
`--plots=DIR` also writes `plots.sweep_figures`: accuracy (fused and per branch) against
each swept value, one PNG per field, error bars the std over seeds.
"""

from __future__ import annotations

import argparse
import ast
import collections
import csv
import glob
import json
import os
import re
import sys
import time
import urllib.parse

import numpy as np


PROGRESS_EVERY = 100  # Runs read between progress lines on stderr (fewer: silent).


def find_summaries(dirs):
  """Every run (summary.json) below `dirs`, each once; progress on stderr for many runs."""
  paths, seen = [], set()
  for d in dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f"{d} is not a directory (pass workdirs or their parents).")
    for path in sorted(glob.glob(os.path.join(d, "**", "summary.json"), recursive=True)):
      if os.path.realpath(path) not in seen:  # Nested or repeated dirs: each run once.
        seen.add(os.path.realpath(path))
        paths.append(path)
  runs, t0 = [], time.perf_counter()
  for i, path in enumerate(paths):
    try:
      with open(path, encoding="utf-8") as f:
        s = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path} is not valid JSON ({e.msg}); delete it and re-run that "
                       "workdir's command to rewrite it.") from None
    s["_path"] = os.path.dirname(path)
    s["_config"] = _read_config(os.path.join(s["_path"], "config.json"))
    runs.append(s)
    if len(paths) >= PROGRESS_EVERY and (i + 1) % PROGRESS_EVERY == 0:
      print(f"report: read {i + 1}/{len(paths)} runs ({time.perf_counter() - t0:.1f}s)",
            file=sys.stderr, flush=True)
  return runs


def _read_config(path):
  """The run's config.json, or None (absent or unreadable: the path is used instead)."""
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict) and v:
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


_POINT_PART = re.compile(r"^[A-Za-z_][\w.]*=")


def _parse_value(text):
  try:
    v = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
  return list(v) if isinstance(v, tuple) else v  # As config.json spells tuples.


def run_params(run) -> dict:
  """Flat {dotted field: value} of a run: its config.json, else FIELD=V parts of its path."""
  if run.get("_config") is not None:
    return _flatten(run["_config"])
  out = {}
  for part in os.path.normpath(run.get("_path", "")).split(os.sep):
    if not _POINT_PART.match(part):
      continue
    # The sweep percent-encodes ',' inside values: a literal ',' separates fields.
    for item in part.split(","):
      field, eq, value = item.partition("=")
      if eq and _POINT_PART.match(item):
        out[field] = _parse_value(urllib.parse.unquote(value))
  return out


def _canon(v) -> str:
  return json.dumps(v, sort_keys=True)


def _ignored(field) -> bool:
  return field == "seed" or field.startswith("train.")


def swept_fields(runs, by="auto") -> list[str]:
  """The fields the runs of one (dataset, method, modalities) are grouped by (see --by)."""
  if by == "none":
    return []
  if by != "auto":
    return list(by)
  params = [run_params(r) for r in runs]
  common = set.intersection(*(set(p) for p in params)) if params else set()
  return sorted(f for f in common if not _ignored(f) and len({_canon(p[f]) for p in params}) > 1)


def _modalities(run, split):
  return tuple(sorted(k[len("accuracy_"):] for k in run[split] if k.startswith("accuracy_")))


def _groups(runs, split, by="auto"):
  """{(dataset, method, modalities, grid point): runs}, modalities seen per dataset, and
  the swept fields per dataset (a grid point is ((field, canonical value), ...))."""
  base = collections.OrderedDict()
  all_mods = collections.defaultdict(set)
  for r in runs:
    # Unimodal baselines (config.modalities) share the method name: the modalities tell.
    mods = _modalities(r, split)
    all_mods[r["dataset"]].update(mods)
    base.setdefault((r["dataset"], r["method"], mods), []).append(r)
  groups = collections.OrderedDict()
  fields_of = collections.defaultdict(list)
  for (dataset, method, mods), rs in base.items():
    fields = swept_fields(rs, by)
    fields_of[dataset] += [f for f in fields if f not in fields_of[dataset]]
    for r in rs:
      params = run_params(r)
      point = tuple((f, _canon(params.get(f))) for f in fields)
      groups.setdefault((dataset, method, mods, point), []).append(r)
  return groups, all_mods, fields_of


def duplicate_seed_warnings(runs, split="test", by="auto"):
  """One line per group where runs share a seed: their spread is not a spread over seeds."""
  out = []
  for (dataset, method, _, point), rs in _groups(runs, split, by)[0].items():
    seeds = collections.Counter(r["seed"] for r in rs)
    where = "".join(f" {f}={json.loads(v)}" for f, v in point)
    for seed, n in seeds.items():
      if n > 1:
        paths = ", ".join(r["_path"] for r in rs if r["seed"] == seed)
        out.append(f"warning: {n} {method}{where} runs on {dataset} share seed {seed} "
                   f"({paths}); pass only one run per seed (e.g. one sweep root).")
  return out


def _value_key(v):
  """Sorts grid values: absent first, then numbers by value, then the rest as text."""
  if v is None:
    return (0, 0.0, "")
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return (1, float(v), "")
  return (2, 0.0, _canon(v))


def _row_order(groups, all_mods):
  """Per dataset: unimodal baselines first, then methods in `methods.list_methods()` order,
  then grid points by value."""
  from redreg_jax import methods  # pylint: disable=g-import-not-at-top
  known = methods.list_methods()
  datasets = list(dict.fromkeys(g[0] for g in groups))
  def key(group):
    dataset, method, mods, point = group
    return (datasets.index(dataset), set(mods) == all_mods[dataset],
            known.index(method) if method in known else len(known), method, mods,
            [_value_key(json.loads(v)) for _, v in point])
  return sorted(groups, key=key)


def _contribution_cols(mods):
  return ([f"shapley_{m}" for m in mods] + [f"shapley_share_{m}" for m in mods] +
          ["imbalance_gap"])


def table_rows(runs, split="test", by="auto"):
  """One row per (dataset, method, modalities, grid point): metrics as (mean, std) in %.

  Args:
    runs: from `find_summaries`.
    split: 'test' or 'validation'.
    by: 'auto', 'none' or a list of dotted config fields (see the module doc).
  Returns:
    Row dicts: dataset, method, grid ({field: value or None} for the dataset's swept
    fields), runs, seeds, wall_s and one (mean, std) per metric.
  """
  groups, all_mods, fields_of = _groups(runs, split, by)
  rows = []
  for group in _row_order(groups, all_mods):
    dataset, method, mods, point = group
    rs = groups[group]
    cols = ["accuracy"] + [f"accuracy_{m}" for m in mods] + ["macro_f1"]
    cols += [c for c in _contribution_cols(mods) if all(c in r[split] for r in rs)]
    if set(mods) != all_mods[dataset]:
      method = f"{method} [{'+'.join(mods)} only]"
    grid = {}
    varied = dict(point)
    for f in fields_of[dataset]:
      if f in varied:
        grid[f] = json.loads(varied[f])
      else:  # Not swept in this row: its own value, if every run shares one.
        vals = {_canon(run_params(r).get(f)) for r in rs}
        grid[f] = json.loads(vals.pop()) if len(vals) == 1 else None
    row = {"dataset": dataset, "method": method, "grid": grid, "runs": len(rs),
           "seeds": ",".join(str(r["seed"]) for r in rs),
           "wall_s": float(np.mean([r["wall_seconds"] for r in rs]))}
    for c in cols:
      vals = np.array([100.0 * r[split][c] for r in rs], np.float64)
      row[c] = (float(vals.mean()), float(vals.std(ddof=1)) if len(vals) > 1 else None)
    rows.append(row)
  return rows


def format_value(v) -> str:
  """A grid value as a table cell: '—' when absent, JSON for lists."""
  if v is None:
    return "—"
  if isinstance(v, (list, dict)):
    return json.dumps(v)
  return str(v)


def _grid_cols(rows):
  return list(dict.fromkeys(f for r in rows for f in r.get("grid", {})))


def to_markdown(rows, split="test") -> str:
  out = []
  for dataset in dict.fromkeys(r["dataset"] for r in rows):
    rs = [r for r in rows if r["dataset"] == dataset]
    # Shares are in the CSV: in Markdown they would repeat the Shapley columns' story.
    metric_cols = [c for c in _metric_cols(rs) if not c.startswith("shapley_share_")]
    grid_cols = _grid_cols(rs)
    out.append(f"**{dataset}** ({split} split, %, mean ± std over seeds)\n")
    out.append("| method | " + "".join(f"{f} | " for f in grid_cols) + " | ".join(metric_cols)
               + " | runs | wall s/run |")
    out.append("|---" * (len(grid_cols) + len(metric_cols) + 3) + "|")
    for r in rs:
      # One run has no spread: its value alone (runs column says 1), never "± 0.00".
      cells = ["—" if c not in r else f"{r[c][0]:.2f}" if r[c][1] is None else
               f"{r[c][0]:.2f} ± {r[c][1]:.2f}" for c in metric_cols]
      grid = "".join(f"{format_value(r['grid'].get(f))} | " for f in grid_cols)
      out.append(f"| {r['method']} | {grid}" + " | ".join(cells) + f" | {r['runs']} | "
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
  keys = [k for k in dict.fromkeys(k for r in rows for k in r)
          if k not in metric_cols and k != "grid"]
  keys = keys[:keys.index("wall_s")] + ordered + keys[keys.index("wall_s"):]
  grid_cols = _grid_cols(rows)
  keys = keys[:keys.index("method") + 1] + grid_cols + keys[keys.index("method") + 1:]
  rows = [{**r, **{f: format_value(v) for f, v in r.get("grid", {}).items()}} for r in rows]
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
          line += ([f"{v[0]:.4f}", "" if v[1] is None else f"{v[1]:.4f}"] if v is not None
                   else ["", ""])
        else:
          line.append("" if v is None or v == "—" else v)
      w.writerow(line)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("dirs", nargs="+")
  p.add_argument("--split", default="test", choices=("test", "validation"))
  p.add_argument("--csv", default=None, help="also write the table as CSV here")
  p.add_argument("--markdown", default=None, help="also write the Markdown table here")
  p.add_argument("--by", default="auto",
                 help="grid fields to group by: 'auto' (detect from config.json), 'none', "
                      "or comma-separated dotted fields, e.g. optim.threshold")
  p.add_argument("--plots", default=None,
                 help="also write accuracy-vs-swept-value PNGs into this directory")
  args = p.parse_args(argv)
  by = args.by if args.by in ("auto", "none") else [f for f in args.by.split(",") if f]
  try:
    runs = find_summaries(args.dirs)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  if not runs:
    print(f"error: no summary.json found under {args.dirs}; run the sweep first.",
          file=sys.stderr)
    return 2
  for w in duplicate_seed_warnings(runs, args.split, by):
    print(w, file=sys.stderr)
  rows = table_rows(runs, args.split, by)
  md = to_markdown(rows, args.split)
  print(md)
  if args.markdown:
    with open(args.markdown, "w", encoding="utf-8") as f:
      f.write(md)
  if args.csv:
    write_csv(rows, args.csv)
  if args.plots:
    from redreg_jax import plots  # pylint: disable=g-import-not-at-top
    paths = plots.sweep_figures(rows, args.plots, args.split)
    if not paths:
      print("note: no swept field (no grid in these runs): no sweep plots written.",
            file=sys.stderr)
    for path in paths:
      print(path, file=sys.stderr)
  return 0


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
