"""The method table: each method's defaults and the optax chain it builds.

A method is (a) which losses the model trains with (joint or "*" with unimodal
heads), (b) an optional balancing `GradientTransformationExtraArgs` chained ahead of
weight decay and SGD-momentum, and (c) what observations that transform needs from the
train step. The trainer never branches on the method's name beyond this table.
Adding a method = one transform module plus one entry here.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

import ml_collections
import optax

# Shared SGD settings (RedReg paper IV-B; SPEC §2 defaults).
OPTIM_DEFAULTS = dict(lr=0.002, momentum=0.9, weight_decay=1e-4,
                      lr_decay_epochs=(40,), lr_decay_factor=0.1)

# Per-method hyper-parameters, all overridable as --config.optim.<name>=value.
_REDREG = dict(window=10, threshold=0.15, beta=0.9, gamma=0.5, tau_min=0.2, tau_max=0.5,
               eps=1e-12, warmup_epochs=2, redundancy_norm="ema", ema_momentum=0.9,
               projection="per_tensor", beta_schedule="constant",
               reset_window_each_epoch=False, anchor="epoch", anchor_ema_decay=0.99,
               use_monitor=True,
               use_gate=True, sigma=0.03, twins="dominant", modality_dropout=False)
_INFOREG = dict(beta=0.9, threshold_k=0.04, moving_average=1, trace_modalities=(),
                warmup_epochs=2)
# kernel_filter: which encoder gradients OGM modulates (see `OGM_KERNEL_FILTERS`).
_OGM = dict(alpha=0.8, start_epoch=0, end_epoch=50, kernel_filter="conv")

METHODS: dict[str, dict[str, Any]] = {
    "joint": dict(),
    "joint_star": dict(),
    "redreg": dict(_REDREG),
    "redreg_star": dict(_REDREG),
    # Without the monitor nothing reads the twin-noise score: skip the twin pass.
    "redreg_no_monitor": dict(_REDREG, use_monitor=False, twins="none"),
    "redreg_no_gate": dict(_REDREG, use_gate=False),
    # The official code's extras (SPEC §2): modality dropout, confidence-gap beta,
    # per-epoch window reset, gamma 0.6.
    "redreg_official": dict(_REDREG, gamma=0.6, beta_schedule="confidence_gap",
                            reset_window_each_epoch=True, modality_dropout=True),
    "inforeg": dict(_INFOREG),
    "inforeg_star": dict(_INFOREG),
    # Official InfoReg code: audio trace only, 10-epoch moving averages, K = 0.05 (SPEC §3).
    "inforeg_official": dict(_INFOREG, threshold_k=0.05, moving_average=10,
                             trace_modalities=("audio",), warmup_epochs=0),
    "ogm": dict(_OGM),
    "ogm_ge": dict(_OGM),
    "mmpareto": dict(gamma=1.5),
}


def _all_kernels(path, leaf) -> bool:
  """Every weight tensor: leaves named 'kernel' with >= 2 dims (Dense, attention, conv)."""
  return bool(path) and getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2


# OGM-GE modulates convolution kernels (SPEC §4); Transformer encoders (CMU-MOSI) have
# none, so 'all_kernels' extends it to their Dense and attention kernels.
OGM_KERNEL_FILTERS = {"conv": None, "all_kernels": _all_kernels}  # None: ogm's default.

STAR_METHODS = {"joint_star", "redreg_star", "inforeg_star", "mmpareto"}


@dataclasses.dataclass(frozen=True)
class Method:
  """What the train step needs to know about a method."""
  name: str
  unimodal_heads: bool            # "*" variants: one unimodal CE per modality
  balancer: Callable[..., optax.GradientTransformationExtraArgs] | None
  twins: str = "none"             # redundancy twins: 'none' | 'dominant' | 'all'
  sigma: float = 0.03             # twin noise std (RedReg Eq.17)
  branch_bias: str = "full"       # 'split' for OGM/InfoReg (SPEC §1)
  aux_grads: bool = False         # separate multimodal / unimodal grads (MMPareto)
  modality_dropout: bool = False  # official RedReg code's input dropout schedule
  equal_features: bool = False    # needs one pooled feature size (RedReg Eq.22-23)


def method_config(name: str) -> ml_collections.ConfigDict:
  """Default `config.optim` for a method (SGD settings plus its hyper-parameters)."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; valid: {sorted(METHODS)}")
  return ml_collections.ConfigDict(dict(OPTIM_DEFAULTS, **METHODS[name]))


def _pick(optim, keys):
  return {k: optim[k] for k in keys}


def build_method(name: str, optim: Mapping[str, Any], *, modalities, param_labels,
                 num_epochs: int) -> Method:
  """Resolves a method name and its `config.optim` into a `Method`."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; valid: {sorted(METHODS)}")
  star = name in STAR_METHODS
  if name in ("joint", "joint_star"):
    return Method(name, star, None)
  if name.startswith("redreg"):
    from redreg_jax import redreg  # pylint: disable=g-import-not-at-top
    keys = [k for k in _REDREG if k not in ("sigma", "twins", "modality_dropout")]
    hp = _pick(optim, keys)
    # 'dominant': the score the update needs; 'all': every modality's, for logging;
    # 'none': no twin pass, valid only without the monitor (its only reader, Eq.21/25).
    if optim["twins"] not in ("dominant", "all", "none"):
      raise ValueError("config.optim.twins must be 'dominant', 'all' or 'none', got "
                       f"{optim['twins']!r}")
    if optim["twins"] == "none" and optim["use_monitor"]:
      raise ValueError("config.optim.twins='none' leaves the redundant-phase monitor "
                       "without its score; set optim.use_monitor=False or twins='dominant'.")
    fn = lambda: redreg.redreg_transform(modalities, param_labels, num_epochs=num_epochs, **hp)
    return Method(name, star, fn, twins=optim["twins"], sigma=float(optim["sigma"]),
                  modality_dropout=bool(optim["modality_dropout"]), equal_features=True)
  if name.startswith("inforeg"):
    from redreg_jax import inforeg  # pylint: disable=g-import-not-at-top
    hp = _pick(optim, _INFOREG)
    hp["trace_modalities"] = tuple(hp["trace_modalities"]) or None
    fn = lambda: inforeg.inforeg_transform(modalities, param_labels, **hp)
    return Method(name, star, fn, branch_bias="split")
  if name in ("ogm", "ogm_ge"):
    from redreg_jax import ogm  # pylint: disable=g-import-not-at-top
    hp = _pick(optim, _OGM)
    choice = hp.pop("kernel_filter")
    if choice not in OGM_KERNEL_FILTERS:
      raise ValueError(f"config.optim.kernel_filter must be one of {sorted(OGM_KERNEL_FILTERS)} "
                       f"('all_kernels' for Transformer encoders), got {choice!r}")
    fn = lambda: ogm.ogm_ge_transform(modalities, param_labels,
                                      gaussian_noise=(name == "ogm_ge"),
                                      kernel_filter=OGM_KERNEL_FILTERS[choice], **hp)
    return Method(name, star, fn, branch_bias="split")
  if name == "mmpareto":
    from redreg_jax import mmpareto  # pylint: disable=g-import-not-at-top
    fn = lambda: mmpareto.mmpareto_transform(modalities, param_labels, gamma=optim["gamma"])
    return Method(name, star, fn, aux_grads=True)
  raise AssertionError(name)


def learning_rate_schedule(optim, steps_per_epoch: int) -> optax.Schedule:
  """Step decay: lr x factor at each epoch in `lr_decay_epochs`."""
  boundaries = {int(e) * steps_per_epoch: float(optim.lr_decay_factor)
                for e in optim.lr_decay_epochs if int(e) > 0}
  return optax.piecewise_constant_schedule(float(optim.lr), boundaries)


def build_optimizer(method: Method, optim, steps_per_epoch: int):
  """balancer -> add_decayed_weights -> sgd(momentum) (SPEC §2: decay after RedReg)."""
  parts = [method.balancer()] if method.balancer is not None else []
  parts += [optax.add_decayed_weights(float(optim.weight_decay)),
            optax.sgd(learning_rate_schedule(optim, steps_per_epoch),
                      momentum=float(optim.momentum))]
  return optax.chain(*parts)
