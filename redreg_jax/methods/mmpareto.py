"""MMPareto (docs/methods.md §MMPareto): Pareto combination of multimodal and unimodal
gradients.

The update is `redreg_jax.mmpareto.mmpareto_transform`, fed the gradient of each loss
term separately (`Observations.aux_grads`). The step gets them from one forward pass
and one VJP, pulled back once per loss with a one-hot cotangent.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from redreg_jax import config_checks as cc
from redreg_jax import mmpareto as mmpareto_lib
from redreg_jax.methods.spec import (MULTIMODAL_CE, UNIMODAL_CE, Method, MethodSpec, Setup,
                                     fields, register)

DEFAULTS, DOCS = fields(
    gamma=(1.5, "MMPareto gamma: final multiplier of the combined encoder gradient "
                "(official 1.5)."),
)


@dataclasses.dataclass(frozen=True)
class MMParetoMethod(Method):
  """Per-loss gradients: {'multimodal': g_mm, 'unimodal': g_uni} beside their sum."""

  def gradients(self, losses_fn, params):
    # One forward pass and one VJP; the per-loss gradients come from two cotangents.
    losses, vjp_fn, aux = jax.vjp(losses_fn, params, has_aux=True)
    unit = lambda k: {n: jnp.asarray(float(n == k), l.dtype) for n, l in losses.items()}
    per_loss = {k: vjp_fn(unit(k))[0] for k in losses}
    grads = jax.tree.map(lambda *g: sum(g), *per_loss.values())
    return losses, grads, per_loss, aux


def build(setup: Setup) -> MMParetoMethod:
  """Binds gamma; the transform reads the two per-loss gradients."""
  transform = functools.partial(mmpareto_lib.mmpareto_transform, setup.modalities,
                                setup.param_labels, gamma=setup.optim["gamma"])
  return MMParetoMethod(setup.name, losses=(MULTIMODAL_CE, UNIMODAL_CE), transform=transform)


register(MethodSpec("mmpareto", "Pareto combination of multimodal and unimodal gradients",
                    build, defaults=DEFAULTS, docs=DOCS, unimodal_heads=True,
                    ranges=dict(gamma=cc.POSITIVE)))
