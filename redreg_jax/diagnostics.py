"""Training-dynamics diagnostics (RedReg paper Fig. 1 and 3), as pure functions."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def representation_logit_coupling(logits_prev, logits_now, feats_prev, feats_now,
                                  eps: float = 1e-8) -> jax.Array:
  """RLC k = ||f_t - f_(t-1)|| / (||z_t - z_(t-1)|| + eps) on a fixed probe batch.

  f are a modality's branch logits and z its pooled features, both from inference-mode
  forward passes of the same probe batch at two measurement times. A small k late in
  training means the representation still moves but the logits no longer follow it
  (the weakened representation-output coupling the RedReg paper describes).
  """
  df = jnp.linalg.norm((logits_now - logits_prev).astype(jnp.float32))
  dz = jnp.linalg.norm((feats_now - feats_prev).astype(jnp.float32))
  return df / (dz + eps)
