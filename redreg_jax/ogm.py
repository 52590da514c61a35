"""OGM-GE (Peng et al., CVPR 2022) as an optax transform.

On-the-fly Gradient Modulation scales down the convolution-kernel gradients of
the encoder whose branch is ahead, by 1 - tanh(alpha * ratio) with ratio its
confidence over the other branch's; Generalisation Enhancement adds Gaussian
noise with the gradient's own standard deviation to every modulated tensor.
docs/methods.md §OGM-GE settles the form (the official code's); for M > 2 modalities each one
is compared with the weakest.

  tx = optax.chain(ogm_ge_transform(('audio', 'visual'), labels),
                   optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))
  updates, opt_state = tx.update(grads, opt_state, params, observations=obs)

The scores use `observations.branch_logits`; OGM's own code computes them with
half the fused head's bias per branch (docs/methods.md §Setting `branch_bias='split'`).
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from redreg_jax.observations import LabelTree, Observations, branch_true_class_prob, resolve_labels

PyTree = Any
KernelFilter = Callable[[tuple, jax.Array], bool]

__all__ = ['OgmState', 'default_kernel_filter', 'ogm_coefficients', 'ogm_ge_transform']

# torch's normal_(0, grad.std() + 1e-8) in the official code: keeps the noise
# defined (and tiny) for an all-zero gradient.
_NOISE_STD_EPS = 1e-8


class OgmState(NamedTuple):
  """State of `ogm_ge_transform`: only the logged scalars, OGM keeps no history."""

  diagnostics: dict[str, jax.Array]  # this step's scalars, for logging.


def _key_name(key: Any) -> Any:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return getattr(key, attr)
  return key


def default_kernel_filter(path: tuple, leaf: jax.Array) -> bool:
  """True for convolution kernels: leaves named 'kernel' with 4 dimensions."""
  return bool(path) and _key_name(path[-1]) == 'kernel' and jnp.ndim(leaf) == 4


def ogm_coefficients(scores_M: jax.Array, alpha: float) -> jax.Array:
  """Modulation coefficients k_m of OGM (docs/methods.md §OGM-GE), generalised to M modalities.

  The weakest modality w (the first one on a tie) keeps k_w = 1; every other m
  gets k_m = 1 - tanh(alpha * s_m / s_w). For two modalities (a, v) this is the
  official rule: ratio = s_a / s_v > 1 gives k_a = 1 - tanh(alpha * ratio),
  otherwise k_v = 1 - tanh(alpha / ratio), ties modulating v.

  Args:
    scores_M: [M] scores s_m (batch sums of the true-class probability).
    alpha: modulation strength.

  Returns:
    [M] float32 coefficients in (0, 1].
  """
  scores_M = scores_M.astype(jnp.float32)
  weakest = jnp.argmin(scores_M)
  ratio_M = scores_M / jnp.maximum(scores_M[weakest], jnp.finfo(jnp.float32).tiny)
  is_weakest_M = jnp.arange(scores_M.shape[0]) == weakest
  # 1 - tanh(x) = 2 sigmoid(-2x), without float32's cancellation at large x.
  return jnp.where(is_weakest_M, 1.0, 2.0 * jax.nn.sigmoid(-2.0 * alpha * ratio_M))


def ogm_ge_transform(
    modalities: Sequence[str],
    param_labels: LabelTree,
    *,
    alpha: float = 0.8,
    start_epoch: int = 0,
    end_epoch: int = 50,
    gaussian_noise: bool = True,
    kernel_filter: KernelFilter | None = None,
) -> optax.GradientTransformationExtraArgs:
  """Scales (and with GE, perturbs) the encoders' conv-kernel gradients.

  Args:
    modalities: modality names, in the order used for the per-modality arrays.
    param_labels: label tree (or callable params -> label tree); leaves labelled
      with a modality name are that modality's encoder, all others pass unchanged.
    alpha: modulation strength, > 0 (CREMA-D: 0.8).
    start_epoch: first modulated epoch.
    end_epoch: last modulated epoch (inclusive, as the official code).
    gaussian_noise: True for OGM-GE, False for plain OGM.
    kernel_filter: `(key_path, leaf) -> bool` choosing the encoder leaves that are
      modulated; default `default_kernel_filter` (4-D leaves named 'kernel').
      Transformer encoders have none: pass e.g. `lambda p, x: x.ndim >= 2`.

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs the keyword
    `observations` (`branch_logits`, `labels`, `epoch`, and `rng` for GE noise).

  References:
    Peng et al., Balanced Multimodal Learning via On-the-fly Gradient
    Modulation, CVPR 2022.
  """
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  if len(modalities) < 2 or len(set(modalities)) != len(modalities) or not all(
      isinstance(m, str) for m in modalities):
    raise ValueError(
        f'ogm_ge_transform: modalities must be at least two distinct names such as '
        f"('audio', 'visual'); got {modalities!r}.")
  if not isinstance(alpha, numbers.Real) or not 0 < alpha < float('inf'):
    raise ValueError(
        f'ogm_ge_transform: alpha must be a finite number > 0 (CREMA-D: 0.8); got {alpha!r}.')
  for name, value in (('start_epoch', start_epoch), ('end_epoch', end_epoch)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
      raise ValueError(f'ogm_ge_transform: {name} must be an int >= 0; got {value!r}.')
  if end_epoch < start_epoch:
    raise ValueError(
        f'ogm_ge_transform: end_epoch ({end_epoch}) must be >= start_epoch ({start_epoch}); '
        'the modulation window [start_epoch, end_epoch] is inclusive.')
  if not isinstance(gaussian_noise, bool):
    raise ValueError(
        'ogm_ge_transform: gaussian_noise must be True (OGM-GE) or False (OGM); '
        f'got {gaussian_noise!r}.')
  if kernel_filter is not None and not callable(kernel_filter):
    raise ValueError(
        'ogm_ge_transform: kernel_filter must be None or a callable (key_path, leaf) -> bool; '
        f'got {kernel_filter!r}.')
  kernel_filter = kernel_filter or default_kernel_filter

  def _diagnostics(score_M, coef_M, active):
    out = {f'score_{m}': score_M[i] for i, m in enumerate(modalities)}
    out.update({f'coeff_{m}': coef_M[i] for i, m in enumerate(modalities)})
    out['modulating'] = jnp.asarray(active, jnp.float32)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)

  def init_fn(params: PyTree) -> OgmState:
    del params
    zeros_M = jnp.zeros((len(modalities),), jnp.float32)
    return OgmState(diagnostics=_diagnostics(zeros_M, zeros_M + 1, 0.0))

  def update_fn(updates: PyTree, state: OgmState, params: PyTree | None = None, *,
                observations: Observations | None = None, **extra_args):
    del state, extra_args
    if observations is None:
      raise ValueError('ogm_ge_transform: update needs the keyword observations=Observations(...).')
    if gaussian_noise and observations.rng is None:
      raise ValueError(
          'ogm_ge_transform: gaussian_noise=True needs observations.rng, a per-step PRNG key '
          '(e.g. jax.random.fold_in(key, step)); or set gaussian_noise=False for plain OGM.')
    labels = resolve_labels(param_labels, updates if params is None else params)
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    try:
      flat_labels = treedef.flatten_up_to(labels)
    except (ValueError, TypeError) as e:
      raise ValueError(
          'ogm_ge_transform: param_labels must have the structure of the params with one '
          f'string label per leaf (or be a callable params -> such a tree): {e}') from e
    selected = [isinstance(label, str) and label in modalities and kernel_filter(path, g)
                for (path, g), label in zip(path_leaves, flat_labels)]
    for m in modalities:
      if not any(s and label == m for s, label in zip(selected, flat_labels)):
        raise ValueError(
            f'ogm_ge_transform: no leaf of the {m!r} encoder passes kernel_filter; label that '
            f"encoder's parameters {m!r} or pass a kernel_filter that selects its kernels.")

    # s_m = sum over the batch of softmax(branch logits)[y] (docs/methods.md §OGM-GE).
    batch = observations.labels.shape[0]
    score_M = jnp.stack([branch_true_class_prob(observations.branch_logits[m], observations.labels)
                         for m in modalities]) * batch
    coef_M = ogm_coefficients(score_M, alpha)
    epoch = jnp.asarray(observations.epoch)
    active = (epoch >= start_epoch) & (epoch <= end_epoch)

    out_leaves = []
    for i, ((path, g), label, sel) in enumerate(zip(path_leaves, flat_labels, selected)):
      if sel:
        new = g * coef_M[modalities.index(label)]
        if gaussian_noise:
          # GE: N(0, std(g)^2) per tensor, std of the unscaled gradient, unbiased
          # as torch.Tensor.std in the official code.
          std = jnp.std(g.astype(jnp.float32), ddof=1 if g.size > 1 else 0) + _NOISE_STD_EPS
          noise = std * jax.random.normal(jax.random.fold_in(observations.rng, i), g.shape)
          new = new + noise
        g = jnp.where(active, new, g).astype(g.dtype)
      out_leaves.append(g)

    applied_M = jnp.where(active, coef_M, 1.0)
    diagnostics = _diagnostics(score_M, applied_M, active)
    return treedef.unflatten(out_leaves), OgmState(diagnostics=diagnostics)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
