"""PMR (Fan et al., CVPR 2023): prototypical cross-entropy and entropy regularisation.

Prototypical Modal Rebalance builds, per modality, a non-parametric classifier
from class prototypes (centroids of the encoder features, Eq.6): the logits of
a sample are minus its Euclidean distances to the prototypes (Eq.7). The ratio
rho of the two modalities' summed true-class prototype probabilities (Eq.8)
says which one lags; the lagging one gets the prototypical cross-entropy (PCE,
Eq.9) with weight alpha * beta (or alpha * gamma) of Eq.10-11, and during the
first E_r epochs the leading one is held back by maximising the entropy of its
prototype distribution (PER, Eq.13, weight mu times the other's coefficient).
Prototypes are recomputed every epoch from a subset of the training data and
smoothed with momentum epsilon (Eq.12). Equation numbers are the PMR paper's.

  L_final = L_CE + alpha (beta L^0_PCE + gamma L^1_PCE) - mu (gamma H^0 + beta H^1)

What the trainer must supply:

* Per epoch, before the epoch's first step (Algorithm 1; the released code also
  does it once before epoch 0): for each modality m, the pooled encoder features
  z_m of a fixed-size subset of the training set (the paper: one tenth, Tab.5;
  the released code: the first tenth of the shuffled training batches) from an
  inference-mode forward pass, without gradient. Accumulate them with
  `class_feature_sums` over the subset's batches, turn them into prototypes
  with `prototypes_from_sums` and smooth them with `update_prototypes` (the
  plain new prototypes at the first computation). The prototypes are constants
  during the epoch (`stop_gradient`).
* Per step: the main training forward pass's pooled features z_m (the same
  features the fusion consumes, with gradient) and the labels; add
  `pmr.loss(features, prototypes, labels, epoch)[0]` to the multimodal
  cross-entropy. No extra forward pass, no gradient transformation: PMR is a
  loss term, chained with the plain SGD optimizer.

Paper vs released code (GitHub fanyunfeng-bit/Modal-Imbalance-PMR,
main_Prototype_grad.py): the code weights the lagging modality's PCE by a
constant alpha (no clip(1/rho - 1, 0, 1) of Eq.11), has no entropy term (PER),
modulates only in epochs [0, 100] of 150, and smooths the prototypes with
c = 0.8 c_new + 0.2 c_old (epsilon = 0.2; the paper gives no value). The
default is the paper's Eq.11 and Eq.13; `coefficient_form='released'`,
`mu=0` and `end_epoch` give the code's (preset 'pmr_official').

More than two modalities: the paper is written for two. Here the PCE weight of
modality m is clip(s_max / s_m - 1, 0, 1) (how far it lags the best) and its PER
weight clip(s_m / s_min - 1, 0, 1) (how far it leads the worst), s_m its summed
true-class prototype probability; for M = 2 both are exactly Eq.11 and Eq.13.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

__all__ = ['COEFFICIENT_FORMS', 'PMR', 'PMR_PRESETS', 'class_feature_sums', 'class_prototypes',
           'imbalance_ratio', 'pmr', 'pmr_coefficients', 'pmr_loss', 'pmr_loss_weights',
           'prototype_entropy', 'prototype_logits', 'prototype_scores',
           'prototypes_from_sums', 'prototypical_cross_entropy', 'update_prototypes']

COEFFICIENT_FORMS = ('paper', 'released')

# Hyper-parameters of the two variants; `pmr(modalities, **PMR_PRESETS[name])`.
PMR_PRESETS: dict[str, dict[str, Any]] = {
    # The paper (Sec.5.2): alpha = 1 (or 2), mu = 1e-2 (or 1e-3), PER in the first
    # E_r epochs - "a few", no number given; 10 is ours. epsilon not given: the code's.
    'pmr': dict(alpha=1.0, mu=1e-2, reg_epochs=10, momentum=0.2, coefficient_form='paper',
                end_epoch=None),
    # The released main_Prototype_grad.py: constant alpha (default 1.0) on the
    # lagging modality, no PER, modulation_ends = 100, momentum_coef = 0.2.
    'pmr_official': dict(alpha=1.0, mu=0.0, reg_epochs=0, momentum=0.2,
                         coefficient_form='released', end_epoch=100),
}


def class_feature_sums(features_NxD: jax.Array, labels_N: jax.Array, num_classes: int, *,
                       mask_N: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per-class sums and counts of the features, to accumulate over batches (Eq.6).

  Args:
    features_NxD: [N, D] pooled encoder features of one modality.
    labels_N: [N] int class labels in [0, num_classes).
    num_classes: K.
    mask_N: optional [N] bool, False for padding examples.

  Returns:
    ([K, D] float32 sums, [K] float32 counts).
  """
  onehot_NxK = jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32)
  if mask_N is not None:
    onehot_NxK = onehot_NxK * jnp.asarray(mask_N, jnp.float32)[:, None]
  return onehot_NxK.T @ features_NxD.astype(jnp.float32), jnp.sum(onehot_NxK, axis=0)


def prototypes_from_sums(sums_KxD: jax.Array, counts_K: jax.Array) -> jax.Array:
  """c_k = mean of the class-k features (Eq.6); 0 for a class with no example."""
  return sums_KxD / jnp.maximum(counts_K, 1.0)[:, None]


def class_prototypes(features_NxD: jax.Array, labels_N: jax.Array, num_classes: int, *,
                     mask_N: jax.Array | None = None) -> jax.Array:
  """Class prototypes c_k = (1 / N_k) sum_{i: y_i = k} z_i (Eq.6).

  Args:
    features_NxD: [N, D] features of one modality.
    labels_N: [N] int labels.
    num_classes: K.
    mask_N: optional [N] bool, False for padding examples.

  Returns:
    [K, D] float32 prototypes; the zero vector for a class absent from the data
    (`update_prototypes` keeps the previous prototype of such a class).
  """
  return prototypes_from_sums(*class_feature_sums(features_NxD, labels_N, num_classes,
                                                  mask_N=mask_N))


def update_prototypes(old_KxD: jax.Array, new_KxD: jax.Array, new_counts_K: jax.Array,
                      momentum: float) -> jax.Array:
  """c_old <- epsilon c_old + (1 - epsilon) c_new (Eq.12), per class.

  Args:
    old_KxD: [K, D] last epoch's prototypes.
    new_KxD: [K, D] this epoch's prototypes (`prototypes_from_sums`).
    new_counts_K: [K] examples behind each new prototype; a class with none keeps
      its old prototype (the released code would divide by zero there).
    momentum: epsilon in [0, 1) (released code: 0.2).

  Returns:
    [K, D] float32 prototypes, without gradient.
  """
  mixed = momentum * old_KxD.astype(jnp.float32) + (1.0 - momentum) * new_KxD.astype(jnp.float32)
  return jax.lax.stop_gradient(jnp.where((new_counts_K > 0)[:, None], mixed, old_KxD))


def _safe_norm(x: jax.Array, axis: int) -> jax.Array:
  """Euclidean norm whose gradient at 0 is 0 instead of NaN."""
  sq = jnp.sum(jnp.square(x), axis=axis)
  positive = sq > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def prototype_logits(z: jax.Array, protos: jax.Array) -> jax.Array:
  """Logits -d(z_i, c_k) with d the Euclidean distance (Eq.7, the softmax's argument).

  Args:
    z: [B, D] features (with gradient: the PCE trains the encoder through them).
    protos: [K, D] prototypes (treated as constants).

  Returns:
    [B, K] float32 logits; softmax over K gives p(y = k | x) of Eq.7.
  """
  protos = jax.lax.stop_gradient(protos.astype(jnp.float32))
  return -_safe_norm(z.astype(jnp.float32)[:, None, :] - protos[None, :, :], axis=-1)


def prototype_scores(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """sum_{i in B} p(y_i | x_i), a numerator or denominator of rho (Eq.8), without gradient."""
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits_BxK).astype(jnp.float32), axis=-1)
  return jnp.sum(jnp.take_along_axis(probs, labels_B[:, None], axis=-1))


def imbalance_ratio(score_0: jax.Array, score_1: jax.Array) -> jax.Array:
  """rho_t = sum_i p^0_i / sum_i p^1_i (Eq.8); > 1 when modality 0 leads."""
  return score_0 / jnp.maximum(score_1, jnp.finfo(jnp.float32).tiny)


def pmr_coefficients(scores_M: jax.Array, *, form: str = 'paper') -> tuple[jax.Array, jax.Array]:
  """Per-modality PCE and PER coefficients before alpha and mu (Eq.11, 13).

  Args:
    scores_M: [M] prototype scores s_m (`prototype_scores`), higher is better.
    form: 'paper' (Eq.11: the lagging modality gets clip(rho' - 1, 0, 1), rho' its
      leader's score over its own) or 'released' (1 for every modality scoring
      below the best, as the code's constant weight; no PER).

  Returns:
    (pce_M, per_M) float32. For M = 2, with rho = s_0 / s_1: rho < 1 gives
    pce = (beta, 0) with beta = clip(1/rho - 1, 0, 1) and per = (0, beta); rho >= 1
    gives pce = (0, gamma), gamma = clip(rho - 1, 0, 1), and per = (gamma, 0), i.e.
    Eq.13 puts each coefficient on the other modality's entropy.
  """
  if form not in COEFFICIENT_FORMS:
    raise ValueError(f'pmr_coefficients: form must be one of {COEFFICIENT_FORMS}; got {form!r}.')
  scores_M = jax.lax.stop_gradient(jnp.asarray(scores_M, jnp.float32))
  tiny = jnp.finfo(jnp.float32).tiny
  s_max, s_min = jnp.max(scores_M), jnp.min(scores_M)
  if form == 'released':
    return (scores_M < s_max).astype(jnp.float32), jnp.zeros_like(scores_M)
  pce_M = jnp.clip(s_max / jnp.maximum(scores_M, tiny) - 1.0, 0.0, 1.0)  # Eq.11
  per_M = jnp.clip(scores_M / jnp.maximum(s_min, tiny) - 1.0, 0.0, 1.0)  # Eq.13's swap.
  return pce_M, per_M


def pmr_loss_weights(scores_M: jax.Array, *, alpha: float, mu: float, epoch: jax.Array,
                     reg_epochs: int, end_epoch: int | None = None,
                     form: str = 'paper') -> tuple[jax.Array, jax.Array]:
  """Weights of each modality's PCE (alpha beta, alpha gamma) and entropy (mu gamma, mu beta).

  Args:
    scores_M: [M] prototype scores s_m of the batch.
    alpha: PCE strength of Eq.10.
    mu: PER strength of Eq.13.
    epoch: [] 0-based epoch of the step.
    reg_epochs: E_r of Algorithm 1; PER only while epoch < E_r.
    end_epoch: last epoch with PCE and PER (inclusive; released code: 100); None: all.
    form: see `pmr_coefficients`.

  Returns:
    ([M] PCE weights, [M] PER weights), float32, without gradient.
  """
  pce_M, per_M = pmr_coefficients(scores_M, form=form)
  epoch = jnp.asarray(epoch)
  active = jnp.asarray(True) if end_epoch is None else epoch <= end_epoch
  pce_M = jnp.where(active, alpha * pce_M, 0.0)
  per_M = jnp.where(active & (epoch < reg_epochs), mu * per_M, 0.0)
  return pce_M, per_M


def prototypical_cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """L_PCE = E[-log softmax(-d(z, c))_y] (Eq.9), the batch mean."""
  logp = jax.nn.log_softmax(logits_BxK.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels_B[:, None], axis=-1))


def prototype_entropy(logits_BxK: jax.Array) -> jax.Array:
  """H(pi(-d(z, c))) of Eq.13: batch mean entropy of the prototype distribution."""
  logp = jax.nn.log_softmax(logits_BxK.astype(jnp.float32), axis=-1)
  return -jnp.mean(jnp.sum(jnp.exp(logp) * logp, axis=-1))


def pmr_loss(features_M: Sequence[jax.Array], protos_M: Sequence[jax.Array],
             labels_B: jax.Array, *, epoch: jax.Array, alpha: float = 1.0, mu: float = 1e-2,
             reg_epochs: int = 10, end_epoch: int | None = None,
             form: str = 'paper') -> tuple[jax.Array, dict[str, jax.Array]]:
  """PMR's extra loss: sum_m w_m L^m_PCE - sum_m v_m H^m (Eq.10, 13 without L_CE).

  Args:
    features_M: M arrays [B, D_m], the pooled features of the main forward pass.
    protos_M: M arrays [K, D_m], the epoch's prototypes.
    labels_B: [B] int labels.
    epoch: [] 0-based epoch of the step.
    alpha, mu, reg_epochs, end_epoch, form: see `pmr_loss_weights`.

  Returns:
    ([] loss to add to the multimodal cross-entropy, aux) with aux holding the
    [M] 'score', 'pce', 'entropy', 'pce_weight', 'per_weight' and, for M = 2, the
    [] 'rho' of Eq.8.
  """
  if len(features_M) != len(protos_M) or len(features_M) < 2:
    raise ValueError(
        f'pmr_loss: features_M and protos_M must hold one array per modality, at least two; '
        f'got {len(features_M)} and {len(protos_M)}.')
  logits = [prototype_logits(z, c) for z, c in zip(features_M, protos_M)]
  score_M = jnp.stack([prototype_scores(l, labels_B) for l in logits])
  pce_M = jnp.stack([prototypical_cross_entropy(l, labels_B) for l in logits])
  ent_M = jnp.stack([prototype_entropy(l) for l in logits])
  w_pce_M, w_per_M = pmr_loss_weights(score_M, alpha=alpha, mu=mu, epoch=epoch,
                                      reg_epochs=reg_epochs, end_epoch=end_epoch, form=form)
  loss = jnp.sum(w_pce_M * pce_M) - jnp.sum(w_per_M * ent_M)
  aux = dict(score=score_M, pce=pce_M, entropy=ent_M, pce_weight=w_pce_M, per_weight=w_per_M)
  if len(features_M) == 2:
    aux['rho'] = imbalance_ratio(score_M[0], score_M[1])
  return loss, aux


@dataclasses.dataclass(frozen=True)
class PMR:
  """PMR with validated hyper-parameters (build it with `pmr`)."""

  modalities: tuple[str, ...]
  alpha: float
  mu: float
  reg_epochs: int
  momentum: float
  coefficient_form: str
  end_epoch: int | None
  subset_fraction: float

  def loss(self, features: Mapping[str, jax.Array], prototypes: Mapping[str, jax.Array],
           labels_B: jax.Array, epoch: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """`pmr_loss` on modality-keyed features and prototypes; aux keys get '_<m>' suffixes."""
    loss, aux = pmr_loss([features[m] for m in self.modalities],
                         [prototypes[m] for m in self.modalities], labels_B, epoch=epoch,
                         alpha=self.alpha, mu=self.mu, reg_epochs=self.reg_epochs,
                         end_epoch=self.end_epoch, form=self.coefficient_form)
    out = {f'{k}_{m}': v[i] for k, v in aux.items() if k != 'rho'
           for i, m in enumerate(self.modalities)}
    if 'rho' in aux:
      out['rho'] = aux['rho']
    return loss, out

  def update_prototypes(self, old: Mapping[str, jax.Array] | None,
                        sums: Mapping[str, jax.Array],
                        counts: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    """Eq.12 per modality from accumulated `class_feature_sums`; old=None: the first time."""
    new = {m: prototypes_from_sums(sums[m], counts[m]) for m in self.modalities}
    if old is None:
      return {m: jax.lax.stop_gradient(v) for m, v in new.items()}
    return {m: update_prototypes(old[m], new[m], counts[m], self.momentum)
            for m in self.modalities}


def _real(name, value, low, high, low_open, allowed):
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value == value
  ok = ok and (value > low if low_open else value >= low) and value < high
  if not ok:
    raise ValueError(f'pmr: {name} must be {allowed}; got {value!r}.')


def pmr(modalities: Sequence[str], *, alpha: float = 1.0, mu: float = 1e-2,
        reg_epochs: int = 10, momentum: float = 0.2, coefficient_form: str = 'paper',
        end_epoch: int | None = None, subset_fraction: float = 0.1) -> PMR:
  """Validates PMR's hyper-parameters and returns the method's loss spec.

  Args:
    modalities: at least two distinct modality names (M = 2 is the paper; M > 2 uses
      the generalisation in the module docstring).
    alpha: PCE strength, > 0 (paper: 1 or 2 per dataset).
    mu: PER strength, >= 0 (paper: 1e-2 or 1e-3; released code: no PER, 0).
    reg_epochs: E_r, PER while epoch < E_r, >= 0 (paper: "the first few epochs").
    momentum: epsilon of Eq.12 in [0, 1) (released code: 0.2).
    coefficient_form: 'paper' (Eq.11) or 'released' (constant alpha).
    end_epoch: last epoch with PMR's terms, inclusive (released: 100); None: all.
    subset_fraction: share of the training set behind the prototypes, in (0, 1]
      (paper: 0.1); read by the trainer's epoch hook.

  Returns:
    A frozen `PMR`.

  References:
    Fan et al., PMR: Prototypical Modal Rebalance for Multimodal Learning, CVPR 2023.
  """
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  if len(modalities) < 2 or len(set(modalities)) != len(modalities) or not all(
      isinstance(m, str) for m in modalities):
    raise ValueError(f"pmr: modalities must be at least two distinct names such as "
                     f"('audio', 'visual'); got {modalities!r}.")
  inf = float('inf')
  _real('alpha', alpha, 0.0, inf, True, 'a finite number > 0 (paper: 1 or 2)')
  _real('mu', mu, 0.0, inf, False, 'a finite number >= 0 (paper: 1e-2 or 1e-3)')
  _real('momentum', momentum, 0.0, 1.0, False, 'in [0, 1) (released code: 0.2)')
  _real('subset_fraction', subset_fraction, 0.0, 1.0 + 1e-12, True, 'in (0, 1] (paper: 0.1)')
  if isinstance(reg_epochs, bool) or not isinstance(reg_epochs, numbers.Integral) or (
      reg_epochs < 0):
    raise ValueError(f'pmr: reg_epochs must be an int >= 0 (E_r of Algorithm 1); got '
                     f'{reg_epochs!r}.')
  if end_epoch is not None and (isinstance(end_epoch, bool) or not isinstance(
      end_epoch, numbers.Integral) or end_epoch < 0):
    raise ValueError(f'pmr: end_epoch must be None or an int >= 0; got {end_epoch!r}.')
  if coefficient_form not in COEFFICIENT_FORMS:
    raise ValueError(f'pmr: coefficient_form must be one of {COEFFICIENT_FORMS}; got '
                     f'{coefficient_form!r}.')
  return PMR(modalities, float(alpha), float(mu), int(reg_epochs), float(momentum),
             coefficient_form, end_epoch, float(subset_fraction))
