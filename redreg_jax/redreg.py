"""RedReg (redundancy regulation) as an optax gradient transformation.

Chain it ahead of weight decay and SGD-momentum and feed it the step's
`Observations`:

  tx = optax.chain(
      redreg_transform(('audio', 'visual'), labels, num_epochs=80),
      optax.add_decayed_weights(1e-4),
      optax.sgd(0.002, momentum=0.9))
  updates, opt_state = tx.update(grads, opt_state, params, observations=obs)
  diagnostics = optax.tree_utils.tree_get(opt_state, 'diagnostics')

`grads` must be the gradient of the full training loss (Eq.26; with unimodal
heads, joint plus unimodal losses, docs/methods.md §Setting). The transform rewrites the gradient
of the dominant modality's encoder with Eq.30 when the gate of Eq.25 is open;
every other leaf passes through untouched.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from redreg_jax import redreg_signals as sig
from redreg_jax.observations import LabelTree, Observations, resolve_labels
from redreg_jax.observations import dominant_modality, true_class_probs

PyTree = Any

REDUNDANCY_NORMS = ('ema', 'none')
ANCHORS = ('epoch', 'ema')


class RedRegState(NamedTuple):
  """State of `redreg_transform`."""

  prob_window: jax.Array  # [M, L+1] float32, last L+1 values of p_m, newest last.
  window_count: jax.Array  # [] int32, valid (newest) columns of prob_window.
  red_ema: jax.Array  # [M] float32, running mean of red_m ('ema' normalisation).
  red_ema_ready: jax.Array  # [M] bool, whether red_ema[m] has seen a value.
  anchor: PyTree  # like params, w_anchor of Eq.27.
  anchor_epoch: jax.Array  # [] int32, epoch of the last step seen (-1 at init).
  step: jax.Array  # [] int32, number of updates applied.
  diagnostics: dict[str, jax.Array]  # this step's scalars, for logging only.


def _check_int(name: str, value: Any, low: int) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f'redreg_transform: {name} must be an int >= {low}, got {value!r}.')


def _check_float(name: str, value: Any, allowed: str = '(-inf, inf)') -> None:
  """Checks a finite number against an interval written like '[0, 1)'."""
  ok = (not isinstance(value, bool) and isinstance(value, (int, float))
        and math.isfinite(value))
  if ok:
    lo, hi = (x.strip() for x in allowed[1:-1].split(','))
    if lo != '-inf':
      ok = value >= float(lo) if allowed[0] == '[' else value > float(lo)
    if ok and hi != 'inf':
      ok = value <= float(hi) if allowed[-1] == ']' else value < float(hi)
  if not ok:
    raise ValueError(f'redreg_transform: {name} must be a finite number in '
                     f'{allowed}, got {value!r}.')


def _check_choice(name: str, value: Any, allowed: Sequence[str]) -> None:
  if value not in allowed:
    raise ValueError(f'redreg_transform: {name} must be one of {tuple(allowed)}, '
                     f'got {value!r}.')


def _check_bool(name: str, value: Any) -> None:
  if not isinstance(value, bool):
    raise ValueError(f'redreg_transform: {name} must be True or False, got {value!r}.')


def _diagnostics(modalities: Sequence[str], p_M, s_M, red_raw_M, red_norm_M, r_M,
                 valid_M, sim, tau, gate_open, factors: sig.GateFactors, dominant,
                 correction_norm, beta_eff) -> dict[str, jax.Array]:
  f32 = lambda x: jnp.asarray(x, jnp.float32)
  out = {}
  for i, m in enumerate(modalities):
    out[f'p_{m}'] = f32(p_M[i])
    out[f'S_{m}'] = f32(s_M[i])
    out[f'red_raw_{m}'] = f32(red_raw_M[i])
    out[f'red_norm_{m}'] = f32(red_norm_M[i])
    out[f'red_valid_{m}'] = f32(valid_M[i])
    out[f'r_{m}'] = f32(r_M[i])
  out.update(
      sim=f32(sim), tau=f32(tau), gate_open=f32(gate_open),
      gate_closed_by_warmup=f32(factors.warmup),
      gate_closed_by_window=f32(factors.window),
      gate_closed_by_monitor=f32(factors.monitor),
      gate_closed_by_coinfo=f32(factors.coinfo),
      dominant=jnp.asarray(dominant, jnp.int32),
      correction_norm=f32(correction_norm), beta_eff=f32(beta_eff))
  return out


def redreg_transform(
    modalities: Sequence[str],
    param_labels: LabelTree,
    *,
    num_epochs: int,
    window: int = 10,
    threshold: float = 0.15,
    beta: float = 0.9,
    gamma: float = 0.5,
    tau_min: float = 0.2,
    tau_max: float = 0.5,
    eps: float = 1e-12,
    warmup_epochs: int = 2,
    redundancy_norm: str = 'ema',
    ema_momentum: float = 0.9,
    projection: str = 'per_tensor',
    beta_schedule: str = 'constant',
    reset_window_each_epoch: bool = False,
    growth_before_full: str = 'closed',
    ema_init: str = 'value',
    ema_reset_each_epoch: bool = False,
    coinfo_compare: str = 'ge',
    anchor: str = 'epoch',
    anchor_ema_decay: float = 0.99,
    use_monitor: bool = True,
    use_gate: bool = True,
) -> optax.GradientTransformationExtraArgs:
  """RedReg: rate-limits the dominant encoder orthogonally to its gradient.

  The defaults are the paper's (docs/methods.md); each switch documented as
  "released code" reproduces the authors' released training script instead
  (docs/reproducing.md), and `redreg_jax.methods` turns them all on in the
  `redreg_official` preset.

  Args:
    modalities: modality names, M >= 2, in the order used for the state arrays.
    param_labels: label tree (or callable params -> label tree); a leaf labelled
      with a modality name belongs to that modality's encoder.
    num_epochs: E, the length of the run (tau schedule, Eq.24).
    window: L, the growth-rate window (Eq.15); the state holds L+1 values.
    threshold: R of Eq.25.
    beta: beta of Eq.30.
    gamma: gamma of Eq.21.
    tau_min: tau schedule start (Eq.24).
    tau_max: tau schedule end (Eq.24).
    eps: epsilon of Eq.16, 20 and 28.
    warmup_epochs: plain updates while epoch < warmup_epochs (Algorithm 1).
    redundancy_norm: 'ema' (red / EMA(red), official) or 'none' (paper's ratio).
    ema_momentum: momentum of the redundancy EMA.
    projection: 'per_tensor' (official) or 'global' (whole encoder, Eq.28-29).
    beta_schedule: 'constant' (paper) or 'confidence_gap' (official).
    reset_window_each_epoch: empty the p_m window at each new epoch (released code).
    growth_before_full: 'closed' (S = 0 and the gate shut until the window holds
      L+1 values, the paper) or 'one' (S = 1.0 and the window never shuts the
      gate, released code).
    ema_init: 'value' (the EMA starts at the first score) or 'zero' (released
      code: the first normalised score is 1 / (1 - ema_momentum)).
    ema_reset_each_epoch: restart the redundancy EMA at every new epoch
      (released code).
    coinfo_compare: 'ge' (sim >= tau, Eq.25) or 'gt' (sim > tau, released code).
    anchor: 'epoch' (params at the start of each epoch, official) or 'ema'
      (anchor <- decay * anchor + (1 - decay) * params after each step).
    anchor_ema_decay: decay of the 'ema' anchor.
    use_monitor: False drops the gate factor [r > R] (ablation).
    use_gate: False drops the co-information factor [sim >= tau] (ablation).

  Returns:
    An optax.GradientTransformationExtraArgs whose update takes the keyword
    `observations: Observations` and needs `params`.
  """
  modalities = tuple(modalities) if not isinstance(modalities, str) else modalities
  if (isinstance(modalities, str) or len(modalities) < 2
      or len(set(modalities)) != len(modalities)
      or not all(isinstance(m, str) and m for m in modalities)):
    raise ValueError('redreg_transform: modalities must be a sequence of at least 2 '
                     f'distinct non-empty names, got {modalities!r}.')
  _check_int('num_epochs', num_epochs, 1)
  _check_int('window', window, 1)
  _check_float('threshold', threshold)
  _check_float('beta', beta, '[0, inf)')
  _check_float('gamma', gamma, '[0, inf)')
  _check_float('tau_min', tau_min, '[-1, 1]')
  _check_float('tau_max', tau_max, '[-1, 1]')
  if tau_min > tau_max:
    raise ValueError(f'redreg_transform: tau_min ({tau_min}) must be <= tau_max '
                     f'({tau_max}); the threshold schedule of Eq.24 increases.')
  _check_float('eps', eps, '(0, inf)')
  _check_int('warmup_epochs', warmup_epochs, 0)
  _check_choice('redundancy_norm', redundancy_norm, REDUNDANCY_NORMS)
  _check_float('ema_momentum', ema_momentum, '[0, 1)')
  _check_choice('projection', projection, sig.PROJECTIONS)
  _check_choice('beta_schedule', beta_schedule, sig.BETA_SCHEDULES)
  _check_bool('reset_window_each_epoch', reset_window_each_epoch)
  _check_choice('growth_before_full', growth_before_full, sig.GROWTH_BEFORE_FULL)
  _check_choice('ema_init', ema_init, sig.EMA_INITS)
  _check_bool('ema_reset_each_epoch', ema_reset_each_epoch)
  _check_choice('coinfo_compare', coinfo_compare, sig.COINFO_COMPARES)
  _check_choice('anchor', anchor, ANCHORS)
  _check_float('anchor_ema_decay', anchor_ema_decay, '[0, 1)')
  _check_bool('use_monitor', use_monitor)
  _check_bool('use_gate', use_gate)
  if not (callable(param_labels) or jax.tree.leaves(param_labels)):
    raise ValueError('redreg_transform: param_labels must be a label tree (leaves '
                     'are modality names or other strings) or a callable '
                     f'params -> label tree, got {param_labels!r}.')

  num_mod = len(modalities)
  index_of = {m: i for i, m in enumerate(modalities)}

  def leaf_groups(params: PyTree) -> list[list[int]]:
    """Flat leaf indices of each modality's encoder, in `modalities` order."""
    labels = resolve_labels(param_labels, params)
    try:
      flat_labels = jax.tree.structure(params).flatten_up_to(labels)
    except (ValueError, TypeError) as e:
      raise ValueError('redreg_transform: param_labels must have the structure of '
                       f'the params (one label per parameter leaf): {e}') from e
    groups = [[] for _ in modalities]
    for i, label in enumerate(flat_labels):
      if isinstance(label, str) and label in index_of:
        groups[index_of[label]].append(i)
    empty = [m for m, idx in zip(modalities, groups) if not idx]
    if empty:
      raise ValueError(f'redreg_transform: no parameter is labelled {empty}; the '
                       f'labels seen are {sorted(set(map(str, flat_labels)))}. Label '
                       'each encoder parameter with its modality name.')
    return groups

  def init_fn(params: PyTree) -> RedRegState:
    leaf_groups(params)  # Fail early on bad labels.
    zeros_m = jnp.zeros((num_mod,), jnp.float32)
    closed = sig.GateFactors(*(jnp.ones((), bool),) * 4)
    diagnostics = _diagnostics(
        modalities, zeros_m, zeros_m, zeros_m, zeros_m, zeros_m,
        jnp.zeros((num_mod,), bool), 0.0, tau_min, False, closed, 0, 0.0, beta)
    return RedRegState(
        prob_window=jnp.zeros((num_mod, window + 1), jnp.float32),
        window_count=jnp.zeros((), jnp.int32),
        red_ema=zeros_m,
        red_ema_ready=jnp.zeros((num_mod,), bool),
        anchor=jax.tree.map(jnp.array, params),  # A copy: params may be donated.
        anchor_epoch=jnp.full((), -1, jnp.int32),
        step=jnp.zeros((), jnp.int32),
        diagnostics=diagnostics)

  def check_observations(obs: Observations) -> None:
    missing = [m for m in modalities if m not in (obs.branch_logits or {})]
    if missing:
      raise ValueError(f'redreg_transform: observations.branch_logits lacks {missing}; '
                       f'it has {sorted(obs.branch_logits or {})}.')
    red = obs.redundancy or {}
    if use_monitor and not any(m in red for m in modalities):
      raise ValueError(
          'redreg_transform: the redundant phase monitor needs '
          'observations.redundancy[m] (Eq.20, raw) with redundancy_valid[m] for the '
          f'modalities {modalities}, got keys {sorted(red)}. Compute the twin-noise '
          'score in the train step, or pass use_monitor=False.')

  def read_redundancy(obs: Observations) -> tuple[jax.Array, jax.Array]:
    red = obs.redundancy or {}
    valid = obs.redundancy_valid or {}
    red_M = jnp.stack([jnp.asarray(red.get(m, 0.0), jnp.float32) for m in modalities])
    # A score without a validity flag counts as computed; a flag without a score not.
    valid_M = jnp.stack([jnp.asarray(valid.get(m, True), bool) if m in red
                         else jnp.zeros((), bool) for m in modalities])
    return red_M, valid_M

  def co_information(obs: Observations, dominant: jax.Array) -> jax.Array:
    try:
      feats_MxBxD = sig.stack_features(obs.features or {}, modalities)
    except ValueError:
      if use_gate:
        raise
      return jnp.zeros((), jnp.float32)  # Only logged in the ablation.
    return sig.coinfo_similarity(feats_MxBxD, dominant)  # Eq.22-23

  def update_fn(updates: PyTree, state: RedRegState, params: PyTree | None = None,
                *, observations: Observations | None = None, **extra_args):
    del extra_args
    if params is None:
      raise ValueError('redreg_transform needs the current params: call '
                       'tx.update(grads, opt_state, params, observations=obs).')
    if observations is None:
      raise ValueError('redreg_transform needs observations=Observations(...) in '
                       'tx.update(...); see redreg_jax/observations.py.')
    obs = observations
    check_observations(obs)
    groups = leaf_groups(params)
    epoch = jnp.asarray(obs.epoch, jnp.int32)
    new_epoch = epoch != state.anchor_epoch

    # Eq.27's anchor: the params at the start of every epoch (official).
    if anchor == 'epoch':
      anchor_now = jax.tree.map(lambda a, w: jnp.where(new_epoch, w, a),
                                state.anchor, params)
    else:
      anchor_now = state.anchor

    # Eq.14-16: p_m into the window, growth rate from its two L-step means.
    p_M = true_class_probs(obs, modalities)
    dominant = dominant_modality(p_M)
    prob_window, count = state.prob_window, state.window_count
    if reset_window_each_epoch:
      prob_window = jnp.where(new_epoch, jnp.zeros_like(prob_window), prob_window)
      count = jnp.where(new_epoch, 0, count)
    prob_window, count = sig.push_window(prob_window, count, p_M)
    s_M, window_full = sig.growth_rate(prob_window, count, eps, growth_before_full)

    # Eq.20 (raw, from the train step), normalised; Eq.21.
    red_raw_M, valid_M = read_redundancy(obs)
    red_raw_M = jnp.where(valid_M, red_raw_M, 0.0)
    if redundancy_norm == 'ema':
      red_ema, red_ema_ready = state.red_ema, state.red_ema_ready
      if ema_reset_each_epoch:
        red_ema = jnp.where(new_epoch, jnp.zeros_like(red_ema), red_ema)
        red_ema_ready = jnp.logical_and(red_ema_ready, jnp.logical_not(new_epoch))
      red_norm_M, red_ema, red_ema_ready = sig.ema_normalise(
          red_raw_M, red_ema, red_ema_ready, momentum=ema_momentum,
          eps=eps, valid=valid_M, init=ema_init)
      red_norm_M = jnp.where(valid_M, red_norm_M, 0.0)
    else:
      red_norm_M, red_ema, red_ema_ready = red_raw_M, state.red_ema, state.red_ema_ready
    r_M = sig.redundant_phase_indicator(red_norm_M, s_M, gamma)

    # Eq.22-25: gate for the dominant modality.
    sim = co_information(obs, dominant)
    tau = sig.tau_schedule(epoch, num_epochs, tau_min, tau_max)
    gate_open, factors = sig.redreg_gate(
        epoch, window_full, jnp.take(r_M, dominant), sim, tau,
        warmup_epochs=warmup_epochs, threshold=threshold, use_monitor=use_monitor,
        use_coinfo=use_gate, monitor_valid=jnp.take(valid_M, dominant),
        use_window=growth_before_full == 'closed', coinfo_compare=coinfo_compare)
    beta_eff = sig.effective_beta(beta, p_M, dominant, beta_schedule)

    # Eq.27-30 on the dominant encoder only. One switch branch per modality, plus a
    # pass-through branch taken when the gate is shut, so only the needed
    # projection runs and shut-gate leaves come back bit-identical.
    g_leaves, g_def = jax.tree.flatten(updates)
    w_leaves = g_def.flatten_up_to(params)
    a_leaves = g_def.flatten_up_to(anchor_now)

    def passthrough():
      return list(g_leaves), jnp.zeros((), jnp.float32)

    def correct(idx):
      def branch():
        g_m = [g_leaves[i] for i in idx]
        d_m = [w_leaves[i] - a_leaves[i] for i in idx]  # Eq.27
        d_perp = sig.orthogonal_complement(d_m, g_m, eps, projection)  # Eq.28-29
        out = list(g_leaves)
        for i, new in zip(idx, sig.corrected_gradient(g_m, d_perp, beta_eff, True)):
          out[i] = new  # Eq.30
        sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in d_perp)
        return out, beta_eff * jnp.sqrt(sq)
      return branch

    branch_index = jnp.where(gate_open, dominant + 1, 0)
    new_leaves, correction_norm = jax.lax.switch(
        branch_index, [passthrough] + [correct(idx) for idx in groups])
    new_updates = jax.tree.unflatten(g_def, new_leaves)

    if anchor == 'ema':  # After use: d measures drift from the slow average.
      anchor_next = jax.tree.map(
          lambda a, w: (anchor_ema_decay * a
                        + (1.0 - anchor_ema_decay) * w).astype(a.dtype),
          anchor_now, params)
    else:
      anchor_next = anchor_now

    diagnostics = _diagnostics(
        modalities, p_M, s_M, red_raw_M, red_norm_M, r_M, valid_M, sim, tau,
        gate_open, factors, dominant, correction_norm, beta_eff)
    new_state = RedRegState(
        prob_window=prob_window, window_count=count, red_ema=red_ema,
        red_ema_ready=red_ema_ready, anchor=anchor_next, anchor_epoch=epoch,
        step=state.step + 1, diagnostics=diagnostics)
    return new_updates, new_state

  return optax.GradientTransformationExtraArgs(init_fn, update_fn)
