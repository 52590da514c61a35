"""InfoReg, its "*" variant and its released-code preset (docs/methods.md §InfoReg).

The update is `redreg_jax.inforeg.inforeg_transform`: in a modality's prime learning
window (Eq.11), its encoder is pulled toward its epoch-start weights (Eq.16-17). Branch
logits share the fused head's bias (W_m z_m + b/M, docs/methods.md §Setting).
"""

from __future__ import annotations

import functools

from redreg_jax import inforeg as inforeg_lib
from redreg_jax import config_checks as cc
from redreg_jax.methods.spec import (BRANCH_CE, MULTIMODAL_CE, UNIMODAL_CE, Method,
                                     MethodSpec, Setup, fields, register)

# config.optim fields read by `inforeg_transform` (keyword for keyword).
TRANSFORM_DEFAULTS, TRANSFORM_DOCS = fields(
    beta=(0.9, "InfoReg beta of Eq.16."),
    threshold_k=(0.04, "InfoReg K of Eq.11 (paper 0.04, released code 0.05)."),
    moving_average=(1, "InfoReg epochs averaged on each side of Eq.11 (paper 1, released "
                       "10)."),
    trace_modalities=((), "InfoReg: () each modality's own window, or the modalities whose "
                          "summed trace opens one window for all; 'first' = the first modality "
                          "(released code: audio)."),
    warmup_epochs=(2, "InfoReg: no regulation while epoch < warmup_epochs (Algorithm 1: 2; "
                      "released: 0)."),
    trace_form=("paper", "InfoReg trace: 'paper' (mean ||g||^2, Eq.7/13) or 'released' "
                         "(kernel means of g^2 summed over steps, after regulation)."),
    score_form=("mean", "InfoReg s_m: batch 'mean' (paper scale) or 'sum' (released code) "
                        "of p(y)."),
    alpha_form=("paper", "InfoReg alpha: 'paper' exp(beta tanh(Delta)) (Eq.16) or "
                         "'released' alpha_scales[m] exp(tanh(Delta))."),
    alpha_scales=((), "InfoReg per-modality scales of the released alpha (0.95, 0.1)."),
)
LOSS_DEFAULTS, LOSS_DOCS = fields(
    unimodal_loss=("none", "InfoReg extra loss: 'none' (paper) or 'shared_head', "
                           "CE(W_m z_m + b/M) per modality through the fused head "
                           "(released code)."),
)
DEFAULTS = dict(TRANSFORM_DEFAULTS, **LOSS_DEFAULTS)
DOCS = dict(TRANSFORM_DOCS, **LOSS_DOCS)

UNIMODAL_LOSSES = ("none", "shared_head")


def build(setup: Setup) -> Method:
  """Checks the loss choice and the transform's hyper-parameters once."""
  optim = setup.optim
  hp = {k: optim[k] for k in TRANSFORM_DEFAULTS}
  # 'first': the dataset's first modality (audio in the released code's datasets).
  hp["trace_modalities"] = tuple(setup.modalities[0] if m == "first" else m
                                 for m in hp["trace_modalities"]) or None
  hp["alpha_scales"] = tuple(hp["alpha_scales"])
  if optim["unimodal_loss"] not in UNIMODAL_LOSSES:
    raise ValueError(f"config.optim.unimodal_loss must be one of {UNIMODAL_LOSSES}, got "
                     f"{optim['unimodal_loss']!r}.")
  star = setup.spec.unimodal_heads
  if optim["unimodal_loss"] == "shared_head" and star:
    raise ValueError(f"{setup.name} trains unimodal heads already; unimodal_loss="
                     "'shared_head' would add a second unimodal loss. Use inforeg_official "
                     "or 'none'.")
  transform = functools.partial(inforeg_lib.inforeg_transform, setup.modalities,
                                setup.param_labels, **hp)
  transform()  # Bad values fail here, at configuration.
  losses = (MULTIMODAL_CE,) + ((UNIMODAL_CE,) if star else ()) + (
      (BRANCH_CE,) if optim["unimodal_loss"] == "shared_head" else ())
  return Method(setup.name, losses=losses, transform=transform, branch_bias="split")


# threshold_k has no range: K compares a relative growth, which can be negative.
RANGES = dict(beta=cc.NON_NEGATIVE, moving_average=cc.COUNT, warmup_epochs=cc.INDEX,
              alpha_scales=cc.NON_NEGATIVE)

register(MethodSpec("inforeg", "prime-learning-window pull toward epoch-start weights", build,
                    defaults=DEFAULTS, docs=DOCS, ranges=RANGES))
register(MethodSpec("inforeg_star", "InfoReg with unimodal losses", build, defaults=DEFAULTS,
                    docs=DOCS, unimodal_heads=True, ranges=RANGES))
# The released InfoReg (GeWu-Lab/InfoReg_CVPR2025 main.py; docs/reproducing.md):
# audio trace, 10-epoch moving averages, K = 0.05, open from epoch 0, its trace,
# scores and alpha forms, and its shared-head unimodal cross-entropies.
register(MethodSpec(
    "inforeg_official", "audio trace, 10-epoch moving averages, K = 0.05", build,
    defaults=dict(DEFAULTS, threshold_k=0.05, moving_average=10, trace_modalities=("first",),
                  warmup_epochs=0, trace_form="released", score_form="sum",
                  alpha_form="released", alpha_scales=(0.95, 0.1),
                  unimodal_loss="shared_head"),
    docs=DOCS, ranges=RANGES))
