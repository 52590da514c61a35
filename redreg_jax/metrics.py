"""Classification metrics and modality contributions computed on the host.

Modality contributions (`modality_contributions`): v(S) is the accuracy of the fused
classifier when the pooled features of the modalities outside S are zeroed (the logits
come from `models.MultimodalClassifier(..., subsets=...)`); each modality's exact
Shapley value phi_m over the 2^M subsets, its share phi_m / sum phi, and the imbalance
gap max phi - min phi (|phi_a - phi_v| for two modalities) are reported.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np


def classification_metrics(logits_NxK: np.ndarray, labels_N: np.ndarray,
                           branch_logits: Mapping[str, np.ndarray], num_classes: int,
                           modalities: Sequence[str]) -> dict:
  """Accuracy, per-modality accuracy (branch logits), macro-F1 and confusion matrix."""
  # Imported here: scikit-learn (with SciPy) adds ~2 s to every process's start-up.
  from sklearn import metrics as skm  # pylint: disable=g-import-not-at-top
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


# Exact Shapley values enumerate all 2^M modality subsets; the evaluation computes them
# for M <= this and skips them (with a logged note) above.
MAX_SHAPLEY_MODALITIES = 3


def shapley_values(values: Mapping[Any, float], modalities: Sequence[str]) -> dict[str, float]:
  """Exact Shapley value of each modality from a table of subset values v(S).

  phi_m = sum over S not containing m of |S|! (M - |S| - 1)! / M! * (v(S + m) - v(S)),
  so sum_m phi_m = v(all) - v(empty) (efficiency).

  Args:
    values: {subset: v(subset)} for every subset of `modalities`, the empty one
      included; a subset is any collection of modality names (tuple, frozenset, ...).
    modalities: the M players.
  Returns:
    {m: phi_m} in the order of `modalities`.
  Raises:
    ValueError: a subset is missing or names an unknown modality.
  """
  mods = tuple(modalities)
  table = {frozenset(s): float(v) for s, v in values.items()}
  unknown = sorted({m for s in table for m in s} - set(mods))
  if unknown:
    raise ValueError(f"shapley_values: subsets name {unknown}, not among {list(mods)}.")
  n = len(mods)
  every = [frozenset(c) for k in range(n + 1) for c in itertools.combinations(mods, k)]
  missing = [sorted(s) for s in every if s not in table]
  if missing:
    raise ValueError(f"shapley_values needs v(S) for all {2 ** n} subsets of {list(mods)}; "
                     f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}.")
  phi = {}
  for m in mods:
    total = 0.0
    for s in every:
      if m in s:
        continue
      weight = math.factorial(len(s)) * math.factorial(n - len(s) - 1) / math.factorial(n)
      total += weight * (table[s | {m}] - table[s])
    phi[m] = total
  return phi


def modality_contributions(subset_logits: Mapping[tuple, np.ndarray], labels_N: np.ndarray,
                           modalities: Sequence[str]) -> dict:
  """Shapley values, their shares and the imbalance gap from subset logits.

  Args:
    subset_logits: {subset (tuple of modality names): [N, K] fused logits with the
      pooled features of the modalities outside the subset zeroed}, every subset.
    labels_N: integer labels.
    modalities: the M modalities.
  Returns:
    {'shapley_<m>': phi_m, 'shapley_share_<m>': phi_m / sum phi (nan when the sum is
    0), 'imbalance_gap': max phi - min phi}, with v(S) the accuracy of subset S.
  """
  labels_N = np.asarray(labels_N)
  values = {s: float(np.mean(np.argmax(l, -1) == labels_N)) if len(labels_N) else float("nan")
            for s, l in subset_logits.items()}
  phi = shapley_values(values, modalities)
  total = sum(phi.values())
  out = {f"shapley_{m}": p for m, p in phi.items()}
  for m, p in phi.items():
    # The sum is v(all) - v(empty): zero when features do not change accuracy at all.
    out[f"shapley_share_{m}"] = p / total if abs(total) > 1e-12 else float("nan")
  out["imbalance_gap"] = max(phi.values()) - min(phi.values())
  return out
