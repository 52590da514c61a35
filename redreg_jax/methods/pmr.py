"""PMR: Prototypical Modal Rebalance (Fan et al., CVPR 2023; docs/methods.md §PMR).

PMR is a loss term, not a gradient transformation: the multimodal cross-entropy plus
`redreg_jax.pmr.pmr_loss`, the prototypical cross-entropy of the lagging modality
(Eq.9-11) and, in the first E_r epochs, minus the prototype entropy of the leading one
(Eq.13), both read off the pooled features of the training forward pass. The class
prototypes (Eq.6) live in `TrainState.method_state`; an epoch-start hook recomputes them
from an inference-mode pass over a 10% subset of the training split and smooths them
with momentum (Eq.12), as Algorithm 1 does before each epoch. The optimiser is plain SGD.

  pmr           the paper: Eq.11 coefficients, PER (Eq.13) while epoch < reg_epochs.
  pmr_official  the released main_Prototype_grad.py: constant alpha on the lagging
                modality, no PER, modulation in epochs [0, end_epoch = 100], a new random
                tenth of the training data behind each epoch's prototypes.

More than two modalities use the generalisation of `redreg_jax.pmr` (each modality is
compared with the best and the worst; exactly Eq.11/13 for M = 2); rho is logged for
M = 2 only.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from redreg_jax import input_pipeline
from redreg_jax import pmr as pmr_lib
from redreg_jax.methods.spec import (MULTIMODAL_CE, EpochContext, EpochHook, EpochUpdate,
                                     LossTerm, Method, MethodSpec, Setup, Step, fields,
                                     register)

DEFAULTS, DOCS = fields(
    alpha=(1.0, "PMR alpha of Eq.10: strength of the lagging modality's prototypical CE "
                "(paper: 1 or 2 per dataset)."),
    mu=(1e-2, "PMR mu of Eq.13: strength of the leading modality's prototype-entropy "
              "regulariser (paper: 1e-2 or 1e-3; released code: 0, no PER)."),
    reg_epochs=(10, "PMR E_r of Algorithm 1: the entropy term acts while epoch < "
                    "reg_epochs (paper: 'the first few epochs', no number; 10 is ours)."),
    proto_momentum=(0.2, "PMR epsilon of Eq.12: c <- eps c_old + (1 - eps) c_new at each "
                         "epoch start (no value in the paper; released code 0.2)."),
    coefficient_form=("paper", "PMR coefficients: 'paper' (Eq.11, clip(rho - 1, 0, 1)) or "
                               "'released' (constant alpha on the lagging modality)."),
    end_epoch=(None, "PMR: last epoch (inclusive) with the prototype terms; None: every "
                     "epoch (paper). Released code: 100."),
    subset_fraction=(0.1, "PMR: share of the training split behind the prototypes (paper "
                          "Sec.5.2 and Tab.5: one tenth)."),
    subset_resample=(False, "PMR: False, one fixed seeded subset D_s for the whole run "
                            "(Algorithm 1); True, a new one each epoch (released code)."),
)

# The pure builder's argument behind each config.optim field (for error messages).
_PURE_ARG = {"alpha": "alpha", "mu": "mu", "reg_epochs": "reg_epochs",
             "proto_momentum": "momentum", "coefficient_form": "coefficient_form",
             "end_epoch": "end_epoch", "subset_fraction": "subset_fraction"}


def _pmr_terms(spec: pmr_lib.PMR, out, step: Step):
  """(PMR's extra loss, its per-step aux); both zero before the first prototypes."""
  state = step.method_state
  # Eq.7-8 (prototype probabilities, rho), Eq.11 (beta, gamma), Eq.9-10 (PCE) and Eq.13
  # (entropy while epoch < E_r) on the features the fusion consumes, with gradient.
  loss, aux = spec.loss(out["features"], state["prototypes"], step.labels, step.epoch)
  ready = state["initialized"]
  # Before any prototype computation every weight is 0 (no term acts).
  aux = {k: jnp.where(ready, v, 0.0) if "weight" in k else v for k, v in aux.items()}
  return jnp.where(ready, loss, 0.0), aux


@dataclasses.dataclass(frozen=True)
class PMRMethod(Method):
  """The loss term of Eq.10/13 and the prototypes in `method_state`."""

  pmr: pmr_lib.PMR | None = None
  # ((modality, pooled feature size D), ...): the prototypes' shapes [K, D].
  feature_dims: tuple[tuple[str, int], ...] = ()

  def init_method_state(self, info) -> dict[str, Any]:
    """Zero prototypes [K, D] per modality, not yet initialised (fixed shapes)."""
    dims = dict(self.feature_dims)
    return {"prototypes": {m: jnp.zeros((info.num_classes, dims[m]), jnp.float32)
                           for m in self.pmr.modalities},
            "initialized": jnp.array(False)}

  def output_metrics(self, out, step: Step) -> dict[str, jax.Array]:
    # rho (Eq.8, M = 2), each modality's score, PCE, entropy and the two weights.
    features = jax.lax.stop_gradient(out["features"])
    _, aux = _pmr_terms(self.pmr, {"features": features}, step)
    return {f"pmr_{k}": v for k, v in aux.items()}


def _subset_indices(spec: pmr_lib.PMR, resample: bool, seed: int, epoch: int,
                    num_examples: int) -> np.ndarray:
  """The training examples behind this epoch's prototypes (sorted indices)."""
  if resample:  # A fresh subset each epoch, independent of the batch order.
    seed = int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])
  return input_pipeline.seeded_subset(num_examples, spec.subset_fraction, seed)


def prototype_hook(spec: pmr_lib.PMR, resample: bool, ctx: EpochContext) -> EpochUpdate:
  """Algorithm 1's epoch start: prototypes of the subset (Eq.6), smoothed by Eq.12.

  Features come from an inference-mode pass (BatchNorm running statistics, no gradient;
  `Experiment.outputs`). The first computation takes the new prototypes as they are.
  """
  exp = ctx.experiment
  idx = _subset_indices(spec, resample, int(exp.config.seed), ctx.epoch,
                        len(exp.dataset.sources["train"]))
  out = exp.outputs(ctx.state, "train", indices=idx)
  old = jax.device_get(ctx.state.method_state)
  labels_N = jnp.asarray(out["label"])
  num_classes = old["prototypes"][spec.modalities[0]].shape[0]
  sums, counts = {}, {}
  for m in spec.modalities:
    sums[m], counts[m] = pmr_lib.class_feature_sums(out["features"][m], labels_N,
                                                    num_classes)
  first = not bool(old["initialized"])
  new = spec.update_prototypes(None if first else old["prototypes"], sums, counts)
  new = {m: new[m].astype(jnp.float32) for m in spec.modalities}
  metrics = {"pmr_subset_size": float(idx.size),
             "pmr_classes_seen": float(np.sum(np.asarray(counts[spec.modalities[0]]) > 0))}
  for m in spec.modalities:
    logits_NxK = pmr_lib.prototype_logits(jnp.asarray(out["features"][m]), new[m])
    metrics[f"pmr_proto_accuracy_{m}"] = float(jnp.mean(jnp.argmax(logits_NxK, -1) ==
                                                         labels_N))
    # Mean per-class move of the prototypes (0 at the first computation).
    shift = 0.0 if first else float(jnp.mean(jnp.linalg.norm(new[m] - old["prototypes"][m],
                                                              axis=-1)))
    metrics[f"pmr_proto_shift_{m}"] = shift
  method_state = {"prototypes": new, "initialized": jnp.array(True)}
  state = ctx.state.replace(method_state=method_state)
  return EpochUpdate(state=state, metrics=metrics)


def _check(field: str, value, ok: bool, allowed: str) -> None:
  if not ok:
    raise ValueError(f"config.optim.{field} must be {allowed}; got {value!r}.")


def build(setup: Setup) -> PMRMethod:
  """Validates the PMR fields of config.optim; sizes the prototypes from the features."""
  optim = setup.optim
  if len(setup.modalities) < 2:
    raise ValueError(f"{setup.name} compares modalities (rho of PMR Eq.8) and needs at "
                     f"least two; this run has {list(setup.modalities)}. Set "
                     "config.modalities to () (all) or to two or more.")
  _check("subset_resample", optim["subset_resample"],
         isinstance(optim["subset_resample"], bool), "True or False")
  try:
    spec = pmr_lib.pmr(setup.modalities,
                       **{pure: optim[field] for field, pure in _PURE_ARG.items()})
  except ValueError as e:  # Name the config field, not the builder's argument.
    match = re.match(r"pmr: (\w+) (.*)", str(e), re.S)
    field = {pure: field for field, pure in _PURE_ARG.items()}.get(
        match.group(1) if match else None)
    if field is None:
      raise
    raise ValueError(f"config.optim.{field} {match.group(2)}") from None
  if setup.feature_dims is None:
    raise ValueError(f"{setup.name} needs the pooled feature sizes (its prototypes are "
                     "[K, D] per modality); pass feature_dims to methods.build_method.")
  dims = dict(setup.feature_dims())
  pmr_term = LossTerm("pmr", lambda out, step: _pmr_terms(spec, out, step)[0])
  hook = EpochHook("start", functools.partial(prototype_hook, spec,
                                              bool(optim["subset_resample"])))
  return PMRMethod(setup.name, losses=(MULTIMODAL_CE, pmr_term), epoch_hooks=(hook,),
                   pmr=spec, feature_dims=tuple((m, int(dims[m])) for m in spec.modalities))


def _register(name: str, summary: str, **overrides) -> None:
  unknown = set(overrides) - set(DEFAULTS)
  if unknown:
    raise AssertionError(f"{name}: no PMR field {sorted(unknown)}")
  register(MethodSpec(name, summary, build, defaults=dict(DEFAULTS, **overrides),
                      docs=DOCS))


_register("pmr", "prototypical CE on the lagging modality, prototype entropy on the "
          "leading one")
# The released main_Prototype_grad.py: alpha on whichever modality lags (no clip of
# Eq.11), no PER, modulation in epochs [0, 100] of 150, a new first-tenth of the shuffled
# training batches behind each epoch's prototypes, epsilon 0.2.
_register("pmr_official", "released code: constant alpha on the lagging modality, no "
          "entropy term, modulation until epoch 100", mu=0.0, reg_epochs=0,
          coefficient_form="released", end_epoch=100, subset_resample=True)
