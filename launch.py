r"""Runs an experiment: `python launch.py --config=configs/synthetic.py:redreg --workdir=DIR`.

Flags only; the work is in `redreg_jax.train`. Override any config field with
`--config.a.b=value` (e.g. `--config.optim.beta=0.5`); an unknown field or method is
one clear error listing the valid ones.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

USAGE = """usage: python launch.py --config=FILE.py[:ARG] --workdir=DIR [--config.a.b=VALUE ...]
                        [--allow_config_change] [--eval_only[=best|latest]] [--split=test]
                        [--compile_cache=DIR|'']
                        [--distributed [--coordinator_address=HOST:PORT --num_processes=N
                         --process_id=I]]
       python launch.py --help_optim[=METHOD]   (config.optim fields, defaults, one line each)

--compile_cache: persistent XLA compilation cache (default $JAX_COMPILATION_CACHE_DIR or
~/.cache/redreg_jax/xla; --compile_cache= turns it off): a second run of the same config
compiles in seconds.
--distributed initialises jax.distributed (multi-host). Without the three flags JAX reads
the cluster from the environment (SLURM, Open MPI, Cloud TPU, or JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID)."""

_DIST_FLAGS = ("coordinator_address", "num_processes", "process_id")

# Exit codes (README, "Exit codes"): a scheduler can tell a finished run from a stopped
# (resumable) one and from an error.
EXIT_OK = 0  # Finished (or already finished: the summary is printed again).
EXIT_ERROR = 1  # Bad data, non-finite run, busy workdir, unreadable checkpoints.
EXIT_USAGE = 2  # Bad command line or config value: nothing was run.
EXIT_STOPPED = 75  # Stopped by SIGTERM/SIGINT; relaunch the same command to resume.


def print_optim_help(method: str) -> None:
  """Lists a method's config.optim fields with their defaults and one-line docs."""
  from redreg_jax import methods  # pylint: disable=g-import-not-at-top
  optim, docs = methods.method_config(method), methods.optim_docs(method)
  print(f"config.optim of {method} (override with --config.optim.FIELD=VALUE):")
  for field in optim:
    doc = docs[field]  # This method's own line (one field name can serve several).
    print(f"  {field} = {optim[field]!r}\n      {doc}")


def parse_argv(argv):
  """Returns a dict of the flags and the list of (field, value) config overrides."""
  flags = {"config": None, "workdir": None, "allow_config_change": False, "eval_only": None,
           "split": "test", "distributed": False, "compile_cache": None}
  overrides = []
  for a in argv:
    if a in ("-h", "--help"):
      print(USAGE)
      sys.exit(0)
    if a == "--help_optim" or a.startswith("--help_optim="):
      print_optim_help(a.partition("=")[2] or "redreg_official")
      sys.exit(0)
    key, eq, value = a.partition("=")
    name = key[2:] if key.startswith("--") else None
    if name in ("allow_config_change", "distributed") and not eq:
      flags[name] = True
    elif name == "eval_only":
      flags[name] = value if eq else "best"
      if flags[name] not in ("best", "latest"):
        raise ValueError(f"--eval_only takes 'best' or 'latest', got {value!r}")
    elif not eq:
      raise ValueError(f"Unexpected argument {a!r} (flags take the form --name=value).\n{USAGE}")
    elif name in ("config", "workdir", "split", "compile_cache") or name in _DIST_FLAGS:
      flags[name] = value
    elif name and name.startswith("config."):
      overrides.append((name[len("config."):], value))
    else:
      raise ValueError(f"Unknown flag {key!r}.\n{USAGE}")
  if not flags["config"] or not flags["workdir"]:
    raise ValueError(f"--config and --workdir are required.\n{USAGE}")
  return flags, overrides


def default_compile_cache() -> str:
  """$JAX_COMPILATION_CACHE_DIR, else ~/.cache/redreg_jax/xla (XDG_CACHE_HOME respected)."""
  if os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    return os.environ["JAX_COMPILATION_CACHE_DIR"]
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "redreg_jax", "xla")


def enable_compile_cache(path: str) -> None:
  """Persistent XLA compilation cache in `path` ('' leaves it off)."""
  if not path:
    return
  import jax  # pylint: disable=g-import-not-at-top
  os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  # Cache every compilation worth a second (the train and eval steps, not tiny helpers).
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)


def init_distributed(flags):
  """jax.distributed from flags, or from the cluster environment when none are given."""
  import jax  # pylint: disable=g-import-not-at-top
  given = {k: flags[k] for k in _DIST_FLAGS if k in flags}
  if given and len(given) != len(_DIST_FLAGS):
    raise ValueError("--coordinator_address, --num_processes and --process_id go together.")
  # CPU processes (tests, CPU clusters) exchange collectives over gloo; GPUs use NCCL.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = {}
  if given:
    kwargs = dict(coordinator_address=given["coordinator_address"],
                  num_processes=int(given["num_processes"]),
                  process_id=int(given["process_id"]))
  jax.distributed.initialize(**kwargs)


def main(argv):
  from redreg_jax import config_lib  # pylint: disable=g-import-not-at-top
  try:
    flags, overrides = parse_argv(argv)
    config = config_lib.load_config(flags["config"])
    for key, value in overrides:
      config_lib.apply_override(config, key, value)
    config.lock()
    from redreg_jax import config_checks  # pylint: disable=g-import-not-at-top
    config_checks.check_config(config)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_USAGE
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  cache = flags["compile_cache"]
  enable_compile_cache(default_compile_cache() if cache is None else os.path.expanduser(cache))
  if flags["distributed"]:
    init_distributed(flags)
  from redreg_jax import train  # pylint: disable=g-import-not-at-top
  try:
    if flags["eval_only"]:
      train.evaluate_checkpoint(config, flags["workdir"], which=flags["eval_only"],
                                split=flags["split"])
    else:
      summary = train.train_and_evaluate(config, flags["workdir"],
                                         allow_config_change=flags["allow_config_change"])
      if "stopped" in summary:
        return EXIT_STOPPED
  except (ValueError, FileNotFoundError, train.NonFiniteError, train.WorkdirBusyError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_ERROR
  except KeyboardInterrupt:  # Before the loop took over the signals (data, build, init).
    print(f"Interrupted before training started. Resume with the same command (same "
          f"--workdir={flags['workdir']}).", file=sys.stderr)
    return EXIT_STOPPED
  return EXIT_OK


if __name__ == "__main__":
  from redreg_jax import cli  # pylint: disable=g-import-not-at-top
  cli.run(lambda: main(sys.argv[1:]))  # `--help | head` ends quietly, too.
