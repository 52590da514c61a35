"""RedReg and its ablations and released-code preset (docs/methods.md §RedReg).

The update is `redreg_jax.redreg.redreg_transform` (Eq.14-31). What this module adds
around it, inside the train step: the noisy-twin redundancy red_m of Eq.17-20 (for the
dominant modality only, or every modality for logging), and the released code's
modality dropout with the dropped encoder frozen on its batch (docs/reproducing.md).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from redreg_jax import config_checks as cc
from redreg_jax import redreg as redreg_lib
from redreg_jax.methods.spec import (MULTIMODAL_CE, UNIMODAL_CE, Method, MethodSpec, Setup,
                                     Step, fields, register)
from redreg_jax.observations import Observations, dominant_modality, true_class_probs

# config.optim fields read by `redreg_transform` (keyword for keyword).
TRANSFORM_DEFAULTS, TRANSFORM_DOCS = fields(
    window=(10, "RedReg L: steps in each mean of the growth rate (Eq.15)."),
    threshold=(0.15, "RedReg R: the monitor opens the gate when r > R (Eq.25)."),
    beta=(0.9, "RedReg beta of Eq.30."),
    gamma=(0.5, "RedReg gamma of Eq.21 (paper 0.5, released code 0.6)."),
    tau_min=(0.2, "RedReg co-information threshold at epoch 0 (Eq.24)."),
    tau_max=(0.5, "RedReg co-information threshold at the last epoch (Eq.24)."),
    eps=(1e-12, "RedReg epsilon of Eq.16, 20 and 28."),
    warmup_epochs=(2, "RedReg: plain updates while epoch < warmup_epochs (Algorithm 1: 2; "
                      "released: 0)."),
    redundancy_norm=("ema", "'ema' (red / EMA(red), released code) or 'none' (the paper's "
                            "raw Eq.20)."),
    ema_momentum=(0.9, "momentum of the redundancy EMA (0.9)."),
    projection=("per_tensor", "'per_tensor' (released code) or 'global' projection of "
                              "Eq.28-29."),
    beta_schedule=("constant", "'constant' beta (paper) or 'confidence_gap' "
                               "exp(beta tanh(p_dom - p_weak)) (released code)."),
    reset_window_each_epoch=(False, "empty the p_m window at each new epoch (released "
                                    "code)."),
    growth_before_full=("closed", "'closed' (S = 0, gate shut until the window is full; "
                                  "paper) or 'one' (S = 1.0, window never gates; released "
                                  "code)."),
    ema_init=("value", "'value' (EMA starts at the first score) or 'zero' (first "
                       "normalised score 1/(1-momentum) = 10; released code)."),
    ema_reset_each_epoch=(False, "restart the redundancy EMA at every epoch (released "
                                 "code)."),
    coinfo_compare=("ge", "'ge' (sim >= tau, Eq.25) or 'gt' (sim > tau, released code)."),
    anchor=("epoch", "'epoch' (params at each epoch start, released code) or 'ema' anchor "
                     "of Eq.27."),
    anchor_ema_decay=(0.99, "decay of the 'ema' anchor."),
    use_monitor=(True, "False drops the redundant-phase factor [r > R] (Tables III/IV "
                       "ablation)."),
    use_gate=(True, "False drops the co-information factor [sim >= tau] (Tables III/IV "
                    "ablation)."),
)

# config.optim fields of the train step: twins and modality dropout.
STEP_DEFAULTS, STEP_DOCS = fields(
    sigma=(0.03, "std of the twin-input noise of Eq.17 (0.03)."),
    twins=("dominant", "which redundancy scores to compute: 'dominant' (what the update "
                       "needs), 'all' (every modality each step, released code) or 'none' "
                       "(only without the monitor)."),
    twins_on=("clean", "twin passes on the 'clean' inputs (released code) or the "
                       "'dropped' ones (after modality dropout)."),
    twin_examples=(0, "examples of each batch the twin pass scores (Eq.17-20): 0 = the "
                      "whole batch (paper); k = every (B/k)-th example, k/B of the twin "
                      "arithmetic (it must divide the batch size)."),
    modality_dropout=(False, "zero one modality's whole batch with probability 0.6 -> "
                             "0.1 over the first int(0.3 E) epochs, then 0.1 (released "
                             "code)."),
    dropped_encoder=("frozen", "a dropped modality's encoder: 'frozen' (no gradient, no "
                               "BatchNorm update from that batch) or 'trained' (released "
                               "code; diverges)."),
)

DEFAULTS = dict(TRANSFORM_DEFAULTS, **STEP_DEFAULTS)
DOCS = dict(TRANSFORM_DOCS, **STEP_DOCS)

TWINS = ("dominant", "all", "none")
TWINS_ON = ("clean", "dropped")
DROPPED_ENCODERS = ("frozen", "trained")
# Twin-score epsilon of Eq.20 in the step (fixed; `eps` above is the transform's).
TWIN_EPS = 1e-12


def _train():
  """The train module (it imports this registry, so not at import time)."""
  from redreg_jax import train  # pylint: disable=g-import-not-at-top
  return train


@dataclasses.dataclass(frozen=True)
class RedRegMethod(Method):
  """RedReg's in-step needs: twin redundancy, and optionally modality dropout."""

  twins: str = "dominant"  # Which red_m the step computes: 'dominant' | 'all' | 'none'.
  sigma: float = 0.03  # Twin noise std (Eq.17).
  twins_on: str = "clean"  # Twins of the inputs before ('clean') or after dropout.
  twin_examples: int = 0  # 0: the whole batch; k: every (B/k)-th example (Eq.17-20).
  modality_dropout: bool = False  # The released code's input dropout schedule.
  dropped_encoder: str = "frozen"  # 'frozen' | 'trained' encoder of a dropped modality.
  num_epochs: int = 1  # E of the dropout schedule.

  def transform_inputs(self, step: Step):
    if not self.modality_dropout:
      return step.clean, {}
    inputs, dropped = _train().modality_dropout(step.clean, step.input_key, step.epoch,
                                                self.num_epochs, step.modalities)
    return inputs, {"dropped": dropped}

  def after_gradients(self, step: Step, grads, aux_grads, new_batch_stats):
    if "dropped" not in step.extras or self.dropped_encoder != "frozen":
      return grads, aux_grads, new_batch_stats
    # A zeroed batch has ~zero variance at every train-mode BatchNorm, whose backward
    # pass then scales the gradient by 1/sqrt(var + eps) per layer: the dropped
    # encoder's gradient is 1e3-1e5 x its usual size, and SGD diverges (the released
    # code has the same pathology; docs/reproducing.md). The encoder saw no data:
    # it takes neither a gradient nor BatchNorm statistics from this batch.
    freeze = _train()._freeze_dropped  # pylint: disable=protected-access
    dropped = step.extras["dropped"]
    grads, new_batch_stats = freeze(grads, new_batch_stats, step.batch_stats, dropped)
    if aux_grads is not None:
      aux_grads = {k: freeze(g, None, None, dropped)[0] for k, g in aux_grads.items()}
    return grads, aux_grads, new_batch_stats

  def observe(self, step: Step, obs: Observations) -> Observations:
    if self.twins == "none":  # Only without the monitor, the score's one reader.
      return obs
    twin_redundancy = functools.partial(_train().redundancy_from_twins, step.model,
                                        sigma=self.sigma, eps=TWIN_EPS,
                                        examples=self.twin_examples)
    twin_inputs = step.clean if self.twins_on == "clean" else step.inputs
    fns = [functools.partial(twin_redundancy, m, step.params, step.batch_stats,
                             twin_inputs[m], jax.random.fold_in(step.observe_key, i))
           for i, m in enumerate(step.modalities)]
    if self.twins == "all":
      red = {m: fn() for m, fn in zip(step.modalities, fns)}
      valid = {m: jnp.array(True) for m in step.modalities}
    else:  # Only the dominant's score changes the update (docs/methods.md §RedReg step 3).
      dom = dominant_modality(true_class_probs(obs, step.modalities))
      r = jax.lax.switch(dom, fns)
      red = {m: r for m in step.modalities}
      valid = {m: dom == i for i, m in enumerate(step.modalities)}
    return obs._replace(redundancy=red, redundancy_valid=valid)

  def step_metrics(self, step: Step):
    dropped = step.extras.get("dropped", {})
    return {f"dropped_{m}": d.astype(jnp.float32) for m, d in dropped.items()}


def _check_choice(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"config.optim.{field} must be one of {tuple(allowed)}, got {value!r}.")


def build(setup: Setup) -> RedRegMethod:
  """Checks the step's options, then binds the transform to the config."""
  optim = setup.optim
  # 'dominant': the score the update needs; 'all': every modality's, for logging;
  # 'none': no twin pass, valid only without the monitor (its only reader, Eq.21/25).
  if optim["twins"] not in TWINS:
    raise ValueError("config.optim.twins must be 'dominant', 'all' or 'none', got "
                     f"{optim['twins']!r}")
  if optim["twins"] == "none" and optim["use_monitor"]:
    raise ValueError("config.optim.twins='none' leaves the redundant-phase monitor "
                     "without its score; set optim.use_monitor=False or twins='dominant'.")
  _check_choice("twins_on", optim["twins_on"], TWINS_ON)
  _check_choice("dropped_encoder", optim["dropped_encoder"], DROPPED_ENCODERS)
  setup.require_equal_features("co-information, RedReg Eq.22-23")
  hp = {k: optim[k] for k in TRANSFORM_DEFAULTS}
  transform = functools.partial(redreg_lib.redreg_transform, setup.modalities,
                                setup.param_labels, num_epochs=setup.num_epochs, **hp)
  losses = (MULTIMODAL_CE,) + ((UNIMODAL_CE,) if setup.spec.unimodal_heads else ())
  return RedRegMethod(setup.name, losses=losses, transform=transform,
                      twins=optim["twins"], sigma=float(optim["sigma"]),
                      twins_on=optim["twins_on"], twin_examples=int(optim["twin_examples"]),
                      modality_dropout=bool(optim["modality_dropout"]),
                      dropped_encoder=optim["dropped_encoder"], num_epochs=setup.num_epochs)


# Checked before anything is built (config_checks); the transform re-checks its own.
RANGES = dict(window=cc.COUNT, threshold=cc.NON_NEGATIVE, beta=cc.NON_NEGATIVE,
              gamma=cc.NON_NEGATIVE, tau_min=cc.Range(-1.0, 1.0), tau_max=cc.Range(-1.0, 1.0),
              eps=cc.POSITIVE, warmup_epochs=cc.INDEX, ema_momentum=cc.UNIT_OPEN_HIGH,
              anchor_ema_decay=cc.UNIT_OPEN_HIGH, sigma=cc.POSITIVE, twin_examples=cc.INDEX)


def _register(name, summary, unimodal_heads=False, **overrides):
  register(MethodSpec(name, summary, build, defaults=dict(DEFAULTS, **overrides), docs=DOCS,
                      unimodal_heads=unimodal_heads, ranges=RANGES))


_register("redreg", "monitor + co-info gate + orthogonal correction on the dominant encoder")
_register("redreg_star", "RedReg with unimodal losses", unimodal_heads=True)
# Without the monitor nothing reads the twin-noise score: skip the twin pass.
_register("redreg_no_monitor", "drops the redundant-phase factor [r > R]", use_monitor=False,
          twins="none")
_register("redreg_no_gate", "drops the co-information factor [sim >= tau]", use_gate=False)
# The authors' released code (xia-zhe/RedReg main_RedReg.py; docs/reproducing.md):
# every switch below in its released form. A "*" method: the released script
# always trains the two unimodal heads. One departure, `dropped_encoder='frozen'`:
# the released form ('trained') back-propagates through a zeroed input batch,
# whose train-mode BatchNorm has ~zero variance, and diverges (docs/reproducing.md).
_register("redreg_official", "modality dropout, confidence-gap beta, per-epoch window "
          "reset, gamma 0.6", unimodal_heads=True,
          gamma=0.6, beta_schedule="confidence_gap", warmup_epochs=0,
          growth_before_full="one", reset_window_each_epoch=True, ema_init="zero",
          ema_reset_each_epoch=True, twins="all", twins_on="clean", coinfo_compare="gt",
          modality_dropout=True, dropped_encoder="frozen", linear_init="xavier_normal",
          keep_partial_batch=True)
