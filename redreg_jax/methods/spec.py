"""What a method module declares, and the registry it declares it in.

A method module (`redreg_jax/methods/<family>.py`) registers one `MethodSpec` per config
name: its `config.optim` defaults with one line of docs each, and `build`, which checks
the resolved config once and returns a `Method`. The `Method` is everything the trainer
asks at run time: the loss terms and their weights, the gradient transformation, the
in-step hooks (input transform, gradients, observations) and the per-epoch hooks.
`train.make_train_step` and `train.train_and_evaluate` call these and nothing else; they
never look at a method's name (docs/methods.md, one section per module).

A new method is one module that calls `register(MethodSpec(...))`, plus its tests and
its name in `methods._MODULES` (README, "How to add a method").
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from redreg_jax.observations import LabelTree, Observations

PyTree = Any

_EMPTY: Mapping[str, Any] = types.MappingProxyType({})


def cross_entropy(logits_BxK, labels_B, mask_B=None):
  """Softmax cross-entropy in float32: the batch mean, or the mean over mask_B > 0."""
  losses = optax.softmax_cross_entropy_with_integer_labels(logits_BxK.astype(jnp.float32),
                                                           labels_B)
  if mask_B is None:
    return jnp.mean(losses)
  return jnp.sum(losses * mask_B) / jnp.maximum(jnp.sum(mask_B), 1.0)


# ---------------------------------------------------------------------------------------
# Loss terms.
# ---------------------------------------------------------------------------------------

class LossTerm(NamedTuple):
  """One term of the training loss: loss = sum_k loss_weights[k] * fn_k (logged raw)."""

  name: str  # Key in the loss dict; logged as 'loss_<name>'.
  # fn(out, step) -> [] float32: `out` is the model's output dict, `step` the `Step`
  # (labels, modalities, method_state; its params are constants here, not differentiated).
  fn: Callable[[Mapping[str, Any], "Step"], jax.Array]
  weight: float = 1.0  # Initial TrainState.loss_weights[name]; epoch hooks may change it.
  unimodal_heads: bool = False  # fn reads out['unimodal_logits']: the model builds heads.


def _multimodal_ce(out, step):
  return cross_entropy(out["logits"], step.labels)


def _per_modality_ce(key):
  """Sum over modalities (in the run's order) of the CE of out[key][m]."""
  return lambda out, step: sum(cross_entropy(out[key][m], step.labels)
                               for m in step.modalities)


# The fused cross-entropy every method in the papers trains with.
MULTIMODAL_CE = LossTerm("multimodal", _multimodal_ce)
# The "*" variants: one CE per modality on its own unimodal head (docs/methods.md §Setting).
UNIMODAL_CE = LossTerm("unimodal", _per_modality_ce("unimodal_logits"),
                       unimodal_heads=True)
# Released InfoReg: CE(W_m z_m + b/M) per modality through the fused head (docs/reproducing.md).
BRANCH_CE = LossTerm("branch", _per_modality_ce("branch_logits"))


# ---------------------------------------------------------------------------------------
# In-step and per-epoch hook interfaces.
# ---------------------------------------------------------------------------------------

class Step(NamedTuple):
  """What a method's in-step hooks see of the current step (inside `jit`: traced)."""

  model: Any  # The models.MultimodalClassifier (unbound).
  modalities: tuple[str, ...]
  params: PyTree  # Before this step's update.
  batch_stats: PyTree  # BatchNorm statistics before this step.
  method_state: PyTree  # TrainState.method_state (set by the method's epoch hooks).
  opt_state: PyTree  # The optimizer state before this step (e.g. a transform's phase).
  epoch: jax.Array  # [] int32, 0-based.
  labels: jax.Array  # [B] int32.
  clean: Mapping[str, jax.Array]  # modality -> the batch's inputs.
  inputs: Mapping[str, jax.Array]  # modality -> inputs after `transform_inputs`.
  extras: Mapping[str, Any]  # What `transform_inputs` returned beside the inputs.
  input_key: jax.Array  # PRNG key for `transform_inputs` (e.g. modality dropout).
  observe_key: jax.Array  # PRNG key for `observe` (e.g. twin noise).


def total_gradient(losses_fn, params):
  """The gradient of the summed losses, from one `jax.value_and_grad`.

  Args:
    losses_fn: params -> (weighted losses {name: []}, aux).
    params: the parameters.
  Returns:
    (losses, grads, aux_grads=None, aux).
  """
  total = lambda p: (lambda l, a: (sum(l.values()), (l, a)))(*losses_fn(p))
  (_, (losses, aux)), grads = jax.value_and_grad(total, has_aux=True)(params)
  return losses, grads, None, aux


class EpochContext(NamedTuple):
  """What an epoch hook sees (on the host, between jitted steps)."""

  epoch: int  # The epoch about to start ('start') or just finished ('end').
  state: Any  # The train.TrainState.
  experiment: Any  # The train.Experiment: dataset, model, evaluate, train_batches, ...


class EpochUpdate(NamedTuple):
  """What an epoch hook returns (or None: nothing changes, nothing is logged)."""

  # The new TrainState (e.g. loss_weights, method_state or params replaced), or None.
  # Every leaf keeps its shape and dtype, so the jitted step is not traced again.
  state: Any = None
  # Scalars for this epoch's 'train_epoch' record.
  metrics: Mapping[str, float] = _EMPTY


@dataclasses.dataclass(frozen=True)
class EpochHook:
  """A host-side callable run at each epoch's start or end.

  'start' runs before the epoch's first step (not on a run resumed in mid-epoch: its
  effect is in the checkpoint); 'end' runs after the last step, before validation and
  the epoch's checkpoint, so both see what it did.
  """

  at: str  # 'start' | 'end'
  fn: Callable[[EpochContext], EpochUpdate | None]

  def __post_init__(self):
    if self.at not in ("start", "end"):
      raise ValueError(f"EpochHook.at must be 'start' or 'end', got {self.at!r}.")


# ---------------------------------------------------------------------------------------
# The method the trainer runs, and the spec that builds it.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Method:
  """A method resolved against a config: everything the trainer asks of it.

  Subclasses override the in-step hooks (pure, traced once inside the jitted step); the
  defaults do nothing, so a plain `Method` is joint training with `losses`.
  """

  name: str
  losses: tuple[LossTerm, ...] = (MULTIMODAL_CE,)
  # () -> the balancing GradientTransformationExtraArgs chained ahead of weight decay
  # and SGD-momentum (methods.build_optimizer), or None for plain SGD.
  transform: Callable[[], optax.GradientTransformationExtraArgs] | None = None
  # Branch logits as docs/methods.md §Setting: 'full' W_m z_m + b, 'split' W_m z_m + b/M.
  branch_bias: str = "full"
  epoch_hooks: tuple[EpochHook, ...] = ()

  @property
  def unimodal_heads(self) -> bool:
    """Whether the model builds one unimodal head per modality (a loss term reads them)."""
    return any(t.unimodal_heads for t in self.losses)

  def init_method_state(self, info) -> PyTree:
    """TrainState.method_state at step 0 (arrays; fixed shapes). `info`: DatasetInfo."""
    del info
    return {}

  def held_out(self, num_train: int, seed: int):
    """Training-split indices never trained on, kept for the epoch hooks (or None).

    Experiment moves them to the split `input_pipeline.HELD_OUT` (e.g. G-Blending's V).
    """
    del num_train, seed
    return None

  def apply_kwargs(self, step: Step) -> dict[str, Any]:
    """Extra keyword arguments of the training forward pass (e.g. {'subsets': ...})."""
    del step
    return {}

  def branch_logits(self, out, step: Step) -> Mapping[str, jax.Array]:
    """{modality: [B, K]} the transform observes (default: the model's branch logits)."""
    del step
    return out["branch_logits"]

  def loss_terms(self, out, step: Step) -> dict[str, jax.Array]:
    """{term name: unweighted loss} in `losses` order."""
    return {t.name: t.fn(out, step) for t in self.losses}

  def transform_inputs(self, step: Step):
    """Returns (inputs the model trains on, extras for the later hooks)."""
    return step.clean, {}

  def gradients(self, losses_fn, params):
    """Returns (losses, grads, aux_grads or None, aux); see `total_gradient`."""
    return total_gradient(losses_fn, params)

  def after_gradients(self, step: Step, grads, aux_grads, new_batch_stats):
    """Returns (grads, aux_grads, new_batch_stats), e.g. freezing a dropped encoder."""
    del step
    return grads, aux_grads, new_batch_stats

  def observe(self, step: Step, obs: Observations) -> Observations:
    """Returns the Observations the transform is fed (e.g. with twin redundancy)."""
    del step
    return obs

  def step_metrics(self, step: Step) -> dict[str, jax.Array]:
    """Extra per-step scalars to log."""
    del step
    return {}

  def output_metrics(self, out, step: Step) -> dict[str, jax.Array]:
    """Extra per-step scalars read off the training forward pass's output dict `out`."""
    del out, step
    return {}


@dataclasses.dataclass(frozen=True)
class Setup:
  """What `MethodSpec.build` is given: the resolved config and the run's shape."""

  spec: "MethodSpec"
  optim: Mapping[str, Any]  # The resolved config.optim.
  modalities: tuple[str, ...]
  num_epochs: int
  param_labels: LabelTree  # models.modality_labels: encoder leaves -> their modality.
  # () -> {modality: pooled feature size}; computed on demand (abstract shapes only).
  feature_dims: Callable[[], Mapping[str, int]] | None = None
  # The resolved config.model (fusion, encoders, ...), or None when the caller has none.
  model: Mapping[str, Any] | None = None

  @property
  def name(self) -> str:
    return self.spec.name

  def require_equal_features(self, why: str) -> None:
    """Raises unless every modality pools to one feature size."""
    if self.feature_dims is None:
      raise ValueError(f"{self.name} needs the pooled feature sizes ({why}); pass "
                       "feature_dims to methods.build_method.")
    dims = dict(self.feature_dims())
    if len(set(dims.values())) > 1:
      raise ValueError(f"{self.name} needs one pooled feature size for every modality "
                       f"({why}); got {dims}. Set the encoders' widths "
                       "(config.model.encoders.<m>.width / pooled_dim) to match.")

  def require_modalities(self, count: int) -> None:
    """Raises unless the run has exactly `count` modalities."""
    if len(self.modalities) != count:
      raise ValueError(f"{self.name} is defined for {count} modalities; this run has "
                       f"{len(self.modalities)} ({', '.join(self.modalities)}). Set "
                       "config.modalities to choose them.")


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  """One registered method name (a config name such as 'redreg_star')."""

  name: str
  summary: str  # One line: what the method does (listings, README's Methods table).
  build: Callable[[Setup], Method]  # Validates the config, returns the Method.
  # config.optim fields beyond (or overriding) methods.OPTIM_DEFAULTS, with defaults.
  defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  docs: Mapping[str, str] = dataclasses.field(default_factory=dict)  # One line per field.
  unimodal_heads: bool = False  # A "*" method: trains one unimodal head per modality.
  # config.optim field -> config_checks.Range: checked before anything is built.
  ranges: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  # The config.model.fusion the method's model needs (None: any). config_lib.base_config
  # sets it, and build_method refuses another (e.g. Greedy's 'greedy_bypass').
  fusion: str | None = None

  def __post_init__(self):
    object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))
    object.__setattr__(self, "ranges", types.MappingProxyType(dict(self.ranges)))
    object.__setattr__(self, "docs", types.MappingProxyType(dict(self.docs)))


def fields(**table) -> tuple[dict[str, Any], dict[str, str]]:
  """Splits {field: (default, doc)} into (defaults, docs): each default beside its doc."""
  return {k: v[0] for k, v in table.items()}, {k: v[1] for k, v in table.items()}


# ---------------------------------------------------------------------------------------
# The registry.
# ---------------------------------------------------------------------------------------

_REGISTRY: dict[str, MethodSpec] = {}  # In registration order: `list_methods()`.


def register(spec: MethodSpec) -> MethodSpec:
  """Adds `spec` under `spec.name`; a name can be registered once."""
  if spec.name in _REGISTRY:
    raise ValueError(f"Method {spec.name!r} is already registered.")
  _REGISTRY[spec.name] = spec
  return spec


def unregister(name: str) -> None:
  """Removes a method (tests register throw-away methods)."""
  _REGISTRY.pop(name, None)


def list_methods() -> list[str]:
  """The registered names, in registration order."""
  return list(_REGISTRY)


def get_spec(name: str) -> MethodSpec:
  """The spec registered as `name`; an unknown name lists the valid ones."""
  if name not in _REGISTRY:
    raise ValueError(f"Unknown method {name!r}; valid: {list_methods()}")
  return _REGISTRY[name]
