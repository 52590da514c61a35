"""The method registry: every balancing method by name, one module per method family.

  from redreg_jax import methods
  methods.list_methods()            # ['joint', 'joint_star', 'redreg', ...]
  methods.method_config('redreg')   # config.optim: the shared SGD settings + its defaults
  method = methods.build_method('redreg', optim, modalities=..., param_labels=...,
                                num_epochs=...)  # what the trainer asks (spec.Method)

Each module below declares its `MethodSpec`s (spec.py says what a spec holds) and
registers them on import. `list_methods()` gives them in `_MODULES` order, then each
module's registration order: the order of the README's Methods table and of
docs/methods.md's sections.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Mapping

import ml_collections
import optax

from redreg_jax.methods.spec import (  # noqa: F401  (the API method modules use)
    BRANCH_CE, MULTIMODAL_CE, UNIMODAL_CE, EpochContext, EpochHook, EpochUpdate, LossTerm,
    Method, MethodSpec, Setup, Step, cross_entropy, fields, get_spec, list_methods,
    register, total_gradient, unregister)

# Shared SGD settings (RedReg paper IV-B; docs/methods.md) and two data/model choices
# every method can take from the authors' released code. Overridable per method.
OPTIM_DEFAULTS, SHARED_DOCS = fields(
    lr=(0.002, "SGD learning rate (RedReg paper IV-B: 0.002)."),
    momentum=(0.9, "SGD momentum (0.9)."),
    weight_decay=(1e-4, "L2 weight decay, applied after the balancing transform (1e-4)."),
    lr_decay_epochs=((40,), "epochs at which the learning rate is multiplied by "
                            "lr_decay_factor."),
    lr_decay_factor=(0.1, "step-decay factor of the learning rate (0.1)."),
    linear_init=("xavier_uniform", "init of linear layers: 'xavier_uniform' or "
                                   "'xavier_normal' (released code)."),
    keep_partial_batch=(False, "train on the last partial batch of each epoch (released "
                               "code) instead of dropping it."),
)

# The method modules, in listing order (README Methods table, docs/methods.md).
_MODULES = ("joint", "redreg", "inforeg", "ogm", "mmpareto", "drbml", "gblending", "pmr",
            "greedy", "agm")
for _module in _MODULES:
  importlib.import_module(f"{__name__}.{_module}")


def method_config(name: str) -> ml_collections.ConfigDict:
  """Default `config.optim` for a method (SGD settings plus its hyper-parameters)."""
  return ml_collections.ConfigDict(dict(OPTIM_DEFAULTS, **get_spec(name).defaults))


def optim_docs(name: str | None = None) -> dict[str, str]:
  """One line per config.optim field: of method `name`, or of every method (merged)."""
  if name is not None:
    spec = get_spec(name)
    return {k: spec.docs.get(k, SHARED_DOCS.get(k, "")) for k in method_config(name)}
  docs = dict(SHARED_DOCS)
  for spec in map(get_spec, list_methods()):
    for k, text in spec.docs.items():  # One field name, several methods: each one's line.
      if text not in docs.get(k, "").split(" / "):
        docs[k] = f"{docs[k]} / {text}" if k in docs else text
  return docs


def build_method(name: str, optim: Mapping[str, Any], *, modalities, param_labels,
                 num_epochs: int,
                 feature_dims: Callable[[], Mapping[str, int]] | None = None,
                 fusion: str | None = None,
                 model: Mapping[str, Any] | None = None) -> Method:
  """Resolves a method name and its `config.optim` into the `Method` the trainer runs.

  Args:
    name: a registered name (`list_methods()`).
    optim: the resolved config.optim.
    modalities: the run's modalities, in order.
    param_labels: label tree or callable (models.modality_labels).
    num_epochs: the run's length.
    feature_dims: () -> {modality: pooled feature size}, for methods that check it.
    fusion: the run's config.model.fusion, checked against `MethodSpec.fusion`.
    model: the resolved config.model, for methods that check the fusion.
  Returns:
    The `Method`; a bad config raises ValueError naming the field.
  """
  spec = get_spec(name)
  if fusion is None and model is not None:
    fusion = model.get("fusion")
  if spec.fusion is not None and fusion is not None and fusion != spec.fusion:
    raise ValueError(f"{name} trains its own model, config.model.fusion={spec.fusion!r} "
                     f"(docs/methods.md); got {fusion!r}. Set "
                     f"--config.model.fusion={spec.fusion} (configs/*.py:{name} sets it).")
  method = spec.build(Setup(spec, optim, tuple(modalities), int(num_epochs), param_labels,
                            feature_dims, model))
  if method.unimodal_heads != spec.unimodal_heads:
    raise AssertionError(f"{name}: MethodSpec.unimodal_heads={spec.unimodal_heads} but its "
                         f"loss terms {[t.name for t in method.losses]} disagree.")
  return method


def learning_rate_schedule(optim, steps_per_epoch: int) -> optax.Schedule:
  """Step decay: lr x factor at each epoch in `lr_decay_epochs`."""
  boundaries = {int(e) * steps_per_epoch: float(optim.lr_decay_factor)
                for e in optim.lr_decay_epochs if int(e) > 0}
  return optax.piecewise_constant_schedule(float(optim.lr), boundaries)


def build_optimizer(method: Method, optim, steps_per_epoch: int):
  """transform -> add_decayed_weights -> sgd(momentum) (docs/methods.md §RedReg: decay after)."""
  parts = [method.transform()] if method.transform is not None else []
  parts += [optax.add_decayed_weights(float(optim.weight_decay)),
            optax.sgd(learning_rate_schedule(optim, steps_per_epoch),
                      momentum=float(optim.momentum))]
  return optax.chain(*parts)


def __getattr__(name: str):
  """Read-only views derived from the registry (always current)."""
  if name == "METHODS":  # {name: its method-specific config.optim defaults}, listing order.
    return {n: dict(get_spec(n).defaults) for n in list_methods()}
  if name == "STAR_METHODS":  # The "*" methods: one unimodal head and CE per modality.
    return frozenset(n for n in list_methods() if get_spec(n).unimodal_heads)
  if name == "OPTIM_DOCS":  # One line per config.optim field of any method.
    return optim_docs()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
