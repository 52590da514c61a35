"""Evaluation metrics on hand-made predictions."""

import itertools

import numpy as np
import pytest

from redreg_jax import metrics


def test_metrics_by_hand():
  labels = np.array([0, 0, 1, 1, 2, 2])
  # Fused predictions: 0, 1, 1, 1, 2, 0 -> 4/6 correct.
  logits = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 5.0
  branch = {"audio": np.eye(3)[[0, 0, 1, 1, 2, 2]], "visual": np.eye(3)[[1, 1, 1, 1, 1, 1]]}
  out = metrics.classification_metrics(logits, labels, branch, 3, ("audio", "visual"))
  assert out["accuracy"] == 4 / 6
  assert out["accuracy_audio"] == 1.0
  assert out["accuracy_visual"] == 2 / 6
  # Per class F1: class0 P=1/2 R=1/2 -> 0.5; class1 P=2/3 R=1 -> 0.8; class2 P=1 R=1/2 -> 2/3.
  np.testing.assert_allclose(out["macro_f1"], (0.5 + 0.8 + 2 / 3) / 3)
  assert out["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
  assert out["num_examples"] == 6 and "f1" not in out


def test_binary_f1():
  labels = np.array([0, 1, 1, 1])
  logits = np.eye(2)[[0, 1, 0, 1]]
  out = metrics.classification_metrics(logits, labels, {"text": logits}, 2, ("text",))
  np.testing.assert_allclose(out["f1"], 0.8)  # P=1, R=2/3.


def test_shapley_two_modalities_golden():
  # phi_a = (v(a) - v()) / 2 + (v(av) - v(v)) / 2 = (0.6 + 0.5) / 2; phi_v = (0.3 + 0.2) / 2.
  v = {(): 0.1, ("a",): 0.7, ("v",): 0.4, ("a", "v"): 0.9}
  phi = metrics.shapley_values(v, ("a", "v"))
  np.testing.assert_allclose([phi["a"], phi["v"]], [0.55, 0.25])
  np.testing.assert_allclose(sum(phi.values()), v[("a", "v")] - v[()])  # Efficiency.
  # Keys may be frozensets, in any order.
  phi2 = metrics.shapley_values({frozenset(k): x for k, x in v.items()}, ("v", "a"))
  assert list(phi2) == ["v", "a"] and phi2 == pytest.approx(phi)


def test_shapley_three_modalities_golden():
  v = {(): 0.0, ("a",): 0.3, ("b",): 0.2, ("c",): 0.1, ("a", "b"): 0.6, ("a", "c"): 0.4,
       ("b", "c"): 0.3, ("a", "b", "c"): 0.8}
  # Weights 1/3 (|S| = 0), 1/6 (|S| = 1), 1/3 (|S| = 2); in 60ths:
  # phi_a = 6 + 4 + 3 + 10 = 23, phi_b = 4 + 3 + 2 + 8 = 17, phi_c = 2 + 1 + 1 + 4 = 8.
  phi = metrics.shapley_values(v, ("a", "b", "c"))
  np.testing.assert_allclose([phi["a"], phi["b"], phi["c"]], [23 / 60, 17 / 60, 8 / 60])
  np.testing.assert_allclose(sum(phi.values()), 0.8)  # Efficiency: v(abc) - v().


def test_shapley_axioms_on_random_games():
  rng = np.random.default_rng(0)
  for mods in (("x",), ("a", "v"), ("a", "v", "t")):
    subsets = [s for k in range(len(mods) + 1) for s in itertools.combinations(mods, k)]
    v = {s: float(rng.uniform()) for s in subsets}
    phi = metrics.shapley_values(v, mods)
    np.testing.assert_allclose(sum(phi.values()), v[mods] - v[()], atol=1e-12)
    # An additive game: each player gets its own worth; a dummy player gets 0.
    worth = dict(zip(mods, rng.uniform(size=len(mods))))
    worth[mods[-1]] = 0.0
    phi = metrics.shapley_values({s: sum(worth[m] for m in s) for s in subsets}, mods)
    np.testing.assert_allclose([phi[m] for m in mods], [worth[m] for m in mods], atol=1e-12)


def test_shapley_needs_every_subset():
  with pytest.raises(ValueError, match=r"all 4 subsets .* missing \[\['v'\]\]"):
    metrics.shapley_values({(): 0.0, ("a",): 1.0, ("a", "v"): 1.0}, ("a", "v"))
  with pytest.raises(ValueError, match="name \\['x'\\]"):
    metrics.shapley_values({(): 0.0, ("x",): 1.0}, ("a",))


def test_modality_contributions_from_subset_logits():
  labels = np.array([0, 1, 2, 0])
  onehot = lambda preds: np.eye(3)[preds]
  # Accuracies: v() = 2/4 (always class 0), v(a) = 3/4, v(v) = 1/4, v(av) = 4/4.
  subset_logits = {(): onehot([0, 0, 0, 0]), ("audio",): onehot([0, 1, 1, 0]),
                   ("visual",): onehot([1, 1, 1, 1]), ("audio", "visual"): onehot([0, 1, 2, 0])}
  out = metrics.modality_contributions(subset_logits, labels, ("audio", "visual"))
  # phi_audio = (0.25 + 0.75) / 2 = 0.5, phi_visual = (-0.25 + 0.25) / 2 = 0.
  assert set(out) == {"shapley_audio", "shapley_visual", "shapley_share_audio",
                      "shapley_share_visual", "imbalance_gap"}
  np.testing.assert_allclose([out["shapley_audio"], out["shapley_visual"]], [0.5, 0.0])
  np.testing.assert_allclose([out["shapley_share_audio"], out["shapley_share_visual"]], [1, 0])
  np.testing.assert_allclose(out["imbalance_gap"], 0.5)
  # No change from the features at all: the shares are undefined (nan), the gap is 0.
  same = {s: onehot([0, 0, 0, 0]) for s in subset_logits}
  out = metrics.modality_contributions(same, labels, ("audio", "visual"))
  assert np.isnan(out["shapley_share_audio"]) and out["imbalance_gap"] == 0.0


def test_experiment_evaluate_reports_shapley_in_one_compiled_step():
  """Trainer level: every subset's logits come from the one jitted eval step."""
  from redreg_jax import train  # pylint: disable=g-import-not-at-top
  from tests.helpers import tiny_config  # pylint: disable=g-import-not-at-top
  exp = train.Experiment(tiny_config("joint"))
  res = exp.evaluate(exp.init_state(), "validation", return_features=True)
  assert {"shapley_audio", "shapley_visual", "shapley_share_audio", "shapley_share_visual",
          "imbalance_gap"} <= set(res)
  subsets = res["_outputs"]["subset_logits"]
  assert len(subsets) == 4
  v_empty = float(np.mean(np.argmax(subsets[()], -1) == res["_outputs"]["label"]))
  np.testing.assert_allclose(res["shapley_audio"] + res["shapley_visual"],
                             res["accuracy"] - v_empty, atol=1e-9)
  np.testing.assert_allclose(res["imbalance_gap"],
                             abs(res["shapley_audio"] - res["shapley_visual"]), atol=1e-12)
  assert exp.eval_step._cache_size() == 1  # pylint: disable=protected-access


def test_eval_step_subsets_up_to_three_modalities():
  """2^M subset logits for M <= 3; above, none (the evaluation logs that it skips them)."""
  import types  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from redreg_jax import models, train  # pylint: disable=g-import-not-at-top
  for mods, expected in ((("a", "b", "c"), 8), (("a", "b", "c", "d"), None)):
    model = models.MultimodalClassifier(mods, 3, encoders={m: {"kind": "mlp", "hidden": 4}
                                                           for m in mods})
    x = {m: jnp.ones((2, 5)) for m in mods}
    variables = model.init(jax.random.key(0), x, train=False)
    state = types.SimpleNamespace(params=variables["params"], batch_stats={})
    batch = {**x, "label": jnp.zeros((2,), jnp.int32), "mask": jnp.ones((2,))}
    out = train.make_eval_step(model, mods)(state, batch)
    if expected is None:
      assert "subset_logits" not in out
    else:
      assert len(out["subset_logits"]) == expected
      res = metrics.modality_contributions(jax.device_get(out["subset_logits"]),
                                           np.zeros(2), mods)
      assert {f"shapley_{m}" for m in mods} <= set(res)
