"""Tests of DRBML: k-means and purity by hand, Eq.4-6, the schedule, jit, M = 3."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax.drbml import (DRBML_PRESETS, clustering_purity, drbml, kmeans, minmax_scale,
                              purity_gap, reinit_strength, representation_purity, soft_reinit)

MODS = ('audio', 'visual')


def make_params(mods=MODS, seed=0):
  key = jax.random.PRNGKey(seed)
  params = {}
  for i, m in enumerate(mods):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    params[f'encoder_{m}'] = {'conv': {'kernel': jax.random.normal(k1, (2, 2, 1, 3))},
                              'bn': {'scale': jax.random.normal(k2, (3,))}}
  params['fusion'] = {'head': {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros((2,))}}
  return params


def labels_of(params):
  def label(path, _):
    top = path[0].key
    return top[len('encoder_'):] if top.startswith('encoder_') else 'head'
  return jax.tree_util.tree_map_with_path(label, params)


def blobs(key, centers, per_class, scale):
  centers = jnp.asarray(centers, jnp.float32)
  noise = scale * jax.random.normal(key, (centers.shape[0], per_class, centers.shape[1]))
  x = (centers[:, None, :] + noise).reshape(-1, centers.shape[1])
  y = jnp.repeat(jnp.arange(centers.shape[0]), per_class)
  return x, y


def test_purity_by_hand():
  assign = jnp.array([0, 0, 1, 1, 1, 2])
  labels = jnp.array([0, 1, 1, 1, 0, 2])
  # Majority counts per cluster: 1, 2, 1 of 6 samples (Eq.3).
  np.testing.assert_allclose(clustering_purity(assign, labels, 3, 3), 4 / 6, rtol=1e-6)
  np.testing.assert_allclose(clustering_purity(labels, labels, 3, 3), 1.0)


def test_kmeans_lloyd_by_hand():
  x = jnp.array([[0.0], [1.0], [10.0], [11.0]])
  for seed in range(4):
    assign, c, inertia = kmeans(x, 2, jax.random.PRNGKey(seed))
    assert assign[0] == assign[1] != assign[2] == assign[3]
    np.testing.assert_allclose(jnp.sort(c[:, 0]), [0.5, 10.5], rtol=1e-6)
    np.testing.assert_allclose(inertia, 1.0, rtol=1e-6)


@pytest.mark.parametrize('init, restarts', [('random', 1), ('kmeans++', 3)])
def test_kmeans_recovers_separated_blobs(init, restarts):
  x, y = blobs(jax.random.PRNGKey(0), [[0, 0], [20, 0], [0, 20]], 30, 0.5)
  assign, _, _ = kmeans(x, 3, jax.random.PRNGKey(1), init=init, num_restarts=restarts)
  np.testing.assert_allclose(clustering_purity(assign, y, 3, 3), 1.0)
  again, _, _ = kmeans(x, 3, jax.random.PRNGKey(1), init=init, num_restarts=restarts)
  chex.assert_trees_all_equal(assign, again)  # Deterministic given the key.


def test_minmax_scale():
  x = jnp.array([[0.0, 5.0, 2.0], [2.0, 5.0, 4.0], [1.0, 5.0, 3.0]])
  np.testing.assert_allclose(minmax_scale(x), [[-1, -1, -1], [1, -1, 1], [0, -1, 0]], atol=1e-6)


def test_gap_and_strength_eq4_eq5():
  np.testing.assert_allclose(purity_gap(0.7, 0.5), 0.2, rtol=1e-6)
  np.testing.assert_allclose(purity_gap(0.5, 0.7), 0.2, rtol=1e-6)
  np.testing.assert_allclose(reinit_strength(jnp.array([0.2, 0.0]), 3.0),
                             [math.tanh(0.6), 0.0], rtol=1e-6)
  # lambda = 0: a diagnosis without re-initialisation.
  np.testing.assert_array_equal(reinit_strength(jnp.array([0.2, 1.0]), 0.0), [0.0, 0.0])
  assert drbml(MODS, labels_of, lam=0.0).lam == 0.0


@pytest.mark.parametrize('jit', [False, True])
def test_soft_reinit_eq6(jit):
  params = make_params(seed=1)
  init = make_params(seed=2)
  fn = lambda p, p0, a: soft_reinit(p, p0, a, labels_of, MODS)
  fn = jax.jit(fn) if jit else fn
  out = fn(params, init, jnp.array([0.25, 0.0]))
  for leaf in ('conv', 'bn'):
    chex.assert_trees_all_close(
        out['encoder_audio'][leaf],
        jax.tree.map(lambda w, w0: 0.75 * w + 0.25 * w0, params['encoder_audio'][leaf],
                     init['encoder_audio'][leaf]), rtol=1e-6)
  # alpha = 0 and non-encoder leaves: unchanged.
  chex.assert_trees_all_close(out['encoder_visual'], params['encoder_visual'])
  chex.assert_trees_all_close(out['fusion'], params['fusion'])
  chex.assert_trees_all_equal_shapes_and_dtypes(out, params)
  full = fn(params, init, jnp.array([1.0, 1.0]))
  chex.assert_trees_all_close(full['encoder_visual'], init['encoder_visual'])


def test_schedule_paper_vs_released():
  paper = drbml(MODS, labels_of, **DRBML_PRESETS['drbml'])
  official = drbml(MODS, labels_of, **DRBML_PRESETS['drbml_official'])
  assert [e for e in range(100) if paper.should_reinit(e)] == [0, 20, 40, 60, 80]
  assert [e for e in range(100) if official.should_reinit(e)] == [20, 40, 60]
  capped = drbml(MODS, labels_of, every=5, max_reinits=2)
  assert [e for e in range(30) if capped.should_reinit(e)] == [0, 5]


def test_diagnose_three_modalities():
  mods = ('audio', 'visual', 'text')
  centers = [[0, 0], [20, 0], [0, 20]]
  keys = jax.random.split(jax.random.PRNGKey(3), 6)
  # audio: separable on train, overlapping on validation -> large gap;
  # visual and text: equally separable on both -> no gap.
  train = {'audio': blobs(keys[0], centers, 20, 0.5)[0],
           'visual': blobs(keys[1], centers, 20, 0.5)[0],
           'text': blobs(keys[2], centers, 20, 0.5)[0]}
  y_train = blobs(keys[0], centers, 20, 0.5)[1]
  val = {'audio': blobs(keys[3], centers, 20, 200.0)[0],
         'visual': blobs(keys[4], centers, 20, 0.5)[0],
         'text': blobs(keys[5], centers, 20, 0.5)[0]}
  y_val = y_train
  params = make_params(mods)
  # Several restarts: one random initialisation can merge two blobs (a local optimum).
  spec = drbml(mods, labels_of, lam=3.0, num_restarts=5)
  alpha, diag = spec.diagnose(train, y_train, val, y_val, 3, jax.random.PRNGKey(0))
  chex.assert_shape(alpha, (3,))
  np.testing.assert_allclose(diag['purity_train_audio'], 1.0)
  assert float(diag['purity_gap_audio']) > 0.3
  np.testing.assert_allclose(alpha[1:], 0.0, atol=1e-6)  # no gap, no re-init
  np.testing.assert_allclose(alpha[0], math.tanh(3.0 * float(diag['purity_gap_audio'])),
                             rtol=1e-5)
  out = spec.reinit(params, make_params(mods, seed=9), alpha)
  chex.assert_trees_all_close(out['encoder_text'], params['encoder_text'])
  assert not np.allclose(out['encoder_audio']['conv']['kernel'],
                         params['encoder_audio']['conv']['kernel'])


def test_representation_purity_with_scaling_is_jittable():
  x, y = blobs(jax.random.PRNGKey(0), [[0, 0], [20, 0]], 10, 0.5)
  key = jax.random.PRNGKey(2)
  f = lambda x, y, k: representation_purity(x, y, 2, k, feature_scaling='minmax',
                                            init='kmeans++', num_restarts=2)
  chex.assert_trees_all_close(jax.jit(f)(x, y, key), f(x, y, key))
  np.testing.assert_allclose(f(x, y, key), 1.0)


@pytest.mark.parametrize('kwargs, match', [
    (dict(lam=-1.0), 'lam'),
    (dict(lam=float('inf')), 'lam'),
    (dict(every=0), 'every'),
    (dict(max_reinits=0), 'max_reinits'),
    (dict(skip_first='yes'), 'skip_first'),
    (dict(feature_scaling='zscore'), 'feature_scaling'),
    (dict(init='farthest'), 'init'),
    (dict(num_restarts=0), 'num_restarts'),
    (dict(max_iters=0), 'max_iters'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    drbml(MODS, labels_of, **kwargs)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='distinct'):
    drbml(('audio', 'audio'), labels_of)
  with pytest.raises(ValueError, match='num_clusters'):
    kmeans(jnp.zeros((2, 3)), 3, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="labelled 'text'"):
    soft_reinit(make_params(), make_params(), jnp.zeros((3,)), labels_of,
                ('audio', 'visual', 'text'))
