"""AGM and its released-code preset (docs/methods.md §AGM).

The update is `redreg_jax.agm.agm_transform`: each modality's gradient is scaled by
k_m = exp(alpha min(rbar_m - r_m, cap)), from the cross-entropies of its Shapley
mono-modal response. What this module adds around it, inside the train step:

* the training forward pass also returns the fused logits of all 2^M coalitions of
  modalities (`apply_kwargs`: subsets=models.all_subsets), the pooled features outside
  a coalition zeroed (redreg_jax/models.py);
* the transform observes, as branch logits, the Shapley responses of those logits
  (`agm.mono_modal_responses`), not the model's branch logits;
* with gradient_form='output' (the released code's gradient, for any fusion) the loss
  is the cross-entropy of sum_m response_m with the gradient through response m scaled
  by this step's k_m (`agm.agm_modulated_output`), k_m computed from the transform's
  running average before the step; the transform then only keeps that average.

The paper's text was not available to this implementation; the formulas and every
default follow the authors' released code (lihong2303/AGM_ICCV2023), as redreg_jax/agm.py
says, and no equation numbers are cited.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import optax

from redreg_jax import agm as agm_lib
from redreg_jax import models
from redreg_jax.methods.spec import (MULTIMODAL_CE, LossTerm, Method, MethodSpec, Setup, Step,
                                     cross_entropy, fields, register)

# config.optim fields read by `agm_transform` (keyword for keyword).
DEFAULTS, DOCS = fields(
    alpha=(1.0, "AGM alpha of k_m = exp(alpha min(rbar_m - r_m, cap)) (released default "
                "1.0; the released AV-MNIST example 2.5)."),
    cap=(None, "AGM upper bound of rbar_m - r_m in the exponent; None: unbounded "
               "(released CREMA-D 10, UR-Funny 7, AV-MNIST/AVE/MOSEI none)."),
    start_epoch=(0, "AGM first modulated epoch (0-based)."),
    end_epoch=(None, "AGM last modulated epoch (0-based, inclusive); None: to the end "
                     "(released: the first 20 epochs)."),
    gradient_form=("encoder", "AGM: 'encoder' (k_m scales encoder m's gradient; needs a "
                              "concat or sum fusion) or 'output' (the released gradient "
                              "through the k_m-scaled responses; any fusion)."),
    released_clip=(False, "AGM: clip the global gradient norm to 1 when a fusion-head "
                          "kernel's gradient leaves [-1, 1] (released code)."),
)

# Fusions whose fused logits are sum_m g_m(z_m) + c: there response m reaches only
# encoder m, so k_m x encoder m's gradient is the released gradient on every encoder
# (tests/test_agm.py, output form = encoder form). FiLM and gated fusions mix z_m into
# the other responses (redreg_jax/models.py, subset logits), so only 'output' is exact.
ADDITIVE_FUSIONS = ("concat", "sum")


def _fusion_error(fusion: str) -> str:
  return (f"AGM with config.optim.gradient_form='encoder' needs an additive fusion "
          f"(config.model.fusion in {ADDITIVE_FUSIONS}); with fusion={fusion!r} encoder m's "
          "gradient also flows through the other modalities' responses, so scaling it by "
          "k_m is not the released update. Set config.optim.gradient_form='output'.")


def _window(epoch, start_epoch: int, end_epoch: int | None):
  """Whether `epoch` is modulated: start_epoch <= epoch <= end_epoch (released code)."""
  active = epoch >= start_epoch
  return active if end_epoch is None else active & (epoch <= end_epoch)


@dataclasses.dataclass(frozen=True)
class AgmMethod(Method):
  """Coalition logits in the training pass; Shapley responses as the branch logits."""

  gradient_form: str = "encoder"  # 'encoder' | 'output' (config.optim.gradient_form).

  def apply_kwargs(self, step: Step):
    # A caller without config.model (build_method(model=None)) is checked at trace time.
    fusion = getattr(step.model, "fusion", None)
    if self.gradient_form == "encoder" and fusion not in ADDITIVE_FUSIONS:
      raise ValueError(_fusion_error(fusion))
    return {"subsets": models.all_subsets(step.modalities)}

  def branch_logits(self, out, step: Step):
    return agm_lib.mono_modal_responses(out["subset_logits"], step.modalities)


def _modulated_ce(out, step: Step, *, alpha, cap, start_epoch, end_epoch):
  """CE(sum_m k_m-scaled response_m): the released backward hooks as a loss."""
  mods = step.modalities
  responses = agm_lib.mono_modal_responses(out["subset_logits"], mods)
  # The transform's state before this step: the same k_m its diagnostics log.
  state = optax.tree_utils.tree_get(step.opt_state, "AgmState")
  scores_M = agm_lib.response_scores([responses[m] for m in mods], step.labels)
  k_M = agm_lib.agm_coefficients(scores_M, state.score_avg, alpha, cap)
  k_M = jnp.where(_window(step.epoch, start_epoch, end_epoch), k_M, 1.0)
  return cross_entropy(agm_lib.agm_modulated_output(responses, k_M, mods), step.labels)


def build(setup: Setup) -> AgmMethod:
  """Checks the hyper-parameters and the fusion once, then binds the transform."""
  hp = {k: setup.optim[k] for k in DEFAULTS}
  transform = functools.partial(agm_lib.agm_transform, setup.modalities, setup.param_labels,
                                **hp)
  try:
    transform()  # Bad values (and fewer than two modalities) fail here, at configuration.
  except ValueError as e:
    raise ValueError(f"{setup.name}: bad config.optim or config.modalities: {e}") from None
  fusion = (setup.model or {}).get("fusion")
  if hp["gradient_form"] == "encoder" and fusion is not None and (
      fusion not in ADDITIVE_FUSIONS):
    raise ValueError(_fusion_error(fusion))
  loss = MULTIMODAL_CE
  if hp["gradient_form"] == "output":
    # Same name and value as the multimodal CE (the responses sum to the fused logits);
    # only its gradient differs.
    loss = LossTerm(MULTIMODAL_CE.name, functools.partial(
        _modulated_ce, alpha=hp["alpha"], cap=hp["cap"], start_epoch=hp["start_epoch"],
        end_epoch=hp["end_epoch"]))
  return AgmMethod(setup.name, losses=(loss,), transform=transform,
                   gradient_form=hp["gradient_form"])


register(MethodSpec("agm", "Shapley mono-modal responses; each encoder's gradient scaled "
                    "by exp(alpha (rbar_m - r_m))", build, defaults=DEFAULTS, docs=DOCS))
# The authors' released CREMA-D script (run/CREMAD_main.py, model/CREMAD_net.py): the
# exponent capped at 10, the backward hooks on the responses (which also scale the fusion
# head's gradient), the clip, the default window (--modulation_starts 0
# --modulation_ends 20 over 1-based epochs: the first 20), Xavier-normal linear layers
# (weight_init) and the DataLoader's last partial batch.
register(MethodSpec(
    "agm_official", "cap 10, response hooks, norm clip, first 20 epochs", build,
    defaults=dict(DEFAULTS, cap=10.0, gradient_form="output", released_clip=True,
                  start_epoch=0, end_epoch=19, linear_init="xavier_normal",
                  keep_partial_batch=True),
    docs=DOCS))
