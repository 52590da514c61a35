"""AGM through the registry and the real train step (redreg_jax/methods/agm.py).

Coefficients by hand from the model's own coalition logits, the encoder and the released
('output') gradients against joint training's, identity outside the modulation window,
jit vs no jit, one compile, 1 vs 4 devices, the fusion check, M = 3, one short run.
"""

import itertools
import json
import math

import chex
import jax
import numpy as np
import pytest

from redreg_jax import methods, models, train
from tests.helpers import data_mesh, tiny_config

MODS = ("audio", "visual")
# lr 1, no weight decay: the first SGD-momentum step moves each parameter by -g exactly,
# so the update recovers the gradient to float32 precision.
PLAIN_SGD = {"optim.lr": 1.0, "optim.weight_decay": 0.0}


def _first_batch(exp):
  return next(iter(exp.train_batches(0)))


def _forward(exp, state, batch):
  """The training pass (train-mode BatchNorm) with every coalition's logits, on one device."""
  variables, inputs = jax.device_get(({"params": state.params, "batch_stats": state.batch_stats},
                                      {m: batch[m] for m in exp.modalities}))
  apply = jax.jit(lambda v, x: exp.model.apply(v, x, train=True, mutable=["batch_stats"],
                                               subsets=models.all_subsets(exp.modalities))[0])
  return jax.device_get(apply(variables, inputs))


def _subset_logits(exp, state, batch):
  """{coalition: [B, K]} as numpy float64."""
  out = _forward(exp, state, batch)["subset_logits"]
  return {k: np.asarray(v, np.float64) for k, v in out.items()}


def _shapley_by_hand(f, mods):
  """phi_m + f(empty)/M, written out from the coalition sums (released code's responses)."""
  n = len(mods)
  out = {}
  for m in mods:
    others = [j for j in mods if j != m]
    phi = f[()] / n
    for r in range(n):
      w = math.factorial(r) * math.factorial(n - r - 1) / math.factorial(n)
      for s in itertools.combinations(others, r):
        with_m = tuple(j for j in mods if j in s or j == m)
        phi = phi + w * (f[with_m] - f[tuple(j for j in mods if j in s)])
    out[m] = phi
  return out


def _score(logits, labels):
  """mean_i -log softmax(logits_i)[y_i] in float64."""
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  return -np.mean(np.maximum(logp[np.arange(len(labels)), labels], math.log(1e-8)))


def _coefficients_at_step_0(scores, alpha, cap):
  """The running average is 0 before the first step, so rbar_m = exp(0 - 0) = 1."""
  s = np.asarray(scores)
  r = np.exp((s.sum() - s) / (len(s) - 1) - s)  # r_m = exp(mean_{j != m} s_j - s_m)
  diff = 1.0 - r
  return np.exp(alpha * (diff if cap is None else np.minimum(diff, cap))), diff


def _one_step(cfg):
  exp = train.Experiment(cfg)
  state = exp.init_state()
  before = jax.device_get(state)
  batch = _first_batch(exp)
  new_state, metrics = exp.train_step(state, batch)
  return exp, before, batch, jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def joint_step():
  return _one_step(tiny_config("joint", **PLAIN_SGD))


# ---------------------------------------------------------------------------------------
# The coefficient and the update, by hand.
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["encoder", "output"])
def test_step_0_coefficients_and_update_by_hand(joint_step, form):
  alpha, cap = 0.7, 0.2  # At this init 1 - r_m is [-0.31, 0.24]: one capped, one not.
  exp, before, batch, after, metrics = _one_step(tiny_config(
      "agm", **PLAIN_SGD, **{"optim.alpha": alpha, "optim.cap": cap,
                             "optim.gradient_form": form}))
  labels = np.asarray(jax.device_get(batch["label"]))
  f = _subset_logits(exp, exp.init_state(), batch)
  # Released CREMA-D responses: out_a = (total - pad_audio + pad_visual) / 2, where
  # pad_audio is the pass with audio masked, i.e. f(visual).
  resp = {"audio": 0.5 * (f[MODS] - f[("visual",)] + f[("audio",)]),
          "visual": 0.5 * (f[MODS] - f[("audio",)] + f[("visual",)])}
  for m in MODS:
    np.testing.assert_allclose(resp[m], _shapley_by_hand(f, MODS)[m], rtol=1e-9)
  scores = [_score(resp[m], labels) for m in MODS]
  k, diff = _coefficients_at_step_0(scores, alpha, cap)
  assert (diff > cap).sum() == 1  # One coefficient capped, one not: both paths checked.
  for i, m in enumerate(MODS):
    np.testing.assert_allclose(metrics[f"score_{m}"], scores[i], rtol=1e-5)
    np.testing.assert_allclose(metrics[f"coeff_{m}"], k[i], rtol=1e-5)
    np.testing.assert_allclose(metrics[f"score_avg_{m}"], scores[i], rtol=1e-5)  # 1 step.
    # The branch accuracies are the responses' (what the transform observed).
    np.testing.assert_allclose(metrics[f"accuracy_{m}"],
                               np.mean(resp[m].argmax(-1) == labels), rtol=1e-6)
  assert float(metrics["modulating"]) == 1.0
  np.testing.assert_allclose(metrics["loss_multimodal"], _score(f[MODS], labels), rtol=1e-5)

  # Same init as joint training; the gradient of each leaf is -(update) with lr 1.
  _, j_before, _, j_after, _ = joint_step
  chex.assert_trees_all_equal(before.params, j_before.params)
  grad = lambda b, a: jax.tree.map(lambda x, y: np.asarray(x, np.float64) - y, b.params,
                                   a.params)
  g, g_joint = grad(before, after), grad(j_before, j_after)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-3,
                                                  atol=2e-3 * np.abs(b).max() + 1e-7)
  for i, m in enumerate(MODS):  # Both forms: k_m x encoder m's gradient (concat fusion).
    jax.tree.map(lambda a, b, k=k[i]: close(a, k * b), g[f"encoder_{m}"],
                 g_joint[f"encoder_{m}"])
  w, w_joint = g["fusion"]["head"]["kernel"], g_joint["fusion"]["head"]["kernel"]
  b, b_joint = g["fusion"]["head"]["bias"], g_joint["fusion"]["head"]["bias"]
  if form == "encoder":  # Only the encoders are modulated.
    close(w, w_joint)
    close(b, b_joint)
  else:  # The released hooks also scale W_m's rows by k_m and the bias by mean_m k_m.
    d_a = _forward(exp, exp.init_state(), batch)["features"]["audio"].shape[-1]  # Rows of W_a.
    close(w[:d_a], k[0] * w_joint[:d_a])
    close(w[d_a:], k[1] * w_joint[d_a:])
    close(b, k.mean() * b_joint)


def test_second_step_uses_the_running_average():
  exp = train.Experiment(tiny_config("agm"))
  state = exp.init_state()
  batches = iter(exp.train_batches(0))
  state, m1 = exp.train_step(state, next(batches))
  batch = next(batches)
  labels = np.asarray(jax.device_get(batch["label"]))
  f = _subset_logits(exp, state, batch)
  state, m2 = exp.train_step(state, batch)
  m1, m2 = jax.device_get((m1, m2))
  resp = _shapley_by_hand(f, MODS)
  s = np.array([_score(resp[m], labels) for m in MODS])
  avg = np.array([float(m1[f"score_{m}"]) for m in MODS])  # The mean of one step.
  ratio = lambda x: np.exp(x[::-1] - x)  # M = 2: r_a = exp(s_v - s_a).
  k = np.exp(1.0 * (ratio(avg) - ratio(s)))  # alpha 1.0, no cap (the defaults).
  for i, m in enumerate(MODS):
    np.testing.assert_allclose(m2[f"coeff_{m}"], k[i], rtol=1e-4)
    np.testing.assert_allclose(m2[f"score_avg_{m}"], (avg[i] + s[i]) / 2, rtol=1e-5)


# ---------------------------------------------------------------------------------------
# Where AGM must not act.
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("form", ["encoder", "output"])
def test_outside_the_window_is_the_joint_update(joint_step, form):
  # The tiny run has 2 epochs; a window starting at epoch 5 never opens. (alpha = 0 is
  # refused by the transform, so the window is how AGM is switched off.)
  *_, after, metrics = _one_step(tiny_config(
      "agm", **PLAIN_SGD, **{"optim.start_epoch": 5, "optim.gradient_form": form}))
  *_, j_after, j_metrics = joint_step
  chex.assert_trees_all_close(after.params, j_after.params, rtol=1e-4, atol=1e-5)  # Two programs: float32 reassociation.
  chex.assert_trees_all_close(after.batch_stats, j_after.batch_stats, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(metrics["loss"], j_metrics["loss"], rtol=1e-6)
  assert float(metrics["modulating"]) == 0.0
  assert float(metrics["coeff_audio"]) == float(metrics["coeff_visual"]) == 1.0
  assert float(metrics["score_avg_audio"]) > 0.0  # The running average still advanced.


# ---------------------------------------------------------------------------------------
# Compilation, jit, devices.
# ---------------------------------------------------------------------------------------

def test_step_compiles_once_across_the_window_edge():
  exp = train.Experiment(tiny_config("agm", **{"optim.end_epoch": 0}))
  chex.clear_trace_counter()
  step = exp.jit_train_step(chex.assert_max_traces(exp.step_fn, n=1))
  state, modulating = exp.init_state(), []
  for epoch in range(exp.num_epochs):
    for batch in exp.train_batches(epoch):
      state, metrics = step(state, batch)
      modulating.append(float(metrics["modulating"]))
  spe = exp.steps_per_epoch
  assert modulating == [1.0] * spe + [0.0] * spe
  assert int(jax.device_get(state.opt_state[0].count)) == 2 * spe


@pytest.mark.parametrize("method", ["agm", "agm_official"])
def test_1_and_4_devices_match(method):
  cfg = tiny_config(method)
  results = []
  for n_dev in (1, 4):
    mesh = data_mesh(n_dev)
    exp = train.Experiment(cfg, mesh=mesh)
    state = exp.init_state()
    for batch in exp.train_batches(0):
      state, metrics = exp.train_step(state, batch)
    results.append(jax.device_get((state.params, metrics)))
  chex.assert_trees_all_close(results[0][0], results[1][0], rtol=2e-4, atol=2e-5)
  for k in ("loss", "coeff_audio", "coeff_visual", "score_avg_visual"):
    np.testing.assert_allclose(results[0][1][k], results[1][1][k], rtol=2e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------
# Configuration.
# ---------------------------------------------------------------------------------------

def _build(name="agm", modalities=MODS, fusion="concat", **over):
  optim = dict(methods.method_config(name), **over)  # A dict: no ConfigDict type check.
  return methods.build_method(name, optim, modalities=modalities,
                              param_labels=models.modality_labels, num_epochs=4,
                              model={"fusion": fusion})


@pytest.mark.parametrize("over, match", [
    (dict(alpha=0.0), "alpha"),
    (dict(alpha=-1.0), "alpha"),
    (dict(cap=-2.0), "cap"),
    (dict(start_epoch=-1), "start_epoch"),
    (dict(start_epoch=3, end_epoch=2), "end_epoch"),
    (dict(gradient_form="hooks"), "gradient_form"),
    (dict(released_clip=1), "released_clip"),
])
def test_bad_hyper_parameters_fail_at_build_naming_the_field(over, match):
  with pytest.raises(ValueError, match=f"config.optim.*{match}"):
    _build(**over)


def test_one_modality_is_refused():
  with pytest.raises(ValueError, match="at least two"):
    _build(modalities=("audio",))


@pytest.mark.parametrize("fusion", ["film", "gated"])
def test_encoder_form_refuses_a_non_additive_fusion(fusion):
  with pytest.raises(ValueError, match=f"fusion={fusion!r}.*gradient_form='output'"):
    _build(fusion=fusion)
  assert _build(fusion=fusion, gradient_form="output").gradient_form == "output"
  assert _build(fusion="sum").gradient_form == "encoder"
  # Without config.model the check runs when the step is traced.
  method = methods.build_method("agm", methods.method_config("agm"), modalities=MODS,
                                param_labels=models.modality_labels, num_epochs=4)
  model = models.MultimodalClassifier(modalities=MODS, num_classes=3, fusion=fusion)
  step = methods.Step(model, MODS, *([None] * 11))
  with pytest.raises(ValueError, match="gradient_form='output'"):
    method.apply_kwargs(step)


def test_experiment_refuses_film_with_encoder_form_and_trains_it_with_output_form():
  with pytest.raises(ValueError, match="gradient_form='output'"):
    train.Experiment(tiny_config("agm", **{"model.fusion": "film"}))
  *_, metrics = _one_step(tiny_config("agm", **{"model.fusion": "film",
                                                "optim.gradient_form": "output"}))
  assert bool(metrics["finite"]) and 0.0 < float(metrics["coeff_visual"]) < np.inf


def test_presets():
  p, o = methods.method_config("agm"), methods.method_config("agm_official")
  assert (p.alpha, p.cap, p.gradient_form, p.released_clip) == (1.0, None, "encoder", False)
  assert (p.start_epoch, p.end_epoch) == (0, None)
  assert (o.cap, o.gradient_form, o.released_clip, o.end_epoch) == (10.0, "output", True, 19)
  assert (o.linear_init, o.keep_partial_batch) == ("xavier_normal", True)
  assert methods.list_methods()[-2:] == ["agm", "agm_official"]


# ---------------------------------------------------------------------------------------
# Three modalities, and one short run through the loop.
# ---------------------------------------------------------------------------------------

MODS3 = ("audio", "text", "visual")


@pytest.fixture(scope="module")
def vectors_dir(tmp_path_factory):
  """A folder dataset of three vector modalities (MLP encoders: small, fast steps)."""
  from data import folder  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  arrays = lambda n: {**{m: rng.normal(size=(n, d)).astype(np.float32)
                         for m, d in zip(MODS3, (5, 7, 6))},
                      "label": rng.integers(0, 3, size=n)}
  path = str(tmp_path_factory.mktemp("agm_vectors"))
  folder.write_folder_dataset(path, {"train": arrays(16), "validation": arrays(8),
                                     "test": arrays(8)}, ["a", "b", "c"])
  return path


def _vectors_config(method, data_dir, **optim):
  from configs import folder as folder_config  # pylint: disable=g-import-not-at-top
  cfg = folder_config.get_config(f"{method},smoke")
  cfg.data.data_dir = data_dir
  cfg.batch_size = cfg.eval_batch_size = 8
  cfg.optim.update(optim)
  return cfg


def test_three_modalities_by_hand(vectors_dir):
  exp = train.Experiment(_vectors_config("agm", vectors_dir, alpha=0.5))
  assert exp.modalities == MODS3
  state, batch = exp.init_state(), _first_batch(exp)
  f = _subset_logits(exp, state, batch)
  assert len(f) == 8  # 2^3 coalitions, the empty one included.
  _, metrics = exp.train_step(state, batch)
  labels = np.asarray(jax.device_get(batch["label"]))
  resp = _shapley_by_hand(f, MODS3)
  np.testing.assert_allclose(sum(resp.values()), f[MODS3], rtol=1e-6, atol=1e-9)
  k, _ = _coefficients_at_step_0([_score(resp[m], labels) for m in MODS3], 0.5, None)
  for i, m in enumerate(MODS3):
    np.testing.assert_allclose(float(metrics[f"coeff_{m}"]), k[i], rtol=1e-4)


def test_jit_and_no_jit_agree(vectors_dir):
  # The released preset (the modulated loss, the clip), M = 3; two steps, so the second
  # reads the running average of the first.
  exp = train.Experiment(_vectors_config("agm_official", vectors_dir))
  batches = [jax.device_get(b) for b in itertools.islice(exp.train_batches(0), 2)]
  state = exp.init_state()
  for b in batches:
    state, metrics = exp.train_step(state, b)
  jitted = jax.device_get((state, metrics))
  state = jax.device_get(exp.init_state())
  with jax.disable_jit():
    for b in batches:
      state, metrics = exp.step_fn(state, b)
  eager = jax.device_get((state, metrics))
  chex.assert_trees_all_close(jitted[0].params, eager[0].params, rtol=1e-4, atol=1e-6)
  for k in ("loss", "clipped", *(f"coeff_{m}" for m in MODS3), "score_avg_text"):
    np.testing.assert_allclose(jitted[1][k], eager[1][k], rtol=1e-4, atol=1e-6)


def test_short_run_is_finite_and_logs_the_coefficients(tmp_path):
  summary = train.train_and_evaluate(tiny_config("agm"), str(tmp_path))
  assert summary["steps"] == 8 and 0.0 <= summary["test"]["accuracy"] <= 1.0
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [r for r in records if r.get("split") == "train"]
  assert len(steps) == 8
  for r in steps:  # (A non-finite step would have raised train.NonFiniteError.)
    assert np.isfinite(r["loss"]) and np.isfinite(r["grad_norm"])
    assert all(0.0 < r[f"coeff_{m}"] < np.inf for m in MODS)
