"""PMR through the registry and the trainer: the loss term by hand, identities, the epoch
hook's prototypes, compile-once, jit vs no jit, 1 vs 4 devices, M = 3, a resumed run.

The pure equations are tested in tests/test_pmr.py; here they are read through the
`Method` the trainer runs (redreg_jax/methods/pmr.py).
"""

import json
import math
import types

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import (av_digits, cg_mnist, cmu_mosi, cremad, folder, kinetics_sounds,
                     synthetic)
from redreg_jax import checkpoint as ckpt_lib
from redreg_jax import methods, models, train
from redreg_jax.methods import pmr as pmr_method
from redreg_jax.pmr import PMR_PRESETS
from tests.helpers import data_mesh, tiny_config

MODS = ("audio", "visual")


def _build(name="pmr", modalities=MODS, dims=None, **over):
  """The Method for `name` with config.optim overrides, without an Experiment."""
  optim = {**methods.method_config(name).to_dict(), **over}  # Untyped: build must check.
  dims = dims or {m: 2 for m in modalities}
  return methods.build_method(name, optim, modalities=modalities,
                              param_labels=models.modality_labels, num_epochs=20,
                              feature_dims=lambda: dims)


def _step(method_state, labels, epoch):
  """A Step holding what PMR's loss term reads (the rest is unused)."""
  return methods.Step(model=None, modalities=MODS, params=None, batch_stats=None,
                      method_state=method_state, opt_state=None, epoch=jnp.asarray(epoch),
                      labels=labels, clean={}, inputs={}, extras={}, input_key=None,
                      observe_key=None)


# ---------------------------------------------------------------------------------------
# The registered presets and their config.optim fields.
# ---------------------------------------------------------------------------------------

def test_presets_follow_the_pure_module_and_the_listing():
  names = methods.list_methods()
  assert names[names.index("pmr"):][:2] == ["pmr", "pmr_official"]  # Side by side,
  assert names.index("pmr") > names.index("mmpareto")  # after the earlier modules.
  rename = {"momentum": "proto_momentum"}  # config.optim.momentum is SGD's.
  for name in ("pmr", "pmr_official"):
    optim = methods.method_config(name)
    for k, v in PMR_PRESETS[name].items():
      assert optim[rename.get(k, k)] == v, (name, k)
    assert optim.subset_fraction == 0.1 and optim.momentum == 0.9  # SGD's untouched.
    assert all(methods.optim_docs(name).values())
  assert not methods.method_config("pmr").subset_resample
  assert methods.method_config("pmr_official").subset_resample
  assert "pmr" not in methods.STAR_METHODS


def test_every_config_builds_pmr():
  """`configs/<dataset>.py:pmr` resolves and builds; short variants cap E_r at 1 epoch."""
  datasets = {synthetic: MODS, cg_mnist: ("gray", "color"), cremad: MODS,
              kinetics_sounds: MODS, av_digits: MODS, folder: MODS,
              cmu_mosi: ("audio", "visual", "text")}
  for module, modalities in datasets.items():
    for name in ("pmr", "pmr_official"):
      c = module.get_config(name)
      method = methods.build_method(name, c.optim, modalities=modalities,
                                    param_labels=models.modality_labels,
                                    num_epochs=c.num_epochs,
                                    feature_dims=lambda m=modalities: {k: 8 for k in m})
      assert method.pmr.modalities == modalities
  assert synthetic.get_config("pmr,smoke").optim.reg_epochs == 1
  assert cg_mnist.get_config("pmr,cpu").optim.reg_epochs == 1
  assert cg_mnist.get_config("pmr").optim.reg_epochs == 10
  # CMU-MOSI stops modulation half-way, but the paper's PMR has no end epoch.
  assert cmu_mosi.get_config("pmr").optim.end_epoch is None
  assert cmu_mosi.get_config("pmr_official").optim.end_epoch == 20
  assert cmu_mosi.get_config("ogm_ge").optim.end_epoch == 20


@pytest.mark.parametrize("field, value", [
    ("alpha", 0.0), ("mu", -1e-3), ("reg_epochs", -1), ("reg_epochs", 2.5),
    ("proto_momentum", 1.0), ("coefficient_form", "clip"), ("end_epoch", -3),
    ("subset_fraction", 0.0), ("subset_resample", "yes"),
])
def test_bad_hyper_parameters_are_refused_at_build_naming_the_field(field, value):
  with pytest.raises(ValueError, match=rf"config\.optim\.{field} "):
    _build(**{field: value})


def test_one_modality_and_missing_feature_sizes_are_refused():
  with pytest.raises(ValueError, match=r"at least two.*config\.modalities"):
    _build(modalities=("audio",))
  with pytest.raises(ValueError, match="feature_dims"):
    methods.build_method("pmr", methods.method_config("pmr"), modalities=MODS,
                         param_labels=models.modality_labels, num_epochs=2)
  # Through the trainer: refused before the model is built.
  with pytest.raises(ValueError, match=r"config\.optim\.proto_momentum"):
    train.Experiment(tiny_config("pmr", **{"optim.proto_momentum": -0.5}))


# ---------------------------------------------------------------------------------------
# The loss term by hand, through the Method.
# ---------------------------------------------------------------------------------------

# Audio: each sample sits on its class prototype; visual: both samples at the origin.
FEATS = {"audio": jnp.array([[0.0, 0.0], [3.0, 4.0]]), "visual": jnp.zeros((2, 2))}
PROTOS = {"audio": jnp.array([[0.0, 0.0], [3.0, 4.0]]),
          "visual": jnp.array([[0.0, 0.0], [1.0, 0.0]])}
LABELS = jnp.array([0, 1])
LOGITS = jnp.array([[1.0, 0.0], [0.0, 2.0]])


def test_method_state_has_fixed_shapes_from_the_start():
  method = _build(dims={"audio": 3, "visual": 5})
  state = method.init_method_state(types.SimpleNamespace(num_classes=4))
  assert {m: p.shape for m, p in state["prototypes"].items()} == {"audio": (4, 3),
                                                                  "visual": (4, 5)}
  assert state["prototypes"]["audio"].dtype == jnp.float32
  assert state["initialized"].dtype == jnp.bool_ and not bool(state["initialized"])


@pytest.mark.parametrize("jit", [False, True])
def test_loss_terms_and_step_metrics_by_hand(jit):
  method = _build()  # alpha 1, mu 1e-2, E_r 10.
  ready = {"prototypes": PROTOS, "initialized": jnp.array(True)}
  out = {"features": FEATS, "logits": LOGITS}
  terms = lambda state, y, e: method.loss_terms(out, _step(state, y, e))
  metrics = lambda state, y, e: method.output_metrics(out, _step(state, y, e))
  if jit:
    terms, metrics = jax.jit(terms), jax.jit(metrics)
  got = terms(ready, LABELS, 0)
  assert list(got) == ["multimodal", "pmr"]
  ce = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(-2))) / 2
  p_a = 1 / (1 + math.exp(-5))  # Audio's true-class prototype probability (Eq.7).
  rho = 2 * p_a / 1.0  # Eq.8: visual's two probabilities sum to exactly 1.
  gamma = min(max(rho - 1, 0.0), 1.0)  # Eq.11, rho >= 1: visual lags.
  pce_v = math.log(1 + math.exp(-1)) + 0.5  # Eq.9 of the visual prototypes.
  h_a = -(p_a * math.log(p_a) + (1 - p_a) * math.log(1 - p_a))  # Eq.13's H^0.
  np.testing.assert_allclose(got["multimodal"], ce, rtol=1e-6)
  np.testing.assert_allclose(got["pmr"], gamma * pce_v - 1e-2 * gamma * h_a, rtol=1e-5)
  m = metrics(ready, LABELS, 0)
  np.testing.assert_allclose(m["pmr_rho"], rho, rtol=1e-5)
  np.testing.assert_allclose(m["pmr_pce_weight_visual"], gamma, rtol=1e-5)
  np.testing.assert_allclose(m["pmr_per_weight_audio"], 1e-2 * gamma, rtol=1e-5)
  assert float(m["pmr_pce_weight_audio"]) == float(m["pmr_per_weight_visual"]) == 0.0
  # From epoch E_r = 10 on only the prototypical CE remains (Algorithm 1).
  np.testing.assert_allclose(terms(ready, LABELS, 10)["pmr"], gamma * pce_v,
                             rtol=1e-5)
  # Before the first prototypes the term and every weight are zero.
  fresh = method.init_method_state(types.SimpleNamespace(num_classes=2))
  assert float(terms(fresh, LABELS, 0)["pmr"]) == 0.0
  assert all(float(v) == 0.0 for k, v in metrics(fresh, LABELS, 0).items()
             if "weight" in k)


def test_released_form_through_the_method():
  method = _build("pmr_official", end_epoch=3)
  ready = {"prototypes": PROTOS, "initialized": jnp.array(True)}
  out = {"features": FEATS, "logits": LOGITS}
  # Constant alpha = 1 on the lagging (visual) PCE, no entropy term, until end_epoch.
  np.testing.assert_allclose(method.loss_terms(out, _step(ready, LABELS, 3))["pmr"],
                             math.log(1 + math.exp(-1)) + 0.5, rtol=1e-5)
  assert float(method.loss_terms(out, _step(ready, LABELS, 4))["pmr"]) == 0.0


# ---------------------------------------------------------------------------------------
# Through train.Experiment: the epoch hook, identities, jit, compile-once, devices.
# ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exp():
  return train.Experiment(tiny_config("pmr"))


def _subset_outputs(exp, state, epoch=0):
  cfg = exp.config.optim
  idx = pmr_method._subset_indices(exp.method.pmr, cfg.subset_resample, exp.config.seed,
                                   epoch, len(exp.dataset.sources["train"]))
  return exp.outputs(state, "train", indices=idx)


def _class_means(feats, labels, k):
  sums = np.zeros((k, feats.shape[1]), np.float64)
  counts = np.zeros(k)
  for z, y in zip(feats, labels):
    sums[y] += z
    counts[y] += 1
  return sums / np.maximum(counts, 1)[:, None], counts


def test_epoch_hook_sets_the_prototypes_by_hand(exp):
  state = exp.init_state()
  k = exp.info.num_classes
  out0 = _subset_outputs(exp, state)
  assert len(out0["label"]) == round(0.1 * 64)  # The paper's one-tenth subset.
  state, scalars = exp.run_epoch_hooks("start", 0, state)
  ms = jax.device_get(state.method_state)
  assert bool(ms["initialized"])
  for m in exp.modalities:  # First computation: the subset's class means (Eq.6).
    means, _ = _class_means(out0["features"][m], out0["label"], k)
    np.testing.assert_allclose(ms["prototypes"][m], means, rtol=1e-5, atol=1e-6)
    assert scalars[f"pmr_proto_shift_{m}"] == 0.0
    assert 0.0 <= scalars[f"pmr_proto_accuracy_{m}"] <= 1.0
  assert scalars["pmr_subset_size"] == len(out0["label"])
  for batch in exp.train_batches(0):
    state, _ = exp.train_step(state, batch)
  out1 = _subset_outputs(exp, state, epoch=1)
  np.testing.assert_array_equal(out1["label"], out0["label"])  # One fixed D_s (paper).
  state, scalars = exp.run_epoch_hooks("start", 1, state)
  ms1 = jax.device_get(state.method_state)
  for m in exp.modalities:  # Eq.12 with epsilon 0.2; an unseen class keeps its prototype.
    means, counts = _class_means(out1["features"][m], out1["label"], k)
    want = np.where(counts[:, None] > 0, 0.2 * ms["prototypes"][m] + 0.8 * means,
                    ms["prototypes"][m])
    np.testing.assert_allclose(ms1["prototypes"][m], want, rtol=1e-5, atol=1e-6)
    assert not np.allclose(ms1["prototypes"][m], ms["prototypes"][m])
    assert scalars[f"pmr_proto_shift_{m}"] > 0.0


def test_released_subset_is_new_each_epoch_and_deterministic():
  spec = _build().pmr
  same = [pmr_method._subset_indices(spec, False, 0, e, 640) for e in (0, 1)]
  np.testing.assert_array_equal(*same)
  fresh = [pmr_method._subset_indices(spec, True, 0, e, 640) for e in (0, 1, 1)]
  assert not np.array_equal(fresh[0], fresh[1])
  np.testing.assert_array_equal(fresh[1], fresh[2])
  assert len(fresh[0]) == 64 and np.all(np.diff(fresh[0]) > 0)


def test_step_compiles_once_across_steps_and_the_epoch_hook(exp):
  chex.clear_trace_counter()
  step = exp.jit_train_step(chex.assert_max_traces(exp.step_fn, n=1))
  state, protos, rhos = exp.init_state(), [], []
  for epoch in range(2):
    state, _ = exp.run_epoch_hooks("start", epoch, state)
    protos.append(jax.device_get(state.method_state["prototypes"]))
    for batch in exp.train_batches(epoch):
      state, metrics = step(state, batch)
      rhos.append(float(metrics["pmr_rho"]))
      np.testing.assert_allclose(float(metrics["loss"]), float(metrics["loss_multimodal"]) +
                                 float(metrics["loss_pmr"]), rtol=1e-5)
  assert not np.allclose(protos[0]["audio"], protos[1]["audio"])
  assert all(np.isfinite(rhos) & (np.asarray(rhos) > 0))


def test_jit_matches_no_jit(mlp3):
  """The train step op by op and under jit (MLP encoders: op-by-op dispatch is cheap)."""
  state, _ = mlp3.run_epoch_hooks("start", 0, mlp3.init_state())
  batch = jax.device_get(next(iter(mlp3.train_batches(0))))  # Host arrays for eager ops.
  eager_state, eager = mlp3.step_fn(jax.device_get(state), batch)
  jit_state, jitted = jax.jit(mlp3.step_fn)(state, batch)
  assert float(eager["loss_pmr"]) != 0.0  # PMR acts on this step.
  keys = ["loss", "loss_pmr", "grad_norm"] + [f"pmr_{k}_{m}" for k in (
      "score", "pce_weight", "per_weight") for m in mlp3.modalities]
  for k in keys:
    np.testing.assert_allclose(float(eager[k]), float(jitted[k]), rtol=1e-5, atol=1e-7,
                               err_msg=k)
  chex.assert_trees_all_close(jax.device_get(eager_state.params),
                              jax.device_get(jit_state.params), rtol=1e-5, atol=1e-6)


def test_no_pmr_term_gives_the_joint_gradient():
  """Before the first prototypes and after end_epoch the step is joint training's."""
  pmr_exp = train.Experiment(tiny_config("pmr", **{"optim.end_epoch": 0}))
  joint_exp = train.Experiment(tiny_config("joint"))
  pmr_step, joint_step = jax.jit(pmr_exp.step_fn), jax.jit(joint_exp.step_fn)
  batch = next(iter(joint_exp.train_batches(0)))
  spe = pmr_exp.steps_per_epoch
  joint0 = joint_exp.init_state()
  ready, _ = pmr_exp.run_epoch_hooks("start", 0, pmr_exp.init_state())
  chex.assert_trees_all_equal(jax.device_get(ready.params), jax.device_get(joint0.params))
  cases = {"no prototypes yet": (pmr_exp.init_state(), joint0),
           "after end_epoch": (ready.replace(step=ready.step + spe),
                               joint0.replace(step=joint0.step + spe))}
  for why, (p_state, j_state) in cases.items():
    p_new, p_metrics = pmr_step(p_state, batch)
    j_new, j_metrics = joint_step(j_state, batch)
    assert float(p_metrics["loss_pmr"]) == 0.0, why
    np.testing.assert_allclose(float(p_metrics["loss"]), float(j_metrics["loss"]),
                               rtol=1e-6, err_msg=why)
    np.testing.assert_allclose(float(p_metrics["grad_norm"]), float(j_metrics["grad_norm"]),
                               rtol=1e-6, err_msg=why)
    chex.assert_trees_all_close(jax.device_get(p_new.params), jax.device_get(j_new.params),
                                rtol=1e-6, atol=1e-7)
  # Within the window (epoch 0) the PMR term changes the update.
  p_new, p_metrics = pmr_step(ready, batch)
  j_new, _ = joint_step(joint0, batch)
  assert float(p_metrics["loss_pmr"]) != 0.0
  differs = jax.tree.map(lambda a, b: not np.allclose(a, b),
                         jax.device_get(p_new.params["encoder_visual"]),
                         jax.device_get(j_new.params["encoder_visual"]))
  assert any(jax.tree.leaves(differs))


def test_one_and_four_devices_give_the_same_losses():
  results = []
  for n_dev in (1, 4):
    mesh = data_mesh(n_dev)
    # A gentle lr, as in tests/test_scale.py: at lr 0.01 a max-pool or ReLU decision
    # flipped by round-off on step 4 moved a kernel by 1e-3 (AMD EPYC Zen 4).
    e = train.Experiment(tiny_config("pmr", **{"optim.lr": 1e-3}), mesh=mesh)
    state, scalars = e.run_epoch_hooks("start", 0, e.init_state())
    seen = []
    for batch in e.train_batches(0):
      state, metrics = e.train_step(state, batch)
      seen.append({k: float(metrics[k]) for k in ("loss", "loss_pmr", "pmr_rho")})
    results.append((scalars, seen, jax.device_get(state)))
  (s1, seen1, st1), (s4, seen4, st4) = results
  # The hook sees the same features on either mesh.
  assert s1 == pytest.approx(s4, rel=1e-5, abs=1e-6)
  chex.assert_trees_all_close(st1.params, st4.params, rtol=2e-4, atol=2e-5)
  for a, b in zip(seen1, seen4):
    np.testing.assert_allclose(a["loss"], b["loss"], rtol=2e-4)
    np.testing.assert_allclose(a["pmr_rho"], b["pmr_rho"], rtol=2e-4)
    # The PMR weight is rho - 1 (Eq.11): near rho = 1 a 1e-5 difference of rho is a
    # percent of the term, so it is compared absolutely.
    np.testing.assert_allclose(a["loss_pmr"], b["loss_pmr"], atol=2e-4)


@pytest.fixture(scope="module")
def mlp3(tmp_path_factory):
  """M = 3 vector modalities with MLP encoders (`configs/folder.py:pmr,smoke`)."""
  from data import folder as folder_data  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = lambda n: {**{m: rng.normal(size=(n, 5)).astype(np.float32)
                         for m in ("a", "b", "c")}, "label": rng.integers(0, 3, size=n)}
  data_dir = str(tmp_path_factory.mktemp("pmr_mlp3"))
  folder_data.write_folder_dataset(data_dir, {s: arrays(n) for s, n in (
      ("train", 80), ("validation", 8), ("test", 8))}, ["x", "y", "z"])
  cfg = folder.get_config("pmr,smoke")
  cfg.data.data_dir = data_dir
  cfg.batch_size, cfg.eval_batch_size, cfg.model.width = 8, 8, 1 / 16
  return train.Experiment(cfg)


def test_three_modalities_train(mlp3):
  """M = 3: each modality compared with the best (PCE) and the worst (PER)."""
  assert mlp3.modalities == ("a", "b", "c")
  state, scalars = mlp3.run_epoch_hooks("start", 0, mlp3.init_state())
  assert {f"pmr_proto_accuracy_{m}" for m in "abc"} <= set(scalars)
  state, metrics = mlp3.train_step(state, next(iter(mlp3.train_batches(0))))
  host = jax.device_get(metrics)
  assert "pmr_rho" not in host  # rho (Eq.8) is a two-modality ratio.
  scores = np.array([host[f"pmr_score_{m}"] for m in "abc"])
  pce = np.array([host[f"pmr_pce_weight_{m}"] for m in "abc"])
  per = np.array([host[f"pmr_per_weight_{m}"] for m in "abc"])
  # alpha clip(s_max / s_m - 1, 0, 1) and mu clip(s_m / s_min - 1, 0, 1), mu = 1e-2.
  np.testing.assert_allclose(pce, np.clip(scores.max() / scores - 1, 0, 1), rtol=1e-4,
                             atol=1e-6)
  np.testing.assert_allclose(per, 1e-2 * np.clip(scores / scores.min() - 1, 0, 1),
                             rtol=1e-4, atol=1e-8)
  assert np.isfinite(host["loss"]) and bool(host["finite"])


# ---------------------------------------------------------------------------------------
# The loop: a tiny run is finite, logs PMR's scalars, and resumes at an epoch boundary.
# ---------------------------------------------------------------------------------------

def test_tiny_run_is_finite_and_resumes_bit_exact(tmp_path):
  full = train.train_and_evaluate(tiny_config("pmr"), str(tmp_path / "full"))
  assert full["steps"] == 8 and full["skipped_steps"] == 0
  assert 0.0 <= full["test"]["accuracy"] <= 1.0
  records = [json.loads(l) for l in (tmp_path / "full" / "metrics.jsonl").read_text()
             .splitlines()]
  epochs = [r for r in records if r.get("split") == "train_epoch"]
  assert len(epochs) == 2
  for r in epochs:
    assert np.isfinite([r["loss_pmr"], r["pmr_rho"], r["pmr_proto_accuracy_audio"]]).all()
  assert epochs[0]["pmr_proto_shift_audio"] == 0.0 < epochs[1]["pmr_proto_shift_audio"]
  # Entropy term in epoch 0 only (smoke caps E_r at 1): no PER weight in epoch 1.
  assert epochs[1]["pmr_per_weight_audio"] == epochs[1]["pmr_per_weight_visual"] == 0.0
  # One epoch, then the same run extended to two: the second epoch's hook starts from the
  # checkpointed prototypes and smooths them exactly as the uninterrupted run did.
  cut = str(tmp_path / "cut")
  train.train_and_evaluate(tiny_config("pmr", num_epochs=1), cut)
  train.train_and_evaluate(tiny_config("pmr"), cut, allow_config_change=True)

  def latest(workdir):
    e = train.Experiment(tiny_config("pmr"))
    ckpt = ckpt_lib.Checkpointer(workdir)
    state, _ = ckpt.restore(e.init_state())
    ckpt.close()
    return jax.device_get(state)

  a, b = latest(str(tmp_path / "full")), latest(cut)
  assert int(a.step) == int(b.step) == 8 and bool(b.method_state["initialized"])
  chex.assert_trees_all_equal(a.method_state, b.method_state)
  chex.assert_trees_all_equal(a.params, b.params)
