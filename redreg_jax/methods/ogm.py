"""OGM and OGM-GE (docs/methods.md §OGM-GE).

The update is `redreg_jax.ogm.ogm_ge_transform`: the kernel gradients of the encoder
whose branch is ahead are scaled down by 1 - tanh(alpha * ratio) (+ Gaussian noise for
GE). Branch logits share the fused head's bias (docs/methods.md §Setting).
"""

from __future__ import annotations

import functools

from redreg_jax import config_checks as cc
from redreg_jax import ogm as ogm_lib
from redreg_jax.methods.spec import MULTIMODAL_CE, Method, MethodSpec, Setup, fields, register

DEFAULTS, DOCS = fields(
    alpha=(0.8, "OGM-GE alpha of the modulation coefficient (0.8 for CREMA-D)."),
    start_epoch=(0, "OGM-GE first modulated epoch."),
    end_epoch=(50, "OGM-GE last modulated epoch."),
    kernel_filter=("conv", "OGM-GE: which kernels are modulated, 'conv' or 'all_kernels'."),
)


def _all_kernels(path, leaf) -> bool:
  """Every weight tensor: leaves named 'kernel' with >= 2 dims (Dense, attention, conv)."""
  return bool(path) and getattr(path[-1], "key", None) == "kernel" and leaf.ndim >= 2


# OGM-GE modulates convolution kernels (docs/methods.md §OGM-GE); Transformer encoders
# (CMU-MOSI) have none, so 'all_kernels' extends it to their Dense and attention kernels.
KERNEL_FILTERS = {"conv": None, "all_kernels": _all_kernels}  # None: ogm's default.


def build(setup: Setup, *, gaussian_noise: bool) -> Method:
  """Resolves the kernel filter; OGM-GE adds the Gaussian noise, plain OGM does not."""
  hp = {k: setup.optim[k] for k in DEFAULTS}
  choice = hp.pop("kernel_filter")
  if choice not in KERNEL_FILTERS:
    raise ValueError(f"config.optim.kernel_filter must be one of {sorted(KERNEL_FILTERS)} "
                     f"('all_kernels' for Transformer encoders), got {choice!r}")
  transform = functools.partial(ogm_lib.ogm_ge_transform, setup.modalities,
                                setup.param_labels, gaussian_noise=gaussian_noise,
                                kernel_filter=KERNEL_FILTERS[choice], **hp)
  return Method(setup.name, losses=(MULTIMODAL_CE,), transform=transform, branch_bias="split")


RANGES = dict(alpha=cc.NON_NEGATIVE, start_epoch=cc.INDEX, end_epoch=cc.INDEX)

register(MethodSpec("ogm", "on-the-fly gradient modulation",
                    functools.partial(build, gaussian_noise=False), defaults=DEFAULTS,
                    docs=DOCS, ranges=RANGES))
register(MethodSpec("ogm_ge", "on-the-fly gradient modulation + Gaussian noise",
                    functools.partial(build, gaussian_noise=True), defaults=DEFAULTS,
                    docs=DOCS, ranges=RANGES))
