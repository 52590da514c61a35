"""G-Blending (docs/methods.md §G-Blending): the blended loss of Eq.7 with weights estimated
from each head's overfitting and generalisation (Algorithms 1-3).

The step trains K = M + 1 loss terms, one CE per unimodal head ('unimodal_<m>') and the
fused CE ('multimodal'), each times its TrainState.loss_weights entry (Eq.7). An epoch-start
hook re-estimates the weights at each super-epoch start N (Algorithm 3; Algorithm 2 for
`gblending_offline`): for each head it trains a copy of the state on that head's loss alone
with the run's own jitted step and batches, measures the head's loss on T' (a training
subset) and V (held out) before and after, and sets w = gblend_weights(...) (Eq.3, 6).
Equation and algorithm numbers are the G-Blending paper's (Wang et al., CVPR 2020).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from redreg_jax import gblending as gblending_lib
from redreg_jax import input_pipeline
from redreg_jax import logger as log_lib
from redreg_jax.methods.spec import (MULTIMODAL_CE, EpochContext, EpochHook, EpochUpdate,
                                     LossTerm, Method, MethodSpec, Setup, cross_entropy, fields,
                                     register)

DEFAULTS, DOCS = fields(
    super_epoch=(5, "G-Blending n: epochs per super-epoch after the first (paper §3.3, "
                    "Kinetics: 5)."),
    first_super_epoch=(10, "G-Blending: epochs of the first (warm-up) super-epoch (paper "
                           "§3.3: 10)."),
    online=(True, "G-Blending: re-estimate at each super-epoch start (Algorithm 3); False: "
                  "once at epoch 0 for the whole run (Algorithm 2)."),
    negative=("keep", "G-Blending: a head whose held-out loss grew (dG < 0) in Eq.6: 'keep' "
                      "the signed weight (paper), 'clip' dG at 0, 'abs' |dG / dO^2| "
                      "(BalanceBenchmark)."),
    measure=("loss", "G-Blending: O and G of Eq.3 from the mean 'loss' or the 'accuracy' "
                     "(paper §2.4: equally effective)."),
    heldout=("validation", "G-Blending V: 'validation' (the split that also selects the "
                           "checkpoint) or 'train' (a seeded heldout_fraction of the "
                           "training split, never trained on; paper §3.1)."),
    heldout_fraction=(0.08, "G-Blending: fraction of the training split held out as V when "
                            "heldout='train' (paper §3.1: 8% Kinetics, 13% mini-AudioSet)."),
    train_subset_fraction=(0.1, "G-Blending T': seeded fraction of the training split whose "
                                "loss is measured (paper §2.4: a subset; size not given)."),
    estimate_epochs=(0, "G-Blending: at most this many epochs of training per head's copy "
                        "(0: the whole super-epoch, Algorithm 1's n)."),
    estimate_steps=(0, "G-Blending: at most this many steps per copy epoch (0: the whole "
                       "epoch); bounds the estimate's cost."),
)

NEGATIVE = gblending_lib.NEGATIVE_FORMS
MEASURES = ("loss", "accuracy")
HELDOUT = ("validation", "train")
MULTIMODAL = MULTIMODAL_CE.name  # The fused head's loss term, last of Eq.7's K.


def _train():
  """The train module (it imports this registry, so not at import time)."""
  from redreg_jax import train  # pylint: disable=g-import-not-at-top
  return train


def _unimodal_ce(m):
  return lambda out, step: cross_entropy(out["unimodal_logits"][m], step.labels)


def head_names(modalities) -> tuple[str, ...]:
  """The K loss terms in Eq.7's order: the unimodal heads, then the multimodal one."""
  return tuple(f"unimodal_{m}" for m in modalities) + (MULTIMODAL,)


class Options(NamedTuple):
  """What the estimate hook needs, resolved once at build."""

  modalities: tuple[str, ...]
  schedule: tuple[tuple[int, int], ...]  # (super-epoch start N, copy epochs n), increasing N.
  negative: str
  accuracy: bool  # measure == 'accuracy' (higher is better).
  heldout_split: str  # 'validation' or input_pipeline.HELD_OUT.
  train_subset_fraction: float
  estimate_steps: int  # 0: whole epochs.


@dataclasses.dataclass(frozen=True)
class GBlendingMethod(Method):
  """G-Blending's one run-time need beyond the hook: the held-out V carved from train."""

  heldout_fraction: float = 0.0  # > 0 only with heldout='train'.

  def held_out(self, num_train: int, seed: int):
    if self.heldout_fraction <= 0.0:
      return None
    return input_pipeline.seeded_subset(num_train, self.heldout_fraction, seed)


# ---------------------------------------------------------------------------------------
# The estimate (Algorithm 1), run on the host at a super-epoch start.
# ---------------------------------------------------------------------------------------

def _copy(state, sharding):
  """A state with fresh buffers: the jitted step donates (deletes) its input's."""
  return jax.device_put(jax.tree.map(jnp.copy, state), sharding)


def head_scores(exp, state, split: str, indices, modalities, accuracy: bool) -> np.ndarray:
  """[K] each head's mean CE (or accuracy) on a split or its subset, inference mode."""
  out = exp.outputs(state, split, indices)
  # With unimodal heads the model's branch logits are the unimodal heads' logits.
  logits = [out["branch_logits"][m] for m in modalities] + [out["logits"]]
  labels = out["label"]
  if accuracy:
    return np.array([np.mean(np.argmax(l, -1) == labels) for l in logits], np.float64)
  return np.array([float(cross_entropy(jnp.asarray(l), jnp.asarray(labels))) for l in logits],
                  np.float64)


def _current_weights(state, heads) -> dict[str, float]:
  weights = jax.device_get(state.loss_weights)
  return {f"w_{h}": float(weights[h]) for h in heads}


def estimate(opts: Options, ctx: EpochContext) -> EpochUpdate:
  """Algorithm 1 at a super-epoch start; elsewhere only logs the (unchanged) weights.

  Returns the state with new loss_weights (nothing else changed) and the epoch metrics
  w_<head>, gblend_seconds, gblend_steps and the measured gblend_{train,val}_{before,
  after}_<head> the weights were computed from.
  """
  heads = head_names(opts.modalities)
  copy_epochs = dict(opts.schedule).get(ctx.epoch)
  if copy_epochs is None:  # Inside a super-epoch the weights stay fixed (Algorithm 3).
    return EpochUpdate(metrics=_current_weights(ctx.state, heads))
  t0 = time.time()
  exp = ctx.experiment
  seed = int(exp.config.seed)
  train_idx = input_pipeline.seeded_subset(len(exp.dataset.sources["train"]),
                                           opts.train_subset_fraction, seed)
  score = functools.partial(head_scores, exp, modalities=opts.modalities,
                            accuracy=opts.accuracy)
  measure = lambda state: (score(state, "train", train_idx),
                           score(state, opts.heldout_split, None))
  # Checkpoint N is the same for every head: one pass gives all K "before" values.
  train_before, val_before = measure(ctx.state)
  train_after, val_after = np.zeros_like(train_before), np.zeros_like(val_before)
  steps = 0
  limit = opts.estimate_steps or None
  for i, head in enumerate(heads):
    # Network i alone from phi_N (Algorithm 1): the same step with one-hot loss weights,
    # so nothing is traced again; only head i's loss moves its parameters.
    copy = _copy(ctx.state, exp.repl)
    copy = copy.replace(loss_weights=jax.device_put(
        {h: jnp.float32(h == head) for h in heads}, exp.repl))
    for epoch in range(ctx.epoch, ctx.epoch + copy_epochs):
      for batch in exp.train_batches(epoch, num_batches=limit):
        copy, _ = exp.train_step(copy, batch)
        steps += 1
    t_after, v_after = measure(copy)
    train_after[i], val_after[i] = t_after[i], v_after[i]
    del copy
  measured = np.stack([train_before, train_after, val_before, val_after])
  if not np.all(np.isfinite(measured)):
    raise _train().NonFiniteError(
        f"G-Blending's estimate at epoch {ctx.epoch} measured non-finite values "
        f"(train before/after, val before/after per head {heads}: {measured.tolist()}). "
        "A head's copy diverged: lower config.optim.lr or bound the estimate "
        "(optim.estimate_epochs / optim.estimate_steps).")
  weights = np.asarray(gblending_lib.gblend_weights(  # Eq.3 and 6.
      train_before, train_after, val_before, val_after, higher_is_better=opts.accuracy,
      negative=opts.negative), np.float64)
  state = ctx.state.replace(loss_weights={h: jnp.float32(w) for h, w in zip(heads, weights)})
  seconds = time.time() - t0
  log_lib.info(f"G-Blending at epoch {ctx.epoch} ({copy_epochs} epoch(s) x {len(heads)} "
               f"copies, {steps} steps, {seconds:.1f}s): " +
               " ".join(f"{h} {w:.4f}" for h, w in zip(heads, weights)))
  metrics = {f"w_{h}": float(w) for h, w in zip(heads, weights)}
  metrics.update(gblend_seconds=seconds, gblend_steps=float(steps))
  for name, values in zip(("train_before", "train_after", "val_before", "val_after"),
                          measured):
    metrics.update({f"gblend_{name}_{h}": float(v) for h, v in zip(heads, values)})
  return EpochUpdate(state=state, metrics=metrics)


# ---------------------------------------------------------------------------------------
# Build: validate once, resolve the schedule.
# ---------------------------------------------------------------------------------------

def _int(optim, field: str, low: int) -> int:
  value = optim[field]
  if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
    raise ValueError(f"config.optim.{field} must be an int >= {low}, got {value!r}.")
  return int(value)


def _fraction(optim, field: str, high: float, closed: bool) -> float:
  value = optim[field]
  ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and 0.0 < value and (
      value <= high if closed else value < high)
  if not ok:
    raise ValueError(f"config.optim.{field} must be a number in (0, {high}{']' if closed else ')'}"
                     f", got {value!r}.")
  return float(value)


def _choice(optim, field: str, allowed) -> str:
  if optim[field] not in allowed:
    raise ValueError(f"config.optim.{field} must be one of {tuple(allowed)}, got "
                     f"{optim[field]!r}.")
  return optim[field]


def schedule(num_epochs: int, *, super_epoch: int, first_super_epoch: int, online: bool,
             estimate_epochs: int = 0) -> tuple[tuple[int, int], ...]:
  """((N, n), ...): each super-epoch start and its copies' epochs (Algorithms 2-3).

  A copy trains for the super-epoch it predicts (Algorithm 3: the weights estimated at N
  are used from N to the next start), at most `estimate_epochs` (> 0) of it.
  """
  starts = gblending_lib.super_epoch_starts(num_epochs, super_epoch=super_epoch,
                                            first_super_epoch=first_super_epoch, online=online)
  ends = starts[1:] + (num_epochs,)
  return tuple((n0, min(n1 - n0, estimate_epochs) if estimate_epochs else n1 - n0)
               for n0, n1 in zip(starts, ends))


def build(setup: Setup) -> GBlendingMethod:
  """Checks every field (naming it), then binds the estimate hook to its schedule."""
  optim = setup.optim
  online = optim["online"]
  if not isinstance(online, bool):
    raise ValueError(f"config.optim.online must be True or False, got {online!r}.")
  heldout = _choice(optim, "heldout", HELDOUT)
  heldout_fraction = _fraction(optim, "heldout_fraction", 0.5, closed=False)
  plan = schedule(setup.num_epochs, super_epoch=_int(optim, "super_epoch", 1),
                  first_super_epoch=_int(optim, "first_super_epoch", 1), online=online,
                  estimate_epochs=_int(optim, "estimate_epochs", 0))
  opts = Options(
      modalities=setup.modalities, schedule=plan,
      negative=_choice(optim, "negative", NEGATIVE),
      accuracy=_choice(optim, "measure", MEASURES) == "accuracy",
      heldout_split="validation" if heldout == "validation" else input_pipeline.HELD_OUT,
      train_subset_fraction=_fraction(optim, "train_subset_fraction", 1.0, closed=True),
      estimate_steps=_int(optim, "estimate_steps", 0))
  # Weight 1 until the first estimate (epoch 0's hook): the loss of joint_star.
  losses = tuple(LossTerm(f"unimodal_{m}", _unimodal_ce(m), unimodal_heads=True)
                 for m in setup.modalities) + (MULTIMODAL_CE,)
  return GBlendingMethod(setup.name, losses=losses,
                         epoch_hooks=(EpochHook("start", functools.partial(estimate, opts)),),
                         heldout_fraction=heldout_fraction if heldout == "train" else 0.0)


register(MethodSpec("gblending", "blended unimodal + multimodal losses, weights from each "
                    "head's overfitting-to-generalisation (online)", build, defaults=DEFAULTS,
                    docs=DOCS, unimodal_heads=True))
# Algorithm 2: one estimate at epoch 0, each copy trained for the whole run.
register(MethodSpec("gblending_offline", "G-Blending with one weight estimate at epoch 0",
                    build, defaults=dict(DEFAULTS, online=False), docs=DOCS,
                    unimodal_heads=True))
