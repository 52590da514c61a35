"""Evaluation metrics on hand-made predictions."""

import numpy as np

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
