"""Data parallelism: 1 and 4 devices give the same run; bfloat16 compute trains."""

import chex
import jax
import numpy as np
import pytest

from redreg_jax import train
from tests.helpers import data_mesh, tiny_config

# Regulation active from the first epochs so every observation path is exercised.
ACTIVE = {
    "joint": {},
    "redreg": {"optim.warmup_epochs": 0, "optim.window": 1, "optim.use_monitor": False,
               "optim.tau_min": -1.0, "optim.tau_max": -1.0},
    "inforeg": {"optim.warmup_epochs": 0, "optim.threshold_k": -1e9},
}


def _run(exp, steps):
  state = exp.init_state()
  metrics = []
  for step in range(steps):
    epoch, b = divmod(step, exp.steps_per_epoch)
    if b == 0:
      it = exp.train_batches(epoch)
    state, m = exp.train_step(state, next(it))
    metrics.append(jax.device_get(m))
  return jax.device_get(state), metrics


@pytest.mark.parametrize("method", sorted(ACTIVE))
def test_one_and_four_devices_agree(method):
  # A gentle lr: the runs agree to float round-off, which large steps amplify.
  cfg = tiny_config(method, **{"optim.lr": 1e-3, **ACTIVE[method]})
  one = train.Experiment(cfg, mesh=data_mesh(1))
  four = train.Experiment(cfg, dataset=one.dataset, mesh=data_mesh(4))
  steps = 2 * one.steps_per_epoch + 2  # Crosses two epoch boundaries (anchors, traces).
  s1, m1 = _run(one, steps)
  s4, m4 = _run(four, steps)
  chex.assert_trees_all_close(s1.params, s4.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.batch_stats, s4.batch_stats, rtol=1e-5, atol=1e-6)
  for a, b in zip(m1, m4):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=1e-5)
  if method == "redreg":
    assert max(float(m["gate_open"]) for m in m1) == 1.0
    assert [int(m["dominant"]) for m in m1] == [int(m["dominant"]) for m in m4]
  if method == "inforeg":
    np.testing.assert_allclose([m["trace_audio"] for m in m1], [m["trace_audio"] for m in m4],
                               rtol=1e-4)


def test_bfloat16_compute_trains_and_stays_finite():
  exp = train.Experiment(tiny_config("redreg", **{"model.dtype": "bfloat16"}))
  state = exp.init_state()
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  batch = next(iter(exp.train_batches(0)))
  losses = []
  for _ in range(12):
    state, m = exp.train_step(state, batch)
    losses.append(float(m["loss"]))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.params))
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(state.opt_state)
             if np.issubdtype(x.dtype, np.floating))
