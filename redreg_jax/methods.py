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

# Shared SGD settings (RedReg paper IV-B; docs/methods.md) and two data/model choices
# every method can take from the authors' released code.
OPTIM_DEFAULTS = dict(lr=0.002, momentum=0.9, weight_decay=1e-4,
                      lr_decay_epochs=(40,), lr_decay_factor=0.1,
                      linear_init="xavier_uniform", keep_partial_batch=False)

# Per-method hyper-parameters, all overridable as --config.optim.<name>=value.
_REDREG = dict(window=10, threshold=0.15, beta=0.9, gamma=0.5, tau_min=0.2, tau_max=0.5,
               eps=1e-12, warmup_epochs=2, redundancy_norm="ema", ema_momentum=0.9,
               projection="per_tensor", beta_schedule="constant",
               reset_window_each_epoch=False, growth_before_full="closed",
               ema_init="value", ema_reset_each_epoch=False, coinfo_compare="ge",
               anchor="epoch", anchor_ema_decay=0.99,
               use_monitor=True,
               use_gate=True, sigma=0.03, twins="dominant", twins_on="clean",
               modality_dropout=False, dropped_encoder="frozen")
_INFOREG = dict(beta=0.9, threshold_k=0.04, moving_average=1, trace_modalities=(),
                warmup_epochs=2, trace_form="paper", score_form="mean", alpha_form="paper",
                alpha_scales=(), unimodal_loss="none")
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
    # The authors' released code (xia-zhe/RedReg main_RedReg.py; docs/reproducing.md):
    # every switch below in its released form. A "*" method: the released script
    # always trains the two unimodal heads. One departure, `dropped_encoder='frozen'`:
    # the released form ('trained') back-propagates through a zeroed input batch,
    # whose train-mode BatchNorm has ~zero variance, and diverges (docs/reproducing.md).
    "redreg_official": dict(_REDREG, gamma=0.6, beta_schedule="confidence_gap",
                            warmup_epochs=0, growth_before_full="one",
                            reset_window_each_epoch=True, ema_init="zero",
                            ema_reset_each_epoch=True, twins="all", twins_on="clean",
                            coinfo_compare="gt", modality_dropout=True,
                            dropped_encoder="frozen", linear_init="xavier_normal",
                            keep_partial_batch=True),
    "inforeg": dict(_INFOREG),
    "inforeg_star": dict(_INFOREG),
    # The released InfoReg (GeWu-Lab/InfoReg_CVPR2025 main.py; docs/reproducing.md):
    # audio trace, 10-epoch moving averages, K = 0.05, open from epoch 0, its trace,
    # scores and alpha forms, and its shared-head unimodal cross-entropies.
    "inforeg_official": dict(_INFOREG, threshold_k=0.05, moving_average=10,
                             trace_modalities=("audio",), warmup_epochs=0,
                             trace_form="released", score_form="sum", alpha_form="released",
                             alpha_scales=(0.95, 0.1), unimodal_loss="shared_head"),
    "ogm": dict(_OGM),
    "ogm_ge": dict(_OGM),
    "mmpareto": dict(gamma=1.5),
}


def _all_kernels(path, leaf) -> bool:
  """Every weight tensor: leaves named 'kernel' with >= 2 dims (Dense, attention, conv)."""
  return bool(path) and getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2


# OGM-GE modulates convolution kernels (docs/methods.md §OGM-GE); Transformer encoders (CMU-MOSI) have
# none, so 'all_kernels' extends it to their Dense and attention kernels.
OGM_KERNEL_FILTERS = {"conv": None, "all_kernels": _all_kernels}  # None: ogm's default.

STAR_METHODS = {"joint_star", "redreg_star", "redreg_official", "inforeg_star", "mmpareto"}

# One line per config.optim field: what it does and where its value comes from
# (`python launch.py --help_optim` prints them; docs/methods.md has the equations).
OPTIM_DOCS = {
    "lr": "SGD learning rate (RedReg paper IV-B: 0.002).",
    "momentum": "SGD momentum (0.9).",
    "weight_decay": "L2 weight decay, applied after the balancing transform (1e-4).",
    "lr_decay_epochs": "epochs at which the learning rate is multiplied by lr_decay_factor.",
    "lr_decay_factor": "step-decay factor of the learning rate (0.1).",
    "linear_init": "init of linear layers: 'xavier_uniform' or 'xavier_normal' (released code).",
    "keep_partial_batch": "train on the last partial batch of each epoch (released code) "
                          "instead of dropping it.",
    "window": "RedReg L: steps in each mean of the growth rate (Eq.15).",
    "threshold": "RedReg R: the monitor opens the gate when r > R (Eq.25).",
    "beta": "RedReg beta of Eq.30 / InfoReg beta of Eq.16.",
    "gamma": "RedReg gamma of Eq.21 (paper 0.5, released code 0.6).",
    "tau_min": "RedReg co-information threshold at epoch 0 (Eq.24).",
    "tau_max": "RedReg co-information threshold at the last epoch (Eq.24).",
    "eps": "RedReg epsilon of Eq.16, 20 and 28.",
    "warmup_epochs": "plain updates while epoch < warmup_epochs (Algorithm 1: 2; released: 0).",
    "redundancy_norm": "'ema' (red / EMA(red), released code) or 'none' (the paper's raw Eq.20).",
    "ema_momentum": "momentum of the redundancy EMA (0.9).",
    "projection": "'per_tensor' (released code) or 'global' projection of Eq.28-29.",
    "beta_schedule": "'constant' beta (paper) or 'confidence_gap' exp(beta tanh(p_dom - p_weak)) "
                     "(released code).",
    "reset_window_each_epoch": "empty the p_m window at each new epoch (released code).",
    "growth_before_full": "'closed' (S = 0, gate shut until the window is full; paper) or "
                          "'one' (S = 1.0, window never gates; released code).",
    "ema_init": "'value' (EMA starts at the first score) or 'zero' (first normalised score "
                "1/(1-momentum) = 10; released code).",
    "ema_reset_each_epoch": "restart the redundancy EMA at every epoch (released code).",
    "coinfo_compare": "'ge' (sim >= tau, Eq.25) or 'gt' (sim > tau, released code).",
    "anchor": "'epoch' (params at each epoch start, released code) or 'ema' anchor of Eq.27.",
    "anchor_ema_decay": "decay of the 'ema' anchor.",
    "use_monitor": "False drops the redundant-phase factor [r > R] (Tables III/IV ablation).",
    "use_gate": "False drops the co-information factor [sim >= tau] (Tables III/IV ablation).",
    "sigma": "std of the twin-input noise of Eq.17 (0.03).",
    "twins": "which redundancy scores to compute: 'dominant' (what the update needs), 'all' "
             "(every modality each step, released code) or 'none' (only without the monitor).",
    "twins_on": "twin passes on the 'clean' inputs (released code) or the 'dropped' ones "
                "(after modality dropout).",
    "modality_dropout": "zero one modality's whole batch with probability 0.6 -> 0.1 over the "
                        "first int(0.3 E) epochs, then 0.1 (released code).",
    "dropped_encoder": "a dropped modality's encoder: 'frozen' (no gradient, no BatchNorm "
                       "update from that batch) or 'trained' (released code; diverges).",
    "threshold_k": "InfoReg K of Eq.11 (paper 0.04, released code 0.05).",
    "moving_average": "InfoReg epochs averaged on each side of Eq.11 (paper 1, released 10).",
    "trace_modalities": "InfoReg: () each modality's own window, or the modalities whose summed "
                        "trace opens one window for all (released code: audio).",
    "trace_form": "InfoReg trace: 'paper' (mean ||g||^2, Eq.7/13) or 'released' (kernel means "
                  "of g^2 summed over steps, after regulation).",
    "score_form": "InfoReg s_m: batch 'mean' (paper scale) or 'sum' (released code) of p(y).",
    "alpha_form": "InfoReg alpha: 'paper' exp(beta tanh(Delta)) (Eq.16) or 'released' "
                  "alpha_scales[m] exp(tanh(Delta)).",
    "alpha_scales": "InfoReg per-modality scales of the released alpha (0.95, 0.1).",
    "unimodal_loss": "InfoReg extra loss: 'none' (paper) or 'shared_head', CE(W_m z_m + b/M) "
                     "per modality through the fused head (released code).",
    "alpha": "OGM-GE alpha of the modulation coefficient (0.8 for CREMA-D).",
    "start_epoch": "OGM-GE first modulated epoch.",
    "end_epoch": "OGM-GE last modulated epoch.",
    "kernel_filter": "OGM-GE: which kernels are modulated, 'conv' or 'all_kernels'.",
}


@dataclasses.dataclass(frozen=True)
class Method:
  """What the train step needs to know about a method."""
  name: str
  unimodal_heads: bool            # "*" variants: one unimodal CE per modality
  balancer: Callable[..., optax.GradientTransformationExtraArgs] | None
  twins: str = "none"             # redundancy twins: 'none' | 'dominant' | 'all'
  sigma: float = 0.03             # twin noise std (RedReg Eq.17)
  branch_bias: str = "full"       # 'split' for OGM/InfoReg (docs/methods.md, branch logits)
  aux_grads: bool = False         # separate multimodal / unimodal grads (MMPareto)
  modality_dropout: bool = False  # released RedReg code's input dropout schedule
  equal_features: bool = False    # needs one pooled feature size (RedReg Eq.22-23)
  twins_on: str = "clean"         # twin inputs before ('clean') or after modality dropout
  dropped_encoder: str = "frozen"  # 'frozen' | 'trained' encoder of a dropped modality
  branch_losses: bool = False     # CE of each branch's logits (released InfoReg)


def method_config(name: str) -> ml_collections.ConfigDict:
  """Default `config.optim` for a method (SGD settings plus its hyper-parameters)."""
  if name not in METHODS:
    raise ValueError(f"Unknown method {name!r}; valid: {sorted(METHODS)}")
  return ml_collections.ConfigDict(dict(OPTIM_DEFAULTS, **METHODS[name]))


def _check_choice(field: str, value, allowed) -> None:
  if value not in allowed:
    raise ValueError(f"config.optim.{field} must be one of {tuple(allowed)}, got {value!r}.")


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
    keys = [k for k in _REDREG if k not in ("sigma", "twins", "twins_on", "modality_dropout",
                                            "dropped_encoder")]
    hp = _pick(optim, keys)
    # 'dominant': the score the update needs; 'all': every modality's, for logging;
    # 'none': no twin pass, valid only without the monitor (its only reader, Eq.21/25).
    if optim["twins"] not in ("dominant", "all", "none"):
      raise ValueError("config.optim.twins must be 'dominant', 'all' or 'none', got "
                       f"{optim['twins']!r}")
    if optim["twins"] == "none" and optim["use_monitor"]:
      raise ValueError("config.optim.twins='none' leaves the redundant-phase monitor "
                       "without its score; set optim.use_monitor=False or twins='dominant'.")
    _check_choice("twins_on", optim["twins_on"], ("clean", "dropped"))
    _check_choice("dropped_encoder", optim["dropped_encoder"], ("frozen", "trained"))
    fn = lambda: redreg.redreg_transform(modalities, param_labels, num_epochs=num_epochs, **hp)
    return Method(name, star, fn, twins=optim["twins"], sigma=float(optim["sigma"]),
                  modality_dropout=bool(optim["modality_dropout"]), equal_features=True,
                  twins_on=optim["twins_on"], dropped_encoder=optim["dropped_encoder"])
  if name.startswith("inforeg"):
    from redreg_jax import inforeg  # pylint: disable=g-import-not-at-top
    hp = _pick(optim, [k for k in _INFOREG if k != "unimodal_loss"])
    hp["trace_modalities"] = tuple(hp["trace_modalities"]) or None
    hp["alpha_scales"] = tuple(hp["alpha_scales"])
    _check_choice("unimodal_loss", optim["unimodal_loss"], ("none", "shared_head"))
    if optim["unimodal_loss"] == "shared_head" and star:
      raise ValueError(f"{name} trains unimodal heads already; unimodal_loss='shared_head' "
                       "would add a second unimodal loss. Use inforeg_official or 'none'.")
    inforeg.inforeg_transform(modalities, param_labels, **hp)  # Bad values fail here.
    fn = lambda: inforeg.inforeg_transform(modalities, param_labels, **hp)
    return Method(name, star, fn, branch_bias="split",
                  branch_losses=optim["unimodal_loss"] == "shared_head")
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
  """balancer -> add_decayed_weights -> sgd(momentum) (docs/methods.md §RedReg: decay after RedReg)."""
  parts = [method.balancer()] if method.balancer is not None else []
  parts += [optax.add_decayed_weights(float(optim.weight_decay)),
            optax.sgd(learning_rate_schedule(optim, steps_per_epoch),
                      momentum=float(optim.momentum))]
  return optax.chain(*parts)
