"""RedReg inside the jitted train step: twins, observations, logging."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax import train
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def exps():
  # Gate open from the first step so the correction path is exercised.
  over = {"optim.warmup_epochs": 0, "optim.window": 1, "optim.use_monitor": False,
          "optim.tau_min": -1.0, "optim.tau_max": -1.0}
  return train.Experiment(tiny_config("redreg", **over)), train.Experiment(tiny_config("joint"))


def test_twin_redundancy_by_hand(exps):
  exp, _ = exps
  state = exp.init_state()
  x = jax.random.normal(jax.random.key(0), (4,) + exp.info.shapes["audio"])
  key = jax.random.key(1)
  red = train.redundancy_from_twins(exp.model, "audio", state.params, state.batch_stats, x,
                                    key, sigma=0.03)
  # The same two copies encoded one at a time.
  noise = 0.03 * jax.random.normal(key, (2,) + x.shape)
  enc = exp.model.encoder("audio")
  v = {"params": state.params["encoder_audio"], "batch_stats": state.batch_stats["encoder_audio"]}
  z1, _ = enc.apply(v, x + noise[0], train=False)
  z2, _ = enc.apply(v, x + noise[1], train=False)
  want = jnp.mean((z1 - z2) ** 2) / (jnp.mean((noise[0] - noise[1]) ** 2) + 1e-12)
  np.testing.assert_allclose(red, want, rtol=1e-4)
  assert float(red) > 0


def test_twin_subsample_scores_every_kth_example(exps):
  """optim.twin_examples=k: Eq.20 on every (B/k)-th example, on one device or four."""
  exp, _ = exps
  state = exp.init_state()
  x = jax.random.normal(jax.random.key(0), (8,) + exp.info.shapes["audio"])
  key = jax.random.key(1)
  score = lambda x, k: train.redundancy_from_twins(
      exp.model, "audio", state.params, state.batch_stats, x, key, sigma=0.03, examples=k)
  want = score(x[::2], 0)
  np.testing.assert_allclose(score(x, 4), want, rtol=1e-5)
  assert float(score(x, 4)) != float(score(x, 0))  # A subsample, not the whole batch.
  np.testing.assert_allclose(score(x, 8), score(x, 0), rtol=1e-6)  # k = B: the whole batch.
  # With the batch sharded over every device, each keeps its rows; the score is equal.
  n = jax.device_count()
  x = jax.random.normal(jax.random.key(2), (2 * n,) + exp.info.shapes["audio"])
  mesh = jax.make_mesh((n,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  xs = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data")))
  np.testing.assert_allclose(jax.jit(lambda x: score(x, n))(xs), score(x[::2], 0), rtol=1e-5)
  with pytest.raises(ValueError, match="twin_examples=3 must divide the batch size"):
    score(x, 3)


def test_twin_subsample_trains_and_is_checked():
  exp = train.Experiment(tiny_config("redreg", **{"optim.twin_examples": 2}))
  state, metrics = exp.train_step(exp.init_state(), next(iter(exp.train_batches(0))))
  assert np.isfinite(float(metrics["loss"]))
  with pytest.raises(ValueError, match="twin_examples"):
    train.Experiment(tiny_config("redreg", **{"optim.twin_examples": -1}))


def test_twins_leave_batchnorm_and_match_joint_stats(exps):
  redreg_exp, joint_exp = exps
  s_r, s_j = redreg_exp.init_state(), joint_exp.init_state()
  chex.assert_trees_all_equal(jax.device_get(s_r.params), jax.device_get(s_j.params))
  batch = next(iter(redreg_exp.train_batches(0)))
  s_r, m_r = redreg_exp.train_step(s_r, batch)
  s_j, _ = joint_exp.train_step(s_j, batch)
  # BatchNorm statistics come from the main pass only: identical to joint training.
  chex.assert_trees_all_close(jax.device_get(s_r.batch_stats), jax.device_get(s_j.batch_stats),
                              rtol=1e-6)
  dom = int(m_r["dominant"])
  mods = redreg_exp.modalities
  # Twins ran for the dominant modality only.
  assert float(m_r[f"red_valid_{mods[dom]}"]) == 1.0
  assert float(m_r[f"red_valid_{mods[1 - dom]}"]) == 0.0
  assert float(m_r[f"red_raw_{mods[dom]}"]) > 0


def test_correction_applied_to_dominant_encoder_only(exps):
  redreg_exp, joint_exp = exps
  s_r, s_j = redreg_exp.init_state(), joint_exp.init_state()
  it = iter(redreg_exp.train_batches(0))
  for _ in range(3):  # Anchor taken at step 0; later steps have w != anchor.
    batch = next(it)
    s_r, m = redreg_exp.train_step(s_r, batch)
    s_j, _ = joint_exp.train_step(s_j, batch)
  assert float(m["gate_open"]) == 1.0 and float(m["correction_norm"]) > 0
  for name in ("gate_closed_by_warmup", "gate_closed_by_window", "gate_closed_by_monitor",
               "gate_closed_by_coinfo", "sim", "tau", "p_audio", "p_visual", "S_audio",
               "red_norm_audio", "r_visual", "beta_eff"):
    assert name in m, name
  pr, pj = jax.device_get(s_r.params), jax.device_get(s_j.params)
  dom = redreg_exp.modalities[int(m["dominant"])]
  assert not np.allclose(jax.tree.leaves(pr[f"encoder_{dom}"])[0],
                         jax.tree.leaves(pj[f"encoder_{dom}"])[0])


def test_redreg_step_compiles_once(exps):
  exp, _ = exps
  step = exp.jit_train_step(chex.assert_max_traces(exp.step_fn, n=1))
  state = exp.init_state()
  for i, batch in enumerate(exp.train_batches(0)):
    state, _ = step(state, batch)
    if i == 2:
      break


def test_unequal_feature_sizes_fail_at_configuration():
  cfg = tiny_config("redreg")
  cfg.model.encoders = {"visual": {"width": 1 / 8}}
  with pytest.raises(ValueError, match="one pooled feature size"):
    train.Experiment(cfg)


def test_no_monitor_ablation_skips_twins():
  # Without the monitor nothing reads red_m, so the step runs no twin pass at all.
  exp = train.Experiment(tiny_config("redreg_no_monitor"))
  assert exp.method.twins == "none"
  state = exp.init_state()
  state, m = exp.train_step(state, next(iter(exp.train_batches(0))))
  for mod in exp.modalities:
    assert float(m[f"red_valid_{mod}"]) == 0.0 and float(m[f"red_raw_{mod}"]) == 0.0


def test_twins_none_needs_monitor_off():
  with pytest.raises(ValueError, match="use_monitor=False"):
    train.Experiment(tiny_config("redreg", **{"optim.twins": "none"}))
