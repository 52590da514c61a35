"""DRBML, "Diagnosing & Re-learning" (Wei et al., ECCV 2024): purity diagnosis and soft re-init.

Every H epochs each uni-modal encoder is diagnosed by the separability of its
features: k-means with M clusters (M = number of classes; Eq.1-2) on the
training features and, separately, on held-out features, each scored by
clustering purity P (Eq.3); the purity gap g_k = |P_D - P_V| (Eq.4) is large for
a well-learnt (or over-trained) modality. Each encoder is then softly
re-initialised towards its initial weights with strength alpha_k = tanh(lambda
g_k) (Eq.5-6): theta_k <- (1 - alpha_k) theta_k + alpha_k theta_k^init. Every
modality is re-initialised, the well-learnt one most. The method adds no loss
and no gradient transformation: one multimodal cross-entropy, plain SGD, and an
epoch hook. Equation numbers are the DRBML paper's.

What the trainer must supply (an epoch hook, after the epoch's training):

* Once, before the first step: a copy of the initial parameters theta^init
  (`init_params`, the same pytree as params).
* A held-out validation split V, disjoint from the training set D (the released
  code: CREMA-D's val.csv, with training on my_train.csv = train minus val).
* At the end of every epoch t with `spec.should_reinit(t)` (Algorithm 1: t mod H
  == 0): for each modality k, the pooled encoder features of the whole training
  set and of V from an inference-mode pass without gradient (the released code
  iterates the shuffled training loader in eval mode), with their labels; then
  `alpha_M, diag = spec.diagnose(train_feats, train_labels, val_feats, val_labels,
  num_classes, key)` and `params = spec.reinit(params, init_params, alpha_M)`.
  BatchNorm statistics and the optimizer state are left as they are (the
  released code re-initialises `named_parameters` only and keeps SGD momentum).

Paper vs released code (GitHub GeWu-Lab/Diagnosing_Relearning_ECCV2024,
code/ours.py): the paper diagnoses at every t with t mod H == 0 (t = 0 included),
clusters the raw features from M randomly picked samples as initial centroids;
the code skips epoch 0, re-initialises at most `reinit_num` = 3 times, scales
each feature set to [-1, 1] per dimension (MinMaxScaler fitted on that set)
and runs scikit-learn's KMeans (k-means++ initialisation, random_state 0; its
n_init depends on the scikit-learn version, 10 before 1.4). Both re-initialise
every encoder parameter (conv and BatchNorm scale/bias alike). The default is
the paper's; `DRBML_PRESETS['drbml_official']` the code's (k-means++ here is the
plain, not scikit-learn's greedy, variant).

Any number of modalities K >= 1 (the paper runs CMU-MOSI with three).
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from redreg_jax.observations import LabelTree, resolve_labels

PyTree = Any

__all__ = ['DRBML', 'DRBML_PRESETS', 'FEATURE_SCALINGS', 'INITS', 'clustering_purity', 'drbml',
           'kmeans', 'minmax_scale', 'purity_gap', 'reinit_strength', 'representation_purity',
           'soft_reinit']

FEATURE_SCALINGS = ('none', 'minmax')
INITS = ('random', 'kmeans++')

DRBML_PRESETS: dict[str, dict[str, Any]] = {
    # The paper (Sec.4.2): lambda = 3 on CREMA-D (7 Kinetics-Sounds and UCF-101, 8
    # CMU-MOSI), H = 20 (5 on CMU-MOSI), Algorithm 1's schedule, plain k-means.
    'drbml': dict(lam=3.0, every=20, max_reinits=None, skip_first=False,
                  feature_scaling='none', init='random', num_restarts=1),
    # The released ours.py / ours.sh: move_lambda 3, reinit_epoch 20, reinit_num 3,
    # epoch 0 skipped, MinMaxScaler(-1, 1), KMeans(k-means++, n_init 10).
    'drbml_official': dict(lam=3.0, every=20, max_reinits=3, skip_first=True,
                           feature_scaling='minmax', init='kmeans++', num_restarts=10),
}


def minmax_scale(features_NxD: jax.Array, feature_range: tuple[float, float] = (-1.0, 1.0)
                 ) -> jax.Array:
  """Per-dimension min-max scaling of one feature set (the released code's MinMaxScaler).

  Args:
    features_NxD: [N, D] features.
    feature_range: (low, high) of the scaled features.

  Returns:
    [N, D] float32; a constant dimension maps to `low`, as scikit-learn does.
  """
  x = features_NxD.astype(jnp.float32)
  lo, hi = jnp.min(x, axis=0), jnp.max(x, axis=0)
  span = jnp.where(hi > lo, hi - lo, 1.0)
  low, high = feature_range
  return (x - lo) / span * (high - low) + low


def _sq_distances(x_NxD: jax.Array, c_KxD: jax.Array) -> jax.Array:
  """||x_i - c_k||^2 without the [N, K, D] difference tensor, clipped at 0."""
  d = (jnp.sum(jnp.square(x_NxD), axis=1, keepdims=True) - 2.0 * x_NxD @ c_KxD.T
       + jnp.sum(jnp.square(c_KxD), axis=1)[None, :])
  return jnp.maximum(d, 0.0)


def _init_random(x_NxD, num_clusters, key):
  idx = jax.random.choice(key, x_NxD.shape[0], (num_clusters,), replace=False)
  return x_NxD[idx]


def _init_kmeans_pp(x_NxD, num_clusters, key):
  """k-means++: each new centroid drawn with probability proportional to D(x)^2."""
  n = x_NxD.shape[0]
  key, first = jax.random.split(key)
  centroids = jnp.zeros((num_clusters, x_NxD.shape[1]), x_NxD.dtype)
  centroids = centroids.at[0].set(x_NxD[jax.random.randint(first, (), 0, n)])
  min_d = _sq_distances(x_NxD, centroids[:1])[:, 0]

  def body(k, carry):
    centroids, min_d, key = carry
    key, sub = jax.random.split(key)
    # P(x) = D(x)^2 / sum D^2; uniform when every point already is a centroid.
    positive = min_d > 0
    logits = jnp.where(positive, jnp.log(jnp.where(positive, min_d, 1.0)), -jnp.inf)
    logits = jnp.where(jnp.any(positive), logits, 0.0)
    new = x_NxD[jax.random.categorical(sub, logits)]
    centroids = centroids.at[k].set(new)
    min_d = jnp.minimum(min_d, _sq_distances(x_NxD, new[None])[:, 0])
    return centroids, min_d, key

  centroids, _, _ = jax.lax.fori_loop(1, num_clusters, body, (centroids, min_d, key))
  return centroids


def _lloyd(x_NxD, centroids_KxD, max_iters):
  """Assignment (Eq.1) and update (Eq.2) steps until no assignment changes."""
  num_clusters = centroids_KxD.shape[0]

  def assign(c):
    return jnp.argmin(_sq_distances(x_NxD, c), axis=1)

  def update(assign_N, c):
    onehot = jax.nn.one_hot(assign_N, num_clusters, dtype=x_NxD.dtype)
    counts = jnp.sum(onehot, axis=0)
    means = (onehot.T @ x_NxD) / jnp.maximum(counts, 1.0)[:, None]
    return jnp.where((counts > 0)[:, None], means, c)  # An empty cluster keeps its centroid.

  def cond(carry):
    i, _, _, changed = carry
    return (i < max_iters) & changed

  def body(carry):
    i, assign_N, c, _ = carry
    c = update(assign_N, c)
    new_assign = assign(c)
    return i + 1, new_assign, c, jnp.any(new_assign != assign_N)

  assign0 = assign(centroids_KxD)
  _, assign_N, c, _ = jax.lax.while_loop(
      cond, body, (jnp.asarray(0), assign0, centroids_KxD, jnp.asarray(True)))
  inertia = jnp.sum(jnp.min(_sq_distances(x_NxD, c), axis=1))
  return assign_N, c, inertia


@functools.partial(jax.jit, static_argnames=('num_clusters', 'init', 'max_iters',
                                             'num_restarts'))
def kmeans(features_NxD: jax.Array, num_clusters: int, key: jax.Array, *,
           init: str = 'random', max_iters: int = 300,
           num_restarts: int = 1) -> tuple[jax.Array, jax.Array, jax.Array]:
  """k-means clustering (Eq.1-2): Lloyd iterations until the assignments are stable.

  Args:
    features_NxD: [N, D] features, N >= num_clusters.
    num_clusters: number of clusters (DRBML: the number of classes M).
    key: PRNG key for the initial centroids.
    init: 'random' (M distinct samples, the paper) or 'kmeans++' (released code's
      scikit-learn initialisation, plain variant).
    max_iters: cap on the update steps (scikit-learn: 300).
    num_restarts: independent initialisations; the one with the lowest inertia
      is kept (scikit-learn's n_init).

  Returns:
    ([N] int32 cluster of each sample, [num_clusters, D] centroids, [] inertia).
  """
  if init not in INITS:
    raise ValueError(f'kmeans: init must be one of {INITS}; got {init!r}.')
  if features_NxD.shape[0] < num_clusters:
    raise ValueError(f'kmeans: need at least num_clusters = {num_clusters} samples; got '
                     f'{features_NxD.shape[0]}.')
  x = features_NxD.astype(jnp.float32)
  init_fn = _init_random if init == 'random' else _init_kmeans_pp

  def one(k):
    return _lloyd(x, init_fn(x, num_clusters, k), max_iters)

  assign_RxN, c_RxKxD, inertia_R = jax.vmap(one)(jax.random.split(key, num_restarts))
  best = jnp.argmin(inertia_R)
  return assign_RxN[best].astype(jnp.int32), c_RxKxD[best], inertia_R[best]


def clustering_purity(assignments_N: jax.Array, labels_N: jax.Array, num_clusters: int,
                      num_classes: int) -> jax.Array:
  """P = (1 / N) sum_{C_m} max_{Z_j} |C_m intersect Z_j| (Eq.3).

  Args:
    assignments_N: [N] int cluster of each sample.
    labels_N: [N] int class of each sample.
    num_clusters: number of clusters.
    num_classes: number of classes.

  Returns:
    [] float32 purity in (0, 1].
  """
  contingency_KxC = (jax.nn.one_hot(assignments_N, num_clusters, dtype=jnp.float32).T
                     @ jax.nn.one_hot(labels_N, num_classes, dtype=jnp.float32))
  return jnp.sum(jnp.max(contingency_KxC, axis=1)) / assignments_N.shape[0]


def representation_purity(features_NxD: jax.Array, labels_N: jax.Array, num_classes: int,
                          key: jax.Array, *, feature_scaling: str = 'none',
                          init: str = 'random', max_iters: int = 300,
                          num_restarts: int = 1) -> jax.Array:
  """Purity of k-means with num_classes clusters on one feature set (Eq.1-3)."""
  if feature_scaling not in FEATURE_SCALINGS:
    raise ValueError(f'representation_purity: feature_scaling must be one of '
                     f'{FEATURE_SCALINGS}; got {feature_scaling!r}.')
  x = minmax_scale(features_NxD) if feature_scaling == 'minmax' else features_NxD
  assign_N, _, _ = kmeans(x, num_classes, key, init=init, max_iters=max_iters,
                          num_restarts=num_restarts)
  return clustering_purity(assign_N, labels_N, num_classes, num_classes)


def purity_gap(purity_train: jax.Array, purity_val: jax.Array) -> jax.Array:
  """g_k = |P^k_D - P^k_V| (Eq.4)."""
  return jnp.abs(jnp.asarray(purity_train, jnp.float32) - jnp.asarray(purity_val, jnp.float32))


def reinit_strength(gap: jax.Array, lam: float) -> jax.Array:
  """alpha_k = tanh(lambda g_k) (Eq.5), in [0, 1) for g_k in [0, 1]."""
  return jnp.tanh(lam * jnp.asarray(gap, jnp.float32))


def soft_reinit(params: PyTree, init_params: PyTree, alpha_M: jax.Array,
                param_labels: LabelTree, modalities: Sequence[str]) -> PyTree:
  """theta_k <- (1 - alpha_k) theta_k + alpha_k theta_k^init for every encoder k (Eq.6).

  Args:
    params: current parameters.
    init_params: theta^init, the parameters at initialisation (same structure).
    alpha_M: [M] re-initialisation strengths, in `modalities` order.
    param_labels: label tree (or callable params -> label tree); leaves labelled
      with a modality name are that encoder, all others are left unchanged.
    modalities: modality names.

  Returns:
    The re-initialised parameters (same structure and dtypes).
  """
  modalities = tuple(modalities)
  leaves, treedef = jax.tree.flatten(params)
  try:
    init_leaves = treedef.flatten_up_to(init_params)
    labels = treedef.flatten_up_to(resolve_labels(param_labels, params))
  except (ValueError, TypeError) as e:
    raise ValueError('soft_reinit: init_params and param_labels must have the structure of '
                     f'params (one string label per leaf): {e}') from e
  for m in modalities:
    if not any(isinstance(label, str) and label == m for label in labels):
      raise ValueError(f"soft_reinit: no parameter is labelled {m!r}; label that modality's "
                       f'encoder leaves {m!r} in param_labels.')
  alpha_M = jnp.asarray(alpha_M, jnp.float32)
  out = []
  for w, w0, label in zip(leaves, init_leaves, labels):
    if isinstance(label, str) and label in modalities:
      a = alpha_M[modalities.index(label)]
      w = ((1.0 - a) * w.astype(jnp.float32) + a * w0.astype(jnp.float32)).astype(w.dtype)
    out.append(w)
  return treedef.unflatten(out)


@dataclasses.dataclass(frozen=True)
class DRBML:
  """DRBML with validated hyper-parameters (build it with `drbml`)."""

  modalities: tuple[str, ...]
  param_labels: Any
  lam: float
  every: int
  max_reinits: int | None
  skip_first: bool
  feature_scaling: str
  init: str
  num_restarts: int
  max_iters: int

  def should_reinit(self, epoch: int) -> bool:
    """Whether to diagnose and re-initialise after 0-based epoch `epoch` (Algorithm 1)."""
    if epoch % self.every:
      return False
    k = epoch // self.every  # This is the k-th multiple of H (epoch 0 is k = 0).
    if self.skip_first:
      if k == 0:
        return False
      count = k
    else:
      count = k + 1
    return self.max_reinits is None or count <= self.max_reinits

  def diagnose(self, train_features: Mapping[str, jax.Array], train_labels: jax.Array,
               val_features: Mapping[str, jax.Array], val_labels: jax.Array,
               num_classes: int, key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Purity on D and V, gap and strength of every encoder (Eq.3-5).

    Returns:
      ([M] alpha in `modalities` order, {'purity_train_<m>', 'purity_val_<m>',
      'purity_gap_<m>', 'reinit_alpha_<m>'} scalars).
    """
    kw = dict(feature_scaling=self.feature_scaling, init=self.init, max_iters=self.max_iters,
              num_restarts=self.num_restarts)
    diag, alphas = {}, []
    for i, m in enumerate(self.modalities):
      k_train, k_val = jax.random.split(jax.random.fold_in(key, i))
      p_d = representation_purity(train_features[m], train_labels, num_classes, k_train, **kw)
      p_v = representation_purity(val_features[m], val_labels, num_classes, k_val, **kw)
      gap = purity_gap(p_d, p_v)
      alpha = reinit_strength(gap, self.lam)
      diag.update({f'purity_train_{m}': p_d, f'purity_val_{m}': p_v,
                   f'purity_gap_{m}': gap, f'reinit_alpha_{m}': alpha})
      alphas.append(alpha)
    return jnp.stack(alphas), diag

  def reinit(self, params: PyTree, init_params: PyTree, alpha_M: jax.Array) -> PyTree:
    """`soft_reinit` of every encoder with this spec's labels (Eq.6)."""
    return soft_reinit(params, init_params, alpha_M, self.param_labels, self.modalities)


def drbml(modalities: Sequence[str], param_labels: LabelTree, *, lam: float = 3.0,
          every: int = 20, max_reinits: int | None = None, skip_first: bool = False,
          feature_scaling: str = 'none', init: str = 'random', num_restarts: int = 1,
          max_iters: int = 300) -> DRBML:
  """Validates DRBML's hyper-parameters and returns the epoch-hook spec.

  Args:
    modalities: distinct modality names (any number >= 1).
    param_labels: label tree (or callable params -> label tree) naming each
      encoder's leaves by its modality.
    lam: lambda of Eq.5, >= 0 (the paper asks lambda > 1; CREMA-D 3, Kinetics-Sounds
      and UCF-101 7, CMU-MOSI 8); 0 gives alpha = 0, a diagnosis that changes nothing.
    every: H, diagnose every H epochs, >= 1 (paper: 20; CMU-MOSI 5).
    max_reinits: cap on the number of re-initialisations (released code: 3); None:
      no cap (paper).
    skip_first: skip epoch 0 (released code) instead of Algorithm 1's t = 0.
    feature_scaling: 'none' (paper) or 'minmax' (released code) before k-means.
    init: k-means initialisation, 'random' (paper) or 'kmeans++' (released code).
    num_restarts: k-means restarts, >= 1 (released code's scikit-learn: 10).
    max_iters: k-means iteration cap, >= 1.

  Returns:
    A frozen `DRBML`.

  References:
    Wei, Li, Feng & Hu, Diagnosing and Re-learning for Balanced Multimodal
    Learning, ECCV 2024.
  """
  modalities = (modalities,) if isinstance(modalities, str) else tuple(modalities)
  if not modalities or len(set(modalities)) != len(modalities) or not all(
      isinstance(m, str) for m in modalities):
    raise ValueError(f"drbml: modalities must be distinct names such as ('audio', 'visual'); "
                     f'got {modalities!r}.')
  if not isinstance(lam, numbers.Real) or isinstance(lam, bool) or not 0 <= lam < float('inf'):
    raise ValueError(f'drbml: lam must be a finite number >= 0 (paper: 3 on CREMA-D, 7 on '
                     f'Kinetics-Sounds; 0 diagnoses only); got {lam!r}.')
  for name, value in (('every', every), ('num_restarts', num_restarts),
                      ('max_iters', max_iters)):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
      raise ValueError(f'drbml: {name} must be an int >= 1; got {value!r}.')
  if max_reinits is not None and (isinstance(max_reinits, bool) or not isinstance(
      max_reinits, numbers.Integral) or max_reinits < 1):
    raise ValueError(f'drbml: max_reinits must be None or an int >= 1 (released code: 3); '
                     f'got {max_reinits!r}.')
  if not isinstance(skip_first, bool):
    raise ValueError(f'drbml: skip_first must be a bool; got {skip_first!r}.')
  if feature_scaling not in FEATURE_SCALINGS:
    raise ValueError(f'drbml: feature_scaling must be one of {FEATURE_SCALINGS}; got '
                     f'{feature_scaling!r}.')
  if init not in INITS:
    raise ValueError(f'drbml: init must be one of {INITS}; got {init!r}.')
  if param_labels is None:
    raise ValueError('drbml: param_labels is required (a label tree or callable naming each '
                     "encoder's leaves by its modality).")
  return DRBML(modalities, param_labels, float(lam), int(every), max_reinits, skip_first,
               feature_scaling, init, int(num_restarts), int(max_iters))
