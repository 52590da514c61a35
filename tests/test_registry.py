"""The method registry: listing order, docs, golden losses, and a toy method with epoch hooks.

The toy method (registered only for these tests) is joint training plus a feature
penalty whose scale is per-epoch state, an epoch-end re-initialisation of the visual
encoder and a changed loss weight: the shapes of G-Blending (loss re-weighting), PMR
(per-epoch state read by a loss), DRBML (encoder re-initialisation) and Greedy
(per-epoch choice read in the step).
"""

import dataclasses
import json
import os
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax import methods, train
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------------------------------
# Listing, docs, errors.
# ---------------------------------------------------------------------------------------

def test_listing_order_is_the_readme_methods_table():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  table = text.split("### Methods", 1)[1].split("\n#", 1)[0]
  names = [n for line in table.splitlines() if line.startswith("| `")
           for n in re.findall(r"`([a-z_0-9]+)`", line.split("|")[1])]
  assert names == methods.list_methods()
  assert list(methods.METHODS) == methods.list_methods()


def test_every_field_of_every_method_has_its_own_doc_line():
  for name in methods.list_methods():
    docs = methods.optim_docs(name)
    assert list(docs) == list(methods.method_config(name)), name
    assert all(docs.values()), (name, [k for k, v in docs.items() if not v])


def test_star_methods_are_the_ones_with_unimodal_heads():
  assert methods.STAR_METHODS == {"joint_star", "redreg_star", "redreg_official",
                                  "inforeg_star", "mmpareto", "gblending",
                                  "gblending_offline"}


def test_register_twice_and_unknown_name_fail():
  spec = methods.get_spec("joint")
  with pytest.raises(ValueError, match="already registered"):
    methods.register(spec)
  with pytest.raises(ValueError, match=r"Unknown method 'nope'; valid: \['joint', 'joint_star'"):
    methods.get_spec("nope")


def test_trainer_never_names_a_method():
  with open(os.path.join(ROOT, "redreg_jax", "train.py"), encoding="utf-8") as f:
    source = f.read()
  for name in methods.list_methods():
    assert f'"{name}"' not in source and f"'{name}'" not in source, name


# ---------------------------------------------------------------------------------------
# Golden losses: the loss of steps 1-3 (after 0, 1 and 2 updates) at tiny size, recorded
# from the trainer before the registry existed (method table + flag-driven step).
# ---------------------------------------------------------------------------------------

GATE_OPEN = {"optim.warmup_epochs": 0, "optim.window": 1, "optim.use_monitor": False,
             "optim.tau_min": -1.0, "optim.tau_max": -1.0}
GOLDEN = {
    # Twins of the dominant modality and the correction of Eq.30 from step 2 on.
    "redreg": (GATE_OPEN, [3.1617932319641113, 2.216193437576294, 1.6615941524505615]),
    # Modality dropout with the frozen encoder, twins of every modality, unimodal heads.
    "redreg_official": ({}, [6.616100788116455, 5.41813850402832, 4.883687973022461]),
    # Shared-head branch losses, branch logits with the split bias.
    "inforeg_official": ({}, [7.77986478805542, 5.454498767852783, 5.938813209533691]),
    # Per-loss gradients from one VJP.
    "mmpareto": ({}, [7.9479780197143555, 6.382269859313965, 5.325662136077881]),
}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_losses_of_three_steps(name):
  over, want = GOLDEN[name]
  # Recorded with the tiny config's ResNet-18 at full depth (two blocks per stage).
  exp = train.Experiment(tiny_config(name, **over, **{"model.resnet_blocks": 2}))
  state, got = exp.init_state(), []
  for _, batch in zip(range(3), exp.train_batches(0)):
    state, metrics = exp.train_step(state, batch)
    got.append(float(metrics["loss"]))
  # float32 over three steps: machines with other SIMD widths differ by ~1e-5 relative.
  np.testing.assert_allclose(got, want, rtol=1e-4)


# ---------------------------------------------------------------------------------------
# A toy method with per-epoch state, epoch hooks and a parameter reset.
# ---------------------------------------------------------------------------------------

TOY = "toy_reset_visual"


def _feature_penalty(out, step):
  """scale * mean(z_visual^2); `scale` is per-epoch state set by the start hook."""
  return step.method_state["scale"] * jnp.mean(out["features"]["visual"] ** 2)


def _only(prefix, tree, fresh):
  """`fresh`'s leaves under the top-level key `prefix`, `tree`'s elsewhere."""
  pick = lambda path, a, b: b if any(getattr(k, "key", None) == prefix for k in path) else a
  return jax.tree_util.tree_map_with_path(pick, tree, fresh)


def _set_scale(ctx):
  scale = 0.1 * (ctx.epoch + 1)
  state = ctx.state.replace(method_state={"scale": jnp.float32(scale),
                                          "resets": ctx.state.method_state["resets"]})
  return methods.EpochUpdate(state=state, metrics={"toy_scale": scale})


def _reset_visual(ctx):
  """Re-initialises the visual encoder (params, BatchNorm, momentum); halves the penalty."""
  fresh, state = ctx.experiment.init_state(), ctx.state
  state = state.replace(
      params=_only("encoder_visual", state.params, fresh.params),
      batch_stats=_only("encoder_visual", state.batch_stats, fresh.batch_stats),
      opt_state=_only("encoder_visual", state.opt_state, fresh.opt_state),
      loss_weights={**state.loss_weights, "penalty": jnp.float32(0.5)},
      method_state={**state.method_state, "resets": state.method_state["resets"] + 1})
  return methods.EpochUpdate(state=state,
                             metrics={"toy_resets": int(state.method_state["resets"])})


class _ToyMethod(methods.Method):
  def init_method_state(self, info):
    return {"scale": jnp.float32(0.0), "resets": jnp.int32(0)}

  def step_metrics(self, step):
    return {"toy_scale_seen": step.method_state["scale"]}


def _build_toy(setup):
  penalty = methods.LossTerm("penalty", _feature_penalty)
  return _ToyMethod(setup.name, losses=(methods.MULTIMODAL_CE, penalty),
                    epoch_hooks=(methods.EpochHook("start", _set_scale),
                                 methods.EpochHook("end", _reset_visual)))


@pytest.fixture(scope="module")
def toy():
  methods.register(methods.MethodSpec(TOY, "test only: epoch hooks and a reset", _build_toy))
  yield
  methods.unregister(TOY)


def test_toy_hooks_change_state_without_retracing(toy):  # pylint: disable=unused-argument
  exp = train.Experiment(tiny_config(TOY))
  step = exp.jit_train_step(chex.assert_max_traces(exp.step_fn, n=1))
  init = jax.device_get(exp.init_state())
  state = exp.init_state()
  seen = []
  for epoch in range(2):
    state, scalars = exp.run_epoch_hooks("start", epoch, state)
    assert scalars == {"toy_scale": pytest.approx(0.1 * (epoch + 1))}
    for batch in exp.train_batches(epoch):
      state, metrics = step(state, batch)
      seen.append(float(metrics["toy_scale_seen"]))
    trained = jax.device_get(state.params)
    assert not np.allclose(jax.tree.leaves(trained["encoder_visual"])[0],
                           jax.tree.leaves(init.params["encoder_visual"])[0])
    state, scalars = exp.run_epoch_hooks("end", epoch, state)
    assert scalars == {"toy_resets": epoch + 1}
    after = jax.device_get(state)
    chex.assert_trees_all_equal(after.params["encoder_visual"], init.params["encoder_visual"])
    chex.assert_trees_all_equal(after.params["encoder_audio"], trained["encoder_audio"])
    assert float(after.loss_weights["penalty"]) == 0.5
  # The loss read each epoch's state: the step saw the scale the start hook set.
  spe = exp.steps_per_epoch
  np.testing.assert_allclose(seen, [0.1] * spe + [0.2] * spe, rtol=1e-6)
  # The loss is the weighted sum; loss_<term> are the raw terms.
  np.testing.assert_allclose(float(metrics["loss"]), float(metrics["loss_multimodal"]) +
                             0.5 * float(metrics["loss_penalty"]), rtol=1e-5)


def test_hook_that_changes_a_shape_is_refused(toy):  # pylint: disable=unused-argument
  exp = train.Experiment(tiny_config(TOY))
  bad = lambda ctx: methods.EpochUpdate(state=ctx.state.replace(
      method_state={"scale": jnp.zeros(3), "resets": jnp.int32(0)}))
  exp.method = dataclasses.replace(exp.method, epoch_hooks=(methods.EpochHook("start", bad),))
  with pytest.raises(ValueError, match=r"changed .*method_state.*scale"):
    exp.run_epoch_hooks("start", 0, exp.init_state())


def test_toy_method_runs_through_the_loop(toy, tmp_path):  # pylint: disable=unused-argument
  summary = train.train_and_evaluate(tiny_config(TOY), str(tmp_path))
  assert summary["steps"] == 8 and 0.0 <= summary["test"]["accuracy"] <= 1.0
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in records if r.get("split") == "train_epoch"]
  assert [r["toy_scale"] for r in epochs] == pytest.approx([0.1, 0.2])
  assert [r["toy_resets"] for r in epochs] == [1, 2]
  assert [r["toy_scale_seen"] for r in epochs] == pytest.approx([0.1, 0.2])
