"""MMPareto (Wei & Hu, ICML 2024) as an optax transform, and `per_loss_grads`.

For each encoder, the gradients of the multimodal loss and of that modality's
unimodal loss are combined: equal weights when they agree (cosine > 0), else
the minimum-norm convex combination (the two-task Pareto direction). The result
is doubled, scaled up to the norm of their plain sum when it is smaller, and
multiplied by gamma (docs/methods.md §MMPareto; the official code rescales per tensor).

The train step gets both gradients from one backward pass with `per_loss_grads`:

  def losses_fn(params):
    ...
    return jnp.stack([loss_mm, sum(unimodal_losses)]), new_batch_stats
  (losses_L, new_stats), grads_L = per_loss_grads(losses_fn, params, has_aux=True)
  g_mm, g_uni = (jax.tree.map(lambda g: g[i], grads_L) for i in (0, 1))
  grads = jax.tree.map(jnp.add, g_mm, g_uni)  # gradient of the total loss
  obs = obs._replace(aux_grads={'multimodal': g_mm, 'unimodal': g_uni})
  updates, opt_state = tx.update(grads, opt_state, params, observations=obs)

Only each encoder's own unimodal loss reaches it, so the gradient of the *sum*
of unimodal losses is, restricted to encoder m, the gradient of L_uni_m.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from redreg_jax.observations import LabelTree, Observations, resolve_labels

PyTree = Any

__all__ = ['MMParetoState', 'RESCALE_SCOPES', 'mmpareto_transform', 'pareto_weights',
           'per_loss_grads']

# 'tensor': each parameter tensor is rescaled to the norm of its own plain sum
# (official code); 'encoder': the norms are taken over the whole encoder.
RESCALE_SCOPES = ('tensor', 'encoder')
_AUX_KEYS = ('multimodal', 'unimodal')
_CANCEL_TOL = 1e-5  # relative norm below which k_mm g_mm + k_uni g_uni is round-off.


class MMParetoState(NamedTuple):
  """State of `mmpareto_transform`: only the logged scalars."""

  diagnostics: dict[str, jax.Array]  # this step's scalars, for logging.


def per_loss_grads(losses_fn: Callable[..., Any], params: PyTree, *,
                   has_aux: bool = False) -> tuple[Any, PyTree]:
  """Gradients of every entry of a loss vector, from one forward pass.

  One `jax.vjp` of `losses_fn`, its pullback vmapped over the L one-hot
  cotangents: the forward pass and its residuals are shared, the L backward
  passes are batched.

  Args:
    losses_fn: `params -> [L] losses` (or `-> ([L] losses, aux)` with has_aux).
    params: the pytree to differentiate with respect to.
    has_aux: whether `losses_fn` also returns auxiliary outputs (e.g. batch stats).

  Returns:
    (losses, grads_L) or ((losses, aux), grads_L) with has_aux; every leaf of
    `grads_L` has the shape of the matching params leaf with a leading [L] axis,
    `grads_L[i]` being the gradient of `losses[i]`.
  """
  if has_aux:
    losses_L, pullback, aux = jax.vjp(losses_fn, params, has_aux=True)
  else:
    losses_L, pullback = jax.vjp(losses_fn, params)
  if jnp.ndim(losses_L) != 1:
    raise ValueError(
        f'per_loss_grads: losses_fn must return a 1-D vector of losses; got shape '
        f'{jnp.shape(losses_L)}. Stack the scalar losses with jnp.stack([...]).')
  cotangents_LxL = jnp.eye(losses_L.shape[0], dtype=losses_L.dtype)
  (grads_L,) = jax.vmap(pullback)(cotangents_LxL)
  return ((losses_L, aux) if has_aux else losses_L), grads_L


def pareto_weights(dot_mm: jax.Array, dot_mu: jax.Array,
                   dot_uu: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MMPareto's weights (k_mm, k_uni) of the multimodal and unimodal gradients.

  Args:
    dot_mm: [] <g_mm, g_mm>.
    dot_mu: [] <g_mm, g_uni>.
    dot_uu: [] <g_uni, g_uni>.

  Returns:
    (k_mm, k_uni, cos): 0.5 / 0.5 when cos(g_mm, g_uni) > 0; otherwise the convex
    weights minimising ||k g_mm + (1 - k) g_uni||, k = <g_uni - g_mm, g_uni> /
    ||g_mm - g_uni||^2 clipped to [0, 1]. cos is 0 when either gradient is 0.
  """
  dot_mm, dot_mu, dot_uu = (jnp.asarray(x, jnp.float32) for x in (dot_mm, dot_mu, dot_uu))
  norms = jnp.sqrt(dot_mm * dot_uu)
  cos = jnp.where(norms > 0, dot_mu / jnp.where(norms > 0, norms, 1.0), 0.0)
  dist_sq = dot_mm + dot_uu - 2.0 * dot_mu  # ||g_mm - g_uni||^2
  k_min_norm = jnp.clip((dot_uu - dot_mu) / jnp.where(dist_sq > 0, dist_sq, 1.0), 0.0, 1.0)
  k_min_norm = jnp.where(dist_sq > 0, k_min_norm, 0.5)  # equal gradients: any k.
  k_mm = jnp.where(cos > 0, 0.5, k_min_norm)
  return k_mm, 1.0 - k_mm, cos


def _sq_norm(tree_leaves: Sequence[jax.Array]) -> jax.Array:
  return sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in tree_leaves)


def _vdot(a_leaves: Sequence[jax.Array], b_leaves: Sequence[jax.Array]) -> jax.Array:
  return sum(jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32))
             for a, b in zip(a_leaves, b_leaves))


def _rescale(new_sq: jax.Array, plain_sq: jax.Array, parts_sq: jax.Array) -> jax.Array:
  """Factor lifting a vector of squared norm new_sq to plain_sq, never shrinking.

  A combination that cancelled down to round-off (norm below _CANCEL_TOL of its
  two parts' norm) is left alone: its direction is float noise, not a descent
  direction worth blowing up to the plain sum's norm.
  """
  grow = (plain_sq > new_sq) & (new_sq > _CANCEL_TOL**2 * parts_sq)
  return jnp.where(grow, jnp.sqrt(plain_sq / jnp.where(grow, new_sq, 1.0)), 1.0)


def mmpareto_transform(
    modalities: Sequence[str],
    param_labels: LabelTree,
    *,
    gamma: float = 1.5,
    rescale: str = 'tensor',
) -> optax.GradientTransformationExtraArgs:
  """Replaces each encoder's gradient by MMPareto's combination of g_mm and g_uni.

  Args:
    modalities: modality names; leaves labelled with one of them are an encoder.
    param_labels: label tree (or callable params -> label tree); leaves labelled
      with a modality name are that modality's encoder, all others pass unchanged.
    gamma: final gradient multiplier, > 0 (official: 1.5).
    rescale: one of RESCALE_SCOPES, where "rescaled to the norm of the plain sum"
      is measured ('tensor': official).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs the keyword
    `observations` with `aux_grads={'multimodal': g_mm, 'unimodal': g_uni}`
    (param-shaped). Incoming updates of encoder leaves are replaced; the others
    (heads, fusion) pass unchanged.

  References:
    Wei & Hu, MMPareto: Boosting Multimodal Learning with Innocent Unimodal
    Assistance, ICML 2024.
  """
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  if not modalities or len(set(modalities)) != len(modalities) or not all(
      isinstance(m, str) for m in modalities):
    raise ValueError(
        f"mmpareto_transform: modalities must be distinct names such as ('audio', 'visual'); "
        f'got {modalities!r}.')
  if not isinstance(gamma, numbers.Real) or not 0 < gamma < float('inf'):
    raise ValueError(
        f'mmpareto_transform: gamma must be a finite number > 0 (official: 1.5); got {gamma!r}.')
  if rescale not in RESCALE_SCOPES:
    raise ValueError(
        f'mmpareto_transform: rescale must be one of {RESCALE_SCOPES}; got {rescale!r}.')

  def _diagnostics(cos_M, k_mm_M):
    out = {f'cos_{m}': cos_M[i] for i, m in enumerate(modalities)}
    out.update({f'k_mm_{m}': k_mm_M[i] for i, m in enumerate(modalities)})
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)

  def init_fn(params: PyTree) -> MMParetoState:
    del params
    zeros_M = jnp.zeros((len(modalities),), jnp.float32)
    return MMParetoState(diagnostics=_diagnostics(zeros_M, zeros_M + 0.5))

  def update_fn(updates: PyTree, state: MMParetoState, params: PyTree | None = None, *,
                observations: Observations | None = None, **extra_args):
    del state, extra_args
    aux = None if observations is None else observations.aux_grads
    if aux is None or any(k not in aux for k in _AUX_KEYS):
      raise ValueError(
          'mmpareto_transform: update needs observations.aux_grads = {"multimodal": g_mm, '
          '"unimodal": g_uni} (param-shaped gradients of the multimodal loss and of the sum '
          'of unimodal losses); per_loss_grads computes both in one backward pass.')
    labels = resolve_labels(param_labels, updates if params is None else params)
    g_leaves, treedef = jax.tree.flatten(updates)
    try:
      flat_labels = treedef.flatten_up_to(labels)
      mm_leaves = treedef.flatten_up_to(aux['multimodal'])
      uni_leaves = treedef.flatten_up_to(aux['unimodal'])
    except (ValueError, TypeError) as e:
      raise ValueError(
          'mmpareto_transform: param_labels and both aux_grads must have the structure of '
          f'the params: {e}') from e

    out_leaves = list(g_leaves)
    cos_M, k_mm_M = [], []
    for m in modalities:
      idx = [i for i, label in enumerate(flat_labels) if isinstance(label, str) and label == m]
      if not idx:
        raise ValueError(
            f'mmpareto_transform: no parameter is labelled {m!r}; label the leaves of that '
            f"modality's encoder with {m!r} in param_labels.")
      mm = [mm_leaves[i] for i in idx]
      uni = [uni_leaves[i] for i in idx]
      # All the encoder's tensors flattened together decide the weights.
      k_mm, k_uni, cos = pareto_weights(_sq_norm(mm), _vdot(mm, uni), _sq_norm(uni))
      cos_M.append(cos)
      k_mm_M.append(k_mm)
      new = [2.0 * (k_mm * a.astype(jnp.float32) + k_uni * b.astype(jnp.float32))
             for a, b in zip(mm, uni)]
      plain = [a.astype(jnp.float32) + b.astype(jnp.float32) for a, b in zip(mm, uni)]
      parts = [4.0 * (k_mm**2 * _sq_norm([a]) + k_uni**2 * _sq_norm([b])) for a, b in zip(mm, uni)]
      if rescale == 'encoder':
        scales = [_rescale(_sq_norm(new), _sq_norm(plain), sum(parts))] * len(idx)
      else:
        scales = [_rescale(_sq_norm([n]), _sq_norm([p]), q) for n, p, q in zip(new, plain, parts)]
      for i, n, s in zip(idx, new, scales):
        out_leaves[i] = (gamma * s * n).astype(g_leaves[i].dtype)

    diagnostics = _diagnostics(jnp.stack(cos_M), jnp.stack(k_mm_M))
    return treedef.unflatten(out_leaves), MMParetoState(diagnostics=diagnostics)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
