"""Classification metrics computed on the host from gathered predictions."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from sklearn import metrics as skm


def classification_metrics(logits_NxK: np.ndarray, labels_N: np.ndarray,
                           branch_logits: Mapping[str, np.ndarray], num_classes: int,
                           modalities: Sequence[str]) -> dict:
  """Accuracy, per-modality accuracy (branch logits), macro-F1 and confusion matrix."""
  labels_N = np.asarray(labels_N)
  pred = np.argmax(logits_NxK, axis=-1)
  out = {"accuracy": float(np.mean(pred == labels_N)) if len(labels_N) else float("nan")}
  for m in modalities:
    out[f"accuracy_{m}"] = float(np.mean(np.argmax(branch_logits[m], -1) == labels_N))
  classes = list(range(num_classes))
  out["macro_f1"] = float(skm.f1_score(labels_N, pred, labels=classes, average="macro",
                                       zero_division=0))
  if num_classes == 2:
    out["f1"] = float(skm.f1_score(labels_N, pred, pos_label=1, zero_division=0))
  out["confusion_matrix"] = skm.confusion_matrix(labels_N, pred, labels=classes).tolist()
  out["num_examples"] = int(len(labels_N))
  return out
