"""Greedy (docs/methods.md §Greedy): conditional learning speeds and re-balancing steps.

Wu, Jastrzebski, Cho & Geras, ICML 2022. The model is its own: the intermediate fusion
`models.BypassFusion` (config.model.fusion='greedy_bypass', set by config_lib for this
method), two branches whose excitations carry the other modality in. The update is
`redreg_jax.greedy.greedy_transform`, chained first on the raw gradient of the sum of
both branches' cross-entropies: it never changes the updates, it tracks the speeds
s(m1 | m0), s(m0 | m1) and schedules the windows of re-balancing steps. Those act on
the forward pass: before each step `apply_kwargs` reads the transform's
`rebalancing` / `caring` from the optimizer state and passes `cut` = caring to the
fusion, which replaces that branch's excitation by its running mean (batch_stats).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers

import jax.numpy as jnp
import optax

from redreg_jax import greedy as greedy_lib
from redreg_jax.methods.spec import BRANCH_CE, Method, MethodSpec, Setup, Step, fields, register

FUSION = "greedy_bypass"  # models.FUSIONS: the two-branch MMTM-style model.

# The released code's Bias_Mitigation_Strong settings (configs/training_guided.gin).
DEFAULTS, DOCS = fields(
    alpha=(0.01, "Greedy threshold on |d_speed|, the log10 conditional learning speeds "
                 "(released epsilon 0.01)."),
    window=(5, "Greedy Q: re-balancing steps per window (released curation_windowsize 5)."),
    start_epoch=(1, "Greedy first 0-based epoch that may re-balance (released "
                    "starting_epoch 2 of 1-based epochs)."),
)


def _greedy_field(opt_state, name: str):
  """GreedyState.<name> in the optimizer state (its diagnostics dict repeats some names)."""
  own = lambda path, _: (isinstance(path[-1], optax.tree_utils.NamedTupleKey)
                         and path[-1].tuple_name == greedy_lib.GreedyState.__name__)
  return optax.tree_utils.tree_get(opt_state, name, filtering=own)


@dataclasses.dataclass(frozen=True)
class GreedyMethod(Method):
  """Re-balancing steps cut the other modality out of branch `caring` (its forward pass)."""

  start_epoch: int = 1

  def apply_kwargs(self, step: Step) -> dict:
    # The transform's state after the previous step says whether this one re-balances;
    # `cut` is traced, so regular and re-balancing steps share one compiled step.
    rebalancing = _greedy_field(step.opt_state, "rebalancing")
    caring = _greedy_field(step.opt_state, "caring")
    active = rebalancing & (step.epoch >= self.start_epoch)  # As the transform's unlock.
    return {"fusion_kwargs": {"cut": jnp.where(active, caring, -1).astype(jnp.int32)}}


def _check(optim) -> dict:
  """config.optim's Greedy fields, validated once (the error names the field)."""
  alpha = optim["alpha"]
  if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not (
      0 < alpha < float("inf")):
    raise ValueError(f"config.optim.alpha must be a finite number > 0 (released: 0.01); "
                     f"got {alpha!r}.")
  for name, low, released in (("window", 1, 5), ("start_epoch", 0, 1)):
    value = optim[name]
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
      raise ValueError(f"config.optim.{name} must be an int >= {low} (released: {released}); "
                       f"got {value!r}.")
  return {"alpha": float(alpha), "window": int(optim["window"]),
          "start_epoch": int(optim["start_epoch"])}


def build(setup: Setup) -> GreedyMethod:
  """Two modalities, valid hyper-parameters; loss = sum of the branches' CE (released)."""
  setup.require_modalities(2)
  hp = _check(setup.optim)
  transform = functools.partial(greedy_lib.greedy_transform, setup.modalities,
                                setup.param_labels, **hp)
  return GreedyMethod(setup.name, losses=(BRANCH_CE,), transform=transform,
                      start_epoch=hp["start_epoch"])


register(MethodSpec("greedy", "conditional learning speeds; windows of re-balancing steps "
                    "cut the other modality out of one branch", build, defaults=DEFAULTS,
                    docs=DOCS, fusion=FUSION))
