"""AGM (Li et al., ICCV 2023): Shapley mono-modal responses and adaptive gradient modulation.

Adaptive Gradient Modulation isolates each modality's response to a sample by a
Shapley decomposition of the fused output over the 2^M modality coalitions, a
coalition's output being the model's logits with every modality outside it
masked (zeroed): phi_m = sum_{S in M minus m} |S|! (M - |S| - 1)! / M! (f(S + m) - f(S)).
Each response is scored by its cross-entropy s_m; the discrepancy ratio
r_m = exp(mean_{j != m} s_j - s_m) of the step is compared with the same ratio
of the running-average scores, and modality m's gradient is scaled by
k_m = exp(alpha (rbar_m - r_m)): a modality doing better than it usually does
relative to the others is slowed down, one doing worse is sped up.

The paper's text was not available to this implementation; every formula here is
the released code's (GitHub lihong2303/AGM_ICCV2023: model/*_net.py GradMod,
run/*_main.py) written for M modalities, and no equation numbers are cited. In
that code:
* the response of m is phi_m + f(empty) / M (`empty_share=True`), so the
  responses sum to the fused logits f(all); the masked passes zero the inputs
  and run the network in inference mode;
* s_m = mean_i -log max(softmax(response_m)_y, 1e-8);
* r_m = exp(M / (M - 1) (mean_j s_j - s_m)) = exp(mean_{j != m} s_j - s_m) (M = 2:
  exp(s_other - s_m));
* rbar uses the cumulative mean of every past step's s_m since training began
  (0 before the first step); k_m = exp(alpha min(rbar_m - r_m, cap)), cap 10
  (CREMA-D), 7 (UR-Funny) or none (CMU-MOSEI); alpha defaults to 1.0;
* k_m scales, by a backward hook, the gradient flowing through response m:
  L(sum_m k_m phi_m + (1 - k_m) stop_grad(phi_m)), `agm_modulated_output`; with an
  additive late fusion (concat, sum) this is k_m times the gradient of encoder m,
  which `agm_transform` applies (gradient_form='encoder', the default, like OGM).
* the global gradient norm is clipped to 1 whenever the fusion kernel's gradient
  leaves [-1, 1] (`released_clip=True`).

What the trainer must supply, every step:

* Besides the ordinary forward pass, the fused logits of every coalition of
  modalities, the others masked: `models.MultimodalClassifier(...,
  subsets=models.all_subsets(modalities))` returns them as 'subset_logits',
  masking pooled features (exact for concat fusion; the released code masks the
  raw inputs and runs those passes in inference mode). 2^M logits per step.
* `observations.branch_logits = mono_modal_responses(subset_logits, modalities)`,
  i.e. the branch logits of AGM are the Shapley responses, plus `labels` and
  `epoch`; the multimodal cross-entropy of the fused logits is the only loss.
* With gradient_form='output' (the released code's gradient exactly, for any
  fusion): build the loss on `agm_modulated_output(responses, k)` with
  k = agm_coefficients(response_scores(responses, labels), state.score_avg, ...)
  read from this transform's state before the step; the transform then only
  keeps the running average.

Any number of modalities M >= 2 (the released code runs M = 2 and M = 3).
"""

from __future__ import annotations

import itertools
import math
import numbers
from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from redreg_jax.observations import LabelTree, Observations, resolve_labels

PyTree = Any

__all__ = ['AgmState', 'GRADIENT_FORMS', 'agm_coefficients', 'agm_modulated_output',
           'agm_transform', 'discrepancy_ratios', 'mono_modal_responses', 'response_scores',
           'shapley_weights', 'update_running_scores']

# 'encoder': k_m scales the gradient of the leaves labelled m; 'output': the loss is
# built on `agm_modulated_output` and the transform leaves the gradients alone.
GRADIENT_FORMS = ('encoder', 'output')
_MIN_PROB = 1e-8  # The released code's floor on softmax(response)_y.
_CLIP_EPS = 1e-6  # torch.nn.utils.clip_grad_norm_'s epsilon.


def shapley_weights(num_modalities: int) -> dict[int, float]:
  """|S|! (M - |S| - 1)! / M! for each coalition size |S| = 0..M-1 not containing m."""
  m = num_modalities
  return {s: math.factorial(s) * math.factorial(m - s - 1) / math.factorial(m) for s in range(m)}


def _coalition(key, modalities):
  return tuple(m for m in modalities if m in tuple(key))


def mono_modal_responses(subset_logits: Mapping[Sequence[str], jax.Array],
                         modalities: Sequence[str], *,
                         empty_share: bool = True) -> dict[str, jax.Array]:
  """Shapley responses of the modalities from the logits of every masked coalition.

  Args:
    subset_logits: {coalition (tuple of modality names): [B, K] logits with the
      modalities outside it masked}, every one of the 2^M coalitions, the empty
      one `()` included (`models.subset_logits` returns exactly this).
    modalities: the M modality names.
    empty_share: add f(empty) / M to every response, as the released code does,
      so the responses sum to f(all); False gives the plain Shapley values, which
      sum to f(all) - f(empty).

  Returns:
    {m: [B, K] float32 response of m}.
  """
  modalities = tuple(modalities)
  logits = {_coalition(k, modalities): jnp.asarray(v, jnp.float32)
            for k, v in subset_logits.items()}
  needed = [c for r in range(len(modalities) + 1) for c in itertools.combinations(modalities, r)]
  missing = [c for c in needed if c not in logits]
  if missing:
    raise ValueError(
        f'mono_modal_responses: subset_logits lacks the coalitions {missing}; AGM needs all '
        f'2^M = {len(needed)} (pass subsets=models.all_subsets(modalities) to the model).')
  weights = shapley_weights(len(modalities))
  out = {}
  for m in modalities:
    others = tuple(j for j in modalities if j != m)
    phi = jnp.zeros_like(logits[modalities])
    for r in range(len(others) + 1):
      for s in itertools.combinations(others, r):
        with_m = _coalition(s + (m,), modalities)
        phi = phi + weights[r] * (logits[with_m] - logits[s])
    if empty_share:
      phi = phi + logits[()] / len(modalities)
    out[m] = phi
  return out


def response_scores(responses_M: Sequence[jax.Array], labels_B: jax.Array, *,
                    min_prob: float = _MIN_PROB) -> jax.Array:
  """s_m = mean_i -log max(softmax(response_m)_i[y_i], min_prob), without gradient.

  Args:
    responses_M: M arrays [B, K] (in the modalities' order).
    labels_B: [B] int labels.
    min_prob: floor on the true-class probability (released code: 1e-8).

  Returns:
    [M] float32 mono-modal cross-entropies.
  """
  floor = math.log(min_prob)
  scores = []
  for r in responses_M:
    logp = jax.nn.log_softmax(jax.lax.stop_gradient(r).astype(jnp.float32), axis=-1)
    logp_y = jnp.take_along_axis(logp, labels_B[:, None], axis=-1)[:, 0]
    scores.append(-jnp.mean(jnp.maximum(logp_y, floor)))
  return jnp.stack(scores)


def discrepancy_ratios(scores_M: jax.Array) -> jax.Array:
  """r_m = exp(mean_{j != m} s_j - s_m); > 1 for a modality with a lower loss than the rest."""
  scores_M = jnp.asarray(scores_M, jnp.float32)
  num_m = scores_M.shape[0]
  others_mean_M = (jnp.sum(scores_M) - scores_M) / (num_m - 1)
  return jnp.exp(others_mean_M - scores_M)


def agm_coefficients(scores_M: jax.Array, avg_scores_M: jax.Array, alpha: float,
                     cap: float | None = None) -> jax.Array:
  """k_m = exp(alpha min(rbar_m - r_m, cap)), rbar from the running-average scores.

  Args:
    scores_M: [M] this step's scores s_m (`response_scores`).
    avg_scores_M: [M] running averages of the scores over the previous steps.
    alpha: modulation strength.
    cap: upper bound of rbar_m - r_m (released code: 10 or 7); None: no bound.

  Returns:
    [M] float32 coefficients, 1 where a modality's ratio equals its average's.
  """
  diff_M = discrepancy_ratios(avg_scores_M) - discrepancy_ratios(scores_M)
  if cap is not None:
    diff_M = jnp.minimum(diff_M, cap)
  return jnp.exp(alpha * diff_M)


def update_running_scores(avg_M: jax.Array, count: jax.Array,
                          scores_M: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Cumulative mean: avg <- (count avg + s) / (count + 1), as the released code."""
  count_f = jnp.asarray(count, jnp.float32)
  new = (avg_M * count_f + jnp.asarray(scores_M, jnp.float32)) / (count_f + 1.0)
  return new, jnp.asarray(count, jnp.int32) + 1


def agm_modulated_output(responses: Mapping[str, jax.Array], coefficients_M: jax.Array,
                         modalities: Sequence[str]) -> jax.Array:
  """sum_m response_m with the gradient through response m scaled by k_m (released code).

  Args:
    responses: {m: [B, K]} from `mono_modal_responses` (with gradient).
    coefficients_M: [M] k_m (treated as constants).
    modalities: the modality order of `coefficients_M`.

  Returns:
    [B, K] logits equal in value to sum_m response_m (f(all) with empty_share).
  """
  k_M = jax.lax.stop_gradient(jnp.asarray(coefficients_M, jnp.float32))
  out = 0.0
  for i, m in enumerate(modalities):
    r = responses[m]
    out = out + k_M[i] * r + (1.0 - k_M[i]) * jax.lax.stop_gradient(r)
  return out


class AgmState(NamedTuple):
  """State of `agm_transform`; M = len(modalities)."""

  score_avg: jax.Array  # [M] float32 cumulative mean of s_m over every step so far.
  count: jax.Array  # [] int32 steps in `score_avg`.
  diagnostics: dict[str, jax.Array]  # this step's scalars, for logging.


def _is_kernel(path) -> bool:
  return bool(path) and getattr(path[-1], 'key', getattr(path[-1], 'name', None)) == 'kernel'


def agm_transform(
    modalities: Sequence[str],
    param_labels: LabelTree,
    *,
    alpha: float = 1.0,
    cap: float | None = None,
    start_epoch: int = 0,
    end_epoch: int | None = None,
    gradient_form: str = 'encoder',
    released_clip: bool = False,
    min_prob: float = _MIN_PROB,
) -> optax.GradientTransformationExtraArgs:
  """Scales each encoder's gradient by AGM's coefficient k_m.

  Args:
    modalities: at least two modality names, in the order of the per-modality arrays.
    param_labels: label tree (or callable params -> label tree); leaves labelled
      with a modality name are that modality's encoder, all others pass unchanged.
    alpha: modulation strength, > 0 (released default 1.0; AV-MNIST example 2.5).
    cap: bound on rbar_m - r_m in the exponent, > 0 (released: 10 on CREMA-D, 7 on
      UR-Funny); None: unbounded (CMU-MOSEI code).
    start_epoch: first modulated epoch (0-based).
    end_epoch: last modulated epoch, inclusive; None: to the end.
    gradient_form: 'encoder' (scale the encoder gradients here) or 'output' (the
      loss uses `agm_modulated_output`; only the running average is kept here).
    released_clip: clip the global norm of the updates to 1 when a non-encoder
      kernel's gradient has an entry outside [-1, 1] (released code).
    min_prob: floor on the true-class probability in s_m, in (0, 1).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs the keyword
    `observations` with `branch_logits` = the mono-modal responses, `labels` and
    `epoch`. The running average advances every step, inside the window or not.

  References:
    Li et al., Boosting Multi-modal Model Performance with Adaptive Gradient
    Modulation, ICCV 2023.
  """
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  if len(modalities) < 2 or len(set(modalities)) != len(modalities) or not all(
      isinstance(m, str) for m in modalities):
    raise ValueError(f"agm_transform: modalities must be at least two distinct names such as "
                     f"('audio', 'visual'); got {modalities!r}.")
  if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not (
      0 < alpha < float('inf')):
    raise ValueError(f'agm_transform: alpha must be a finite number > 0 (released default 1.0);'
                     f' got {alpha!r}.')
  if cap is not None and (not isinstance(cap, numbers.Real) or isinstance(cap, bool)
                          or not 0 < cap < float('inf')):
    raise ValueError(f'agm_transform: cap must be None or a finite number > 0 (released: 10); '
                     f'got {cap!r}.')
  if isinstance(start_epoch, bool) or not isinstance(start_epoch, numbers.Integral) or (
      start_epoch < 0):
    raise ValueError(f'agm_transform: start_epoch must be an int >= 0; got {start_epoch!r}.')
  if end_epoch is not None and (isinstance(end_epoch, bool) or not isinstance(
      end_epoch, numbers.Integral) or end_epoch < start_epoch):
    raise ValueError(f'agm_transform: end_epoch must be None or an int >= start_epoch '
                     f'({start_epoch}); got {end_epoch!r}.')
  if gradient_form not in GRADIENT_FORMS:
    raise ValueError(f'agm_transform: gradient_form must be one of {GRADIENT_FORMS}; got '
                     f'{gradient_form!r}.')
  if not isinstance(released_clip, bool):
    raise ValueError(f'agm_transform: released_clip must be a bool; got {released_clip!r}.')
  if not isinstance(min_prob, numbers.Real) or not 0 < min_prob < 1:
    raise ValueError(f'agm_transform: min_prob must be in (0, 1) (released: 1e-8); got '
                     f'{min_prob!r}.')
  num_m = len(modalities)

  def _diagnostics(score_M, avg_M, coef_M, active, clipped):
    out = {f'{name}_{m}': v[i] for name, v in (('score', score_M), ('score_avg', avg_M),
                                               ('coeff', coef_M))
           for i, m in enumerate(modalities)}
    out['modulating'] = active
    out['clipped'] = clipped
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)

  def init_fn(params: PyTree) -> AgmState:
    del params
    zeros_M = jnp.zeros((num_m,), jnp.float32)
    return AgmState(score_avg=zeros_M, count=jnp.zeros((), jnp.int32),
                    diagnostics=_diagnostics(zeros_M, zeros_M, zeros_M + 1, 0.0, 0.0))

  def update_fn(updates: PyTree, state: AgmState, params: PyTree | None = None, *,
                observations: Observations | None = None, **extra_args):
    del extra_args
    if observations is None:
      raise ValueError('agm_transform: update needs the keyword observations=Observations(...)'
                       ' with branch_logits = mono_modal_responses(subset_logits, modalities).')
    missing = [m for m in modalities if m not in observations.branch_logits]
    if missing:
      raise ValueError(f'agm_transform: observations.branch_logits lacks {missing}; pass the '
                       'mono-modal responses of every modality (mono_modal_responses).')
    path_leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
    try:
      labels = treedef.flatten_up_to(resolve_labels(param_labels,
                                                    updates if params is None else params))
    except (ValueError, TypeError) as e:
      raise ValueError('agm_transform: param_labels must have the structure of the params with '
                       f'one string label per leaf (or be a callable params -> such a tree): {e}'
                       ) from e
    for m in modalities:
      if not any(isinstance(label, str) and label == m for label in labels):
        raise ValueError(f"agm_transform: no parameter is labelled {m!r}; label that modality's "
                         f'encoder leaves {m!r} in param_labels.')

    score_M = response_scores([observations.branch_logits[m] for m in modalities],
                              observations.labels, min_prob=min_prob)
    coef_M = agm_coefficients(score_M, state.score_avg, alpha, cap)
    epoch = jnp.asarray(observations.epoch)
    active = epoch >= start_epoch
    if end_epoch is not None:
      active = active & (epoch <= end_epoch)
    applied_M = jnp.where(active & (gradient_form == 'encoder'), coef_M, 1.0)

    out = []
    for (_, g), label in zip(path_leaves, labels):
      if isinstance(label, str) and label in modalities:
        g = (g * applied_M[modalities.index(label)]).astype(g.dtype)
      out.append(g)
    clipped = jnp.asarray(False)
    if released_clip:
      heads = [g for (path, _), g, label in zip(path_leaves, out, labels)
               if not (isinstance(label, str) and label in modalities) and _is_kernel(path)]
      if heads:
        clipped = active & jnp.any(jnp.stack([jnp.max(jnp.abs(g)) for g in heads]) > 1.0)
      norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype(jnp.float32))) for g in out))
      scale = jnp.where(clipped, jnp.minimum(1.0, 1.0 / (norm + _CLIP_EPS)), 1.0)
      out = [(g * scale).astype(g.dtype) for g in out]

    score_avg, count = update_running_scores(state.score_avg, state.count, score_M)
    diagnostics = _diagnostics(score_M, score_avg, jnp.where(active, coef_M, 1.0), active,
                               clipped)
    return treedef.unflatten(out), AgmState(score_avg, count, diagnostics)

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
