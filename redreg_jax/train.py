"""Training and evaluation: one jitted, donated train step over a device mesh.

Reads top to bottom: mesh, input, model + optimizer, shardings, update step,
evaluation, checkpoints, loop. The step and the loop never ask which method runs: they
call the `methods.Method` hooks (loss terms, input transform, gradients, observations,
epoch hooks; redreg_jax/methods/spec.py).
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import os
import signal
import sys
import time
from typing import Any, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from redreg_jax import checkpoint as ckpt_lib
from redreg_jax import config_checks
from redreg_jax import diagnostics
from redreg_jax import environment
from redreg_jax import input_pipeline
from redreg_jax import integrate
from redreg_jax import logger as log_lib
from redreg_jax import methods as methods_lib
from redreg_jax import metrics as metrics_lib
from redreg_jax import models
from redreg_jax.observations import Observations

PyTree = Any


class NonFiniteError(RuntimeError):
  """A non-finite loss or gradient stopped the run."""


class WorkdirBusyError(RuntimeError):
  """Another process holds the workdir's lock."""


class _Interrupted(Exception):
  """SIGINT/SIGTERM during the final evaluation (the run is resumable)."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array         # [] int32 global step
  params: PyTree
  batch_stats: PyTree
  opt_state: PyTree
  rng: jax.Array          # [2] uint32 base key; step keys are fold_in(rng, step)
  skipped: jax.Array      # [] int32 steps skipped for non-finite values
  loss_weights: PyTree    # {loss term: [] float32} (Method.losses; epoch hooks may change)
  method_state: PyTree    # the method's own arrays, set by its epoch hooks ({} if none)


# ---------------------------------------------------------------------------------------
# Model and optimizer.
# ---------------------------------------------------------------------------------------

def build_model(config, info: input_pipeline.DatasetInfo, method: methods_lib.Method):
  mcfg = config.model
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}.get(mcfg.dtype)
  if dtype is None:
    raise ValueError(f"config.model.dtype must be 'float32' or 'bfloat16', got {mcfg.dtype!r}")
  encoders = {m: dict(spec) for m, spec in mcfg.get("encoders", {}).items()}
  for m in info.modalities:  # Unnamed encoders follow the input's rank.
    encoders.setdefault(m, models.default_encoder_spec(m, info.shapes[m], mcfg.width))
  # Optional `model.resnet_blocks` (set by the synthetic `tiny` config): basic blocks per
  # stage of every ResNet encoder that names none (2, ResNet-18, when unset).
  if mcfg.get("resnet_blocks") is not None:
    for spec in encoders.values():
      if spec.get("kind", "resnet18") == "resnet18":
        spec.setdefault("blocks", int(mcfg.resnet_blocks))
  return models.MultimodalClassifier(
      modalities=info.modalities, num_classes=info.num_classes, fusion=mcfg.fusion,
      encoders=encoders, width=mcfg.width, unimodal_heads=method.unimodal_heads,
      branch_bias=method.branch_bias, dtype=dtype,
      linear_init=config.optim.get("linear_init", "xavier_uniform"))


def dummy_inputs(info, batch: int = 2):
  return {m: jnp.zeros((batch,) + tuple(info.shapes[m]), jnp.float32) for m in info.modalities}


cross_entropy = methods_lib.cross_entropy  # The loss terms' CE (methods/spec.py).


def modality_dropout_prob(epoch, num_epochs: int):
  """The released RedReg code's dropout probability: 0.6 -> 0.1 over int(0.3 E) epochs.

  p = 0.6 + (0.1 - 0.6) * min(1, e / max(1, int(0.3 E))), so it reaches 0.1 at epoch
  int(0.3 E) and stays there.
  """
  ramp = max(1, int(num_epochs * 0.3))
  return 0.6 - 0.5 * jnp.minimum(1.0, jnp.asarray(epoch, jnp.float32) / ramp)


def modality_dropout(inputs, key, epoch, num_epochs, modalities):
  """Released RedReg code: zero one modality's whole batch with probability p(epoch).

  One uniform draw u per step: u < p / M drops the first modality, u in
  [p / M, 2 p / M) the second, and so on (for two modalities, the released split at
  p / 2). Returns (inputs with the dropped one zeroed, {m: [] bool dropped}).
  """
  prob = modality_dropout_prob(epoch, num_epochs)
  u = jax.random.uniform(key)
  which = jnp.where(u < prob, jnp.floor(u / (prob / len(modalities))), -1).astype(jnp.int32)
  dropped = {m: which == i for i, m in enumerate(modalities)}
  return {m: jnp.where(dropped[m], jnp.zeros_like(inputs[m]), inputs[m])
          for m in modalities}, dropped


# ---------------------------------------------------------------------------------------
# Update step, after the building blocks the methods' hooks call (twins, freezing).
# ---------------------------------------------------------------------------------------

def redundancy_from_twins(model, m, params, batch_stats, x, key, *, sigma: float,
                          eps: float = 1e-12, examples: int = 0):
  """Raw red_m (RedReg Eq.17-20) from two noisy copies of encoder m's input.

  Both copies x + n1, x + n2 (n ~ N(0, sigma^2)) go through the encoder in one batched
  inference-mode call: BatchNorm uses its running statistics and updates nothing, and
  no gradient flows. The score compares the encoder's last feature maps.

  `examples` > 0 scores every (B / examples)-th example only (B must be a multiple):
  the same estimate of Eq.20 from a subsample, for examples/B of the twin pass's
  arithmetic. 0 (the paper, the default) uses the whole batch.
  """
  if examples and examples != x.shape[0]:
    if examples < 0 or x.shape[0] % examples:
      raise ValueError(f"optim.twin_examples={examples} must divide the batch size "
                       f"{x.shape[0]} (0: the whole batch).")
    # [k, B/k, ...][:, 0]: with the batch sharded over devices and k a multiple of their
    # count, each device keeps its own rows (no data moves between devices).
    x = x.reshape((examples, x.shape[0] // examples) + x.shape[1:])[:, 0]
  enc = model.encoder(m)
  variables = {"params": params[f"encoder_{m}"]}
  if f"encoder_{m}" in batch_stats:  # Transformers have no BatchNorm.
    variables["batch_stats"] = batch_stats[f"encoder_{m}"]
  noise = sigma * jax.random.normal(key, (2,) + x.shape, jnp.float32)
  twins = jnp.concatenate([x + noise[0], x + noise[1]], axis=0)
  fmap, _ = enc.apply(jax.lax.stop_gradient(variables), twins, train=False)
  z1, z2 = jnp.split(fmap.astype(jnp.float32), 2, axis=0)
  return jnp.mean((z1 - z2) ** 2) / (jnp.mean((noise[0] - noise[1]) ** 2) + eps)


def tree_finite(tree) -> jax.Array:
  """[] bool: every inexact leaf of `tree` is finite (integer leaves always are)."""
  flags = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
           if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(flags)) if flags else jnp.asarray(True)


def finite_by_label(tree, labels) -> dict:
  """{label: all leaves with that label finite} for a label tree like `tree`'s."""
  flags: dict = {}
  for x, label in zip(jax.tree.leaves(tree), jax.tree.leaves(labels)):
    ok = jnp.all(jnp.isfinite(x))
    flags[label] = flags[label] & ok if label in flags else ok
  return flags


def _freeze_dropped(grads, new_bs, old_bs, dropped):
  """Zero gradient and unchanged BatchNorm statistics for each dropped encoder."""
  grads = dict(grads)
  for m, d in dropped.items():
    grads[f"encoder_{m}"] = jax.tree.map(lambda g, d=d: jnp.where(d, jnp.zeros_like(g), g),
                                         grads[f"encoder_{m}"])
  if new_bs is not None:
    new_bs = dict(new_bs)
    for m, d in dropped.items():
      if f"encoder_{m}" in new_bs:
        new_bs[f"encoder_{m}"] = jax.tree.map(lambda n, o, d=d: jnp.where(d, o, n),
                                              new_bs[f"encoder_{m}"], old_bs[f"encoder_{m}"])
  return grads, new_bs


def make_train_step(model, tx, method: methods_lib.Method, *, modalities, steps_per_epoch: int,
                    skip_nonfinite: bool = False):
  """Returns train_step(state, batch) -> (state, metrics), pure and jit-able.

  The method's hooks run in a fixed order: transform_inputs -> loss_terms (weighted by
  state.loss_weights) -> gradients -> after_gradients -> observe -> its transform.
  """
  labels_fn = models.modality_labels
  modalities = tuple(modalities)

  def train_step(state: TrainState, batch):
    epoch = state.step // steps_per_epoch
    key = jax.random.fold_in(state.rng, state.step)
    k_drop, k_observe, k_obs, k_input = jax.random.split(key, 4)
    labels = batch["label"]
    clean = {m: batch[m] for m in modalities}
    step = methods_lib.Step(
        model=model, modalities=modalities, params=state.params,
        batch_stats=state.batch_stats, method_state=state.method_state,
        opt_state=state.opt_state, epoch=epoch,
        labels=labels, clean=clean, inputs=clean, extras={}, input_key=k_input,
        observe_key=k_observe)
    inputs, extras = method.transform_inputs(step)
    step = step._replace(inputs=inputs, extras=extras)

    def losses_fn(params):
      out, mutated = model.apply({"params": params, "batch_stats": state.batch_stats}, inputs,
                                 train=True, mutable=["batch_stats"], rngs={"dropout": k_drop},
                                 **method.apply_kwargs(step))
      raw = method.loss_terms(out, step)
      weighted = {k: state.loss_weights[k] * v for k, v in raw.items()}
      return weighted, (out, mutated["batch_stats"], raw)

    losses, grads, aux_grads, (out, new_bs, raw) = method.gradients(losses_fn, state.params)
    grads, aux_grads, new_bs = method.after_gradients(step, grads, aux_grads, new_bs)
    loss = sum(losses.values())

    branch_logits = jax.lax.stop_gradient(method.branch_logits(out, step))
    features = jax.lax.stop_gradient(out["features"])
    obs = Observations(branch_logits=branch_logits, labels=labels, features=features,
                       epoch=epoch.astype(jnp.int32), rng=k_obs, aux_grads=aux_grads,
                       method_state=state.method_state)
    obs = method.observe(step, obs)

    updates, opt_state = tx.update(grads, state.opt_state, state.params, observations=obs)
    params = optax.apply_updates(state.params, updates)

    # Non-finite guard: per-group flags so the error can name the culprit. The updated
    # parameters, statistics and optimizer state are checked too: a checkpoint is only
    # ever written from a state every flag vouched for.
    finite = finite_by_label(grads, labels_fn(grads))
    finite["loss"] = jnp.isfinite(loss)
    finite["new_state"] = tree_finite((params, new_bs, opt_state))
    for m in modalities:  # Bad data rather than a bad optimisation.
      finite[f"input_{m}"] = jnp.all(jnp.isfinite(clean[m]))
    all_finite = jnp.all(jnp.stack(list(finite.values())))
    if skip_nonfinite:  # Keep the old state on a bad step, and count it.
      params, new_bs, opt_state = jax.tree.map(
          lambda a, b: jnp.where(all_finite, a, b), (params, new_bs, opt_state),
          (state.params, state.batch_stats, state.opt_state))
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=new_bs,
                              opt_state=opt_state,
                              skipped=state.skipped + (~all_finite).astype(jnp.int32))

    metrics = {"loss": loss, **{f"loss_{k}": v for k, v in raw.items()},
               "accuracy": jnp.mean(jnp.argmax(out["logits"], -1) == labels),
               "grad_norm": optax.tree.norm(grads),
               "finite": all_finite, **{f"finite_{g}": v for g, v in finite.items()},
               "_skipped": new_state.skipped}  # Steps skipped so far (skip_nonfinite).
    for m in modalities:
      metrics[f"accuracy_{m}"] = jnp.mean(jnp.argmax(branch_logits[m], -1) == labels)
    metrics.update(method.step_metrics(step))
    metrics.update(method.output_metrics(out, step))
    diag = optax.tree_utils.tree_get(opt_state, "diagnostics", default=None)
    if diag:
      metrics.update(diag)
    return new_state, metrics

  return train_step


def make_eval_step(model, modalities):
  # All 2^M subset logits (modality Shapley values) come from the same forward pass: the
  # encoders run once and only the fusion head is re-applied, so there is one compile.
  # Above MAX_SHAPLEY_MODALITIES the evaluation skips them (Experiment.evaluate says so).
  subsets = models.all_subsets(modalities) \
      if len(modalities) <= metrics_lib.MAX_SHAPLEY_MODALITIES else None

  def eval_step(state: TrainState, batch):
    inputs = {m: batch[m] for m in modalities}
    out = model.apply({"params": state.params, "batch_stats": state.batch_stats}, inputs,
                      train=False, subsets=subsets)
    to_f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
    res = {"logits": out["logits"].astype(jnp.float32),
           "branch_logits": to_f32(out["branch_logits"]),
           "features": out["features"], "label": batch["label"], "mask": batch["mask"]}
    if subsets is not None:
      res["subset_logits"] = to_f32(out["subset_logits"])
    return res
  return eval_step


# ---------------------------------------------------------------------------------------
# The experiment object: everything built from a config, reusable by tests/benchmarks.
# ---------------------------------------------------------------------------------------

class Experiment:
  """Builds dataset, mesh, model, optimizer and the jitted steps from a config."""

  def __init__(self, config: ml_collections.ConfigDict, dataset=None, mesh=None):
    config_checks.check_config(config)  # Every bad value, one line each, before any build.
    self.config = config
    self.dataset = dataset or input_pipeline.get_dataset(config.data)
    self.info = self.dataset.info
    for split, source in self.dataset.sources.items():
      if len(source) == 0:  # Would surface as a bare StopIteration at the first batch.
        raise ValueError(f"the {split!r} split of dataset {config.data.get('name')!r} has no "
                         "examples; check its files (or split options) and prepare again.")
    chosen = tuple(config.get("modalities", ()) or ())
    unknown = sorted(set(chosen) - set(self.info.modalities))
    if unknown:
      raise ValueError(f"config.modalities has {unknown}, not in the dataset's "
                       f"{list(self.info.modalities)}.")
    if chosen:  # Unimodal (or subset) baselines train only these encoders.
      self.info = dataclasses.replace(self.info, modalities=chosen)
    self.modalities = self.info.modalities
    self.num_epochs = int(config.num_epochs)
    # The method checks its config here (bad values, feature sizes), before anything runs.
    self.method = methods_lib.build_method(
        config.method, config.optim, modalities=self.modalities,
        param_labels=models.modality_labels, num_epochs=self.num_epochs,
        feature_dims=self._feature_dims, fusion=config.model.fusion,
        model=config.model)
    held = self.method.held_out(len(self.dataset.sources["train"]), int(config.seed))
    if held is not None:  # Kept for the method's epoch hooks, never trained on.
      self.dataset = input_pipeline.hold_out(self.dataset, held)
    n_train = len(self.dataset.sources["train"])
    self.batch_size = int(config.batch_size)
    self.eval_batch_size = int(config.eval_batch_size)
    # Auto axes: XLA propagates the batch sharding (explicit axes would reject e.g. a
    # replicated dropout mask applied to batch-sharded activations).
    self.mesh = mesh or jax.make_mesh((jax.device_count(),), ("data",),
                                      axis_types=(jax.sharding.AxisType.Auto,))
    n_dev = self.mesh.devices.size
    for field, size in (("batch_size", self.batch_size), ("eval_batch_size",
                                                          self.eval_batch_size)):
      if size % n_dev:
        raise ValueError(f"config.{field}={size} must be divisible by the {n_dev} devices "
                         "of the mesh.")
    self.keep_partial = bool(config.optim.get("keep_partial_batch", False))
    self.steps_per_epoch = input_pipeline.steps_per_epoch(
        n_train, self.batch_size, self.keep_partial, n_dev)
    if self.steps_per_epoch < 1:
      raise ValueError(f"config.batch_size={self.batch_size} is larger than the training "
                       f"split ({n_train} examples).")
    self.total_steps = self.num_epochs * self.steps_per_epoch
    self.model = build_model(config, self.info, self.method)
    self.tx = methods_lib.build_optimizer(self.method, config.optim, self.steps_per_epoch)
    self.repl = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P("data"))
    self.step_fn = make_train_step(
        self.model, self.tx, self.method, modalities=self.modalities,
        steps_per_epoch=self.steps_per_epoch, skip_nonfinite=bool(config.train.skip_nonfinite))
    self.train_step = self.jit_train_step(self.step_fn)
    self.eval_step = jax.jit(make_eval_step(self.model, self.modalities),
                             in_shardings=(self.repl, self.data_sharding),
                             out_shardings=self.repl)
    self.keys = tuple(self.modalities) + ("label",)

    self.rlc = jax.jit(lambda prev, cur: {
        f"rlc_{m}": diagnostics.representation_logit_coupling(
            prev["branch_logits"][m], cur["branch_logits"][m], prev["features"][m],
            cur["features"][m]) for m in self.modalities})

  def probe_batch(self):
    """The fixed probe batch: the first evaluation batch of the validation split."""
    it = input_pipeline.eval_batches(self.dataset.sources["validation"],
                                     self.dataset.preprocess[False], self.keys,
                                     global_batch=self.eval_batch_size)
    return input_pipeline.to_global(next(it), self.data_sharding)

  def _feature_dims(self) -> dict:
    """{modality: pooled feature size}, from abstract shapes (nothing is compiled)."""
    model = build_model(self.config, self.info, methods_lib.Method(self.config.method))
    shapes = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), dummy_inputs(self.info),
                                       train=False)[0]["features"])
    return {m: s.shape[-1] for m, s in shapes.items()}

  def jit_train_step(self, step_fn):
    """jit with the batch sharded over 'data', the state replicated and donated."""
    return jax.jit(step_fn, in_shardings=(self.repl, self.data_sharding),
                   out_shardings=(self.repl, self.repl), donate_argnums=0)

  def _init_variables(self, rng):
    """(params, batch_stats): the model's share of the initial state. A program of the
    model alone, so Experiments (and processes, through the compilation cache) that
    differ only in method or optimizer compile it once."""
    variables = self.model.init({"params": rng, "dropout": rng}, dummy_inputs(self.info),
                                train=False)
    return variables["params"], variables.get("batch_stats", {})

  def _init_rest(self, params, batch_stats) -> TrainState:
    """The rest of the initial state, from the model's variables."""
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=self.tx.init(params),
                      rng=jax.random.PRNGKey(self.config.seed + 1),
                      skipped=jnp.zeros((), jnp.int32),
                      loss_weights={t.name: jnp.asarray(t.weight, jnp.float32)
                                    for t in self.method.losses},
                      method_state=self.method.init_method_state(self.info))

  @functools.cached_property
  def state_finite(self):
    """Jitted state -> [] bool: parameters, statistics and optimizer state all finite."""
    return jax.jit(lambda st: tree_finite((st.params, st.batch_stats, st.opt_state)))

  @functools.cached_property
  def _jit_init(self):
    return (jax.jit(self._init_variables, out_shardings=self.repl),
            jax.jit(self._init_rest, out_shardings=self.repl))

  def init_state(self) -> TrainState:
    """The initial state, replicated over the mesh (compiled once per Experiment)."""
    # Parameter init draws from an RBG key: deterministic, and XLA compiles it in seconds
    # where threefry over ~60 tensors takes ~40 s on a CPU.
    init_variables, init_rest = self._jit_init
    return init_rest(*init_variables(jax.random.key(self.config.seed, impl="rbg")))

  def run_epoch_hooks(self, at: str, epoch: int, state: TrainState):
    """Runs the method's epoch hooks for `at` ('start' | 'end'); returns (state, scalars)."""
    scalars = {}
    for hook in self.method.epoch_hooks:
      if hook.at != at:
        continue
      update = hook.fn(methods_lib.EpochContext(epoch, state, self))
      if update is None:
        continue
      if update.state is not None:
        _check_same_layout(state, update.state, hook)
        state = jax.device_put(update.state, self.repl)
      scalars.update({k: float(v) for k, v in update.metrics.items()})
    return state, scalars

  def train_batches(self, epoch: int, start_batch: int = 0, num_batches: int | None = None):
    """Epoch `epoch`'s training batches from `start_batch` on (at most `num_batches`)."""
    it = input_pipeline.train_batches(
        self.dataset.sources["train"], self.dataset.preprocess[True], self.keys,
        global_batch=self.batch_size, seed=int(self.config.seed), epoch=epoch,
        start_batch=start_batch, num_threads=int(self.config.train.input_threads),
        keep_partial=self.keep_partial, granularity=self.mesh.devices.size)
    if num_batches is not None:  # Cut before the prefetch thread, which then ends.
      it = itertools.islice(it, num_batches)
    return input_pipeline.prefetch_to_device(it, self.data_sharding,
                                             int(self.config.train.device_prefetch))

  def outputs(self, state: TrainState, split: str, indices=None) -> dict:
    """Inference-mode outputs over a split (or its examples at `indices`), on the host.

    Returns numpy {'logits', 'branch_logits', 'features' ({m: [N, D]} pooled features),
    'label', 'subset_logits' (M <= MAX_SHAPLEY_MODALITIES)}, padding removed, in the
    split's order: what epoch hooks read (PMR's prototypes, DRBML's diagnosis, ...).
    """
    source = self.dataset.sources[split]
    if indices is not None:
      source = input_pipeline.SubsetSource(source, indices)
    it = input_pipeline.eval_batches(source, self.dataset.preprocess[False], self.keys,
                                     global_batch=self.eval_batch_size)
    outs = []
    for batch in input_pipeline.prefetch_to_device(it, self.data_sharding):
      outs.append(jax.device_get(self.eval_step(state, batch)))
    cat = lambda *xs: np.concatenate(xs, axis=0)
    out = jax.tree.map(cat, *outs)
    keep = out["mask"] > 0
    return jax.tree.map(lambda x: x[keep], out)

  def evaluate(self, state: TrainState, split: str, return_features: bool = False) -> dict:
    out = self.outputs(state, split)
    result = metrics_lib.classification_metrics(
        out["logits"], out["label"], out["branch_logits"], self.info.num_classes,
        self.modalities)
    if "subset_logits" in out:
      result.update(metrics_lib.modality_contributions(out["subset_logits"], out["label"],
                                                       self.modalities))
    elif not getattr(self, "_noted_no_shapley", False):
      self._noted_no_shapley = True  # pylint: disable=attribute-defined-outside-init
      log_lib.info(f"Shapley values skipped: {len(self.modalities)} modalities, exact "
                   f"enumeration is done for at most {metrics_lib.MAX_SHAPLEY_MODALITIES}.")
    if return_features:
      result["_outputs"] = out
    return result


def _check_same_layout(old: TrainState, new: TrainState, hook) -> None:
  """An epoch hook keeps every leaf's shape and dtype: the jitted step is not retraced."""
  name = getattr(hook.fn, "__qualname__", repr(hook.fn))
  if not isinstance(new, TrainState) or jax.tree.structure(old) != jax.tree.structure(new):
    raise ValueError(f"Epoch hook {name} ({hook.at}) must return a TrainState with the "
                     "same tree structure (use state.replace(...)).")
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(old), jax.tree.leaves(new)):
    if (np.shape(a), jnp.result_type(a)) != (np.shape(b), jnp.result_type(b)):
      raise ValueError(f"Epoch hook {name} ({hook.at}) changed {jax.tree_util.keystr(path)} "
                       f"from {np.shape(a)} {jnp.result_type(a)} to {np.shape(b)} "
                       f"{jnp.result_type(b)}; keep shapes and dtypes.")


# ---------------------------------------------------------------------------------------
# Loop.
# ---------------------------------------------------------------------------------------

def _config_json(config) -> str:
  return config.to_json_best_effort(indent=2, sort_keys=True)


def _check_saved_config(workdir: str, config, allow_change: bool):
  """Refuses a workdir whose saved config differs (unless allowed)."""
  path = os.path.join(workdir, "config.json")
  new = _config_json(config)
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = f.read()
    if old != new and not allow_change:
      old_d, new_d = json.loads(old), json.loads(new)
      diff = sorted(_flat_diff(old_d, new_d))
      raise ValueError(
          f"{workdir} holds a run with a different config ({', '.join(diff[:8])}). Use a new "
          "--workdir, or pass --allow_config_change to resume with the new config.")


def _write_config(workdir: str, config):
  """Writes the resolved config atomically (process 0)."""
  path = os.path.join(workdir, "config.json")
  new = _config_json(config)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(new)
    os.replace(tmp, path)


def _flat_diff(a, b, prefix=""):
  keys = set(a) | set(b) if isinstance(a, dict) and isinstance(b, dict) else set()
  if not keys:
    return [prefix.rstrip(".")] if a != b else []
  out = []
  for k in keys:
    out += _flat_diff(a.get(k), b.get(k), f"{prefix}{k}.") if isinstance(a.get(k), dict) or \
        isinstance(b.get(k), dict) else ([f"{prefix}{k}"] if a.get(k) != b.get(k) else [])
  return out


class _StopFlag:
  """Turns SIGTERM/SIGINT into a flag the loop checks after each step."""

  def __init__(self):
    self.signal = None
    self.raise_now = False  # After the loop: a signal aborts the final evaluation.
    self._old = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      try:
        self._old[sig] = signal.signal(sig, self._handle)
      except ValueError:  # Not the main thread (e.g. some test runners).
        pass
    return self

  def _handle(self, signum, frame):  # pylint: disable=unused-argument
    self.signal = signal.Signals(signum).name
    if self.raise_now:
      raise _Interrupted(self.signal)

  def __exit__(self, *exc):
    for sig, old in self._old.items():
      signal.signal(sig, old)


def _host_scalars(metrics: Mapping[str, Any]) -> dict:
  out = {}
  for k, v in jax.device_get(dict(metrics)).items():
    v = np.asarray(v)
    out[k] = v.item() if v.ndim == 0 else v.tolist()
  return out


def _eval_record(step, epoch, split, res):
  return {"step": step, "epoch": epoch, "split": split,
          **{k: v for k, v in res.items() if not k.startswith("_")}}


def _stopped(signal_name: str, step: int, workdir: str, during: str = "") -> dict:
  what = f"during {during}" if during else f"at step {step}; checkpoint saved"
  log_lib.info(f"Stopped by {signal_name} {what}. Resume with the same command (same "
               f"--workdir={workdir}).")
  return {"stopped": signal_name, "step": step}


class _WorkdirLock:
  """An exclusive lock on WORKDIR/.lock (process 0): one run per workdir at a time."""

  def __init__(self, workdir: str):
    self.path = os.path.join(workdir, ".lock")
    self._f = None

  def __enter__(self):
    if jax.process_index() != 0:
      return self
    try:
      import fcntl  # pylint: disable=g-import-not-at-top
    except ImportError:  # Not POSIX: no lock.
      return self
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    f = open(self.path, "a+", encoding="utf-8")  # pylint: disable=consider-using-with
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
      f.seek(0)
      holder = f.read().strip() or "unknown"
      f.close()
      raise WorkdirBusyError(f"{os.path.dirname(self.path)} is in use by process {holder} "
                             f"(lock {self.path}); wait for it to end or use another "
                             "--workdir.") from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    self._f = f
    return self

  def __exit__(self, *exc):
    if self._f is not None:
      self._f.close()  # Closing releases the lock; the file stays (harmless).


def _write_json_atomic(path: str, obj) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(obj, f, indent=2)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _read_summary(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path} is unreadable ({e}); delete it and relaunch to redo the "
                     "final evaluation from the checkpoints.") from None


def _probe_path(workdir: str, step: int) -> str:
  return os.path.join(workdir, "probe", f"{step}.npz")


def _save_probe(workdir: str, step: int, probe, keep_steps) -> None:
  """The RLC probe baseline beside checkpoint `step` (process 0, atomic); prunes others."""
  if jax.process_index() != 0:
    return
  path = _probe_path(workdir, step)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  flat = {jax.tree_util.keystr(k): np.asarray(v)
          for k, v in jax.tree_util.tree_leaves_with_path(jax.device_get(probe))}
  tmp = path + ".tmp.npz"
  np.savez(tmp, **flat)
  os.replace(tmp, path)
  keep = {f"{s}.npz" for s in keep_steps} | {f"{step}.npz"}
  for name in os.listdir(os.path.dirname(path)):
    if name.endswith(".npz") and name not in keep:
      os.remove(os.path.join(os.path.dirname(path), name))


def _load_probe(workdir: str, step: int, like, sharding):
  """The probe baseline saved with checkpoint `step`, or None (older runs had none)."""
  path = _probe_path(workdir, step)
  if not os.path.exists(path):
    return None
  with np.load(path, allow_pickle=False) as data:
    leaves = [data[jax.tree_util.keystr(k)] for k, _ in jax.tree_util.tree_leaves_with_path(like)]
  return jax.device_put(jax.tree.unflatten(jax.tree.structure(like), leaves), sharding)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       allow_config_change: bool = False) -> dict:
  """Trains, evaluates on validation every epoch and on test at the end; returns the summary.

  A summary with a 'stopped' key means a signal stopped the run (resumable).
  """
  t_start = time.time()
  _check_saved_config(workdir, config, allow_config_change)
  log_lib.info(f"building data ({config.data.name}) and model ...")
  exp = Experiment(config)  # Bad data or config fails here, before anything is written.
  log_lib.info(f"data: {len(exp.dataset.sources['train'])} train / "
               f"{len(exp.dataset.sources['validation'])} validation examples; model and "
               f"optimizer built in {time.time() - t_start:.1f}s")
  with _WorkdirLock(workdir):
    return _train_and_evaluate(exp, config, workdir, t_start)


def _checkpoint_left(ckpt) -> str:
  last = ckpt.latest_step()
  return (f"The latest checkpoint {ckpt.folder(last)} (step {last}) holds a finite state; "
          "a relaunch resumes from it (with a changed config: --allow_config_change)."
          if last is not None else "No checkpoint was written before it.")


def _nonfinite_message(step_done, host, workdir, ckpt) -> str:
  """Names the step, the groups, the likely cause and the checkpoint left behind."""
  bad = [k[len("finite_"):] for k, v in host.items() if k.startswith("finite_") and not v]
  inputs = [b[len("input_"):] for b in bad if b.startswith("input_")]
  if inputs:
    cause = (f"the batch holds non-finite inputs ({', '.join(inputs)}): the data is bad, "
             "not the optimisation; check the dataset (re-run python -m data.prepare, "
             "which refuses non-finite values)")
  else:
    cause = ("the optimisation diverged on finite inputs: lower the learning rate "
             "(--config.optim.lr), or set --config.train.skip_nonfinite=True to skip such "
             "steps")
  left = _checkpoint_left(ckpt)
  groups = ", ".join(b for b in bad if not b.startswith("input_")) or "inputs"
  return (f"Non-finite values at step {step_done} in {groups} (loss={host['loss']}); "
          f"likely cause: {cause}. {left}")


def _train_and_evaluate(exp: Experiment, config, workdir: str, t_start: float) -> dict:
  """The loop of `train_and_evaluate`, under the workdir lock."""
  _write_config(workdir, config)
  ckpt = ckpt_lib.Checkpointer(workdir, keep=int(config.train.keep_checkpoints))
  state = exp.init_state()
  meta = {"best_accuracy": -1.0, "best_step": None, "best_epoch": None,
          "wall_seconds": 0.0, "compile_seconds": None}
  epoch_acc: dict[str, list] = {}  # This epoch's per-step scalars (checkpointed in meta).
  restored = ckpt.restore(state)
  if restored is not None:
    state, meta = restored
    meta.setdefault("wall_seconds", 0.0)
    meta.setdefault("compile_seconds", None)
    state = jax.device_put(state, exp.repl)
    epoch_acc = meta.pop("epoch_acc", {})
    log_lib.info(f"Resumed from {workdir}/checkpoints at step {int(state.step)}.")
  # Records after the checkpoint (all of them when there is none) are replayed.
  log_lib.truncate_records(workdir, int(state.step))
  summary_path = os.path.join(workdir, "summary.json")
  if int(state.step) >= exp.total_steps and os.path.exists(summary_path):
    summary = _read_summary(summary_path)
    log_lib.info(f"{workdir} holds a finished run; its summary:")
    print_summary(summary, exp.modalities)
    ckpt.close()
    return summary
  logger = log_lib.MetricLogger(workdir, purge_step=int(state.step))
  log_lib.info(f"method={config.method} data={config.data.name} devices={jax.device_count()} "
               f"steps/epoch={exp.steps_per_epoch} epochs={exp.num_epochs}")
  env = environment.describe()  # Which published row this run should match, to the digit.
  log_lib.info(f"environment: {environment.one_line(env)}")

  step = start_step_of_process = int(state.step)
  progress = log_lib.Progress(exp.total_steps, step, every=int(config.train.progress_every))
  ckpt_every = int(config.train.checkpoint_every_steps)
  log_every = int(config.train.log_every_steps)
  compile_s = meta["compile_seconds"]
  wall_before = float(meta["wall_seconds"])  # Earlier processes of this run.
  pending = None  # (step, metrics) of the previous step, fetched one step late.
  max_skipped = float(config.train.get("max_skipped_fraction", 0.1)) * exp.steps_per_epoch
  # RLC (RedReg Fig. 1/3) on a fixed probe batch every `probe_every_steps` steps; its
  # baseline is saved with each checkpoint, so a resumed run logs the same RLC.
  probe_every = int(config.train.probe_every_steps)
  if probe_every > 0:
    probe_batch = exp.probe_batch()
    probe_prev = exp.eval_step(state, probe_batch)  # Same shapes as evaluation: one compile.
    if restored is not None:
      saved = _load_probe(workdir, step, probe_prev, exp.repl)
      probe_prev = probe_prev if saved is None else saved

  def save(step_now, meta_now, best=False):
    if not bool(jax.device_get(exp.state_finite(state))):  # Never a poisoned checkpoint.
      raise NonFiniteError(f"The state at step {step_now} holds non-finite parameters, "
                           "statistics or optimizer state; no checkpoint was written for "
                           f"it. {_checkpoint_left(ckpt)}")
    meta_now = {**meta_now, "compile_seconds": compile_s,
                "wall_seconds": wall_before + time.time() - t_start}
    if probe_every > 0 and not best:
      _save_probe(workdir, step_now, probe_prev, ckpt.latest.all_steps())
    ckpt.save(step_now, state, meta_now, best=best)

  def handle(step_done, metrics):
    host = _host_scalars(metrics)
    finite = host.pop("finite")
    if not finite and not config.train.skip_nonfinite:
      raise NonFiniteError(_nonfinite_message(step_done, host, workdir, ckpt))
    if not finite and host["_skipped"] > max_skipped:
      raise NonFiniteError(
          f"{host['_skipped']} steps skipped for non-finite values by step {step_done}, more "
          f"than train.max_skipped_fraction={config.train.get('max_skipped_fraction', 0.1)} "
          f"of an epoch ({exp.steps_per_epoch} steps): the run is not training. "
          + _nonfinite_message(step_done, host, workdir, ckpt))
    if not finite:
      log_lib.info(f"step {step_done}: non-finite values, step skipped "
                   f"({host['_skipped']} so far).")
    host.pop("_skipped")
    for k, v in host.items():
      if not k.startswith("finite"):
        epoch_acc.setdefault(k, []).append(v)
    if step_done % log_every == 0:
      logger.write({"step": step_done, "epoch": (step_done - 1) // exp.steps_per_epoch,
                    "split": "train", **{k: v for k, v in host.items()
                                         if not k.startswith("finite")}}, prefix="train/")

  with _StopFlag() as stop:
    while step < exp.total_steps:
      epoch, start_batch = divmod(step, exp.steps_per_epoch)
      if start_batch == 0:  # Resumed in mid-epoch, the hooks' work is in the checkpoint.
        state, hook_scalars = exp.run_epoch_hooks("start", epoch, state)
        for k, v in hook_scalars.items():  # Logged with this epoch's summary.
          epoch_acc.setdefault(k, []).append(v)
      for batch in exp.train_batches(epoch, start_batch):
        t0 = time.time()
        if step == start_step_of_process:
          log_lib.info("compiling the train step ...")
        state, metrics = exp.train_step(state, batch)
        if step == start_step_of_process:  # This process's first step compiles.
          jax.block_until_ready(state.step)
          if compile_s is None:
            compile_s = time.time() - t0
          log_lib.info(f"compiled the train step in {time.time() - t0:.1f}s")
          progress.restart_clock(step + 1)
        step += 1
        if probe_every > 0 and step % probe_every == 0:
          probe_now = exp.eval_step(state, probe_batch)
          metrics = {**metrics, **exp.rlc(probe_prev, probe_now)}
          probe_prev = probe_now
        if pending is not None:
          handle(*pending)
        pending = (step, metrics)
        progress.update(step, f"epoch {epoch}")
        if step % ckpt_every == 0 and step % exp.steps_per_epoch:
          handle(*pending)
          pending = None
          logger.flush()  # Everything up to a checkpoint is on disk before it exists.
          save(step, {**meta, "epoch_acc": epoch_acc})
        if stop.signal:
          break
      if pending is not None:
        handle(*pending)
        pending = None
      if stop.signal and step % exp.steps_per_epoch:  # In mid-epoch; a full one ends below.
        logger.flush()
        save(step, {**meta, "epoch_acc": epoch_acc})
        logger.close()
        ckpt.close()
        return _stopped(stop.signal, step, workdir)
      # End of epoch: the method's hooks, then the summary of the training scalars,
      # validation and checkpoints (which all see what the hooks did).
      state, hook_scalars = exp.run_epoch_hooks("end", epoch, state)
      for k, v in hook_scalars.items():
        epoch_acc.setdefault(k, []).append(v)
      ep_rec = {"step": step, "epoch": epoch, "split": "train_epoch",
                **{k: float(np.mean(v)) for k, v in epoch_acc.items()
                   if np.ndim(v[0]) == 0}}
      if "gate_open" in epoch_acc:
        ep_rec["gate_open_fraction"] = float(np.mean(epoch_acc["gate_open"]))
        note = integrate.inactive_note(epoch_acc, config.method)
        if note:  # Regulation that never acts is worth one line per epoch.
          log_lib.info(f"warning: epoch {epoch}: {note}")
      epoch_acc = {}
      logger.write(ep_rec, prefix="train_epoch/")
      res = exp.evaluate(state, "validation")
      logger.write(_eval_record(step, epoch, "validation", res), prefix="validation/")
      skipped = int(jax.device_get(state.skipped))
      log_lib.info(f"epoch {epoch}: val acc {res['accuracy']:.4f} " + " ".join(
          f"{m} {res[f'accuracy_{m}']:.4f}" for m in exp.modalities) +
                   (f" ({skipped} steps skipped so far)" if skipped else ""))
      is_best = res["accuracy"] > meta["best_accuracy"]
      if is_best:
        meta = {"best_accuracy": res["accuracy"], "best_step": step, "best_epoch": epoch}
      logger.flush()
      if is_best:  # Best first: a crash between the two saves replays this epoch.
        save(step, meta, best=True)
      save(step, meta)
      logger.flush()
      if stop.signal:
        logger.close()
        ckpt.close()
        return _stopped(stop.signal, step, workdir)

    # Final evaluation of the checkpoint chosen on validation (never on test). A signal
    # now aborts it at once; the relaunch redoes it from the checkpoints.
    stop.raise_now = True
    try:
      best_state, _ = ckpt.restore(state, which="best")
      best_state = jax.device_put(best_state, exp.repl)
      summary = {"method": config.method, "dataset": exp.info.name or config.data.name,
                 "seed": int(config.seed), "steps": step, "best_epoch": meta["best_epoch"],
                 "best_step": meta["best_step"], "compile_seconds": compile_s,
                 "wall_seconds": wall_before + time.time() - t_start,
                 "skipped_steps": int(jax.device_get(state.skipped)), "environment": env}
      for split in ("validation", "test"):
        res = exp.evaluate(best_state, split)
        logger.write(_eval_record(step, meta["best_epoch"], split, res),
                     prefix=f"final_{split}/")
        summary[split] = {k: v for k, v in res.items() if not k.startswith("_")}
    except _Interrupted as e:
      logger.close()
      ckpt.close()
      return _stopped(str(e), step, workdir, during="the final evaluation")
    stop.raise_now = False
  logger.close()
  ckpt.close()
  if jax.process_index() == 0:
    _write_json_atomic(summary_path, summary)
    print_summary(summary, exp.modalities)
  return summary


def evaluate_checkpoint(config, workdir: str, which: str = "best", split: str = "test") -> dict:
  """Evaluates the best (or latest) checkpoint of a workdir on one split or 'all'."""
  folder = os.path.join(workdir, "best" if which == "best" else "checkpoints")
  if not os.path.isdir(folder):  # Checked first: nothing is created in an empty workdir.
    raise FileNotFoundError(f"No {which} checkpoint in {workdir}; train first with "
                            f"python launch.py --config=... --workdir={workdir}")
  exp = Experiment(config)
  ckpt = ckpt_lib.Checkpointer(workdir)
  restored = ckpt.restore(exp.init_state(), which=which)
  ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"No {which} checkpoint in {workdir}; train first with "
                            f"python launch.py --config=... --workdir={workdir}")
  state = jax.device_put(restored[0], exp.repl)
  splits = ("train", "validation", "test") if split == "all" else (split,)
  unknown = [s for s in splits if s not in exp.dataset.sources]
  if unknown:
    raise ValueError(f"Unknown split {unknown[0]!r}; valid: train, validation, test, all.")
  results = {s: {k: v for k, v in exp.evaluate(state, s).items() if not k.startswith("_")}
             for s in splits}
  if jax.process_index() == 0:
    cols = ["accuracy"] + [f"accuracy_{m}" for m in exp.modalities] + ["macro_f1"]
    print(f"{which} checkpoint of {workdir} (step {int(state.step)})")
    print(f"{'split':<12}" + "".join(f"{c:>18}" for c in cols))
    for s, res in results.items():
      print(f"{s:<12}" + "".join(f"{res[c]:>18.4f}" for c in cols))
  return results


def print_summary(summary: dict, modalities) -> None:
  """The final table on the console."""
  cols = ["accuracy"] + [f"accuracy_{m}" for m in modalities] + ["macro_f1"]
  print(f"\n{summary['method']} on {summary['dataset']} (seed {summary['seed']}), best "
        f"epoch {summary['best_epoch']} chosen on validation; {summary['wall_seconds']:.0f}s")
  print(f"{'split':<12}" + "".join(f"{c:>18}" for c in cols))
  for split in ("validation", "test"):
    print(f"{split:<12}" + "".join(f"{summary[split][c]:>18.4f}" for c in cols))
  if "environment" in summary:  # Older summaries have none.
    print(f"ran with {environment.one_line(summary['environment'])}")
