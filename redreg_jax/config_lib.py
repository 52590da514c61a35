"""Config helpers shared by `configs/*.py` (big_vision-style `file.py:arg1,k=v`)."""

from __future__ import annotations

import ml_collections

from redreg_jax import methods


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'joint,smoke' into {'method': 'joint', 'smoke': True}.

  The first word is the method; every other word must be one of the config's switches
  (the keyword `defaults` other than `method`), else a ValueError lists the valid ones.
  `k=v` words are config-field overrides, applied by `load_config` after `get_config`.
  """
  out = dict(defaults)
  words = [k for k in defaults if k != "method"]
  for i, part in enumerate(p for p in (arg or "").split(",") if p):
    if "=" in part:
      continue
    if i == 0:
      out["method"] = part
    elif part in words:
      out[part] = True
    else:
      raise ValueError(f"Unknown config argument {part!r} after the method; valid: "
                       f"{', '.join(words) or 'none'}, or FIELD=VALUE overrides "
                       "(e.g. num_epochs=3).")
  return ml_collections.ConfigDict(out)


def base_config(method: str) -> ml_collections.ConfigDict:
  """Fields every dataset config shares; `optim` carries the method's hyper-parameters."""
  c = ml_collections.ConfigDict()
  c.method = method
  c.seed = 0
  c.modalities = ()  # A subset of the dataset's modalities (unimodal baselines); () = all.
  c.batch_size = 64
  c.eval_batch_size = 128
  c.num_epochs = 80
  c.optim = methods.method_config(method)
  # concat, unless the method trains its own model (MethodSpec.fusion: Greedy's).
  fusion = methods.get_spec(method).fusion or "concat"
  c.model = ml_collections.ConfigDict(dict(fusion=fusion, width=1.0, dtype="float32",
                                           encoders={}))
  c.train = ml_collections.ConfigDict(dict(
      log_every_steps=1, progress_every=50, checkpoint_every_steps=500, keep_checkpoints=3,
      skip_nonfinite=False, max_skipped_fraction=0.1, input_threads=2, device_prefetch=2,
      probe_every_steps=10))
  return c


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads 'path/to/file.py[:arg]' by calling the file's get_config(arg)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ValueError(f"Config file {path!r} not found (expected e.g. "
                     "configs/synthetic.py:joint).")
  module_spec = importlib.util.spec_from_file_location("_redreg_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  config = module.get_config(arg or None)
  # 'FILE.py:METHOD,smoke,optim.beta=0.5': k=v words override config fields, exactly
  # like --config.optim.beta=0.5 (unknown fields are errors listing the valid ones).
  for part in (p for p in (arg or "").split(",") if "=" in p):
    apply_override(config, *part.split("=", 1))
  return config


def _parse_value(text: str, old):
  import ast  # pylint: disable=g-import-not-at-top
  if isinstance(old, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"expected true/false, got {text!r}")
  if isinstance(old, str):
    return text
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError):
    value = text
  if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
    value = float(value)
  if isinstance(old, tuple) and isinstance(value, list):
    value = tuple(value)
  if isinstance(old, tuple) and not isinstance(value, tuple):
    value = (value,)
  if old is not None and not isinstance(value, type(old)):
    raise ValueError(f"expected a {type(old).__name__}, got {text!r}")
  return value


def apply_override(config: ml_collections.ConfigDict, dotted: str, text: str) -> None:
  """Sets config.<dotted> from a command-line string; unknown fields raise ValueError."""
  node, parts = config, dotted.split(".")
  for i, part in enumerate(parts):
    where = ".".join(parts[:i]) or "config"
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
      raise ValueError(f"Unknown config field '{dotted}': {where} has no field {part!r}; "
                       f"valid: {', '.join(valid)}")
    if i < len(parts) - 1:
      node = node[part]
  try:
    value = _parse_value(text, node[parts[-1]])
  except ValueError as e:
    raise ValueError(f"Bad value for config field '{dotted}': {e}") from None
  with node.unlocked() if hasattr(node, "unlocked") else _nullctx():
    node[parts[-1]] = value


class _nullctx:  # pylint: disable=invalid-name
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False
