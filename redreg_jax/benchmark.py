r"""Step-time benchmark: every method's median train-step time, measured in one run.

  python -m redreg_jax.benchmark                       # default synthetic size
  python -m redreg_jax.benchmark --shapes=cremad --batch_size=8 --width=1.0
  python -m redreg_jax.benchmark --shapes=av_digits --width=0.125
  python -m redreg_jax.benchmark --methods=joint,redreg --steps=50 --dtype=bfloat16
  python -m redreg_jax.benchmark --reference=torch --shapes=cremad --batch_size=8 --width=1.0
      # after pip install -r requirements-bench.txt: the same joint step in PyTorch

Prints a table and, as its last line, one JSON object with each method's median
seconds and its ratio to joint. Methods are timed round-robin in `--rounds` rounds; the
range of the per-round ratios shows how much the machine's load moved the comparison,
and RedReg rows say how often the gate was open (open: the projection ran). It also
times the input pipeline alone (host batches per second, no device work) so a slow
loader shows up beside the step.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

HOOK_EPOCH = 1  # Epoch hooks are timed at this epoch (every method's hook is due there).

# Input shapes: the papers' CREMA-D setting (docs/reproducing.md §Data: 257x188 spectrogram, 3 frames of
# 224x224) and AV-digits (129x126 spectrogram, one 32x32 image), on synthetic data.
SHAPES = {
    "synthetic": {},
    "cremad": dict(audio_freq=257, audio_time=188, frames=3, image_size=224),
    "av_digits": dict(audio_freq=129, audio_time=126, frames=1, image_size=32),
    # Half the CREMA-D resolution: a 128x94 spectrogram, 3 frames of 112x112.
    "small": dict(audio_freq=128, audio_time=94, frames=3, image_size=112),
    # The tests' `tiny` inputs (16x16 spectrogram, one 16x16 frame): a run that checks the
    # benchmark's structure, too small for its times to mean anything.
    "tiny": dict(audio_freq=16, audio_time=16, frames=1, image_size=16),
}


def _variant(label: str) -> tuple[str, dict]:
  """'redreg@twin_examples=16' -> ('redreg', {'twin_examples': 16}): a method with
  config.optim overrides, timed as its own row."""
  method, *sets = label.split("@")
  overrides = {}
  for item in sets:
    key, sep, value = item.partition("=")
    if not sep:
      raise SystemExit(f"--methods: {item!r} in {label!r} is not optim_field=value.")
    try:
      overrides[key] = json.loads(value)
    except json.JSONDecodeError:
      overrides[key] = value  # A bare string, e.g. twins=all.
  return method, overrides


def _config(label: str, args):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  from configs import synthetic as synthetic_config  # pylint: disable=g-import-not-at-top
  method, overrides = _variant(label)
  c = synthetic_config.get_config(method)
  c.data.update(SHAPES[args.shapes])
  c.batch_size = args.batch_size or c.batch_size
  # Enough examples for the timed steps plus warm-up, no more (CREMA-D shapes are big).
  c.data.num_train = c.batch_size * (args.steps + args.warmup + 1)
  c.data.num_validation = c.data.num_test = c.batch_size
  if args.width:
    c.model.width = args.width
  if args.blocks:
    c.model.resnet_blocks = args.blocks
  c.model.dtype = args.dtype
  # Regulation active from the first step, so the timed steps take its full path, and
  # every epoch hook due at HOOK_EPOCH (DRBML diagnoses, G-Blending re-estimates with
  # one-epoch copies, PMR recomputes prototypes every epoch anyway).
  for k, v in (("warmup_epochs", 0), ("window", 2), ("start_epoch", 0), ("reinit_every", 1),
               ("super_epoch", 1), ("first_super_epoch", 1)):
    if k in c.optim:
      c.optim[k] = v
  for k, v in overrides.items():
    if k not in c.optim:
      raise SystemExit(f"--methods: {method} has no optim field {k!r}; its fields: "
                       f"{', '.join(sorted(c.optim))}.")
    c.optim[k] = v
  return c


class _Timed:
  """One method's experiment, compiled, with its state and batches ready to step."""

  def __init__(self, method: str, args, dataset=None):
    from redreg_jax import train  # pylint: disable=g-import-not-at-top
    self.exp = train.Experiment(_config(method, args), dataset=dataset)
    self.state = self.exp.init_state()
    self.batches = list(self.exp.train_batches(0))
    t0 = time.perf_counter()
    self.state, _ = self.exp.train_step(self.state, self.batches[0])
    jax.block_until_ready(self.state)
    self.compile_s = time.perf_counter() - t0
    self.times, self.rounds, self.dominant, self.gate, self.i = [], [], [], [], 0
    self.aot = None  # The step compiled ahead of time, for XLA's cost and memory analyses.

  def run(self, steps: int, record: bool = True):
    """Times `steps` steps; a recorded call is one round (its median enters the ratios)."""
    times = []
    for _ in range(steps):
      self.i += 1
      batch = self.batches[self.i % len(self.batches)]
      t0 = time.perf_counter()
      self.state, metrics = self.exp.train_step(self.state, batch)
      jax.block_until_ready((self.state, metrics))
      times.append(time.perf_counter() - t0)
      if record:
        if "dominant" in metrics:  # Twins run for this modality: its encoder sets the cost.
          self.dominant.append(self.exp.modalities[int(metrics["dominant"])])
        if "gate_open" in metrics:  # Open: the Eq.27-30 projection ran this step.
          self.gate.append(float(metrics["gate_open"]))
    if record:
      self.times += times
      self.rounds.append(float(np.median(times)))

  def time_hooks(self) -> float | None:
    """Seconds of one call of the method's epoch hooks at HOOK_EPOCH (None: it has none).

    Called twice: the first call compiles what the hook runs (inference passes,
    k-means), the second is timed. The hooks' new state is discarded.
    """
    if not self.exp.method.epoch_hooks:
      return None
    run = lambda: [self.exp.run_epoch_hooks(at, HOOK_EPOCH, self.state)[0]
                   for at in ("start", "end")]
    jax.block_until_ready(run())
    t0 = time.perf_counter()
    jax.block_until_ready(run())
    return time.perf_counter() - t0

  def dominant_share(self) -> str:
    """e.g. 'audio 100%': which encoder the twin pass ran on during the timed steps."""
    if not self.dominant:
      return ""
    return ", ".join(f"{m} {self.dominant.count(m) / len(self.dominant):.0%}"
                     for m in sorted(set(self.dominant)))


def _compiled(timed: "_Timed"):
  """The train step compiled ahead of time for its own batch (once per method)."""
  if timed.aot is None:
    timed.aot = timed.exp.train_step.lower(timed.state, timed.batches[0]).compile()
  return timed.aot


def step_memory_mb(timed: "_Timed") -> dict | None:
  """MiB the compiled step itself holds, from XLA's memory analysis (None if none).

  arguments (state + batch), outputs, the part of the outputs that reuses argument
  buffers (donated state), and temporaries (activations kept for the backward pass,
  workspace); live = arguments + outputs - aliased + temporaries. The process's peak RSS
  adds the compiler, the runtime and the host data to this.
  """
  try:
    mem = _compiled(timed).memory_analysis()
  except Exception:  # pylint: disable=broad-except  # Backends may not implement it.
    return None
  if mem is None:
    return None
  mib = lambda b: round(b / 2**20, 1)
  out = {"arguments": mib(mem.argument_size_in_bytes), "outputs": mib(mem.output_size_in_bytes),
         "aliased": mib(mem.alias_size_in_bytes), "temporaries": mib(mem.temp_size_in_bytes)}
  out["live"] = round(out["arguments"] + out["outputs"] - out["aliased"] + out["temporaries"], 1)
  return out


def step_flops(timed: "_Timed") -> float | None:
  """FLOPs of one compiled train step, from XLA's cost analysis (None if it gives none).

  A conditional counts as its costliest branch (RedReg's twin pass on the dominant
  modality counts as the costlier encoder's), so for such methods it is an upper bound.
  """
  try:
    cost = _compiled(timed).cost_analysis()
  except Exception:  # pylint: disable=broad-except  # Backends may not implement it.
    return None
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per computation.
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def peak_rss_mb() -> float:
  """This process's peak resident memory in MiB (VmHWM; ru_maxrss where /proc is absent).

  torch_reference.py has its own copy: it runs standalone and imports nothing from here.
  """
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 1024  # kB
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def torch_available() -> bool:
  """Whether PyTorch is installed: looked up, never imported (only the reference process is)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  try:
    return importlib.util.find_spec("torch") is not None
  except ValueError:  # A module object without a spec.
    return False


def torch_spec(exp, warmup: int, threads: int) -> dict:
  """What torch_reference.py builds to mirror the joint experiment `exp`: shapes, width,
  ResNet blocks per stage, classes, lr; refuses a model it does not mirror."""
  shapes = exp.info.shapes
  audio, visual = shapes["audio"], shapes["visual"]
  frames, size = (1, visual[0]) if len(visual) == 3 else (visual[0], visual[1])
  if len(audio) != 3 or visual[-1] != 3 or audio[-1] != 1:
    raise SystemExit(f"--reference=torch needs [F, T, 1] audio and RGB frames, got "
                     f"{audio} and {visual}.")
  encoders = exp.config.model.get("encoders") or {}
  if encoders or exp.config.model.fusion != "concat":
    raise SystemExit("--reference=torch mirrors ResNet-18 encoders with concat fusion "
                     "only (the default models).")
  return {"batch": exp.batch_size, "width": float(exp.config.model.width),
          "blocks": int(exp.config.model.get("resnet_blocks") or 2),
          "num_classes": exp.info.num_classes, "audio": [audio[0], audio[1]],
          "visual": [frames, size], "seed": 0, "lr": float(exp.config.optim.lr),
          "threads": threads, "warmup": warmup}


class TorchReference:
  """The PyTorch step of redreg_jax/torch_reference.py, in its own process.

  Same architecture, init, loss, optimizer and shapes as the joint experiment `exp`;
  driven step batch by step batch so rounds interleave with the JAX ones, and its
  peak memory is its own process's.
  """

  def __init__(self, exp, warmup: int, threads: int):
    import subprocess  # pylint: disable=g-import-not-at-top
    self.spec = torch_spec(exp, warmup, threads)
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_reference.py")
    self.proc = subprocess.Popen([sys.executable, script], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True)
    self.info = self._ask({"spec": self.spec})
    self.times, self.rounds, self.peak_rss_mb = [], [], None

  def _ask(self, msg: dict) -> dict:
    self.proc.stdin.write(json.dumps(msg) + "\n")
    self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      raise SystemExit(f"the PyTorch reference process died (exit {self.proc.wait()}); "
                       "its error is above.")
    return json.loads(line)

  def run(self, steps: int) -> None:
    times = self._ask({"run": steps})["times"]
    self.times += times
    self.rounds.append(float(np.median(times)))

  def stop(self) -> None:
    self.peak_rss_mb = self._ask({"stop": True})["peak_rss_mb"]
    self.proc.wait()


def time_input_pipeline(exp, num_batches: int) -> float:
  """Samples per second of the host input pipeline alone (no device transfer)."""
  from redreg_jax import input_pipeline  # pylint: disable=g-import-not-at-top
  it = input_pipeline.train_batches(
      exp.dataset.sources["train"], exp.dataset.preprocess[True], exp.keys,
      global_batch=exp.batch_size, seed=0, epoch=0,
      num_threads=int(exp.config.train.input_threads))
  n, t0 = 0, time.perf_counter()
  for i, batch in enumerate(it):
    n += len(batch["label"])
    if i + 1 >= num_batches:
      break
  return n / (time.perf_counter() - t0)


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--methods", default=None,
                      help="comma-separated method names, or 'all' (every registered one; "
                           "the default, except with --reference, where it is joint); "
                           "'name@field=value' times a method with a config.optim override "
                           "as its own row, e.g. redreg@twin_examples=16")
  parser.add_argument("--reference", choices=("none", "torch"), default="none",
                      help="also time the equivalent PyTorch joint step "
                           "(redreg_jax/torch_reference.py), interleaved round by round")
  parser.add_argument("--threads", type=int, default=0,
                      help="PyTorch's intra-op threads (0: the CPUs this process may use, "
                           "as XLA's CPU backend does)")
  parser.add_argument("--shapes", choices=sorted(SHAPES), default="synthetic")
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's (64)")
  parser.add_argument("--width", type=float, default=0.0, help="0: the config's")
  parser.add_argument("--blocks", type=int, default=0,
                      help="basic blocks per ResNet stage (0: the config's, ResNet-18's 2)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--warmup", type=int, default=3)
  parser.add_argument("--rounds", type=int, default=5, help="round-robin timing rounds")
  parser.add_argument("--flops", choices=("joint", "all"), default="joint",
                      help="whose step FLOPs to count with XLA's cost analysis: 'all' adds "
                           "each method's GFLOP and FLOP ratio to joint (one more compile "
                           "per method), to read a time ratio against the arithmetic the "
                           "method adds")
  return parser


def main(argv=None):
  args = _parser().parse_args(argv)
  from redreg_jax import methods as methods_lib  # pylint: disable=g-import-not-at-top
  if args.reference == "torch" and not torch_available():  # Before anything compiles.
    raise SystemExit("--reference=torch needs PyTorch: .venv/bin/pip install -r "
                     "requirements-bench.txt (the CPU build of torch 2.13.0).")
  if args.methods is None:
    args.methods = "joint" if args.reference != "none" else "all"
  methods = methods_lib.list_methods() if args.methods == "all" else [
      m for m in args.methods.split(",") if m]
  if "joint" not in methods:
    methods.insert(0, "joint")

  # Compile every method first, then time them round-robin: a change in the machine's
  # load during the run affects every method alike, so the ratios stay meaningful.
  timed, dataset = {}, None
  for method in methods:
    timed[method] = _Timed(method, args, dataset)
    dataset = timed[method].exp.dataset  # Same data for every method.
    timed[method].run(args.warmup, record=False)
    print(f"  compiled {method} ({timed[method].compile_s:.1f}s)", file=sys.stderr, flush=True)
  ref = None
  if args.reference == "torch":
    threads = args.threads or len(os.sched_getaffinity(0))
    ref = TorchReference(timed["joint"].exp, args.warmup, threads)
    print(f"  PyTorch {ref.info['torch']} reference ready ({ref.info['threads']} threads, "
          f"{ref.info['params']:,} parameters, warm-up {ref.info['warmup_s']:.1f}s)",
          file=sys.stderr, flush=True)
  for _ in range(args.rounds):
    for t in timed.values():
      t.run(max(1, args.steps // args.rounds))
    if ref is not None:  # The other process idles while JAX runs, and vice versa.
      ref.run(max(1, args.steps // args.rounds))
  hook_s = {m: t.time_hooks() for m, t in timed.items()}
  exp = timed["joint"].exp
  flops = step_flops(timed["joint"])
  step_mem = step_memory_mb(timed["joint"])
  method_flops = ({m: (flops if m == "joint" else step_flops(t)) for m, t in timed.items()}
                  if args.flops == "all" else {})
  pipeline_sps = time_input_pipeline(exp, args.steps)
  joint_rounds = np.asarray(timed["joint"].rounds)
  results = {}
  for m, t in timed.items():
    # Per-round ratios: each round's median over joint's in the same round, so their
    # spread shows how much the machine's load moved the comparison.
    per_round = np.asarray(t.rounds) / joint_rounds
    results[m] = {"median_s": float(np.median(t.times)), "compile_s": t.compile_s,
                  "samples_per_s": exp.batch_size / float(np.median(t.times)),
                  "round_ratios": (float(per_round.min()), float(per_round.max())),
                  "gate_open": float(np.mean(t.gate)) if t.gate else None,
                  "dominant": t.dominant_share(), "hook_s": hook_s[m],
                  "gflop": (method_flops[m] / 1e9 if method_flops.get(m) else None)}
  joint = results["joint"]["median_s"]
  epoch_s = joint * exp.steps_per_epoch  # One epoch of joint steps, for the hook column.
  for r in results.values():
    r["ratio_to_joint"] = r["median_s"] / joint
    r["hook_epochs"] = None if r["hook_s"] is None else r["hook_s"] / epoch_s
    r["flop_ratio"] = (r["gflop"] / results["joint"]["gflop"]
                       if r["gflop"] and results["joint"]["gflop"] else None)

  print(f"\nshapes={args.shapes} batch={exp.batch_size} width={exp.config.model.width} "
        f"dtype={args.dtype} devices={jax.device_count()} ({jax.devices()[0].platform}) "
        f"steps={args.steps} rounds={args.rounds}")
  w = max(20, 2 + max(len(m) for m in results))  # Variant labels can be long.
  print(f"{'method':<{w}}{'median ms/step':>16}{'x joint':>10}{'rounds x':>13}{'samples/s':>12}"
        f"{'compile s':>11}{'gate open':>11}{'hook s':>9}{'hook/epoch':>12}"
        + (f"{'GFLOP':>9}{'x FLOPs':>9}" if method_flops else "") + "  twins ran on (RedReg)")
  for m, r in results.items():
    lo, hi = r["round_ratios"]
    gate = f"{r['gate_open']:.0%}" if r["gate_open"] is not None else ""
    hook = "" if r["hook_s"] is None else f"{r['hook_s']:.2f}"
    hook_ep = "" if r["hook_epochs"] is None else f"{r['hook_epochs']:.2f}"
    fl = ""
    if method_flops:
      fl = (f"{r['gflop']:>9.2f}{r['flop_ratio']:>9.2f}" if r["flop_ratio"] else f"{'?':>18}")
    print(f"{m:<{w}}{r['median_s'] * 1e3:>16.1f}{r['ratio_to_joint']:>10.2f}"
          f"{f'{lo:.2f}-{hi:.2f}':>13}{r['samples_per_s']:>12.1f}{r['compile_s']:>11.1f}"
          f"{gate:>11}{hook:>9}{hook_ep:>12}{fl}  {r['dominant']}")
  print(f"(hook s: one call of the method's epoch hooks at epoch {HOOK_EPOCH}; hook/epoch: "
        f"that in epochs of joint steps, {exp.steps_per_epoch} steps per epoch here)")
  print(f"{'input pipeline':<{w}}{'':>16}{'':>10}{'':>13}{pipeline_sps:>12.1f}")
  gflop = None if flops is None else flops / 1e9
  reference = {}
  jax_rss = peak_rss_mb()
  if ref is not None:
    ref.stop()
    torch_s = float(np.median(ref.times))
    per_round = joint_rounds / np.asarray(ref.rounds)
    reference = {"torch_median_s": round(torch_s, 6),
                 "jax_over_torch": round(joint / torch_s, 4),
                 "round_ratios": [round(float(per_round.min()), 4),
                                  round(float(per_round.max()), 4)],
                 "torch_peak_rss_mb": round(ref.peak_rss_mb, 1),
                 "torch_threads": ref.info["threads"], "torch": ref.info["torch"]}
    print(f"\nPyTorch {ref.info['torch']} reference, the same joint step "
          f"({ref.info['threads']} threads), rounds interleaved with JAX's:")
    print(f"{'step':<20}{'median ms/step':>16}{'GFLOP/s':>10}{'peak RSS MiB':>14}")
    for name, sec, rss in (("jax joint", joint, jax_rss), ("torch joint", torch_s,
                                                            ref.peak_rss_mb)):
      rate = f"{gflop / sec:.1f}" if gflop else "?"
      print(f"{name:<20}{sec * 1e3:>16.1f}{rate:>10}{rss:>14.0f}")
    lo, hi = reference["round_ratios"]
    print(f"jax / torch: {joint / torch_s:.2f} (rounds {lo:.2f}-{hi:.2f}); "
          f"{'?' if gflop is None else f'{gflop:.1f}'} GFLOP per step (XLA cost analysis); "
          f"JAX RSS covers this whole process ({len(timed)} method(s) compiled)")
  elif gflop:
    print(f"joint step: {gflop:.1f} GFLOP (XLA cost analysis), "
          f"{gflop / joint:.1f} GFLOP/s; peak RSS {jax_rss:.0f} MiB")
  if step_mem:
    print(f"joint step memory (XLA memory analysis): {step_mem['live']:.0f} MiB live = "
          f"arguments {step_mem['arguments']:.0f} + outputs {step_mem['outputs']:.0f} - "
          f"aliased {step_mem['aliased']:.0f} + temporaries {step_mem['temporaries']:.0f}")
  print(json.dumps({"shapes": args.shapes, "batch_size": exp.batch_size, "dtype": args.dtype,
                    "devices": jax.device_count(), "input_pipeline_samples_per_s": pipeline_sps,
                    "joint_gflop": None if gflop is None else round(gflop, 3),
                    "peak_rss_mb": round(jax_rss, 1), "joint_step_memory_mb": step_mem,
                    **({"reference": reference} if reference else {}),
                    "methods": {m: {"median_s": round(r["median_s"], 6),
                                    "ratio_to_joint": round(r["ratio_to_joint"], 4),
                                    "round_ratios": [round(x, 4) for x in r["round_ratios"]],
                                    **({"gate_open": round(r["gate_open"], 4)}
                                       if r["gate_open"] is not None else {}),
                                    **({"dominant": r["dominant"]} if r["dominant"] else {}),
                                    **({"gflop": round(r["gflop"], 4),
                                        "flop_ratio": round(r["flop_ratio"], 4)}
                                       if r["flop_ratio"] else {}),
                                    **({"hook_s": round(r["hook_s"], 4),
                                        "hook_epochs": round(r["hook_epochs"], 4)}
                                       if r["hook_s"] is not None else {})}
                                for m, r in results.items()}}))


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(main)
