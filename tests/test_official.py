"""The released-code presets: the divergence fix, each switch, compile-once, 1 vs 4 devices.

docs/reproducing.md says what each switch reproduces; these tests hold the trainer to it.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from redreg_jax import input_pipeline, methods, train
from tests.helpers import data_mesh, tiny_config

# A healthy step of these small nets has a gradient norm of ~1-60; the BatchNorm
# pathology of a zeroed batch gives 1e3-1e5 (docs/reproducing.md).
EXPLODED = 1e3


def _smoke_config(method, seed, **over):
  """`configs/synthetic.py:METHOD,smoke` (256 examples, batch 32, 3 epochs), 1/16 width,
  one basic block per ResNet stage (the tiny configs' encoder; the dropped-encoder
  pathology explodes at this depth too, test_released_dropped_encoder_...)."""
  from configs import synthetic  # pylint: disable=g-import-not-at-top
  c = synthetic.get_config(f"{method},smoke")
  c.seed = seed
  c.model.width = 1 / 16
  c.model.resnet_blocks = 1
  for k, v in over.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = v
  return c


def _train_all_seeds(exp, seeds=(0, 1)):
  """Trains the whole run for each seed; returns (non-finite steps, largest grad norm)."""
  bad, worst = 0, 0.0
  for seed in seeds:
    exp.config.seed = seed
    state = exp.init_state()
    for epoch in range(exp.num_epochs):
      for batch in exp.train_batches(epoch):
        state, metrics = exp.train_step(state, batch)
        bad += int(not bool(metrics["finite"]))
        worst = max(worst, float(metrics["grad_norm"]))
  return bad, worst


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(methods.METHODS))
def test_every_method_trains_finite_at_smoke_size(method):
  # Two of the 8 fake devices: still a batch-sharded step. The step is one jit over the
  # global batch (BatchNorm's statistics included), so the device count changes no value
  # beyond float reassociation (tests/test_scale.py and the methods' 1-vs-4-device tests
  # check that); on 8 fake CPU devices each of the 48 tiny steps pays the per-device
  # overhead four times over (README, "Tests", for the suite's figures).
  exp = train.Experiment(_smoke_config(method, 0), mesh=data_mesh(2))
  assert exp.mesh.devices.size == 2  # Still the sharded path: batch split over 2 devices.
  bad, worst = _train_all_seeds(exp)
  assert bad == 0
  assert worst < EXPLODED, f"{method}: a gradient of norm {worst:.3g}"


def _one_dropped_step(dropped_encoder, monkeypatch):
  """Two steps of redreg_official at tiny size with a modality dropped on the second."""
  cfg = tiny_config("redreg_official", **{"optim.dropped_encoder": dropped_encoder,
                                          "optim.keep_partial_batch": False})
  exp = train.Experiment(cfg)
  batch = next(iter(exp.train_batches(0)))
  state = exp.init_state()
  monkeypatch.setattr(train, "modality_dropout_prob", lambda *a: jnp.float32(0.0))
  step = jax.jit(lambda s, b: exp.step_fn(s, b))  # A fresh trace sees the patch.
  state, _ = step(state, batch)  # A clean step: BatchNorm offsets leave zero.
  monkeypatch.setattr(train, "modality_dropout_prob", lambda *a: jnp.float32(1.0))
  step = jax.jit(lambda s, b: exp.step_fn(s, b))  # A fresh trace sees the patch.
  new_state, metrics = step(state, batch)
  dropped = [m for m in exp.modalities if float(metrics[f"dropped_{m}"])]
  assert len(dropped) == 1
  return exp, state, new_state, metrics, dropped[0]


def test_released_dropped_encoder_gets_exploding_gradient(monkeypatch):
  """The cause of the redreg_official divergence, on one step."""
  *_, metrics, _ = _one_dropped_step("trained", monkeypatch)
  assert float(metrics["grad_norm"]) > EXPLODED


def test_frozen_dropped_encoder_takes_no_gradient_and_no_statistics(monkeypatch):
  exp, state, new_state, metrics, m = _one_dropped_step("frozen", monkeypatch)
  assert float(metrics["grad_norm"]) < EXPLODED
  chex.assert_trees_all_equal(new_state.batch_stats[f"encoder_{m}"],
                              state.batch_stats[f"encoder_{m}"])
  other = [o for o in exp.modalities if o != m][0]
  assert not np.allclose(jax.tree.leaves(new_state.batch_stats[f"encoder_{other}"])[0],
                         jax.tree.leaves(state.batch_stats[f"encoder_{other}"])[0])


def test_freeze_dropped_zeroes_only_the_dropped_encoder():
  grads = {"encoder_audio": {"k": jnp.ones(3)}, "encoder_visual": {"k": jnp.ones(2)},
           "fusion": {"k": jnp.ones(1)}}
  bs_new = {"encoder_audio": {"v": jnp.ones(3)}, "encoder_visual": {"v": jnp.ones(2)}}
  bs_old = jax.tree.map(jnp.zeros_like, bs_new)
  dropped = {"audio": jnp.array(True), "visual": jnp.array(False)}
  g, bs = train._freeze_dropped(grads, bs_new, bs_old, dropped)
  np.testing.assert_array_equal(g["encoder_audio"]["k"], 0.0)
  np.testing.assert_array_equal(g["encoder_visual"]["k"], 1.0)
  np.testing.assert_array_equal(g["fusion"]["k"], 1.0)
  np.testing.assert_array_equal(bs["encoder_audio"]["v"], 0.0)
  np.testing.assert_array_equal(bs["encoder_visual"]["v"], 1.0)


# Modality dropout schedule (released: 0.6 -> 0.1 over int(0.3 E) epochs, split at p/2).

def test_dropout_probability_schedule():
  # E = 80: ramp int(24.0) = 24 epochs.
  probs = [float(train.modality_dropout_prob(e, 80)) for e in (0, 12, 24, 50)]
  np.testing.assert_allclose(probs, [0.6, 0.35, 0.1, 0.1], rtol=1e-6)
  # E = 5: int(1.5) = 1, so p is 0.1 from epoch 1 (a float ramp of 1.5 would give 0.2667).
  np.testing.assert_allclose(float(train.modality_dropout_prob(1, 5)), 0.1, rtol=1e-6)


def test_dropout_draw_splits_at_half_p():
  inputs = {"audio": jnp.ones((2, 3)), "visual": jnp.ones((2, 4))}
  counts = {"audio": 0, "visual": 0, "none": 0}
  for i in range(2000):
    _, dropped = train.modality_dropout(inputs, jax.random.key(i), 0, 80, ("audio", "visual"))
    which = [m for m, d in dropped.items() if bool(d)]
    counts[which[0] if which else "none"] += 1
  # p = 0.6 at epoch 0: 0.3 audio, 0.3 visual, 0.4 none.
  assert abs(counts["audio"] / 2000 - 0.3) < 0.04
  assert abs(counts["visual"] / 2000 - 0.3) < 0.04


# Keep the last partial batch (released: DataLoader's default drop_last=False).

def test_partial_batch_sizes():
  assert input_pipeline.partial_batch_size(70, 32) == 6
  assert input_pipeline.partial_batch_size(70, 32, granularity=4) == 4
  assert input_pipeline.steps_per_epoch(70, 32) == 2
  assert input_pipeline.steps_per_epoch(70, 32, keep_partial=True) == 3
  assert input_pipeline.steps_per_epoch(64, 32, keep_partial=True) == 2


def test_keep_partial_batch_trains_on_every_example():
  # 8 fake devices: the partial batch is the remainder 9 rounded down to 8.
  cfg = tiny_config("joint", **{"data.num_train": 73, "optim.keep_partial_batch": True})
  exp = train.Experiment(cfg)
  sizes = [b["label"].shape[0] for b in exp.train_batches(0)]
  assert sizes == [16, 16, 16, 16, 8]
  assert exp.steps_per_epoch == 5
  # Resuming at the partial batch reads just it; the step runs at its shape.
  tail = list(exp.train_batches(0, start_batch=4))
  assert [b["label"].shape[0] for b in tail] == [8]
  state, metrics = exp.train_step(exp.init_state(), tail[0])
  assert bool(metrics["finite"])


# The presets: what the method table turns on.

def test_redreg_official_preset_is_the_released_code():
  o = methods.method_config("redreg_official")
  assert (o.warmup_epochs, o.growth_before_full, o.reset_window_each_epoch) == (0, "one", True)
  assert (o.ema_init, o.ema_reset_each_epoch, o.twins, o.twins_on) == ("zero", True, "all",
                                                                        "clean")
  assert (o.coinfo_compare, o.gamma, o.beta_schedule) == ("gt", 0.6, "confidence_gap")
  assert (o.modality_dropout, o.linear_init, o.keep_partial_batch) == (True, "xavier_normal",
                                                                       True)
  assert "redreg_official" in methods.STAR_METHODS
  # The paper-faithful default is unchanged.
  p = methods.method_config("redreg")
  assert (p.warmup_epochs, p.growth_before_full, p.ema_init, p.coinfo_compare) == (
      2, "closed", "value", "ge")
  assert not (p.modality_dropout or p.ema_reset_each_epoch or p.reset_window_each_epoch)


def test_every_optim_field_is_documented():
  fields = {k for name in methods.METHODS for k in methods.method_config(name)}
  assert fields <= set(methods.OPTIM_DOCS), sorted(fields - set(methods.OPTIM_DOCS))


def test_inforeg_official_trains_the_shared_head_losses():
  exp = train.Experiment(tiny_config("inforeg_official"))
  batch = next(iter(exp.train_batches(0)))
  _, metrics = exp.train_step(exp.init_state(), batch)
  state = exp.init_state()
  assert "loss_branch" in metrics and "loss_unimodal" not in metrics
  out = exp.model.apply({"params": state.params, "batch_stats": state.batch_stats},
                        {m: batch[m] for m in exp.modalities}, train=False)
  # Branch logits W_m z_m + b/2 through slices of the fused head (no separate heads).
  assert not any(k.startswith("head_") for k in state.params)
  w, b = state.params["fusion"]["head"]["kernel"], state.params["fusion"]["head"]["bias"]
  z = out["features"]["audio"]
  np.testing.assert_allclose(out["branch_logits"]["audio"], z @ w[:z.shape[-1]] + b / 2,
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["redreg_official", "inforeg_official"])
def test_official_presets_compile_once_and_match_on_4_devices(method):
  # A gentle lr, as in tests/test_scale.py: at lr 0.01 a max-pool or ReLU decision
  # flipped by round-off moved inforeg_official's kernels by 1e-3 (AMD EPYC Zen 4).
  cfg = tiny_config(method, **{"optim.lr": 1e-3})
  results = []
  for n_dev in (1, 4):
    mesh = data_mesh(n_dev)
    exp = train.Experiment(cfg, mesh=mesh)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(exp.step_fn, n=1),
                   in_shardings=(exp.repl, exp.data_sharding),
                   out_shardings=(exp.repl, exp.repl), donate_argnums=0)
    state = exp.init_state()
    for batch in exp.train_batches(0):
      state, metrics = step(state, batch)
    results.append((jax.device_get(state.params), jax.device_get(metrics)))
  chex.assert_trees_all_close(results[0][0], results[1][0], rtol=2e-4, atol=2e-5)
  for k in ("loss", "gate_open", "red_norm_audio") if method == "redreg_official" else (
      "loss", "alpha_audio", "trace_audio"):
    np.testing.assert_allclose(results[0][1][k], results[1][1][k], rtol=2e-4, atol=1e-5)


# Each RedReg switch alone, on a sequence of steps that crosses an epoch boundary.
# make_obs / diag come from the transform's tests: dominant audio, shared features
# (sim = 1), raw redundancy scores given per step.
from tests.test_redreg_transform import LABELS, MODS, make_grads, make_obs, make_params  # noqa: E402
from redreg_jax.redreg import redreg_transform  # noqa: E402


def _run_switch(epochs, reds, **kw):
  """Diagnostics after each step of a redreg_transform with switches `kw`."""
  opts = dict(num_epochs=4, window=3, warmup_epochs=0)
  opts.update(kw)
  tx = redreg_transform(MODS, LABELS, **opts)
  update = jax.jit(tx.update)
  params = make_params()
  state = tx.init(params)
  out = []
  for e, r in zip(epochs, reds):
    _, state = update(make_grads(0, params), state, params,
                      observations=make_obs(e, red={"audio": r, "visual": 2 * r}))
    out.append({k: float(v) for k, v in state.diagnostics.items()})
  return out


EPOCHS = (0, 0, 0, 0, 0, 1, 1)
REDS = (1.0, 2.0, 4.0, 1.0, 3.0, 5.0, 2.0)


def test_switches_default_is_the_paper():
  base = _run_switch(EPOCHS, REDS)
  # EMA from its first value: first normalised score 1; S = 0 and the window shuts the
  # gate until L + 1 = 4 values are in.
  assert base[0]["red_norm_audio"] == pytest.approx(1.0)
  assert [d["S_audio"] for d in base[:3]] == [0.0, 0.0, 0.0]
  assert [d["gate_closed_by_window"] for d in base[:4]] == [1.0, 1.0, 1.0, 0.0]


def test_ema_zero_gives_ten_at_each_epoch_start():
  base = _run_switch(EPOCHS, REDS)
  zero = _run_switch(EPOCHS, REDS, ema_init="zero", ema_reset_each_epoch=True)
  assert zero[0]["red_norm_audio"] == pytest.approx(10.0, rel=1e-6)
  assert zero[5]["red_norm_audio"] == pytest.approx(10.0, rel=1e-6)  # Epoch 1, first step.
  # Step 2 by hand: ema = 0.9 * 0.1 + 0.1 * 2 = 0.29; 2 / 0.29.
  assert zero[1]["red_norm_audio"] == pytest.approx(2.0 / 0.29, rel=1e-6)
  # Nothing but the normalised score (and r, which reads it) changes.
  for a, b in zip(base, zero):
    for k in a:
      if not k.startswith(("red_norm", "r_", "gate", "correction")):
        assert a[k] == b[k], k


def test_ema_init_zero_without_reset_gives_ten_once():
  zero = _run_switch(EPOCHS, REDS, ema_init="zero")
  assert zero[0]["red_norm_audio"] == pytest.approx(10.0, rel=1e-6)
  assert zero[5]["red_norm_audio"] != pytest.approx(10.0, rel=1e-3)


def test_ema_reset_with_value_init_restarts_at_one():
  reset = _run_switch(EPOCHS, REDS, ema_reset_each_epoch=True)
  assert reset[5]["red_norm_audio"] == pytest.approx(1.0)
  assert _run_switch(EPOCHS, REDS)[5]["red_norm_audio"] != pytest.approx(1.0)


def test_growth_one_until_the_window_fills():
  base = _run_switch(EPOCHS, REDS)
  one = _run_switch(EPOCHS, REDS, growth_before_full="one")
  assert [d["S_audio"] for d in one[:3]] == [1.0, 1.0, 1.0]
  assert [d["gate_closed_by_window"] for d in one] == [0.0] * len(one)
  assert one[3]["S_audio"] == base[3]["S_audio"]  # Full window: the same Eq.16.
  # r = red - gamma * max(S, 0) with S = 1 (gamma 0.5).
  assert one[0]["r_audio"] == pytest.approx(base[0]["red_norm_audio"] - 0.5)


def test_window_reset_each_epoch_refills_with_growth_one():
  one = _run_switch(EPOCHS, REDS, growth_before_full="one", reset_window_each_epoch=True)
  assert one[5]["S_audio"] == 1.0 and one[6]["S_audio"] == 1.0


@pytest.mark.parametrize("compare,closed", [("ge", 0.0), ("gt", 1.0)])
def test_coinfo_compare_at_equality(compare, closed):
  # Identical features give sim = 1; tau_min = tau_max = 1 puts tau exactly on it.
  d = _run_switch(EPOCHS[:1], REDS[:1], tau_min=1.0, tau_max=1.0, coinfo_compare=compare)
  assert d[0]["sim"] == pytest.approx(1.0)
  assert d[0]["gate_closed_by_coinfo"] == closed


def test_twins_on_clean_reads_the_undropped_input(monkeypatch):
  """twins_on='clean': the redundancy score does not see the zeroed batch."""
  scores = {}
  for where in ("clean", "dropped"):
    cfg = tiny_config("redreg_official", **{"optim.twins_on": where})
    exp = train.Experiment(cfg)
    monkeypatch.setattr(train, "modality_dropout_prob", lambda *a: jnp.float32(1.0))
    state = exp.init_state()
    batch = next(iter(exp.train_batches(0)))
    _, metrics = jax.jit(lambda s, b: exp.step_fn(s, b))(state, batch)
    m = [m for m in exp.modalities if float(metrics[f"dropped_{m}"])][0]
    scores[where] = (m, float(metrics[f"red_raw_{m}"]))
  assert scores["clean"][0] == scores["dropped"][0]
  assert scores["clean"][1] != pytest.approx(scores["dropped"][1], rel=1e-3)
