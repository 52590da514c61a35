"""G-Blending wired into the trainer: the estimate hook (Algorithm 1) against Eq.3/6 on the
losses it measured, the state it leaves alone, compile-once, 1 vs 4 devices, M = 3, the
carved-out held-out set, bad fields, every config, and one tiny run through the loop.

The pure maths (Eq.3, 6, 7) is tested by hand in tests/test_gblending.py.
"""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax import config_lib, gblending, input_pipeline, methods, train
from redreg_jax.methods import gblending as gb_method
from tests.helpers import data_mesh, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADS = ("unimodal_audio", "unimodal_visual", "multimodal")
MEASURED = ("train_before", "train_after", "val_before", "val_after")
# Two 1-epoch super-epochs in the 2-epoch tiny run; each copy trains 2 steps.
TWO_STARTS = {"optim.super_epoch": 1, "optim.first_super_epoch": 1, "optim.estimate_steps": 2}


def _counted(exp):
  """The experiment's step, jitted as the trainer does, failing on a second trace."""
  chex.clear_trace_counter()
  exp.train_step = exp.jit_train_step(chex.assert_max_traces(exp.step_fn, n=1))


def _measured(scalars, heads=HEADS):
  """The four [K] arrays the hook measured, from its logged metrics."""
  return [np.array([scalars[f"gblend_{name}_{h}"] for h in heads]) for name in MEASURED]


def _weights(tree, heads=HEADS, prefix=""):
  return np.array([float(tree[prefix + h]) for h in heads])


# ---------------------------------------------------------------------------------------
# The estimate on the tiny synthetic run (4 devices), shared by the tests below.
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def estimated():
  exp = train.Experiment(tiny_config("gblending", **TWO_STARTS), mesh=data_mesh(4))
  _counted(exp)
  state = exp.init_state()
  before = jax.device_get(state)
  new_state, scalars = exp.run_epoch_hooks("start", 0, state)
  return exp, state, before, new_state, scalars


def test_weights_are_gblend_weights_of_the_measured_losses(estimated):
  _, _, _, new_state, scalars = estimated
  args = _measured(scalars)
  want = np.asarray(gblending.gblend_weights(*args))
  print("measured (train before/after, val before/after):", [a.tolist() for a in args])
  print("weights:", dict(zip(HEADS, want.tolist())))
  np.testing.assert_allclose(_weights(scalars, prefix="w_"), want, rtol=1e-6)
  np.testing.assert_allclose(_weights(new_state.loss_weights), want, rtol=1e-6)
  np.testing.assert_allclose(want.sum(), 1.0, rtol=1e-5)
  # Eq.3 and 6 once more by hand: w_i = (dG_i / dO_i^2) / Z.
  tb, ta, vb, va = args
  d_o, d_g = (va - ta) - (vb - tb), vb - va
  raw = d_g / d_o ** 2
  np.testing.assert_allclose(want, raw / raw.sum(), rtol=1e-4)
  # Every copy trained one epoch of 2 steps: 3 heads x 2 steps.
  assert scalars["gblend_steps"] == 6 and scalars["gblend_seconds"] > 0


def test_before_values_are_the_heads_losses_at_checkpoint_n(estimated):
  # Independently of Experiment.outputs: V is the validation split, in inference mode.
  exp, state, _, _, scalars = estimated
  val = exp.dataset.sources["validation"]
  batch = {k: np.stack([val[i][k] for i in range(len(val))]) for k in exp.keys}
  out = exp.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                        {m: batch[m] for m in exp.modalities}, train=False)
  labels = jnp.asarray(batch["label"])
  for m in exp.modalities:
    np.testing.assert_allclose(scalars[f"gblend_val_before_unimodal_{m}"],
                               methods.cross_entropy(out["unimodal_logits"][m], labels),
                               rtol=1e-5)
  np.testing.assert_allclose(scalars["gblend_val_before_multimodal"],
                             methods.cross_entropy(out["logits"], labels), rtol=1e-5)


def test_hook_changes_only_the_loss_weights(estimated):
  _, state, before, new_state, _ = estimated
  # The copies were donated to the step, never the real state: its buffers live on.
  assert not any(x.is_deleted() for x in jax.tree.leaves(state))
  after = jax.device_get(new_state)
  for field in ("step", "params", "batch_stats", "opt_state", "rng", "skipped",
                "method_state"):
    chex.assert_trees_all_equal(getattr(after, field), getattr(before, field))
  assert _weights(before.loss_weights).tolist() == [1.0, 1.0, 1.0]
  assert not np.allclose(_weights(after.loss_weights), 1.0)


def test_step_compiles_once_across_steps_and_copy_training(estimated):
  # The fixture's estimate trained 3 copies with the counted step; the epoch's real
  # steps and a second estimate (epoch 1 is a start too) reuse that one trace.
  exp, _, _, new_state, _ = estimated
  state = jax.tree.map(jnp.copy, new_state)
  for batch in exp.train_batches(0):
    state, metrics = exp.train_step(state, batch)
  assert np.isfinite(float(metrics["loss"]))
  state, scalars = exp.run_epoch_hooks("start", 1, state)
  np.testing.assert_allclose(_weights(scalars, prefix="w_"),
                             gblending.gblend_weights(*_measured(scalars)), rtol=1e-6)
  for batch in exp.train_batches(1):
    state, _ = exp.train_step(state, batch)


def test_weights_fixed_between_super_epoch_starts(estimated):
  exp, _, _, new_state, _ = estimated
  opts = exp.method.epoch_hooks[0].fn.args[0]
  hook = gb_method.estimate
  update = hook(opts._replace(schedule=((0, 1),)), methods.EpochContext(1, new_state, exp))
  assert update.state is None  # Nothing replaced: the step keeps the weights.
  np.testing.assert_allclose(_weights(update.metrics, prefix="w_"),
                             _weights(new_state.loss_weights))


def test_estimate_matches_on_1_and_4_devices(estimated):
  _, _, _, _, want = estimated
  exp = train.Experiment(tiny_config("gblending", **TWO_STARTS), mesh=data_mesh(1))
  _, got = exp.run_epoch_hooks("start", 0, exp.init_state())
  for name in MEASURED:
    np.testing.assert_allclose(_weights(got, prefix=f"gblend_{name}_"),
                               _weights(want, prefix=f"gblend_{name}_"), rtol=2e-4, atol=1e-5)
  # Eq.6 divides by dO^2: the weights carry the losses' float32 differences amplified.
  np.testing.assert_allclose(_weights(got, prefix="w_"), _weights(want, prefix="w_"),
                             rtol=2e-2, atol=2e-3)


# ---------------------------------------------------------------------------------------
# Three modalities (vectors, MLP encoders): K = 4, jit vs no-jit, the sum, the carve-out.
# ---------------------------------------------------------------------------------------

MODS3 = ("a", "b", "c")


def _three_modality_dataset(n=(64, 32, 32), classes=4, seed=0):
  rng = np.random.default_rng(seed)
  proj = {m: rng.normal(size=(classes, d)) for m, d in zip(MODS3, (8, 6, 4))}
  sources = {}
  for split, size in zip(("train", "validation", "test"), n):
    y = rng.integers(0, classes, size)
    arrays = {m: (np.eye(classes)[y] @ p + rng.normal(size=(size, p.shape[1])) * (i + 1)
                  ).astype(np.float32) for i, (m, p) in enumerate(proj.items())}
    arrays["label"] = y.astype(np.int32)
    sources[split] = input_pipeline.ArraySource(arrays, MODS3 + ("label",))
  info = input_pipeline.DatasetInfo(MODS3, classes, {m: (p.shape[1],) for m, p in proj.items()})
  return input_pipeline.Dataset(info, sources, {True: None, False: None})


def _exp3(method="gblending", **over):
  return train.Experiment(tiny_config(method, **over), dataset=_three_modality_dataset())


def test_three_modalities_four_weights():
  exp = _exp3(**TWO_STARTS)
  heads = gb_method.head_names(MODS3)
  assert heads == ("unimodal_a", "unimodal_b", "unimodal_c", "multimodal")
  state, scalars = exp.run_epoch_hooks("start", 0, exp.init_state())
  want = gblending.gblend_weights(*_measured(scalars, heads))
  np.testing.assert_allclose(_weights(state.loss_weights, heads), want, rtol=1e-6)
  np.testing.assert_allclose(_weights(scalars, heads, "w_"), want, rtol=1e-6)
  assert scalars["gblend_steps"] == 4 * 2
  batch = next(iter(exp.train_batches(0)))
  _, metrics = exp.train_step(state, batch)
  terms = np.array([float(metrics[f"loss_{h}"]) for h in heads])
  np.testing.assert_allclose(float(metrics["loss"]), terms @ np.asarray(want), rtol=1e-5)


def test_jit_equals_no_jit_and_unit_weights_give_the_sum_of_joint_star():
  exp, star = _exp3(), _exp3("joint_star")
  # Host arrays and a host state for the op-by-op step: eager ops on arrays sharded over
  # the fake devices have aborted the interpreter now and then (XLA CPU).
  batch = jax.device_get(next(iter(exp.train_batches(0))))
  eager, metrics = exp.step_fn(jax.device_get(exp.init_state()), batch)  # Weights 1 before any estimate.
  jitted, jit_metrics = exp.train_step(exp.init_state(), batch)
  chex.assert_trees_all_close(jax.device_get(eager.params), jax.device_get(jitted.params),
                              rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(float(metrics["loss"]), float(jit_metrics["loss"]), rtol=1e-5)
  terms = [float(metrics[f"loss_{h}"]) for h in gb_method.head_names(MODS3)]
  np.testing.assert_allclose(float(metrics["loss"]), sum(terms), rtol=1e-6)
  # joint_star: the same model and initialisation, CE(fused) + sum_m CE(head_m).
  _, star_metrics = star.step_fn(jax.device_get(star.init_state()), batch)
  np.testing.assert_allclose(float(metrics["loss"]), float(star_metrics["loss"]), rtol=1e-6)


def test_heldout_train_is_carved_out_and_never_trained_on():
  exp = _exp3(**TWO_STARTS, **{"optim.heldout": "train", "optim.heldout_fraction": 0.25})
  full = _three_modality_dataset().sources["train"]
  held = input_pipeline.seeded_subset(len(full), 0.25, exp.config.seed)
  sources = exp.dataset.sources
  assert len(sources[input_pipeline.HELD_OUT]) == 16 and len(sources["train"]) == 48
  assert exp.steps_per_epoch == 3
  held_rows = {full[int(i)]["a"].tobytes() for i in held}
  trained = {row.tobytes() for e in range(2) for b in exp.train_batches(e)
             for row in np.asarray(b["a"])}
  assert len(trained) == 48 and not trained & held_rows
  state = exp.init_state()
  _, scalars = exp.run_epoch_hooks("start", 0, state)
  x = {m: np.stack([full[int(i)][m] for i in held]) for m in MODS3}
  y = jnp.asarray(np.stack([full[int(i)]["label"] for i in held]))
  out = exp.model.apply({"params": state.params, "batch_stats": state.batch_stats}, x,
                        train=False)
  np.testing.assert_allclose(scalars["gblend_val_before_multimodal"],
                             methods.cross_entropy(out["logits"], y), rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Build: fields, schedule, presets, configs.
# ---------------------------------------------------------------------------------------

def _build(name="gblending", num_epochs=12, modalities=("audio", "visual"), **over):
  optim = dict(methods.method_config(name), **over)  # A dict: any value, even a bad one.
  return methods.build_method(name, optim, modalities=modalities, param_labels=None,
                              num_epochs=num_epochs)


def _schedule(method):
  return method.epoch_hooks[0].fn.args[0].schedule


def test_spec_defaults_and_schedules():
  spec = methods.get_spec("gblending")
  assert spec.unimodal_heads and "gblending" in methods.STAR_METHODS
  d = methods.method_config("gblending")
  assert (d.super_epoch, d.first_super_epoch, d.online, d.negative, d.heldout) == (
      5, 10, True, "keep", "validation")
  method = _build()
  assert [t.name for t in method.losses] == list(HEADS)
  assert all(t.weight == 1.0 for t in method.losses)
  assert [h.at for h in method.epoch_hooks] == ["start"]
  assert _schedule(method) == ((0, 10), (10, 2))  # Paper §3.3: 10, then 5 (cut by E).
  assert _schedule(_build(num_epochs=22)) == ((0, 10), (10, 5), (15, 5), (20, 2))
  assert _schedule(_build(estimate_epochs=3)) == ((0, 3), (10, 2))
  assert _schedule(_build("gblending_offline")) == ((0, 12),)  # Algorithm 2.
  assert method.held_out(100, 0) is None
  held = _build(heldout="train").held_out(100, 0)
  np.testing.assert_array_equal(held, input_pipeline.seeded_subset(100, 0.08, 0))


@pytest.mark.parametrize("field, value", [
    ("super_epoch", 0), ("first_super_epoch", 1.5), ("online", "yes"), ("negative", "drop"),
    ("measure", "f1"), ("heldout", "test"), ("heldout_fraction", 0.0),
    ("heldout_fraction", 0.5), ("train_subset_fraction", 1.5), ("estimate_epochs", -1),
    ("estimate_steps", True),
])
def test_bad_hyper_parameters_rejected_at_build(field, value):
  with pytest.raises(ValueError, match=rf"config\.optim\.{field} "):
    _build(**{field: value})


def test_every_config_builds_gblending():
  files = sorted(f for f in os.listdir(os.path.join(ROOT, "configs"))
                 if f.endswith(".py") and f != "__init__.py")
  assert len(files) >= 7
  for name in ("gblending", "gblending_offline"):
    for f in files:
      c = config_lib.load_config(os.path.join(ROOT, "configs", f) + f":{name}")
      mods = ("text", "audio", "vision") if f == "cmu_mosi.py" else ("audio", "visual")
      plan = _schedule(_build(name, c.num_epochs, mods, **c.optim))
      assert plan[0][0] == 0 and sum(n for _, n in plan) <= c.num_epochs, (f, plan)
  cpu = config_lib.load_config(os.path.join(ROOT, "configs", "cg_mnist.py:gblending,cpu"))
  assert _schedule(_build("gblending", cpu.num_epochs, **cpu.optim)) == ((0, 1), (1, 1), (2, 1))
  assert cpu.optim.estimate_steps == 40
  # The cpu switch leaves the defaults elsewhere, and other methods' configs, alone.
  assert config_lib.load_config(os.path.join(ROOT, "configs", "cg_mnist.py:gblending")
                                ).optim.super_epoch == 5
  assert "super_epoch" not in config_lib.load_config(
      os.path.join(ROOT, "configs", "cg_mnist.py:joint,cpu")).optim


# ---------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------

def test_tiny_run_through_the_loop(tmp_path):
  summary = train.train_and_evaluate(tiny_config("gblending"), str(tmp_path))
  assert summary["steps"] == 8 and np.isfinite(summary["test"]["accuracy"])
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  epochs = [r for r in records if r.get("split") == "train_epoch"]
  assert len(epochs) == 2 and all(np.isfinite(r["loss"]) for r in epochs)
  # One super-epoch (the default 10 > 2 epochs): one estimate, the weights then fixed.
  assert "gblend_seconds" in epochs[0] and "gblend_seconds" not in epochs[1]
  w = [_weights(r, prefix="w_") for r in epochs]
  np.testing.assert_allclose(w[0], w[1])
  np.testing.assert_allclose(w[0], gblending.gblend_weights(*_measured(epochs[0])), rtol=1e-5)
  print("tiny run weights:", w[0].tolist(), "estimate", epochs[0]["gblend_seconds"], "s")
