r"""Runs methods x seeds (x a grid of config values) into a tree `redreg_jax.report` reads.

  python -m redreg_jax.sweep --config=configs/synthetic.py --methods=joint,redreg \
      --seeds=0,1,2 --root=runs/synthetic [--unimodal=audio,visual] [--set=num_epochs=6 ...] \
      [--grid=optim.threshold=0.05,0.15,0.5 [--grid=model.fusion=concat,film ...]] [--dry_run]

Each run is `python launch.py --config=CONFIG:METHOD --config.seed=S
--workdir=ROOT/METHOD/seed_S`, one after another, seed by seed (so a sweep cut short
still has every method at the first seeds). `--unimodal=audio,visual` adds, per seed,
the unimodal baselines: `joint` on each modality alone
(`--config.modalities="('audio',)"`) in ROOT/audio_only/joint/seed_S. A finished run
(summary.json present) is skipped, an interrupted one resumes from its checkpoint, so
re-running the same command completes a sweep. The runs share one persistent XLA compilation cache
(`--compile_cache`, default ROOT/.xla_cache): seeds of a method compile its steps once.

Grid (`--grid=FIELD=V1,V2,...`, repeatable; several flags make a product): every grid
point of a method is its own run per seed, in

  ROOT/METHOD/FIELD1=V1[,FIELD2=V2]/seed_S      e.g. runs/thr/redreg/optim.threshold=0.5/seed_0

with `--config.FIELD=V` passed to launch.py after the `--set` overrides. Fields are in
the order of the --grid flags and values as written, percent-encoded where they are not
one of [A-Za-z0-9._+-] (so `--grid=optim.lr_decay_epochs=(4,),(8,)` gives
`optim.lr_decay_epochs=%284%2C%29`); a comma inside brackets or quotes does not split the
values. Each method's config (CONFIG:METHOD with --config_arg and --set) is loaded up
front to check every grid value: a method whose config lacks a grid field (e.g. `joint`
has no `optim.threshold`) is swept over the fields it has, and with none of them runs
once in the plain ROOT/METHOD/seed_S (a reference row in the report; the sweep says
so). Unimodal baselines are never gridded. Resuming is per grid point, exactly as
without a grid. `--dry_run` prints the commands without running them. Without --grid
the commands and the layout are unchanged.
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import time
import urllib.parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class GridError(ValueError):
  """A --grid flag that cannot be swept."""


def split_values(text: str) -> list[str]:
  """'a,(1,2),"x,y"' -> ['a', '(1,2)', '"x,y"']: commas inside brackets or quotes stay."""
  out, depth, quote, cur = [], 0, None, ""
  for ch in text:
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      out.append(cur)
      cur = ""
      continue
    cur += ch
  out.append(cur)
  return [v.strip() for v in out]


def parse_grid(flags: list[str]) -> list[tuple[str, list[str]]]:
  """['optim.beta=0.5,0.9', ...] -> [('optim.beta', ['0.5', '0.9']), ...]."""
  grid = []
  for flag in flags:
    field, eq, values = flag.partition("=")
    field = field.strip()
    if field.startswith("config."):  # Accept launch.py's spelling too.
      field = field[len("config."):]
    if not eq or not field or not values.strip():
      raise GridError(f"--grid={flag}: expected FIELD=V1,V2,... (e.g. "
                      "--grid=optim.threshold=0.05,0.15).")
    vals = split_values(values)
    if any(not v for v in vals):
      raise GridError(f"--grid={flag}: empty value in {vals}.")
    if len(set(vals)) != len(vals):
      raise GridError(f"--grid={flag}: repeated value in {vals}.")
    if field == "seed":
      raise GridError("--grid=seed=...: seeds are swept with --seeds.")
    if field in [f for f, _ in grid]:
      raise GridError(f"--grid field {field} given twice; list all its values in one flag.")
    grid.append((field, vals))
  return grid


def point_dirname(point: list[tuple[str, str]]) -> str:
  """[('optim.beta', '0.5'), ('model.fusion', 'film')] -> 'optim.beta=0.5,model.fusion=film'."""
  # Percent-encoding is injective: two grid points never share a directory, and
  # unquote() recovers the value.
  return ",".join(f"{f}={urllib.parse.quote(v, safe='._+-')}" for f, v in point)


def _has_field(config, dotted: str) -> bool:
  import ml_collections  # pylint: disable=g-import-not-at-top
  node = config
  for part in dotted.split("."):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      return False
    node = node[part]
  return True


def method_grids(args, methods, grid) -> dict[str, list[tuple[str, list[str]]]]:
  """{method: the grid fields its config has}; every value is checked against the config.

  Raises:
    GridError: a value does not parse for its field, a field is also in --set, or a
      field is in no method's config.
  """
  from redreg_jax import config_lib  # pylint: disable=g-import-not-at-top
  set_fields = {s.partition("=")[0] for s in args.set}
  both = sorted(set_fields & {f for f, _ in grid})
  if both:
    raise GridError(f"{', '.join(both)} both in --set and --grid; keep one.")
  out, used = {}, set()
  for method in methods:
    # launch.py runs in the repository root: read the config file from there too.
    path = args.config if os.path.isabs(args.config) else os.path.join(ROOT, args.config)
    config = config_lib.load_config(f"{path}:{method}" + (f",{args.config_arg}"
                                                          if args.config_arg else ""))
    for s in args.set:
      field, _, value = s.partition("=")
      config_lib.apply_override(config, field, value)
    out[method] = []
    for field, values in grid:
      if not _has_field(config, field):
        continue
      for v in values:  # A bad value fails here, not halfway through the sweep.
        config_lib.apply_override(config, field, v)
      out[method].append((field, values))
      used.add(field)
  unused = [f for f, _ in grid if f not in used]
  if unused:
    raise GridError(f"--grid field(s) {', '.join(unused)} in no method's config "
                    f"({', '.join(methods)}); check the spelling.")
  return out


def grid_points(fields: list[tuple[str, list[str]]]) -> list[list[tuple[str, str]]]:
  """The product of the fields' values, first field slowest."""
  return [list(zip([f for f, _ in fields], combo))
          for combo in itertools.product(*[vals for _, vals in fields])]


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="e.g. configs/synthetic.py")
  p.add_argument("--methods", required=True, help="comma-separated method names")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--root", required=True, help="output tree ROOT/METHOD/seed_S")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override for every run (repeatable)")
  p.add_argument("--grid", action="append", default=[], metavar="FIELD=V1,V2,...",
                 help="sweep a config field over these values (repeatable: a product); "
                      "runs go to ROOT/METHOD/FIELD=V[,FIELD2=V2]/seed_S")
  p.add_argument("--config_arg", default="", help="extra config arg, e.g. smoke")
  p.add_argument("--unimodal", default="",
                 help="comma-separated modalities: also train joint on each alone")
  p.add_argument("--compile_cache", default=None,
                 help="persistent XLA compilation cache dir (default ROOT/.xla_cache; "
                      "'' disables)")
  p.add_argument("--keep_going", action="store_true",
                 help="run the rest after a failed run (e.g. a method that diverges on one "
                      "seed); the failures are listed at the end and the exit code is 1")
  p.add_argument("--dry_run", action="store_true",
                 help="print the commands of the runs still to do, run nothing")
  args = p.parse_args(argv)
  env = dict(os.environ)
  cache = os.path.join(args.root, ".xla_cache") if args.compile_cache is None else \
      args.compile_cache
  if cache and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(cache)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  methods = [m for m in args.methods.split(",") if m]
  unimodal = [m for m in args.unimodal.split(",") if m]
  # (name suffix, workdir part, overrides) per grid point of each method.
  points = {m: [("", "", [])] for m in methods}
  if args.grid:
    try:
      grid = parse_grid(args.grid)
      grids = method_grids(args, methods, grid)
    except ValueError as e:  # GridError, or a config's own unknown-field / value error.
      print(f"error: {e}", file=sys.stderr)
      return 2
    for method, fields in grids.items():
      lacks = [f for f, _ in grid if f not in {g for g, _ in fields}]
      if lacks:
        how = "runs once, ungridded" if not fields else "swept over the rest"
        print(f"[sweep] {method} has no {', '.join(lacks)}: {how}", flush=True)
      if fields:
        points[method] = [
            (" " + ",".join(f"{f}={v}" for f, v in pt), point_dirname(pt),
             [f"--config.{f}={v}" for f, v in pt]) for pt in grid_points(fields)]
  t0 = time.time()
  failed = []
  for seed in [int(s) for s in args.seeds.split(",") if s]:
    # (name, method, workdir, extra config overrides) of every run at this seed.
    runs = [(method + suffix, method, os.path.join(args.root, method, part, f"seed_{seed}")
             if part else os.path.join(args.root, method, f"seed_{seed}"), extra)
            for method in methods for suffix, part, extra in points[method]]
    runs += [(f"{m} only", "joint",
              os.path.join(args.root, f"{m}_only", "joint", f"seed_{seed}"),
              [f"--config.modalities=('{m}',)"]) for m in unimodal]
    for name, method, workdir, extra in runs:
      if os.path.exists(os.path.join(workdir, "summary.json")):
        print(f"[sweep] {name} seed {seed}: done, skipped", flush=True)
        continue
      spec = f"{args.config}:{method}" + (f",{args.config_arg}" if args.config_arg else "")
      cmd = [sys.executable, os.path.join(ROOT, "launch.py"), f"--config={spec}",
             f"--workdir={workdir}", f"--config.seed={seed}"]
      cmd += [f"--config.{s}" for s in args.set] + extra
      print(f"[sweep] {' '.join(cmd[1:])}", flush=True)
      if args.dry_run:
        continue
      t = time.time()
      r = subprocess.run(cmd, cwd=ROOT, check=False, env=env)
      if r.returncode != 0:
        if not args.keep_going:
          print(f"[sweep] {name} seed {seed} failed (exit {r.returncode}); stopping.",
                file=sys.stderr)
          return r.returncode
        failed.append(f"{name} seed {seed} (exit {r.returncode}, {workdir})")
        print(f"[sweep] {name} seed {seed} failed (exit {r.returncode}); going on "
              "(--keep_going).", file=sys.stderr, flush=True)
        continue
      print(f"[sweep] {name} seed {seed}: {time.time() - t:.0f}s", flush=True)
  if args.dry_run:
    print("[sweep] dry run: nothing was run", flush=True)
    return 0
  if failed:
    print(f"[sweep] done in {time.time() - t0:.0f}s; {len(failed)} run(s) failed:\n  " +
          "\n  ".join(failed), file=sys.stderr, flush=True)
    return 1
  print(f"[sweep] all done in {time.time() - t0:.0f}s", flush=True)
  return 0


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
