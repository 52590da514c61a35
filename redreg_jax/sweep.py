r"""Runs methods x seeds into a directory tree that `redreg_jax.report` reads.

  python -m redreg_jax.sweep --config=configs/synthetic.py --methods=joint,redreg \
      --seeds=0,1,2 --root=runs/synthetic [--unimodal=audio,visual] [--set=num_epochs=6 ...]

Each run is `python launch.py --config=CONFIG:METHOD --config.seed=S
--workdir=ROOT/METHOD/seed_S`, one after another, seed by seed (so a sweep cut short
still has every method at the first seeds). `--unimodal=audio,visual` adds, per seed,
the unimodal baselines: `joint` on each modality alone
(`--config.modalities="('audio',)"`) in ROOT/audio_only/joint/seed_S. A finished run
(summary.json present) is skipped, an interrupted one resumes from its checkpoint, so
re-running the same command completes a sweep. The runs share one persistent XLA compilation cache
(`--compile_cache`, default ROOT/.xla_cache): seeds of a method compile its steps once.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--config", required=True, help="e.g. configs/synthetic.py")
  p.add_argument("--methods", required=True, help="comma-separated method names")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--root", required=True, help="output tree ROOT/METHOD/seed_S")
  p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                 help="config override for every run (repeatable)")
  p.add_argument("--config_arg", default="", help="extra config arg, e.g. smoke")
  p.add_argument("--unimodal", default="",
                 help="comma-separated modalities: also train joint on each alone")
  p.add_argument("--compile_cache", default=None,
                 help="persistent XLA compilation cache dir (default ROOT/.xla_cache; "
                      "'' disables)")
  args = p.parse_args(argv)
  env = dict(os.environ)
  cache = os.path.join(args.root, ".xla_cache") if args.compile_cache is None else \
      args.compile_cache
  if cache and "JAX_COMPILATION_CACHE_DIR" not in env:
    env["JAX_COMPILATION_CACHE_DIR"] = os.path.abspath(cache)
    env.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")
  methods = [m for m in args.methods.split(",") if m]
  unimodal = [m for m in args.unimodal.split(",") if m]
  t0 = time.time()
  for seed in [int(s) for s in args.seeds.split(",") if s]:
    # (name, method, workdir, extra config overrides) of every run at this seed.
    runs = [(method, method, os.path.join(args.root, method, f"seed_{seed}"), [])
            for method in methods]
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
      t = time.time()
      r = subprocess.run(cmd, cwd=ROOT, check=False, env=env)
      if r.returncode != 0:
        print(f"[sweep] {name} seed {seed} failed (exit {r.returncode}); stopping.",
              file=sys.stderr)
        return r.returncode
      print(f"[sweep] {name} seed {seed}: {time.time() - t:.0f}s", flush=True)
  print(f"[sweep] all done in {time.time() - t0:.0f}s", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
