"""RedReg's signals, gate and projection as pure, jit-able functions.

One function per equation of the RedReg paper (equation numbers are the paper's;
docs/methods.md §RedReg settles the ambiguities). `redreg.py` composes them into an optax
transform; every function here is usable and tested on its own.

Shapes: M modalities, L+1 the sliding-window length, B batch, D feature size.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from redreg_jax.observations import branch_true_class_prob

PyTree = Any

PROJECTIONS = ('per_tensor', 'global')
BETA_SCHEDULES = ('constant', 'confidence_gap')
# S_m before the window holds L+1 values: 'closed' (S = 0 and the gate stays shut,
# the paper: Eq.15 is undefined) or 'one' (S = 1 and the window does not gate, the
# authors' released code).
GROWTH_BEFORE_FULL = ('closed', 'one')
# Where the redundancy EMA starts: 'value' (its first score, so the first normalised
# score is 1) or 'zero' (the released code: the first normalised score is 1/(1-momentum)).
EMA_INITS = ('value', 'zero')
# Eq.25's co-information factor: 'ge' (sim >= tau, the paper) or 'gt' (sim > tau,
# the released code).
COINFO_COMPARES = ('ge', 'gt')

__all__ = [
    'BETA_SCHEDULES', 'COINFO_COMPARES', 'EMA_INITS', 'GROWTH_BEFORE_FULL', 'GateFactors',
    'PROJECTIONS', 'branch_true_class_prob',
    'coinfo_similarity', 'corrected_gradient', 'effective_beta', 'ema_normalise',
    'growth_rate', 'orthogonal_complement', 'push_window', 'redreg_gate',
    'redundancy_score', 'redundant_phase_indicator', 'stack_features',
    'tau_schedule',
]


def push_window(window_MxW: jax.Array, count: jax.Array,
                p_M: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Appends this step's p_m to the sliding window of Eq.15 (newest last).

  Args:
    window_MxW: [M, L+1] the last L+1 values of p_m; the valid ones are the
      last `count` columns.
    count: [] int32 number of valid columns.
    p_M: [M] this step's p_m (Eq.14).

  Returns:
    (new window [M, L+1], new count), the count saturating at L+1.
  """
  width = window_MxW.shape[-1]
  window_MxW = jnp.concatenate(
      [window_MxW[:, 1:], p_M[:, None].astype(window_MxW.dtype)], axis=1)
  return window_MxW, jnp.minimum(jnp.asarray(count, jnp.int32) + 1, width)


def growth_rate(window_MxW: jax.Array, count: jax.Array, eps: float,
                before_full: str = 'closed') -> tuple[jax.Array, jax.Array]:
  """Effective-gain growth rate S_m of Eq.15-16 from a window of L+1 values.

  Args:
    window_MxW: [M, L+1] the last L+1 values of p_m, newest last.
    count: [] number of valid (most recent) columns of the window.
    eps: epsilon of Eq.16.
    before_full: S while the window holds fewer than L+1 values: 'closed' gives 0
      (neither mean of Eq.15 is defined yet), 'one' gives 1.0 (released code).

  Returns:
    (S [M], full []): S_m = (pbar_now - pbar_prev) / (|pbar_prev| + eps) with
    pbar_now the mean of the newest L values and pbar_prev of the oldest L
    (Eq.15-16), or the `before_full` value until the window holds L+1 values
    (`full` False).
  """
  if before_full not in GROWTH_BEFORE_FULL:
    raise ValueError(f'before_full must be one of {GROWTH_BEFORE_FULL}, got {before_full!r}.')
  full = jnp.asarray(count) >= window_MxW.shape[-1]
  window_MxW = window_MxW.astype(jnp.float32)
  pbar_now = jnp.mean(window_MxW[:, 1:], axis=-1)  # Eq.15 at step s.
  pbar_prev = jnp.mean(window_MxW[:, :-1], axis=-1)  # Eq.15 at step s-1.
  s_M = (pbar_now - pbar_prev) / (jnp.abs(pbar_prev) + eps)  # Eq.16
  return jnp.where(full, s_M, 0.0 if before_full == 'closed' else 1.0), full


def redundancy_score(z1: jax.Array, z2: jax.Array, x1: jax.Array, x2: jax.Array,
                     eps: float = 1e-12) -> jax.Array:
  """Redundancy score red_m of Eq.17-20 from two noisy views and their features.

  Means rather than the paper's sums of squares (docs/methods.md §RedReg): the ratio then does
  not depend on the input and feature sizes, which is what R was calibrated on.

  Args:
    z1: encoder features of the first noisy copy x1 (Eq.18), any shape.
    z2: encoder features of the second copy x2 (Eq.19), shape of z1.
    x1: first noisy copy x + n1 of the encoder input (Eq.17).
    x2: second noisy copy x + n2, shape of x1.
    eps: epsilon of Eq.20.

  Returns:
    [] float32 mean((z1 - z2)^2) / (mean((x1 - x2)^2) + eps).
  """
  dz = z1.astype(jnp.float32) - z2.astype(jnp.float32)
  dx = x1.astype(jnp.float32) - x2.astype(jnp.float32)
  return jnp.mean(dz * dz) / (jnp.mean(dx * dx) + eps)  # Eq.20


def ema_normalise(value: jax.Array, ema: jax.Array, ready: jax.Array, *,
                  momentum: float, eps: float,
                  valid: jax.Array | bool = True, init: str = 'value'
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Divides red_m by its running mean (the official code's normalisation).

  The EMA is updated before dividing. With init='value' its first value is the
  value itself, so the first normalised score is ~1; with init='zero' (released
  code) it starts at 0, so the first normalised score is 1 / (1 - momentum), 10 at
  momentum 0.9. Where `valid` is False the EMA and its `ready` flag are left
  untouched (the score was not computed on that step).

  Args:
    value: red_m, any shape (typically [M]).
    ema: running mean, shape of `value`.
    ready: bool, whether `ema` has been initialised, shape of `value`.
    momentum: EMA momentum (0.9 in the official code).
    eps: guards the division.
    valid: bool, broadcastable to `value`; where the score was computed.
    init: 'value' or 'zero', the EMA before its first update (see above).

  Returns:
    (value / (new_ema + eps), new_ema, new_ready).
  """
  if init not in EMA_INITS:
    raise ValueError(f'init must be one of {EMA_INITS}, got {init!r}.')
  value = jnp.asarray(value, jnp.float32)
  first = value if init == 'value' else (1.0 - momentum) * value  # 'zero': m * 0 + ...
  updated = jnp.where(ready, momentum * ema + (1.0 - momentum) * value, first)
  new_ema = jnp.where(valid, updated, ema)
  new_ready = jnp.logical_or(ready, valid)
  return value / (new_ema + eps), new_ema, new_ready


def redundant_phase_indicator(red: jax.Array, growth: jax.Array,
                              gamma: float) -> jax.Array:
  """Redundant phase monitor r_m = red_m - gamma * max(S_m, 0) (Eq.21)."""
  return red - gamma * jnp.maximum(growth, 0.0)


def stack_features(features: Mapping[str, jax.Array],
                   modalities: Sequence[str]) -> jax.Array:
  """Stacks pooled features {m: [B, D]} into [M, B, D] in `modalities` order.

  Raises:
    ValueError: if a modality is missing or the feature sizes differ (Eq.23's
      cosine needs equal sizes; give the encoders a common output width).
  """
  missing = [m for m in modalities if m not in features]
  if missing:
    raise ValueError(f'Observations.features lacks modalities {missing}; '
                     f'it has {sorted(features)}. The co-information gate '
                     '(Eq.22-23) needs the pooled features of every modality.')
  shapes = {m: tuple(features[m].shape) for m in modalities}
  if len(set(shapes.values())) != 1 or len(next(iter(shapes.values()))) != 2:
    raise ValueError(f'Co-information similarity (Eq.23) needs [B, D] pooled '
                     f'features of one common shape, got {shapes}; project the '
                     'encoders to a common feature size or disable the gate.')
  return jnp.stack([features[m].astype(jnp.float32) for m in modalities])


def coinfo_similarity(features_MxBxD: jax.Array, dominant: jax.Array,
                      cos_eps: float = 1e-8) -> jax.Array:
  """Co-information proxy sim of Eq.22-23, generalised to M >= 2 modalities.

  Batch mean of the cosine between the dominant modality's pooled feature and
  each other modality's, averaged over the other modalities.

  Args:
    features_MxBxD: [M, B, D] pooled features of the main forward pass.
    dominant: [] int index m* (may be traced).
    cos_eps: floor on the feature norms, so all-zero features give cosine 0.

  Returns:
    [] float32 sim.
  """
  num_modalities = features_MxBxD.shape[0]
  if num_modalities < 2:
    raise ValueError('coinfo_similarity needs at least 2 modalities, got '
                     f'{num_modalities}.')
  z = features_MxBxD.astype(jnp.float32)
  norms = jnp.linalg.norm(z, axis=-1, keepdims=True)
  z_hat = z / jnp.maximum(norms, cos_eps)  # l2 normalisation before Eq.23.
  z_dom_BxD = jnp.take(z_hat, dominant, axis=0)
  cos_M = jnp.mean(jnp.einsum('bd,mbd->mb', z_dom_BxD, z_hat), axis=-1)  # Eq.23
  others = jnp.arange(num_modalities) != dominant
  return jnp.sum(jnp.where(others, cos_M, 0.0)) / (num_modalities - 1)


def tau_schedule(epoch: jax.Array, num_epochs: int, tau_min: float,
                 tau_max: float) -> jax.Array:
  """Threshold tau(e) = tau_min + e / (E - 1) * (tau_max - tau_min) (Eq.24).

  E = 1 gives tau_min; e / (E - 1) is clipped to [0, 1] so a run continued past
  `num_epochs` keeps tau_max rather than exceeding it.
  """
  frac = jnp.asarray(epoch, jnp.float32) / max(num_epochs - 1, 1)
  return tau_min + jnp.clip(frac, 0.0, 1.0) * (tau_max - tau_min)


class GateFactors(NamedTuple):
  """Which factor(s) of Eq.25 closed the gate; each a [] bool (True = closed)."""

  warmup: jax.Array  # epoch < warmup_epochs (Algorithm 1, lines 4-7).
  window: jax.Array  # sliding window not yet full (S undefined).
  monitor: jax.Array  # not (r_{m*} > R), or red_{m*} not computed this step.
  coinfo: jax.Array  # not (sim >= tau(e)).


def redreg_gate(epoch: jax.Array, window_full: jax.Array, r_dominant: jax.Array,
                sim: jax.Array, tau: jax.Array, *, warmup_epochs: int,
                threshold: float, use_monitor: bool = True,
                use_coinfo: bool = True,
                monitor_valid: jax.Array | bool = True,
                use_window: bool = True, coinfo_compare: str = 'ge'
                ) -> tuple[jax.Array, GateFactors]:
  """Gate of Eq.25 for the dominant modality, with the reasons it is shut.

  Args:
    epoch: [] current 0-based epoch.
    window_full: [] bool, the growth-rate window holds L+1 values.
    r_dominant: [] r_{m*} of Eq.21.
    sim: [] co-information similarity of Eq.23.
    tau: [] tau(e) of Eq.24.
    warmup_epochs: plain updates while epoch < warmup_epochs.
    threshold: R of Eq.25.
    use_monitor: False drops the factor [r > R] (ablation "w/o redundant phase
      monitor", Tables III/IV).
    use_coinfo: False drops the factor [sim >= tau] (ablation "w/o co-info
      gating").
    monitor_valid: [] bool, whether red_{m*} was computed this step; the monitor
      cannot vouch for a score it did not see.
    use_window: False: a window that is not yet full does not shut the gate (the
      released code, where S is 1.0 until then).
    coinfo_compare: 'ge' (sim >= tau, Eq.25) or 'gt' (sim > tau, released code).

  Returns:
    (open [] bool, GateFactors of [] bools).
  """
  if coinfo_compare not in COINFO_COMPARES:
    raise ValueError(f'coinfo_compare must be one of {COINFO_COMPARES}, got '
                     f'{coinfo_compare!r}.')
  agrees = sim >= tau if coinfo_compare == 'ge' else sim > tau
  factors = GateFactors(
      warmup=jnp.asarray(epoch) < warmup_epochs,
      window=jnp.logical_and(use_window, jnp.logical_not(window_full)),
      monitor=jnp.logical_and(
          use_monitor,
          jnp.logical_not(jnp.logical_and(monitor_valid, r_dominant > threshold))),
      coinfo=jnp.logical_and(use_coinfo, jnp.logical_not(agrees)),
  )
  closed = jnp.logical_or(jnp.logical_or(factors.warmup, factors.window),
                          jnp.logical_or(factors.monitor, factors.coinfo))
  return jnp.logical_not(closed), factors


def _vdot(a: jax.Array, b: jax.Array) -> jax.Array:
  return jnp.vdot(a.astype(jnp.float32), b.astype(jnp.float32))


def orthogonal_complement(d: PyTree, g: PyTree, eps: float,
                          projection: str = 'per_tensor') -> PyTree:
  """Projects d onto the orthogonal complement of g (Eq.27-29).

  d_perp = d - (<d, g> / (<g, g> + eps)) g, for every tensor on its own
  ('per_tensor', as the official code does) or with the inner products taken
  over the whole pytree ('global').

  Args:
    d: pytree of drifts w - w_anchor (Eq.27).
    g: pytree of gradients, structure and shapes of `d`.
    eps: epsilon of Eq.28.
    projection: 'per_tensor' or 'global'.

  Returns:
    d_perp, a pytree like `g` (and in its dtypes).
  """
  if projection not in PROJECTIONS:
    raise ValueError(f'projection must be one of {PROJECTIONS}, got {projection!r}.')
  if projection == 'per_tensor':
    def one(d_leaf, g_leaf):
      coef = _vdot(d_leaf, g_leaf) / (_vdot(g_leaf, g_leaf) + eps)  # Eq.28
      out = d_leaf.astype(jnp.float32) - coef * g_leaf.astype(jnp.float32)
      return out.astype(g_leaf.dtype)  # Eq.29
    return jax.tree.map(one, d, g)
  d_leaves = jax.tree.leaves(d)
  g_leaves, g_def = jax.tree.flatten(g)
  if len(d_leaves) != len(g_leaves):
    raise ValueError(f'd has {len(d_leaves)} leaves but g has {len(g_leaves)}.')
  dg = sum((_vdot(a, b) for a, b in zip(d_leaves, g_leaves)), jnp.float32(0))
  gg = sum((_vdot(b, b) for b in g_leaves), jnp.float32(0))
  coef = dg / (gg + eps)  # Eq.28 with g the whole subtree flattened.
  out = [(a.astype(jnp.float32) - coef * b.astype(jnp.float32)).astype(b.dtype)
         for a, b in zip(d_leaves, g_leaves)]  # Eq.29
  return jax.tree.unflatten(g_def, out)


def corrected_gradient(g: PyTree, d_perp: PyTree, beta_eff: jax.Array,
                       gate_open: jax.Array | bool) -> PyTree:
  """Controlled update g~ = g + beta_eff * gate * d_perp (Eq.30).

  A shut gate returns g bit-for-bit (a select, not an addition of zero, which
  would turn -0.0 into +0.0).
  """
  def one(g_leaf, dp_leaf):
    out = g_leaf.astype(jnp.float32) + beta_eff * dp_leaf.astype(jnp.float32)
    return jnp.where(gate_open, out.astype(g_leaf.dtype), g_leaf)
  return jax.tree.map(one, g, d_perp)


def effective_beta(beta: float, p_M: jax.Array, dominant: jax.Array,
                   schedule: str = 'constant') -> jax.Array:
  """beta_eff of Eq.30: `beta` (paper) or exp(beta tanh(p_dom - p_weak)) (official).

  Args:
    beta: beta of Eq.30.
    p_M: [M] branch true-class probabilities (Eq.14).
    dominant: [] index m* (may be traced).
    schedule: 'constant' or 'confidence_gap'; p_weak is the smallest p_m among
      the other modalities.

  Returns:
    [] float32 beta_eff.
  """
  if schedule not in BETA_SCHEDULES:
    raise ValueError(f'beta_schedule must be one of {BETA_SCHEDULES}, got {schedule!r}.')
  if schedule == 'constant':
    return jnp.asarray(beta, jnp.float32)
  p_M = jnp.asarray(p_M, jnp.float32)
  others = jnp.arange(p_M.shape[0]) != dominant
  p_weak = jnp.min(jnp.where(others, p_M, jnp.inf))
  return jnp.exp(beta * jnp.tanh(jnp.take(p_M, dominant) - p_weak))
