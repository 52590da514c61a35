"""Range checks of config values, run before anything is built: one line per bad field.

  config_checks.check_config(config)  # raises ValueError listing every bad field

Shared fields are checked here; each method's own fields by the `Range`s it declares
(`MethodSpec.ranges`, redreg_jax/methods/). A field a config does not have is skipped,
so dataset configs with fewer fields pass.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping, NamedTuple


class Range(NamedTuple):
  """An allowed interval (None: unbounded); `integer` also requires an int."""

  low: float | None = None
  high: float | None = None
  low_open: bool = False
  high_open: bool = False
  integer: bool = False

  def problem(self, value: Any) -> str | None:
    """Why `value` is outside the range, or None if it is inside."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    for v in items:
      if isinstance(v, bool) or not isinstance(v, numbers.Real):
        return f"must be a number {self.describe()}, got {value!r}"
      if self.integer and not float(v).is_integer():
        return f"must be an integer {self.describe()}, got {value!r}"
      if not math.isfinite(float(v)) and not (self.high is None and v == math.inf):
        return f"must be finite {self.describe()}, got {value!r}"
      lo_bad = self.low is not None and (v <= self.low if self.low_open else v < self.low)
      hi_bad = self.high is not None and (v >= self.high if self.high_open else v > self.high)
      if lo_bad or hi_bad:
        return f"must be {self.describe()}, got {value!r}"
    return None

  def describe(self) -> str:
    lo = "" if self.low is None else f"{self.low} {'<' if self.low_open else '<='} "
    hi = "" if self.high is None else f" {'<' if self.high_open else '<='} {self.high}"
    return f"{lo}x{hi}" if lo or hi else "(any)"


POSITIVE = Range(0.0, None, low_open=True)
NON_NEGATIVE = Range(0.0)
UNIT = Range(0.0, 1.0)  # [0, 1]
UNIT_OPEN_HIGH = Range(0.0, 1.0, high_open=True)  # [0, 1)
COUNT = Range(1, None, integer=True)  # 1, 2, ...
INDEX = Range(0, None, integer=True)  # 0, 1, ...

# Fields every config may have (dotted paths).
SHARED: Mapping[str, Range] = {
    "num_epochs": COUNT,
    "batch_size": COUNT,
    "eval_batch_size": COUNT,
    "seed": INDEX,
    "model.width": POSITIVE,
    "model.resnet_blocks": COUNT,
    "optim.lr": POSITIVE,
    "optim.momentum": UNIT_OPEN_HIGH,
    "optim.weight_decay": NON_NEGATIVE,
    "optim.lr_decay_factor": Range(0.0, 1.0, low_open=True),
    "optim.lr_decay_epochs": INDEX,
    "train.log_every_steps": COUNT,
    "train.progress_every": COUNT,
    "train.checkpoint_every_steps": COUNT,
    "train.keep_checkpoints": COUNT,
    "train.probe_every_steps": INDEX,
    "train.input_threads": COUNT,
    "train.device_prefetch": COUNT,
    "train.max_skipped_fraction": UNIT,
}
# Per-encoder fields (config.model.encoders.<m>.<field>).
ENCODER: Mapping[str, Range] = {"width": POSITIVE, "dim": COUNT, "pooled_dim": COUNT,
                                "blocks": COUNT}


def _get(config, dotted: str):
  node = config
  for part in dotted.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def problems(config) -> list[str]:
  """One 'config.<field> ...' line per out-of-range value."""
  from redreg_jax import methods  # pylint: disable=g-import-not-at-top
  out = []

  def check(dotted, rng):
    value = _get(config, dotted)
    if value is _MISSING:
      return
    why = rng.problem(value)
    if why:
      out.append(f"config.{dotted} {why}")

  for dotted, rng in SHARED.items():
    check(dotted, rng)
  encoders = _get(config, "model.encoders")
  if encoders is not _MISSING:
    for m in encoders:
      for field, rng in ENCODER.items():
        check(f"model.encoders.{m}.{field}", rng)
  method = _get(config, "method")
  if method is not _MISSING and method in methods.list_methods():
    for field, rng in methods.get_spec(method).ranges.items():
      check(f"optim.{field}", rng)
  return out


def check_config(config) -> None:
  """Raises ValueError with one line per bad value (nothing is built before this)."""
  bad = problems(config)
  if bad:
    raise ValueError("bad config value" + ("s" if len(bad) > 1 else "") + ":\n  " +
                     "\n  ".join(bad))
