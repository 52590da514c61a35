"""Tiny configs for tests: the real code paths at toy sizes."""

import ml_collections

from configs import synthetic as synthetic_config


def tiny_config(method: str = "joint", **overrides) -> ml_collections.ConfigDict:
  """`configs/synthetic.py:METHOD,smoke,tiny` with dotted-key overrides."""
  c = synthetic_config.get_config(f"{method},smoke,tiny")
  for k, v in overrides.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c
