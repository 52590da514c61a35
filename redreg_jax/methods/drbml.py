"""DRBML, Diagnosing & Re-learning (docs/methods.md §DRBML): purity diagnosis, soft re-init.

No loss term and no gradient transformation: the multimodal cross-entropy and plain SGD.
All of the method is one epoch-end hook. After every epoch t with t mod H == 0
(Algorithm 1) it takes the pooled inference-mode features of the training set D and of
the held-out validation split V, clusters each encoder's features with k-means (Eq.1-2),
scores the clusters' purity (Eq.3), and moves every encoder towards its initial weights
by alpha_k = tanh(lambda |P_D - P_V|) (Eq.4-6). The mathematics is `redreg_jax.drbml`.

theta_init is not stored: `Experiment.init_state()` recreates it bit for bit from
config.seed, so a resumed run re-initialises towards the same weights. BatchNorm
statistics and the optimiser state (SGD momentum) are left as they are, as in the
authors' code. The number of re-initialisations so far lives in
`TrainState.method_state['reinits']` (checkpointed), which the released code's cap reads.
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
import time
import zlib

import jax
import jax.numpy as jnp
import numpy as np

from redreg_jax import drbml as drbml_lib
from redreg_jax import input_pipeline
from redreg_jax import logger as log_lib
from redreg_jax.methods.spec import (MULTIMODAL_CE, EpochContext, EpochHook, EpochUpdate,
                                     Method, MethodSpec, Setup, fields, register)

_PAPER = drbml_lib.DRBML_PRESETS["drbml"]
_OFFICIAL = drbml_lib.DRBML_PRESETS["drbml_official"]

DEFAULTS, DOCS = fields(
    reinit_lambda=(_PAPER["lam"], "DRBML lambda of Eq.5, alpha = tanh(lambda gap); paper "
                                  "3 (CREMA-D), 7 (Kinetics-Sounds, UCF-101), 8 (CMU-MOSI); "
                                  "0 diagnoses without re-initialising."),
    reinit_every=(_PAPER["every"], "DRBML H: diagnose and re-initialise after each epoch t "
                                   "with t mod H == 0 (Algorithm 1; paper 20, CMU-MOSI 5)."),
    max_reinits=(_PAPER["max_reinits"], "DRBML cap on the number of re-initialisations "
                                        "(released code: 3); None: no cap (paper)."),
    skip_first_reinit=(_PAPER["skip_first"], "DRBML: skip t = 0 (released code) instead of "
                                             "Algorithm 1's diagnosis after epoch 0."),
    kmeans_scaling=(_PAPER["feature_scaling"], "DRBML features before k-means: 'none' "
                                               "(paper) or 'minmax' to [-1, 1] per dimension "
                                               "(released code)."),
    kmeans_init=(_PAPER["init"], "DRBML k-means initial centroids: 'random' samples (paper) "
                                 "or 'kmeans++' (released code)."),
    kmeans_restarts=(_PAPER["num_restarts"], "DRBML k-means restarts, the lowest inertia "
                                             "kept (paper 1; released scikit-learn 10)."),
    kmeans_max_iters=(300, "DRBML cap on the Lloyd iterations of Eq.1-2 (scikit-learn's "
                           "300)."),
    diagnosis_train_fraction=(1.0, "DRBML: share of the training set whose features are "
                                   "clustered, a fixed seeded subset (1.0: the whole set, "
                                   "as the paper)."),
)

# config.optim field -> keyword of `drbml_lib.drbml` (which validates it).
_LIB_KWARGS = {"reinit_lambda": "lam", "reinit_every": "every", "max_reinits": "max_reinits",
               "skip_first_reinit": "skip_first", "kmeans_scaling": "feature_scaling",
               "kmeans_init": "init", "kmeans_restarts": "num_restarts",
               "kmeans_max_iters": "max_iters"}
_OFFICIAL_OVERRIDES = {f: _OFFICIAL[k] for f, k in _LIB_KWARGS.items() if k in _OFFICIAL}

# Folded into the k-means key: no stream shared with the step keys (PRNGKey(seed + 1), step).
_KEY_TAG = zlib.crc32(b"drbml") & 0x7FFFFFFF


def diagnosis_key(seed: int, epoch: int) -> jax.Array:
  """The k-means PRNG key of the diagnosis after `epoch`: a function of (seed, epoch) only."""
  return jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), _KEY_TAG), epoch)


def is_due(spec: drbml_lib.DRBML, epoch: int, count: int) -> bool:
  """Whether to diagnose after `epoch`, `count` re-initialisations having been done.

  The schedule is Algorithm 1's t mod H == 0 (t = 0 skipped by the released code); the
  cap counts what was done (method_state), as the released code's `flag_reinit` does.
  """
  scheduled = dataclasses.replace(spec, max_reinits=None).should_reinit(epoch)
  return scheduled and (spec.max_reinits is None or count < spec.max_reinits)


def diagnose_and_reinit(ctx: EpochContext, *, spec: drbml_lib.DRBML,
                        train_fraction: float) -> EpochUpdate | None:
  """The epoch-end hook: purity gaps of every encoder (Eq.1-4), soft re-init (Eq.5-6)."""
  count = int(ctx.state.method_state["reinits"])
  if not is_due(spec, ctx.epoch, count):
    return None
  exp, t0 = ctx.experiment, time.time()
  seed, num_classes = int(exp.config.seed), int(exp.info.num_classes)
  indices = None
  if train_fraction < 1.0:  # One fixed subset per seed: comparable across diagnoses.
    indices = input_pipeline.seeded_subset(len(exp.dataset.sources["train"]), train_fraction,
                                           seed)
  d = exp.outputs(ctx.state, "train", indices)
  v = exp.outputs(ctx.state, "validation")
  larger = " or a larger config.optim.diagnosis_train_fraction"
  for split, out, fix in (("training", d, larger), ("validation", v, "")):
    if len(out["label"]) < num_classes:  # k-means needs one sample per cluster.
      raise ValueError(f"DRBML clusters {num_classes} classes but has {len(out['label'])} "
                       f"{split} examples; use a larger split{fix}.")
  t1 = time.time()
  alpha_M, diag = spec.diagnose(d["features"], d["label"], v["features"], v["label"],
                                num_classes, diagnosis_key(seed, ctx.epoch))
  alpha_M = np.asarray(jax.device_get(alpha_M), np.float32)
  params = ctx.state.params
  if np.any(alpha_M > 0):  # alpha = 0 everywhere (lambda = 0 or no gap): exactly theta.
    params = spec.reinit(params, exp.init_state().params, alpha_M)  # Eq.6
  reinits = ctx.state.method_state["reinits"] + 1
  state = ctx.state.replace(params=params,
                            method_state={**ctx.state.method_state, "reinits": reinits})
  diag = {k: float(x) for k, x in jax.device_get(diag).items()}
  metrics = {"reinit_count": count + 1}
  for m in spec.modalities:
    metrics.update({f"purity_train_{m}": diag[f"purity_train_{m}"],
                    f"purity_val_{m}": diag[f"purity_val_{m}"],
                    f"gap_{m}": diag[f"purity_gap_{m}"], f"alpha_{m}": diag[f"reinit_alpha_{m}"]})
  log_lib.info(f"DRBML after epoch {ctx.epoch} (re-init {count + 1}): " + " ".join(
      f"{m} P_D {metrics[f'purity_train_{m}']:.3f} P_V {metrics[f'purity_val_{m}']:.3f} "
      f"alpha {metrics[f'alpha_{m}']:.3f}" for m in spec.modalities)
      + f" ({time.time() - t0:.1f}s, features {t1 - t0:.1f}s)")
  return EpochUpdate(state=state, metrics=metrics)


@dataclasses.dataclass(frozen=True)
class DRBMLMethod(Method):
  """Joint training plus the epoch-end hook; method_state counts the re-initialisations."""

  def init_method_state(self, info):
    del info
    return {"reinits": jnp.zeros((), jnp.int32)}  # [] re-initialisations done so far.


def _check_fields(setup: Setup) -> dict:
  """{drbml_lib keyword: value}; a bad value raises naming its config.optim field."""
  optim, kwargs = setup.optim, {}
  for field, kw in _LIB_KWARGS.items():
    try:  # Each field alone, so the error names the one that is wrong.
      drbml_lib.drbml(setup.modalities, setup.param_labels, **{kw: optim[field]})
    except ValueError as e:
      raise ValueError(f"config.optim.{field}={optim[field]!r} is invalid: {e}") from None
    kwargs[kw] = optim[field]
  frac = optim["diagnosis_train_fraction"]
  if (isinstance(frac, bool) or not isinstance(frac, numbers.Real) or
      not 0.0 < frac <= 1.0):
    raise ValueError("config.optim.diagnosis_train_fraction must be in (0, 1] (1.0: the "
                     f"whole training set, as the paper), got {frac!r}.")
  return kwargs


def build(setup: Setup) -> DRBMLMethod:
  """Validates the fields once; the hook is bound to the resulting `DRBML`."""
  spec = drbml_lib.drbml(setup.modalities, setup.param_labels, **_check_fields(setup))
  first = next((t for t in range(setup.num_epochs) if is_due(spec, t, 0)), None)
  if first is None:  # E.g. drbml_official (t = 0 skipped) with H >= num_epochs.
    log_lib.info(f"{setup.name}: no diagnosis within num_epochs={setup.num_epochs} "
                 f"(reinit_every={spec.every}, skip_first_reinit={spec.skip_first}); this "
                 "run is joint training. Lower config.optim.reinit_every.")
  hook = functools.partial(diagnose_and_reinit, spec=spec,
                           train_fraction=float(setup.optim["diagnosis_train_fraction"]))
  return DRBMLMethod(setup.name, losses=(MULTIMODAL_CE,),
                     epoch_hooks=(EpochHook("end", hook),))


register(MethodSpec("drbml", "purity-gap diagnosis every H epochs, soft re-init of every "
                    "encoder towards its initial weights", build, defaults=DEFAULTS, docs=DOCS))
register(MethodSpec("drbml_official", "released code: epoch 0 skipped, at most 3 re-inits, "
                    "min-max scaled features, k-means++ with 10 restarts", build,
                    defaults=dict(DEFAULTS, **_OFFICIAL_OVERRIDES), docs=DOCS))
