"""Tests of the OGM / OGM-GE transform: coefficients by hand, window, noise, chaining."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from redreg_jax.observations import Observations
from redreg_jax.ogm import default_kernel_filter, ogm_coefficients, ogm_ge_transform

MODS = ('audio', 'visual')


def make_params(mods=MODS, kernel_shape=(2, 2, 1, 3)):
  params = {}
  for i, m in enumerate(mods):
    k1, k2 = jax.random.split(jax.random.PRNGKey(i))
    params[m] = {'conv': {'kernel': jax.random.normal(k1, kernel_shape)},
                 'bn': {'scale': jax.random.normal(k2, (3,))}}
  # A 4-D 'kernel' outside every encoder: must never be touched.
  params['head'] = {'kernel': jnp.ones((1, 1, 2, 2)), 'bias': jnp.ones((2,))}
  return params


def labels_of(params):
  return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}


def obs_for(probs, epoch, mods=MODS, rng=None, batch=4):
  """Branch m has true-class probability probs[m] on every example (score = batch * p)."""
  logits = {m: jnp.tile(jnp.array([[math.log(p / (1 - p)), 0.0]]), (batch, 1))
            for m, p in zip(mods, probs)}
  return Observations(branch_logits=logits, labels=jnp.zeros((batch,), jnp.int32),
                      features={}, epoch=jnp.asarray(epoch, jnp.int32), rng=rng)


def official_two_modality(s_a, s_v, alpha):
  """The official code's rule, written as there (docs/methods.md §OGM-GE)."""
  ratio = s_a / s_v
  if ratio > 1:
    return 1 - math.tanh(alpha * ratio), 1.0
  return 1.0, 1 - math.tanh(alpha / ratio)


def test_coefficients_by_hand():
  np.testing.assert_allclose(ogm_coefficients(jnp.array([3.0, 2.0]), 0.8),
                             [1 - math.tanh(1.2), 1.0], rtol=1e-6)
  np.testing.assert_allclose(ogm_coefficients(jnp.array([2.0, 3.0]), 0.8),
                             [1.0, 1 - math.tanh(1.2)], rtol=1e-6)
  # M = 3: each modality against the weakest (s = 1).
  np.testing.assert_allclose(ogm_coefficients(jnp.array([3.0, 1.0, 2.0]), 0.8),
                             [1 - math.tanh(2.4), 1.0, 1 - math.tanh(1.6)], rtol=1e-6)


@pytest.mark.parametrize('s_a, s_v', [(3.0, 2.0), (2.0, 3.0), (2.5, 2.5), (40.1, 12.3), (0.7, 9.0)])
def test_generalisation_reduces_to_official_two_modality_rule(s_a, s_v):
  np.testing.assert_allclose(ogm_coefficients(jnp.array([s_a, s_v]), 0.8),
                             official_two_modality(s_a, s_v, 0.8), rtol=1e-5)


def test_default_kernel_filter():
  params = make_params()
  chosen = [p for p, x in jax.tree_util.tree_leaves_with_path(params)
            if default_kernel_filter(p, x)]
  assert len(chosen) == 3  # two encoder convs and the head's 4-D kernel.


@pytest.mark.parametrize('jit', [False, True])
def test_plain_ogm_scales_leader_conv_kernels_only(jit):
  params = make_params()
  grads = jax.tree.map(lambda x: 2.0 * x + 1.0, params)
  tx = ogm_ge_transform(MODS, labels_of, gaussian_noise=False)
  update = jax.jit(tx.update) if jit else tx.update
  out, state = update(grads, tx.init(params), params, observations=obs_for((0.75, 0.5), 3))
  k_a = 1 - math.tanh(0.8 * 1.5)  # ratio = (4 * 0.75) / (4 * 0.5)
  expected = jax.tree.map(lambda g: g, grads)
  expected['audio']['conv']['kernel'] = grads['audio']['conv']['kernel'] * k_a
  chex.assert_trees_all_close(out, expected, rtol=1e-6)
  diag = optax.tree_utils.tree_get(state, 'diagnostics')
  np.testing.assert_allclose(diag['coeff_audio'], k_a, rtol=1e-6)
  np.testing.assert_allclose(diag['score_audio'], 3.0, rtol=1e-6)
  assert float(diag['coeff_visual']) == 1.0 and float(diag['modulating']) == 1.0
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(params))


@pytest.mark.parametrize('gaussian_noise', [False, True])
def test_identity_outside_inclusive_window(gaussian_noise):
  params = make_params()
  grads = jax.tree.map(lambda x: x + 1.0, params)
  tx = ogm_ge_transform(MODS, labels_of, start_epoch=2, end_epoch=4, gaussian_noise=gaussian_noise)
  update = jax.jit(tx.update)
  state = tx.init(params)
  for epoch, inside in ((1, False), (2, True), (4, True), (5, False)):
    obs = obs_for((0.75, 0.5), epoch, rng=jax.random.PRNGKey(7))
    out, state = update(grads, state, params, observations=obs)
    changed = not np.allclose(out['audio']['conv']['kernel'], grads['audio']['conv']['kernel'])
    assert changed == inside, epoch
    if not inside:
      chex.assert_trees_all_close(out, grads)
      assert float(state.diagnostics['coeff_audio']) == 1.0


def test_ge_noise_deterministic_with_gradient_std():
  params = make_params(kernel_shape=(3, 3, 16, 32))
  grads = jax.tree.map(lambda x: 0.3 * x + 0.1, params)
  tx = ogm_ge_transform(MODS, labels_of)
  update = jax.jit(tx.update)
  state = tx.init(params)
  obs = lambda seed: obs_for((0.75, 0.5), 0, rng=jax.random.PRNGKey(seed))
  out1, _ = update(grads, state, params, observations=obs(1))
  out2, _ = update(grads, state, params, observations=obs(1))
  out3, _ = update(grads, state, params, observations=obs(2))
  chex.assert_trees_all_close(out1, out2)
  assert not np.allclose(out1['audio']['conv']['kernel'], out3['audio']['conv']['kernel'])
  k = {'audio': 1 - math.tanh(1.2), 'visual': 1.0}
  noises = []
  for m in MODS:
    g = np.asarray(grads[m]['conv']['kernel'])
    noise = np.asarray(out1[m]['conv']['kernel']) - k[m] * g
    np.testing.assert_allclose(noise.std(), g.std(ddof=1), rtol=0.05)
    assert abs(noise.mean()) < 0.1 * g.std()
    noises.append(noise.ravel())
    # Non-kernel encoder leaves get neither scaling nor noise.
    chex.assert_trees_all_close(out1[m]['bn'], grads[m]['bn'])
  assert abs(np.corrcoef(noises[0], noises[1])[0, 1]) < 0.1  # independent per tensor.
  chex.assert_trees_all_close(out1['head'], grads['head'])


def test_ge_without_rng_raises():
  params = make_params()
  tx = ogm_ge_transform(MODS, labels_of)
  with pytest.raises(ValueError, match='rng'):
    tx.update(params, tx.init(params), params, observations=obs_for((0.6, 0.5), 0))


def test_three_modalities_and_custom_filter():
  mods = ('audio', 'visual', 'text')
  params = make_params(mods)
  grads = jax.tree.map(jnp.ones_like, params)
  tx = ogm_ge_transform(mods, labels_of, gaussian_noise=False,
                        kernel_filter=lambda path, x: x.ndim >= 1)
  out, state = jax.jit(tx.update)(grads, tx.init(params), params,
                                  observations=obs_for((0.6, 0.2, 0.4), 0, mods))
  expected_k = {'audio': 1 - math.tanh(0.8 * 3), 'visual': 1.0, 'text': 1 - math.tanh(0.8 * 2)}
  for m, k in expected_k.items():
    chex.assert_trees_all_close(out[m], jax.tree.map(lambda g: g * k, grads[m]), rtol=1e-5)
    np.testing.assert_allclose(state.diagnostics[f'coeff_{m}'], k, rtol=1e-5)
  chex.assert_trees_all_close(out['head'], grads['head'])


def test_chain_with_weight_decay_and_momentum_matches_numpy():
  params = {'audio': {'kernel': jnp.full((1, 1, 1, 2), 0.5)},
            'visual': {'kernel': jnp.full((1, 1, 1, 2), -1.0)},
            'head': {'kernel': jnp.array([2.0, 1.0])}}
  labels = {'audio': {'kernel': 'audio'}, 'visual': {'kernel': 'visual'},
            'head': {'kernel': 'head'}}
  grads = [jax.tree.map(lambda x, c=c: jnp.full_like(x, c), params) for c in (0.4, -0.2, 0.3)]
  probs = [(0.75, 0.5), (0.4, 0.8), (0.6, 0.6)]
  lr, wd, mu = 0.05, 1e-4, 0.9
  tx = optax.chain(ogm_ge_transform(MODS, labels, gaussian_noise=False),
                   optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu))
  state, p = tx.init(params), params
  for g, pr in zip(grads, probs):
    u, state = jax.jit(tx.update)(g, state, p, observations=obs_for(pr, 0))
    p = optax.apply_updates(p, u)

  w = {k: np.asarray(v['kernel'], np.float64) for k, v in params.items()}
  mom = {k: np.zeros_like(v) for k, v in w.items()}
  for g, (pa, pv) in zip(grads, probs):
    k_a, k_v = official_two_modality(pa, pv, 0.8)
    for k, coef in (('audio', k_a), ('visual', k_v), ('head', 1.0)):
      gk = coef * np.asarray(g[k]['kernel'], np.float64) + wd * w[k]
      mom[k] = gk + mu * mom[k]
      w[k] = w[k] - lr * mom[k]
  for k in w:
    np.testing.assert_allclose(p[k]['kernel'], w[k], rtol=1e-5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(alpha=0.0), 'alpha'),
    (dict(start_epoch=-1), 'start_epoch'),
    (dict(start_epoch=5, end_epoch=4), 'end_epoch'),
    (dict(gaussian_noise='yes'), 'gaussian_noise'),
    (dict(kernel_filter='kernel'), 'kernel_filter'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    ogm_ge_transform(MODS, labels_of, **kwargs)


def test_encoder_without_kernels_raises():
  params = {'audio': {'w': jnp.ones((2,))}, 'visual': {'w': jnp.ones((2,))}}
  tx = ogm_ge_transform(MODS, labels_of, gaussian_noise=False)
  with pytest.raises(ValueError, match='kernel_filter'):
    tx.update(params, tx.init(params), params, observations=obs_for((0.6, 0.5), 0))
