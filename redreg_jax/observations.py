"""The per-step observations every balancing transform is fed.

The train step builds one `Observations` per step (inside `jit`, from the global
batch) and passes it to the optimizer chain as the keyword `observations`:

  updates, opt_state = tx.update(grads, opt_state, params, observations=obs)

`optax.chain` forwards extra keyword arguments to every transformation of the
chain, so SGD, weight decay and the balancing transform share one call.

Modality-keyed fields are dicts keyed by modality name (`'audio'`, `'visual'`,
`'text'`); a transform is given the modality order it should use (`modalities`),
never relies on dict order.

Which parameters belong to which modality's encoder is said by a *label tree*:
a pytree with the structure of the params whose leaves are strings, a modality
name for encoder parameters and anything else (e.g. `'head'`) for the rest; or a
callable `params -> label tree`, as `optax.partition` accepts.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

PyTree = Any
LabelTree = Union[PyTree, Callable[[PyTree], PyTree]]


class Observations(NamedTuple):
  """What one train step observed; every field is a jax array (or pytree)."""

  # modality -> [B, K] logits of that modality's branch (docs/methods.md §Setting).
  branch_logits: Mapping[str, jax.Array]
  # [B] int32 class labels.
  labels: jax.Array
  # modality -> [B, D] pooled encoder features of the main forward pass.
  features: Mapping[str, jax.Array]
  # [] int32, 0-based epoch of this step.
  epoch: jax.Array
  # modality -> [] float32 raw redundancy red_m (RedReg Eq.20); only meaningful
  # where `redundancy_valid[m]` is True (twins are computed for the dominant
  # modality only unless full logging is on). Empty dict if nobody needs it.
  redundancy: Mapping[str, jax.Array] = {}
  # modality -> [] bool, whether `redundancy[m]` was computed this step.
  redundancy_valid: Mapping[str, jax.Array] = {}
  # PRNG key for stochastic transforms (OGM-GE noise); deterministic per step.
  rng: jax.Array | None = None
  # Extra gradients some methods need (MMPareto): a dict of param-shaped
  # pytrees, e.g. {'multimodal': g_mm, 'unimodal': g_uni}. None otherwise.
  aux_grads: Mapping[str, PyTree] | None = None
  # The method's own per-epoch arrays (TrainState.method_state, set by its epoch
  # hooks; redreg_jax/methods/spec.py), e.g. which branch a Greedy schedule updates.
  method_state: PyTree = None


def resolve_labels(labels: LabelTree, params: PyTree) -> PyTree:
  """Returns the label tree for `params` (calls `labels` if it is callable)."""
  return labels(params) if callable(labels) else labels


def branch_true_class_prob(logits_BxK: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Batch mean of softmax(logits)[y]: p_m of RedReg Eq.14 (and InfoReg's s_m)."""
  probs = jax.nn.softmax(logits_BxK.astype(jnp.float32), axis=-1)
  return jnp.mean(jnp.take_along_axis(probs, labels_B[:, None], axis=-1))


def true_class_probs(obs: Observations, modalities: Sequence[str]) -> jax.Array:
  """[M] p_m for each modality in `modalities` order (RedReg Eq.14)."""
  return jnp.stack(
      [branch_true_class_prob(obs.branch_logits[m], obs.labels) for m in modalities])


def dominant_modality(probs_M: jax.Array) -> jax.Array:
  """Index of the dominant modality m* = argmax_m p_m (docs/methods.md §RedReg step 5)."""
  return jnp.argmax(probs_M)
