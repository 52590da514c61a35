"""Helpers for running the balancing transforms in your own training loop and model.

  labels = integrate.prefix_labels({"enc_a": "audio", "enc_v": "visual"})
  branch = integrate.zeroed_branch_logits(head_fn, {"audio": za, "visual": zv})
  red_a = integrate.twin_redundancy(lambda x: enc_a.apply(va, x), xa, key)
  diag = integrate.diagnostics(opt_state)          # this step's gate, p_m, r_m, ...
  note = integrate.inactive_note(epoch_diagnostics)  # why RedReg never acted, or None

What each transform needs (docs/methods.md §Setting): a label tree saying which
parameters belong to which modality's encoder; branch logits that are the FUSED head
applied to one modality's features with the others zeroed (separately trained,
untrained heads give chance-level p_m and the method balances noise); for RedReg the
raw redundancy score of the dominant modality's encoder from two noisy copies of its
input; and the epoch, since warm-up, the growth-rate window and the co-information
threshold schedule are counted in epochs.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from redreg_jax import redreg_signals

PyTree = Any

# RedReg's gate factors, in the order the gate applies them (RedReg Eq.25, docs/methods.md).
GATE_FACTORS = ("warmup", "window", "monitor", "coinfo")
_FACTOR_TEXT = {
    "warmup": "the warm-up (epoch < warmup_epochs)",
    "window": "the growth-rate window (not yet full: window steps of the epoch)",
    "monitor": "the redundant-phase monitor (r <= threshold R, Eq.21/25)",
    "coinfo": "the co-information gate (sim < tau, Eq.22-25)",
}


def prefix_labels(prefixes: Mapping[str, str], default: str = "shared") -> Callable:
  """A label function: params -> tree of labels by each leaf's top-level key.

  Args:
    prefixes: {top-level parameter key: modality}, e.g. {'enc_a': 'audio'}; a key may
      also be a '/'-joined path prefix ('model/enc_a').
    default: the label of every other leaf (heads, fusion: not regulated).
  Returns:
    fn(params) -> a tree like params with a modality name or `default` per leaf.
  """
  items = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))  # Longest prefix wins.

  def label(path, _):
    name = "/".join(str(getattr(p, "key", getattr(p, "name", p))) for p in path)
    for prefix, modality in items:
      if name == prefix or name.startswith(prefix + "/"):
        return modality
    return default

  def labels(params):
    tree = jax.tree_util.tree_map_with_path(label, params)
    used = set(jax.tree.leaves(tree))
    unused = [p for p, m in items if m not in used]
    if unused:
      raise ValueError(f"prefix_labels: no parameter path starts with {unused}; top-level "
                       f"keys are {sorted(params) if hasattr(params, 'keys') else '?'}.")
    return tree
  return labels


def zeroed_branch_logits(head_fn: Callable[[Mapping[str, jax.Array]], jax.Array],
                         features: Mapping[str, jax.Array],
                         modalities: Sequence[str] | None = None) -> dict[str, jax.Array]:
  """{m: head_fn(features with every modality but m zeroed)} (docs/methods.md §Setting).

  `head_fn` is the fused classifier on a {modality: [B, D]} dict (e.g. concatenation
  followed by your Dense head). With a linear head this is W_m z_m + b, the branch
  logits of the OGM-GE, InfoReg and RedReg papers. Gradients are stopped.
  """
  modalities = tuple(features) if modalities is None else tuple(modalities)
  feats = {m: jax.lax.stop_gradient(f) for m, f in features.items()}
  zeros = {m: jnp.zeros_like(f) for m, f in feats.items()}
  return {m: jax.lax.stop_gradient(head_fn({**zeros, m: feats[m]})) for m in modalities}


def twin_redundancy(apply_fn: Callable[[jax.Array], jax.Array], x: jax.Array,
                    key: jax.Array, *, sigma: float = 0.03, eps: float = 1e-12) -> jax.Array:
  """Raw redundancy score red_m of RedReg Eq.17-20 for any encoder.

  Args:
    apply_fn: x -> the encoder's feature maps (run it in inference mode: BatchNorm with
      running statistics, no dropout); any output shape.
    x: the encoder's input batch.
    key: PRNG key of the two noise draws n1, n2 ~ N(0, sigma^2) (Eq.17).
    sigma: noise std (RedReg: 0.03).
    eps: epsilon of Eq.20.
  Returns:
    [] float32 mean((z1 - z2)^2) / (mean((n1 - n2)^2) + eps), no gradient.
  """
  x = jax.lax.stop_gradient(x)
  noise = sigma * jax.random.normal(key, (2,) + x.shape, jnp.float32)
  x1, x2 = x + noise[0], x + noise[1]
  z = jax.lax.stop_gradient(apply_fn(jnp.concatenate([x1, x2], axis=0)))
  z1, z2 = jnp.split(z, 2, axis=0)
  return redreg_signals.redundancy_score(z1, z2, x1, x2, eps)


def diagnostics(opt_state) -> dict[str, jax.Array]:
  """This step's diagnostics of the balancing transform in `opt_state` ({} if none)."""
  return dict(optax.tree_utils.tree_get(opt_state, "diagnostics", default=None) or {})


def inactive_note(history: Mapping[str, Sequence[float]], method: str = "RedReg") -> str | None:
  """Why RedReg's update never acted over some steps, or None if it acted once.

  Args:
    history: {diagnostic name: per-step values} of an epoch (e.g. gate_open,
      gate_closed_by_<factor>, as `diagnostics` returns them).
    method: the name in the message.
  Returns:
    One line naming the factor that kept the gate shut most often, or None.
  """
  opened = history.get("gate_open")
  if opened is None or len(opened) == 0 or float(np.max(opened)) > 0:
    return None
  shares = {f: float(np.mean(history[f"gate_closed_by_{f}"])) for f in GATE_FACTORS
            if f"gate_closed_by_{f}" in history and len(history[f"gate_closed_by_{f}"])}
  if not shares:
    return f"{method} never acted in {len(opened)} steps."
  first = next((f for f in GATE_FACTORS if shares.get(f, 0.0) >= 1.0), None)
  worst = first or max(shares, key=shares.get)
  detail = ", ".join(f"{f} {100 * s:.0f}%" for f, s in shares.items() if s > 0)
  return (f"{method} never acted in {len(opened)} steps: kept off by "
          f"{_FACTOR_TEXT[worst]} (steps closed by each factor: {detail}).")
