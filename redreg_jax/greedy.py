"""Greedy (Wu et al., ICML 2022): conditional utilisation, conditional learning speed, re-balancing.

The paper studies a two-branch intermediate-fusion network: branch m (encoder
phi_m and its head, prediction y_m, the model predicting their average) takes
its own modality and, through fusion layers (MMTM in the released code), the
other one. Conditional utilisation rate: the relative accuracy gain from the
other modality, u(m1 | m0) = (A(m0, m1) - A(m0)) / A(m0, m1), A(m0) measured with
m1's information cut from the model, and d_util = u(m1 | m0) - u(m0 | m1).
It is too costly to track during training, so its proxy is the conditional
learning speed: with mu(theta) = ||grad theta||^2 / ||theta||^2 of a parameter
group, summed over the training steps so far,

  s(m1 | m0) = log10( sum_t mu(bypass_0, t) / sum_t mu(main_0, t) ),
  d_speed = s(m1 | m0) - s(m0 | m1),

where main_0 are branch 0's own layers and bypass_0 the fusion parameters that
carry m1 into branch 0. The "balanced multi-modal learning" algorithm runs
regular steps (updating everything, accumulating mu) and, whenever
|d_speed| > alpha, a window of Q re-balancing steps during which the model is
made to learn from the under-used modality: when d_speed > 0 branch 0 learns
more from m1 than from m0, so m0 (`caring` = 0) is re-balanced by cutting m1's
information out of branch 0; when d_speed < 0 the same for branch 1.

The paper's text was not available to this implementation; the formulas above
and every default are the released code's (GitHub nyukat/greedy_multimodal_learning,
src/callbacks.py Bias_Mitigation_Strong, configs/training_guided.gin), and no
equation numbers are cited: alpha = epsilon = 0.01 (on log10 speeds), Q =
curation_windowsize = 5 steps, first re-balancing in the second epoch
(starting_epoch = 2 of 1-based epochs; `start_epoch` = 1 here, 0-based); mu is
summed over each group's tensors before dividing; shared fusion parameters
count towards both bypasses; re-balancing steps add nothing to the sums.

Two modalities only: d_speed and the re-balancing rule are defined for a pair
(DRBML, ECCV 2024, Sec.4.5: "the Greedy method could not be extended" to three);
M != 2 is refused.

What the trainer must supply:

* An intermediate-fusion model whose parameters split, for each of the two
  branches m, into `m` (the branch's own layers: encoder and its head) and
  `'bypass/' + m` (the fusion layers feeding branch m with the other modality;
  MMTM's per-modality excitation), plus `'bypass'` for fusion layers shared by
  both. A late-fusion model (concat, sum) has no bypass and cannot run Greedy.
* Every step: the raw gradient of the training loss (chain `greedy_transform`
  first; it does not change the updates), the params, and the epoch in
  `observations`. The loss is the sum of both branches' cross-entropies
  (released train.py blend_loss).
* Before every step: read the transform's state, `rebalancing` and `caring`
  (`optax.tree_utils.tree_get(opt_state, 'rebalancing')`). If `rebalancing`, run
  this step's forward pass with the cross-modal input to branch `caring`
  replaced by a constant, its cumulative batch mean over the forward passes so
  far (released: MMTM's sigmoid excitation of that branch, averaged over every
  forward), so the branch learns from its own modality only.
* For the utilisation rate (evaluation only, `conditional_utilization_rates`):
  held-out accuracies with both modalities and with each modality alone (the
  other's cross-modal input replaced by its dataset mean).
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from redreg_jax.observations import LabelTree, Observations, resolve_labels

PyTree = Any

__all__ = ['BYPASS_PREFIX', 'GreedyState', 'SHARED_BYPASS', 'conditional_learning_speeds',
           'conditional_utilization_rates', 'greedy_transform', 'rebalance_target',
           'relative_gradient_speed', 'speed_imbalance', 'utilization_imbalance']

BYPASS_PREFIX = 'bypass/'  # 'bypass/<m>': fusion parameters carrying the other modality into m.
SHARED_BYPASS = 'bypass'  # fusion parameters shared by both branches (counted for both).
_TINY = 1e-30


def conditional_utilization_rates(acc_both: jax.Array, acc_alone_2: jax.Array) -> jax.Array:
  """u(m' | m) = (A(m, m') - A(m)) / A(m, m') for m = 0, 1.

  Args:
    acc_both: [] or [2] accuracy with both modalities (per branch prediction y_m,
      or the model's).
    acc_alone_2: [2] accuracy with only modality m (the other one's information
      removed).

  Returns:
    [2] float32: entry m is the utilisation rate of the other modality given m.
  """
  acc_both = jnp.asarray(acc_both, jnp.float32)
  acc_alone_2 = jnp.asarray(acc_alone_2, jnp.float32)
  return (acc_both - acc_alone_2) / jnp.maximum(acc_both, _TINY)


def utilization_imbalance(rates_2: jax.Array) -> jax.Array:
  """d_util = u(m1 | m0) - u(m0 | m1); > 0 when the model leans on m1."""
  return rates_2[0] - rates_2[1]


def relative_gradient_speed(grad_sq: jax.Array, weight_sq: jax.Array) -> jax.Array:
  """mu = ||g||^2 / ||theta||^2 of one parameter group (squared norms summed over its tensors)."""
  return jnp.asarray(grad_sq, jnp.float32) / jnp.maximum(jnp.asarray(weight_sq, jnp.float32),
                                                         _TINY)


def conditional_learning_speeds(mu_bypass_sum_2: jax.Array,
                                mu_main_sum_2: jax.Array) -> jax.Array:
  """s(m' | m) = log10(sum_t mu(bypass_m) / sum_t mu(main_m)) for branches m = 0, 1.

  Args:
    mu_bypass_sum_2: [2] mu of each branch's bypass, summed over the regular steps.
    mu_main_sum_2: [2] mu of each branch's own layers, summed likewise.

  Returns:
    [2] float32: entry m is the speed at which branch m learns from the other
    modality relative to its own.
  """
  return (jnp.log10(jnp.maximum(jnp.asarray(mu_bypass_sum_2, jnp.float32), _TINY))
          - jnp.log10(jnp.maximum(jnp.asarray(mu_main_sum_2, jnp.float32), _TINY)))


def speed_imbalance(speeds_2: jax.Array) -> jax.Array:
  """d_speed = s(m1 | m0) - s(m0 | m1)."""
  return speeds_2[0] - speeds_2[1]


def rebalance_target(d_speed: jax.Array, alpha: float) -> tuple[jax.Array, jax.Array]:
  """Whether to re-balance, and which modality: (|d_speed| > alpha, 0 if d_speed > 0 else 1).

  d_speed > 0: branch 0 learns faster from m1 than branch 1 from m0, so m0 is the
  under-used modality and branch 0 is cut from m1 (`caring` = 0).
  """
  d_speed = jnp.asarray(d_speed, jnp.float32)
  return jnp.abs(d_speed) > alpha, jnp.where(d_speed > 0, 0, 1).astype(jnp.int32)


class GreedyState(NamedTuple):
  """State of `greedy_transform` (two branches)."""

  mu_main_sum: jax.Array  # [2] float32 sum over regular steps of mu(branch m's own layers).
  mu_bypass_sum: jax.Array  # [2] float32 the same for branch m's bypass.
  rebalancing: jax.Array  # [] bool whether the NEXT step is a re-balancing step.
  caring: jax.Array  # [] int32 branch cut from the other modality in re-balancing steps.
  steps_done: jax.Array  # [] int32 re-balancing steps already run in the current window.
  d_speed: jax.Array  # [] float32 latest d_speed (frozen during re-balancing).
  diagnostics: dict[str, jax.Array]  # this step's scalars, for logging.


def _groups(modalities):
  return [(m, BYPASS_PREFIX + m) for m in modalities]


def greedy_transform(
    modalities: Sequence[str],
    param_labels: LabelTree,
    *,
    alpha: float = 0.01,
    window: int = 5,
    start_epoch: int = 1,
) -> optax.GradientTransformationExtraArgs:
  """Tracks the conditional learning speeds and schedules the re-balancing steps.

  The updates pass through unchanged: Greedy acts on the forward pass, which the
  trainer switches from this transform's state.

  Args:
    modalities: exactly two modality names (m0, m1).
    param_labels: label tree (or callable params -> label tree) with, per branch
      m, leaves labelled m (its own layers) and 'bypass/<m>' (fusion layers bringing
      the other modality into it); 'bypass' marks fusion layers shared by both.
    alpha: threshold on |d_speed|, > 0 (released: 0.01).
    window: Q, re-balancing steps per window, >= 1 (released: 5).
    start_epoch: first 0-based epoch in which re-balancing may start (released:
      starting_epoch = 2 of 1-based epochs, i.e. 1).

  Returns:
    An `optax.GradientTransformationExtraArgs` whose `update` needs `params`, the
    raw gradients and the keyword `observations` (only `epoch` is read).

  References:
    Wu, Jastrzebski, Cho & Geras, Characterizing and Overcoming the Greedy Nature of
    Learning in Multi-modal Deep Neural Networks, ICML 2022.
  """
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  if len(modalities) != 2 or len(set(modalities)) != 2 or not all(
      isinstance(m, str) for m in modalities):
    raise ValueError(
        f'greedy_transform: Greedy is defined for exactly two modalities (its d_speed and '
        f're-balancing rule compare a pair; DRBML Sec.4.5 notes it does not extend to three); '
        f'got {modalities!r}.')
  if not isinstance(alpha, numbers.Real) or isinstance(alpha, bool) or not (
      0 < alpha < float('inf')):
    raise ValueError(f'greedy_transform: alpha must be a finite number > 0 (released: 0.01); '
                     f'got {alpha!r}.')
  for name, value, low in (('window', window, 1), ('start_epoch', start_epoch, 0)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
      raise ValueError(f'greedy_transform: {name} must be an int >= {low}; got {value!r}.')

  def _diagnostics(d_speed, speeds, was_rebalancing, state_next):
    out = {'d_speed': d_speed, f'speed_{modalities[0]}': speeds[0],
           f'speed_{modalities[1]}': speeds[1], 'rebalancing': was_rebalancing,
           'rebalance_next': state_next[0], 'caring': state_next[1]}
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), out)

  def init_fn(params: PyTree) -> GreedyState:
    del params
    zeros = jnp.zeros((2,), jnp.float32)
    return GreedyState(mu_main_sum=zeros, mu_bypass_sum=zeros,
                       rebalancing=jnp.asarray(False), caring=jnp.zeros((), jnp.int32),
                       steps_done=jnp.zeros((), jnp.int32), d_speed=jnp.zeros((), jnp.float32),
                       diagnostics=_diagnostics(0.0, zeros, False, (False, 0)))

  def update_fn(updates: PyTree, state: GreedyState, params: PyTree | None = None, *,
                observations: Observations | None = None, **extra_args):
    del extra_args
    if params is None or observations is None:
      raise ValueError('greedy_transform: update needs params (for ||theta||^2) and the keyword '
                       'observations=Observations(...) (its epoch); call '
                       'tx.update(grads, state, params, observations=obs).')
    g_leaves, treedef = jax.tree.flatten(updates)
    try:
      w_leaves = treedef.flatten_up_to(params)
      labels = treedef.flatten_up_to(resolve_labels(param_labels, params))
    except (ValueError, TypeError) as e:
      raise ValueError('greedy_transform: params and param_labels must have the structure of '
                       f'the gradients (one string label per leaf): {e}') from e
    sq = lambda x: jnp.sum(jnp.square(x.astype(jnp.float32)))
    mu_main, mu_bypass = [], []
    for m, bypass in _groups(modalities):
      main_idx = [i for i, l in enumerate(labels) if l == m]
      bypass_idx = [i for i, l in enumerate(labels) if l in (bypass, SHARED_BYPASS)]
      if not main_idx or not bypass_idx:
        raise ValueError(
            f'greedy_transform: branch {m!r} needs leaves labelled {m!r} (its own layers) and '
            f'{bypass!r} or {SHARED_BYPASS!r} (fusion layers feeding it the other modality); '
            f'found {len(main_idx)} and {len(bypass_idx)}. Greedy needs an intermediate-fusion '
            'model (MMTM-like); late fusion has no bypass.')
      for idx, out in ((main_idx, mu_main), (bypass_idx, mu_bypass)):
        out.append(relative_gradient_speed(sum(sq(g_leaves[i]) for i in idx),
                                           sum(sq(w_leaves[i]) for i in idx)))
    mu_main, mu_bypass = jnp.stack(mu_main), jnp.stack(mu_bypass)

    unlocked = jnp.asarray(observations.epoch) >= start_epoch
    was_rebalancing = state.rebalancing & unlocked
    # Regular step: accumulate mu and re-test |d_speed| > alpha.
    main_sum = jnp.where(was_rebalancing, state.mu_main_sum, state.mu_main_sum + mu_main)
    bypass_sum = jnp.where(was_rebalancing, state.mu_bypass_sum, state.mu_bypass_sum + mu_bypass)
    speeds = conditional_learning_speeds(bypass_sum, main_sum)
    d_speed = jnp.where(was_rebalancing, state.d_speed, speed_imbalance(speeds))
    trigger, target = rebalance_target(d_speed, alpha)
    # Re-balancing step: count it; the window closes after Q of them.
    steps_done = jnp.where(was_rebalancing, state.steps_done + 1, 0)
    next_rebalancing = jnp.where(was_rebalancing, steps_done < window, trigger & unlocked)
    caring = jnp.where(was_rebalancing, state.caring,
                       jnp.where(next_rebalancing, target, 0)).astype(jnp.int32)
    steps_done = jnp.where(next_rebalancing, steps_done, 0).astype(jnp.int32)
    new_state = GreedyState(
        mu_main_sum=main_sum, mu_bypass_sum=bypass_sum, rebalancing=next_rebalancing,
        caring=caring, steps_done=steps_done, d_speed=d_speed.astype(jnp.float32),
        diagnostics=_diagnostics(d_speed, speeds, was_rebalancing, (next_rebalancing, caring)))
    return updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
