"""Tiny configs for tests: the real code paths at toy sizes."""

import os
import subprocess
import sys

import jax
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


def data_mesh(n: int) -> jax.sharding.Mesh:
  """A 1-D 'data' mesh over the first `n` fake CPU devices (Auto axes, as Experiment's own
  default mesh over all of them)."""
  return jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,),
                       devices=jax.devices()[:n])


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def launch(spec, workdir, *extra, timeout=900):
  """`python launch.py --config=SPEC --workdir=WORKDIR EXTRA...` from the project root."""
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), f"--config={spec}",
                         f"--workdir={workdir}", *extra], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout)
