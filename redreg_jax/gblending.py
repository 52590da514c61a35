"""G-Blending (Wang et al., CVPR 2020): the overfitting-to-generalisation ratio and blend weights.

Gradient-Blending trains the multimodal network with one classifier head per
modality plus the fused head (k + 1 losses) and minimises the blended loss
L_blend = sum_i w_i L_i (Eq.7). The weights come from each head's overfitting O
and generalisation G between two checkpoints N and N + n (Eq.3, Fig.3):

  O_N = L^V_N - L^T_N,   dO_i = O_{N+n} - O_N,   dG_i = L^V_N - L^V_{N+n},
  w_i = (1 / Z) dG_i / dO_i^2,   Z = sum_i dG_i / dO_i^2        (Eq.6, Algorithm 1)

with L^V the loss on a held-out subset V of the training set (the paper's
stand-in for the true loss L*) and L^T the loss on (a subset T' of) the training
set. The paper notes an accuracy can replace the loss ("higher_is_better").
Equation numbers in this file are the G-Blending paper's.

What the trainer must supply (G-Blending is a loss weighting, not a gradient
transformation; it runs the same train step with `blended_loss`):

* Once per super-epoch (Algorithm 3, online; Algorithm 2, offline, is one
  super-epoch spanning the whole run, from epoch 0): a held-out split V of the
  training set that the model never trains on (8% of Kinetics, 13% of
  mini-AudioSet in the paper) and a training subset T'. At the super-epoch's
  first epoch N, for each of the K = k + 1 heads i (the k unimodal networks -
  encoder m plus its unimodal head - and the naive multimodal network trained on
  the fused loss alone) copy the current weights, measure the mean loss on T'
  and on V (`train_losses_before[i]`, `val_losses_before[i]`), train that copy on
  its own loss only for n epochs, and measure both again (`*_after[i]`). Then
  `gblend_weights(...)` gives the K weights for the next n epochs of real
  training. `super_epoch_starts` lists the epochs N at which to do it (the
  paper, Kinetics: a first super-epoch of 10 epochs, then 5).
* Every step: the K losses [L_uni_1, ..., L_uni_k, L_multi] of the model's
  heads (one forward pass), combined by `blended_loss(losses_K, weights_K)`
  with the weights held constant (no gradient) for the super-epoch.

The authors released no code for G-Blending; third-party re-implementations
(e.g. BalanceBenchmark's GBlending trainer) take |dG / dO^2|, which
`negative='abs'` reproduces. The default keeps the paper's signed Eq.6
(Proposition 1 allows real-valued weights).
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp

__all__ = ['NEGATIVE_FORMS', 'blended_loss', 'gblend_weights', 'overfitting',
           'overfitting_generalization', 'overfitting_to_generalization_ratio',
           'super_epoch_starts']

# How a head whose generalisation dG is negative (its held-out loss grew) enters
# Eq.6: 'keep' the signed weight (paper), 'clip' dG at 0 (weight 0), or take
# 'abs' |dG / dO^2| (third-party re-implementations).
NEGATIVE_FORMS = ('keep', 'clip', 'abs')


def overfitting(train_K: jax.Array, val_K: jax.Array, *,
                higher_is_better: bool = False) -> jax.Array:
  """O_N, the gap between the held-out and the training loss (Fig.3).

  Args:
    train_K: [K] training losses L^T_N (or accuracies with higher_is_better).
    val_K: [K] held-out losses L^V_N (or accuracies).
    higher_is_better: True when the values are accuracies (then O = A^T - A^V).

  Returns:
    [K] float32 O_N = L^V_N - L^T_N (accuracies: A^T_N - A^V_N).
  """
  train_K, val_K = (jnp.asarray(x, jnp.float32) for x in (train_K, val_K))
  return train_K - val_K if higher_is_better else val_K - train_K


def overfitting_generalization(train_before_K, train_after_K, val_before_K, val_after_K, *,
                               higher_is_better: bool = False) -> tuple[jax.Array, jax.Array]:
  """(dO, dG) between checkpoints N and N + n (Eq.3).

  Args:
    train_before_K: [K] training loss of each head at checkpoint N.
    train_after_K: [K] training loss at checkpoint N + n.
    val_before_K: [K] held-out loss at N.
    val_after_K: [K] held-out loss at N + n.
    higher_is_better: True when the values are accuracies.

  Returns:
    dO = O_{N+n} - O_N and dG = L^V_N - L^V_{N+n} (accuracies: A^V_{N+n} - A^V_N),
    both [K] float32.
  """
  o_before = overfitting(train_before_K, val_before_K, higher_is_better=higher_is_better)
  o_after = overfitting(train_after_K, val_after_K, higher_is_better=higher_is_better)
  val_before_K, val_after_K = (jnp.asarray(x, jnp.float32) for x in (val_before_K, val_after_K))
  d_g = val_after_K - val_before_K if higher_is_better else val_before_K - val_after_K
  return o_after - o_before, d_g


def overfitting_to_generalization_ratio(train_before_K, train_after_K, val_before_K,
                                        val_after_K, *, higher_is_better: bool = False,
                                        eps: float = 1e-12) -> jax.Array:
  """OGR = |dO / dG| of each head (Eq.3); lower is better.

  Args:
    train_before_K, train_after_K, val_before_K, val_after_K: as for
      `overfitting_generalization`.
    higher_is_better: True when the values are accuracies.
    eps: floor of |dG| (a head that did not generalise at all gets |dO| / eps).

  Returns:
    [K] float32 OGR.
  """
  d_o, d_g = overfitting_generalization(train_before_K, train_after_K, val_before_K,
                                        val_after_K, higher_is_better=higher_is_better)
  return jnp.abs(d_o) / jnp.maximum(jnp.abs(d_g), eps)


def _check_losses(arrays) -> None:
  shapes = {jnp.shape(a) for a in arrays}
  if len(shapes) != 1 or len(next(iter(shapes))) != 1 or next(iter(shapes))[0] < 2:
    raise ValueError(
        'gblend_weights: train_losses_before, train_losses_after, val_losses_before and '
        'val_losses_after must be 1-D arrays of the same length K >= 2 (one entry per loss '
        f'head: the unimodal heads, then the multimodal one); got shapes {sorted(shapes)}.')


def gblend_weights(train_losses_before, train_losses_after, val_losses_before,
                   val_losses_after, *, higher_is_better: bool = False,
                   negative: str = 'keep', eps: float = 1e-12) -> jax.Array:
  """Gradient-Blending weights w_i = (dG_i / dO_i^2) / Z of K loss heads (Eq.6, Algorithm 1).

  Args:
    train_losses_before: [K] mean training loss (on T') of each head's network at
      checkpoint N, heads in the order of `blended_loss`'s losses (unimodal heads,
      then the multimodal one).
    train_losses_after: [K] the same after n epochs of training that network alone.
    val_losses_before: [K] mean held-out (V) loss at N.
    val_losses_after: [K] mean held-out loss at N + n.
    higher_is_better: True when the four arrays hold accuracies instead of losses
      (the paper: "equally effective"); O and G flip sign accordingly.
    negative: one of NEGATIVE_FORMS, how a head with dG < 0 is weighted ('keep':
      the paper's signed Eq.6; 'clip': dG clipped at 0; 'abs': |dG / dO^2| as
      third-party re-implementations do).
    eps: floor of dO^2 (> 0); a head whose overfitting did not change gets
      dG / eps and dominates the blend, the limit of Eq.6.

  Returns:
    [K] float32 weights summing to 1; uniform 1/K when Z = 0 (no head generalised,
    e.g. every dG is 0 or clipped to 0).

  References:
    Wang, Tran & Feiszli, What Makes Training Multi-modal Classification Networks
    Hard?, CVPR 2020.
  """
  if negative not in NEGATIVE_FORMS:
    raise ValueError(f'gblend_weights: negative must be one of {NEGATIVE_FORMS}; got {negative!r}.')
  if not isinstance(eps, numbers.Real) or not 0 < eps < float('inf'):
    raise ValueError(f'gblend_weights: eps must be a finite number > 0; got {eps!r}.')
  if not isinstance(higher_is_better, bool):
    raise ValueError(f'gblend_weights: higher_is_better must be a bool; got {higher_is_better!r}.')
  arrays = (train_losses_before, train_losses_after, val_losses_before, val_losses_after)
  _check_losses(arrays)
  d_o, d_g = overfitting_generalization(*arrays, higher_is_better=higher_is_better)
  if negative == 'clip':
    d_g = jnp.maximum(d_g, 0.0)
  raw_K = d_g / jnp.maximum(jnp.square(d_o), eps)  # <grad L*, v_k> / sigma_k^2 of Eq.6.
  if negative == 'abs':
    raw_K = jnp.abs(raw_K)
  z = jnp.sum(raw_K)  # Z of Eq.6.
  num_k = raw_K.shape[0]
  return jnp.where(z != 0, raw_K / jnp.where(z != 0, z, 1.0), 1.0 / num_k)


def blended_loss(losses_K: jax.Array, weights_K: jax.Array) -> jax.Array:
  """L_blend = sum_i w_i L_i (Eq.7), the weights held constant (no gradient).

  Args:
    losses_K: [K] losses of the heads, in the order the weights were estimated.
    weights_K: [K] weights from `gblend_weights`.

  Returns:
    [] the blended loss.
  """
  losses_K = jnp.asarray(losses_K)
  weights_K = jax.lax.stop_gradient(jnp.asarray(weights_K, losses_K.dtype))
  if losses_K.shape != weights_K.shape or losses_K.ndim != 1:
    raise ValueError(
        f'blended_loss: losses_K and weights_K must be 1-D of the same length; got shapes '
        f'{losses_K.shape} and {weights_K.shape}.')
  return jnp.sum(weights_K * losses_K)


def super_epoch_starts(num_epochs: int, *, super_epoch: int = 5,
                       first_super_epoch: int | None = 10, online: bool = True) -> tuple[int, ...]:
  """Epochs N at which the weights are (re-)estimated (Algorithms 2 and 3).

  Args:
    num_epochs: epochs of the whole run, >= 1.
    super_epoch: n, epochs per super-epoch after the first (paper, Kinetics: 5).
    first_super_epoch: length of the first (warm-up) super-epoch (paper: 10);
      None: the same as `super_epoch`.
    online: False for offline G-Blend: one estimate at epoch 0 over the whole run.

  Returns:
    Increasing 0-based epochs; the weights estimated at starts[j] are used until
    starts[j + 1] (or the end), and estimated over that same span of epochs.
  """
  for name, value in (('num_epochs', num_epochs), ('super_epoch', super_epoch)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f'super_epoch_starts: {name} must be an int >= 1; got {value!r}.')
  if first_super_epoch is not None and (
      isinstance(first_super_epoch, bool) or not isinstance(first_super_epoch, numbers.Integral)
      or first_super_epoch < 1):
    raise ValueError(
        f'super_epoch_starts: first_super_epoch must be None or an int >= 1; got '
        f'{first_super_epoch!r}.')
  if not online:
    return (0,)
  first = super_epoch if first_super_epoch is None else first_super_epoch
  return (0,) + tuple(range(first, num_epochs, super_epoch))
