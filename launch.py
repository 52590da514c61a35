r"""Runs an experiment: `python launch.py --config=configs/synthetic.py:redreg --workdir=DIR`.

Flags only; the work is in `redreg_jax.train`. Override any config field with
`--config.a.b=value` (e.g. `--config.optim.beta=0.5`); an unknown field or method is
one clear error listing the valid ones.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

USAGE = """usage: python launch.py --config=FILE.py[:ARG] --workdir=DIR [--config.a.b=VALUE ...]
                        [--allow_config_change]"""


def parse_argv(argv):
  """Returns (config_spec, workdir, overrides, allow_change)."""
  spec = workdir = None
  overrides, allow_change = [], False
  for a in argv:
    if a in ("-h", "--help"):
      print(USAGE)
      sys.exit(0)
    if a == "--allow_config_change":
      allow_change = True
      continue
    key, eq, value = a.partition("=")
    if not eq:
      raise ValueError(f"Unexpected argument {a!r} (flags take the form --name=value).\n{USAGE}")
    if key == "--config":
      spec = value
    elif key == "--workdir":
      workdir = value
    elif key.startswith("--config."):
      overrides.append((key[len("--config."):], value))
    else:
      raise ValueError(f"Unknown flag {key!r}.\n{USAGE}")
  if not spec or not workdir:
    raise ValueError(f"--config and --workdir are required.\n{USAGE}")
  return spec, workdir, overrides, allow_change


def main(argv):
  from redreg_jax import config_lib  # pylint: disable=g-import-not-at-top
  try:
    spec, workdir, overrides, allow_change = parse_argv(argv)
    config = config_lib.load_config(spec)
    for key, value in overrides:
      config_lib.apply_override(config, key, value)
    config.lock()
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  from redreg_jax import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(config, workdir, allow_config_change=allow_change)
  except (ValueError, FileNotFoundError, train.NonFiniteError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
