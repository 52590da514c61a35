"""InfoReg (Huang et al., CVPR 2025) as an optax transform.

Information Acquisition Regulation slows the information-sufficient modalities
down during the prime learning window: while the per-epoch Fisher trace of the
encoders is still growing fast (InfoReg Eq.11), every modality that scores above
some other modality gets the gradient of a proximal term pulling its encoder
back to its epoch-start weights (InfoReg Eq.12, 16). Equation numbers in this
file are the InfoReg paper's; docs/methods.md §InfoReg settles its ambiguities.

Chain it ahead of weight decay and SGD, fed the step's `Observations`:

  tx = optax.chain(inforeg_transform(('audio', 'visual'), labels),
                   optax.add_decayed_weights(1e-4), optax.sgd(lr, momentum=0.9))
  updates, opt_state = tx.update(grads, opt_state, params, observations=obs)

`grads` must be the unregulated gradient of the training loss: it is both what
the Fisher trace measures (Eq.7) and what the regulation is added to.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from redreg_jax.observations import LabelTree, Observations, resolve_labels, true_class_probs

PyTree = Any

__all__ = [
    'INFOREG_PRESETS', 'InfoRegState', 'inforeg_transform', 'performance_gap',
    'regulation_strength', 'window_ratio',
]

TRACE_FORMS = ('paper', 'released')
SCORE_FORMS = ('mean', 'sum')
ALPHA_FORMS = ('paper', 'released')

# Hyper-parameters of the two InfoReg variants (docs/methods.md, docs/reproducing.md);
# pass one as `inforeg_transform(modalities, labels, **INFOREG_PRESETS[name])`.
INFOREG_PRESETS: dict[str, dict[str, Any]] = {
    # The paper: each modality's own trace, epoch-to-epoch change, K = 0.04
    # (Fig.8), beta = 0.9 (Fig.7), no regulation before epoch 2 (Algorithm 1).
    'inforeg': dict(beta=0.9, threshold_k=0.04, moving_average=1,
                    trace_modalities=None, warmup_epochs=2),
    # The released code (GeWu-Lab/InfoReg_CVPR2025 main.py): one window for all
    # modalities from the audio trace, 10-epoch moving averages (zero-padded before
    # epoch 10), K = 0.05, the window test open at epoch 0; the trace summed over
    # steps of per-layer element means of g^2 after regulation; batch-sum scores;
    # alpha = 0.95 exp(tanh(gap)) when the first modality leads, 0.1 exp(tanh(gap))
    # when the second does. (Its shared-head unimodal losses are a loss term, set
    # by the method table.)
    'inforeg_official': dict(beta=0.9, threshold_k=0.05, moving_average=10,
                             trace_modalities=('audio',), warmup_epochs=0,
                             trace_form='released', score_form='sum',
                             alpha_form='released', alpha_scales=(0.95, 0.1)),
}


class InfoRegState(NamedTuple):
  """State of `inforeg_transform`; M = len(modalities), n = moving_average."""

  epoch: jax.Array  # [] int32 epoch being accumulated; -1 before the first step.
  trace_sum: jax.Array  # [M] float32 sum of ||g_m||^2 over this epoch's steps.
  trace_steps: jax.Array  # [] int32 steps accumulated into `trace_sum`.
  trace_history: jax.Array  # [n+1, M] float32 Tr(F_m) of the last n+1 epochs, oldest first.
  anchor: PyTree  # params-shaped: the weights at the first step of this epoch.
  diagnostics: dict[str, jax.Array]  # this step's scalars, for logging.


def performance_gap(scores_M: jax.Array) -> jax.Array:
  """Delta_m: mean lead of s_m over the modalities scoring below it (Eq.9-10).

  Args:
    scores_M: [M] higher-is-better scores s_m (batch-mean true-class probability).

  Returns:
    [M] Delta_m = mean_{m': s_m' < s_m} (s_m - s_m'); 0 when no modality scores
    below m (the weakest modality, and every modality on a tie).
  """
  scores_M = scores_M.astype(jnp.float32)
  diff_MxM = scores_M[:, None] - scores_M[None, :]  # [m, m'] = s_m - s_m'.
  below_MxM = diff_MxM > 0  # s_m' < s_m; excludes m' = m.
  count_M = jnp.sum(below_MxM, axis=1)  # C_m of Eq.9.
  total_M = jnp.sum(jnp.where(below_MxM, diff_MxM, 0.0), axis=1)
  return total_M / jnp.maximum(count_M, 1)  # Eq.10; 0/1 = 0 when C_m = 0.


def window_ratio(history_NxM: jax.Array) -> jax.Array:
  """Relative growth of the Fisher trace, the left side of Eq.11.

  Args:
    history_NxM: [n+1, M] per-epoch traces of the last n+1 completed epochs,
      oldest first, zeros where no epoch was completed yet.

  Returns:
    [M] (Tr^{e-1} - Tr^{e-2}) / Tr^{e-1} with Tr^{e-1} the mean of the newest n
    rows and Tr^{e-2} the mean of the oldest n (n = 1: the paper's Eq.11). Both
    means divide by n even while rows are still zero padding, as the official
    code does. 1 where Tr^{e-1} is 0 (nothing measured yet): the official code
    treats epoch 0 as inside the window.
  """
  history_NxM = history_NxM.astype(jnp.float32)
  tr_now_M = jnp.mean(history_NxM[1:], axis=0)  # Tr(F^{e-1}), averaged.
  tr_prev_M = jnp.mean(history_NxM[:-1], axis=0)  # Tr(F^{e-2}), averaged.
  safe_now_M = jnp.where(tr_now_M > 0, tr_now_M, 1.0)
  return jnp.where(tr_now_M > 0, (tr_now_M - tr_prev_M) / safe_now_M, 1.0)


def regulation_strength(delta_M: jax.Array, beta: float) -> jax.Array:
  """alpha = exp(beta * tanh(Delta_m)) (Eq.16)."""
  return jnp.exp(beta * jnp.tanh(delta_M))


def released_regulation_strength(delta_M: jax.Array, scales_M: jax.Array) -> jax.Array:
  """alpha_m = scale_m * exp(tanh(Delta_m)), the released code's form of Eq.16.

  The released InfoReg main.py uses 0.95 for audio and 0.1 for visual, with
  beta = 1 inside the exponent.
  """
  return jnp.asarray(scales_M, jnp.float32) * jnp.exp(jnp.tanh(delta_M))


def _is_kernel(path) -> bool:
  """Weights of convolution and linear layers: leaves named 'kernel'."""
  return bool(path) and getattr(path[-1], 'key', None) == 'kernel'


def _check_modalities(modalities: Sequence[str]) -> tuple[str, ...]:
  modalities = tuple(modalities) if not isinstance(modalities, str) else (modalities,)
  if len(modalities) < 2 or len(set(modalities)) != len(modalities) or not all(
      isinstance(m, str) for m in modalities):
    raise ValueError(
        f'inforeg_transform: modalities must be at least two distinct names such as '
        f"('audio', 'visual'); got {modalities!r}.")
  return modalities


def _leaf_labels(param_labels: LabelTree, tree: PyTree, modalities: Sequence[str]) -> list:
  """One label per leaf of `tree`, in `jax.tree.leaves` order."""
  labels = resolve_labels(param_labels, tree)
  try:
    flat = jax.tree.structure(tree).flatten_up_to(labels)
  except (ValueError, TypeError) as e:
    raise ValueError(
        'inforeg_transform: param_labels must have the structure of the params with '
        f'one string label per leaf (or be a callable params -> such a tree): {e}') from e
  for m in modalities:
    if not any(isinstance(label, str) and label == m for label in flat):
      raise ValueError(
          f'inforeg_transform: no parameter is labelled {m!r}; label the leaves of '
          f"that modality's encoder with {m!r} in param_labels.")
  return flat


def inforeg_transform(
    modalities: Sequence[str],
    param_labels: LabelTree,
    *,
    beta: float = 0.9,
    threshold_k: float = 0.04,
    moving_average: int = 1,
    trace_modalities: Sequence[str] | None = None,
    warmup_epochs: int = 2,
    trace_form: str = 'paper',
    score_form: str = 'mean',
    alpha_form: str = 'paper',
    alpha_scales: Sequence[float] = (),
) -> optax.GradientTransformationExtraArgs:
  """Adds InfoReg's adaptive unimodal regulation to the encoder gradients.

  Args:
    modalities: modality names, in the order used for the per-modality arrays.
    param_labels: label tree (or callable params -> label tree); leaves labelled
      with a modality name are that modality's encoder, all others pass unchanged.
    beta: sensitivity of alpha to the performance gap (Eq.16), >= 0.
    threshold_k: K of Eq.11; a modality is in the prime learning window while its
      trace's relative growth exceeds K.
    moving_average: n >= 1 epochs averaged on each side of Eq.11 (1: the paper;
      10: the official code).
    trace_modalities: None: every modality runs its own window test. Otherwise the
      window test runs once, on the summed trace of these modalities, and applies
      to all (the official code: ('audio',)).
    warmup_epochs: no regulation before this epoch (Algorithm 1: 2; official: 0).
    trace_form: 'paper' (Tr(F_m) = mean over the epoch's steps of ||g_m||^2 of the
      unregulated gradient, Eq.7, 13) or 'released' (per conv/linear kernel of the
      encoder, the element mean of the sum over steps of g^2 taken after
      regulation, summed over kernels).
    score_form: s_m as the batch 'mean' (the paper's scale) or 'sum' (released
      code) of the true-class probabilities.
    alpha_form: 'paper' (alpha = exp(beta tanh(Delta_m)), Eq.16) or 'released'
      (alpha_m = alpha_scales[m] * exp(tanh(Delta_m))).
    alpha_scales: one scale per modality for alpha_form='released' (released code:
      (0.95, 0.1) for (audio, visual)).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs `params` and
    the keyword `observations` (`branch_logits`, `labels`, `epoch` are read).

  References:
    Huang et al., Adaptive Unimodal Regulation for Balanced Multimodal
    Information Acquisition, CVPR 2025.
  """
  modalities = _check_modalities(modalities)
  if not isinstance(beta, numbers.Real) or not beta >= 0 or beta == float('inf'):
    raise ValueError(
        f'inforeg_transform: beta must be a finite number >= 0 (paper: 0.9); got {beta!r}.')
  if not isinstance(threshold_k, numbers.Real) or threshold_k != threshold_k:
    raise ValueError(
        f'inforeg_transform: threshold_k must be a real number (paper: 0.04, official: 0.05); '
        f'got {threshold_k!r}.')
  if isinstance(moving_average, bool) or not isinstance(
      moving_average, numbers.Integral) or moving_average < 1:
    raise ValueError(
        f'inforeg_transform: moving_average must be an int >= 1 (paper: 1, official: 10); '
        f'got {moving_average!r}.')
  if isinstance(warmup_epochs, bool) or not isinstance(
      warmup_epochs, numbers.Integral) or warmup_epochs < 0:
    raise ValueError(
        f'inforeg_transform: warmup_epochs must be an int >= 0 (paper: 2, official: 0); '
        f'got {warmup_epochs!r}.')
  if trace_modalities is not None:
    trace_modalities = (trace_modalities,) if isinstance(trace_modalities, str) else tuple(
        trace_modalities)
    if not trace_modalities or any(m not in modalities for m in trace_modalities):
      raise ValueError(
          f'inforeg_transform: trace_modalities must be None or a non-empty subset of '
          f'{modalities!r}; got {trace_modalities!r}.')
    trace_idx = jnp.asarray([modalities.index(m) for m in trace_modalities])
  for name, value, allowed in (('trace_form', trace_form, TRACE_FORMS),
                               ('score_form', score_form, SCORE_FORMS),
                               ('alpha_form', alpha_form, ALPHA_FORMS)):
    if value not in allowed:
      raise ValueError(f'inforeg_transform: {name} must be one of {allowed}; got {value!r}.')
  alpha_scales = tuple(alpha_scales)
  if alpha_form == 'released':
    if len(alpha_scales) != len(modalities) or not all(
        isinstance(a, numbers.Real) and 0 <= a < float('inf') for a in alpha_scales):
      raise ValueError(
          f'inforeg_transform: alpha_form=\'released\' needs alpha_scales, one finite '
          f'number >= 0 per modality {modalities!r} (released code: (0.95, 0.1)); got '
          f'{alpha_scales!r}.')
  elif alpha_scales:
    raise ValueError("inforeg_transform: alpha_scales is only read with alpha_form='released'"
                     f'; got alpha_scales={alpha_scales!r} with alpha_form={alpha_form!r}.')
  num_m = len(modalities)

  def init_fn(params: PyTree) -> InfoRegState:
    return InfoRegState(
        epoch=jnp.asarray(-1, jnp.int32),
        trace_sum=jnp.zeros((num_m,), jnp.float32),
        trace_steps=jnp.asarray(0, jnp.int32),
        trace_history=jnp.zeros((moving_average + 1, num_m), jnp.float32),
        anchor=jax.tree.map(jnp.asarray, params),
        diagnostics=_diagnostics(*(jnp.zeros((num_m,), jnp.float32),) * 6),
    )

  def _diagnostics(trace_M, ratio_M, window_M, score_M, delta_M, coef_M):
    names = ('trace', 'window_ratio', 'in_window', 'score', 'delta', 'alpha')
    return {f'{name}_{m}': value_M[i].astype(jnp.float32)
            for name, value_M in zip(names, (trace_M, ratio_M, window_M, score_M, delta_M, coef_M))
            for i, m in enumerate(modalities)}

  def update_fn(updates: PyTree, state: InfoRegState, params: PyTree | None = None, *,
                observations: Observations | None = None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError(
          'inforeg_transform: update needs params (the regulation term is w - w_epoch_start); '
          'call tx.update(grads, state, params, observations=obs).')
    if observations is None:
      raise ValueError(
          'inforeg_transform: update needs the keyword observations=Observations(...).')
    labels = _leaf_labels(param_labels, params, modalities)
    kernel = [_is_kernel(path) for path, _ in jax.tree_util.tree_flatten_with_path(updates)[0]]
    g_leaves, treedef = jax.tree.flatten(updates)
    w_leaves = treedef.flatten_up_to(params)
    anchor_leaves = treedef.flatten_up_to(state.anchor)

    # ||g_m||^2 of the unregulated gradient, one sample of Tr(F_m) (Eq.7, 13).
    sq_norm_M = jnp.stack([
        sum(jnp.sum(jnp.square(g.astype(jnp.float32)))
            for g, label in zip(g_leaves, labels) if label == m)
        for m in modalities])

    # An epoch change closes the previous epoch's trace and re-takes the anchor.
    epoch = jnp.asarray(observations.epoch, jnp.int32)
    new_epoch = epoch != state.epoch
    closed_M = (state.trace_sum / jnp.maximum(state.trace_steps, 1) if trace_form == 'paper'
                else state.trace_sum)  # The released code never divides by the steps.
    push = new_epoch & (state.trace_steps > 0)
    rolled_NxM = jnp.concatenate([state.trace_history[1:], closed_M[None]], axis=0)
    history_NxM = jnp.where(push, rolled_NxM, state.trace_history)
    trace_sum_M = jnp.where(new_epoch, 0.0, state.trace_sum)
    trace_steps = jnp.where(new_epoch, 0, state.trace_steps) + 1
    anchor_leaves = [jnp.where(new_epoch, w, a) for w, a in zip(w_leaves, anchor_leaves)]

    # Prime learning window (Eq.11), from completed epochs only.
    if trace_modalities is None:
      ratio_M = window_ratio(history_NxM)
    else:
      shared = jnp.sum(history_NxM[:, trace_idx], axis=1, keepdims=True)
      ratio_M = jnp.broadcast_to(window_ratio(shared), (num_m,))
    in_window_M = (epoch >= warmup_epochs) & (ratio_M > threshold_k)

    # s_m: the batch mean true-class probability (the paper's Eq.9-10 read with a
    # higher-is-better score; docs/methods.md), or the released code's batch sum.
    score_M = true_class_probs(observations, modalities)
    if score_form == 'sum':
      score_M = score_M * observations.labels.shape[0]
    delta_M = performance_gap(score_M)  # Eq.9-10
    active_M = in_window_M & (delta_M > 0)
    if alpha_form == 'paper':
      strength_M = regulation_strength(delta_M, beta)  # Eq.16
    else:
      strength_M = released_regulation_strength(delta_M, alpha_scales)
    coef_M = jnp.where(active_M, strength_M, 0.0)

    out_leaves = []
    for g, w, a, label in zip(g_leaves, w_leaves, anchor_leaves, labels):
      if label in modalities:
        coef = coef_M[modalities.index(label)]
        # Gradient of P = alpha/2 ||w - w^{epoch start}||^2 (Eq.12).
        g = (g + coef * (w - a)).astype(g.dtype)
      out_leaves.append(g)
    if trace_form == 'paper':
      trace_sum_M = trace_sum_M + sq_norm_M  # Closed as a mean over steps.
    else:  # Released: sum_kernels mean_elements(sum_steps g_reg^2), g_reg after Eq.12.
      trace_sum_M = trace_sum_M + jnp.stack([
          sum((jnp.mean(jnp.square(g.astype(jnp.float32)))
               for g, label, k in zip(out_leaves, labels, kernel) if label == m and k),
              jnp.zeros((), jnp.float32))
          for m in modalities])

    new_state = InfoRegState(
        epoch=epoch, trace_sum=trace_sum_M, trace_steps=trace_steps,
        trace_history=history_NxM, anchor=treedef.unflatten(anchor_leaves),
        diagnostics=_diagnostics(trace_sum_M / trace_steps if trace_form == 'paper'
                                 else trace_sum_M, ratio_M, in_window_M,
                                 score_M, delta_M, coef_M))
    return treedef.unflatten(out_leaves), new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
