"""Tests of AGM: Shapley responses, scores and coefficients by hand, the transform, M = 3."""

import itertools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax.agm import (agm_coefficients, agm_modulated_output, agm_transform,
                            discrepancy_ratios, mono_modal_responses, response_scores,
                            shapley_weights, update_running_scores)
from redreg_jax.observations import Observations

MODS = ('audio', 'visual')


def make_params(mods=MODS, seed=0):
  key = jax.random.PRNGKey(seed)
  params = {}
  for i, m in enumerate(mods):
    k1, k2 = jax.random.split(jax.random.fold_in(key, i))
    params[m] = {'conv': {'kernel': jax.random.normal(k1, (2, 2, 1, 3))},
                 'bn': {'scale': jax.random.normal(k2, (3,))}}
  params['head'] = {'kernel': jnp.ones((4, 2)), 'bias': jnp.zeros((2,))}
  return params


def labels_of(params):
  return {k: jax.tree.map(lambda _, k=k: k, v) for k, v in params.items()}


def random_subsets(mods, key, shape=(3, 4)):
  subsets = [c for r in range(len(mods) + 1) for c in itertools.combinations(mods, r)]
  keys = jax.random.split(key, len(subsets))
  return {s: jax.random.normal(k, shape) for s, k in zip(subsets, keys)}


def obs_for(responses, epoch, labels):
  return Observations(branch_logits=responses, labels=labels, features={},
                      epoch=jnp.asarray(epoch, jnp.int32))


def constant_responses(losses, mods=MODS, batch=2):
  """Responses whose true-class (0) cross-entropy is losses[m] on every example."""
  out = {}
  for m, s in zip(mods, losses):
    p = math.exp(-s)
    out[m] = jnp.tile(jnp.array([[math.log(p / (1 - p)), 0.0]]), (batch, 1))
  return out


def test_shapley_two_modalities_match_released_form():
  sub = random_subsets(MODS, jax.random.PRNGKey(0))
  t, a, v, e = sub[('audio', 'visual')], sub[('audio',)], sub[('visual',)], sub[()]
  r = mono_modal_responses(sub, MODS)
  # The released code: 0.5 (total - pad_audio + pad_visual), pad_x = x masked.
  np.testing.assert_allclose(r['audio'], 0.5 * (t - v + a), rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(r['visual'], 0.5 * (t - a + v), rtol=1e-6, atol=1e-6)
  plain = mono_modal_responses(sub, MODS, empty_share=False)
  np.testing.assert_allclose(plain['audio'], 0.5 * (t - v) + 0.5 * (a - e), rtol=1e-6, atol=1e-6)


def test_shapley_three_modalities_by_hand_and_efficiency():
  mods = ('audio', 'visual', 'text')
  sub = random_subsets(mods, jax.random.PRNGKey(1))
  f = lambda *s: sub[tuple(m for m in mods if m in s)]
  r = mono_modal_responses(sub, mods)
  # URFunny GradMod's text response: (total - pad_t + pad_va)/3 + (pad_v - pad_at + pad_a
  # - pad_vt)/6, pad_x = x masked, i.e. f(S) of the remaining S.
  expected_t = ((f('audio', 'visual', 'text') - f('audio', 'visual') + f('text')) / 3
                + (f('audio', 'text') - f('visual') + f('visual', 'text') - f('audio')) / 6)
  np.testing.assert_allclose(r['text'], expected_t, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(sum(r.values()), f(*mods), rtol=1e-5, atol=1e-5)
  plain = mono_modal_responses(sub, mods, empty_share=False)
  np.testing.assert_allclose(sum(plain.values()), f(*mods) - f(), rtol=1e-5, atol=1e-5)
  assert shapley_weights(3) == {0: 1 / 3, 1: 1 / 6, 2: 1 / 3}


def test_scores_ratios_coefficients_by_hand():
  labels = jnp.array([0, 0])
  scores = response_scores(list(constant_responses((0.7, 1.2)).values()), labels)
  np.testing.assert_allclose(scores, [0.7, 1.2], rtol=1e-5)
  # Floor: p_y = 0 counts as -log(1e-8).
  hard = response_scores([jnp.array([[-1e4, 0.0]])], jnp.array([0]))
  np.testing.assert_allclose(hard, [-math.log(1e-8)], rtol=1e-5)
  np.testing.assert_allclose(discrepancy_ratios(jnp.array([0.7, 1.2])),
                             [math.exp(0.5), math.exp(-0.5)], rtol=1e-6)
  # M = 3 equals the released exp((mean - s_m) * 3 / 2).
  s3 = np.array([0.4, 1.0, 1.9])
  np.testing.assert_allclose(discrepancy_ratios(jnp.asarray(s3)),
                             np.exp((s3.mean() - s3) * 1.5), rtol=1e-5)
  k = agm_coefficients(jnp.array([0.7, 1.2]), jnp.array([1.0, 1.0]), 0.5)
  np.testing.assert_allclose(k, [math.exp(0.5 * (1 - math.exp(0.5))),
                                 math.exp(0.5 * (1 - math.exp(-0.5)))], rtol=1e-6)
  k = agm_coefficients(jnp.array([3.0, 0.0]), jnp.array([0.0, 0.0]), 1.0, cap=10.0)
  np.testing.assert_allclose(k, [math.exp(min(1 - math.exp(-3), 10)), math.exp(1 - math.exp(3))],
                             rtol=1e-5)
  # rbar_a - r_a = e^3 - e^-3 > 10: capped.
  k = agm_coefficients(jnp.array([3.0, 0.0]), jnp.array([0.0, 3.0]), 1.0, cap=10.0)
  np.testing.assert_allclose(k[0], math.exp(10.0), rtol=1e-5)
  avg, count = update_running_scores(jnp.array([1.0, 2.0]), jnp.asarray(3), jnp.array([5.0, 2.0]))
  np.testing.assert_allclose(avg, [2.0, 2.0])
  assert int(count) == 4


@pytest.mark.parametrize('jit', [False, True])
def test_transform_scales_encoders_with_the_running_average(jit):
  params = make_params()
  grads = jax.tree.map(lambda x: 2.0 * x + 1.0, params)
  tx = agm_transform(MODS, labels_of, alpha=0.5)
  update = jax.jit(tx.update) if jit else tx.update
  labels = jnp.zeros((2,), jnp.int32)
  state = tx.init(params)
  # Step 1: the average is 0, rbar = 1.
  out, state = update(grads, state, params, observations=obs_for(
      constant_responses((0.7, 1.2)), 0, labels))
  k1 = [math.exp(0.5 * (1 - math.exp(0.5))), math.exp(0.5 * (1 - math.exp(-0.5)))]
  for m, k in zip(MODS, k1):
    chex.assert_trees_all_close(out[m], jax.tree.map(lambda g: g * k, grads[m]), rtol=1e-5)
  chex.assert_trees_all_close(out['head'], grads['head'])
  np.testing.assert_allclose(state.score_avg, [0.7, 1.2], rtol=1e-5)
  # Step 2: the average is (0.7, 1.2); scores (1.0, 1.0) give r = 1, rbar = exp(+-0.5).
  out, state = update(grads, state, params, observations=obs_for(
      constant_responses((1.0, 1.0)), 0, labels))
  k2 = [math.exp(0.5 * (math.exp(0.5) - 1)), math.exp(0.5 * (math.exp(-0.5) - 1))]
  np.testing.assert_allclose([state.diagnostics['coeff_audio'], state.diagnostics['coeff_visual']],
                             k2, rtol=1e-5)
  chex.assert_trees_all_close(out['audio'], jax.tree.map(lambda g: g * k2[0], grads['audio']),
                              rtol=1e-5)
  np.testing.assert_allclose(state.score_avg, [0.85, 1.1], rtol=1e-5)
  assert int(state.count) == 2
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(params))


def test_identity_when_balanced_and_outside_the_window():
  params = make_params()
  grads = jax.tree.map(lambda x: x + 1.0, params)
  labels = jnp.zeros((2,), jnp.int32)
  tx = agm_transform(MODS, labels_of, start_epoch=1, end_epoch=2)
  update = jax.jit(tx.update)
  state = tx.init(params)
  responses = constant_responses((0.4, 1.3))
  out, state = update(grads, state, params, observations=obs_for(responses, 0, labels))
  chex.assert_trees_all_close(out, grads)  # epoch 0 is before the window.
  # Same scores again: the ratios equal their averages' -> k = 1.
  out, state = update(grads, state, params, observations=obs_for(responses, 1, labels))
  chex.assert_trees_all_close(out, grads, rtol=1e-6)
  np.testing.assert_allclose(state.diagnostics['coeff_audio'], 1.0, rtol=1e-6)
  out, state = update(grads, state, params, observations=obs_for(constant_responses((2.0, 0.1)),
                                                                 3, labels))
  chex.assert_trees_all_close(out, grads)  # after the window.
  assert int(state.count) == 3  # the average still advanced.


def test_output_form_equals_encoder_form_for_additive_fusion():
  """Released gradient path (hooks on responses) = k_m x encoder gradient for concat."""
  mods = ('audio', 'visual', 'text')
  key = jax.random.PRNGKey(0)
  ks = jax.random.split(key, 8)
  x = {m: jax.random.normal(ks[i], (5, 3)) for i, m in enumerate(mods)}
  params = {m: {'kernel': jax.random.normal(ks[3 + i], (3, 4))} for i, m in enumerate(mods)}
  params['head'] = {'kernel': jax.random.normal(ks[6], (12, 2)), 'bias': jnp.array([0.3, -0.2])}
  labels = jnp.array([0, 1, 1, 0, 1])
  k_M = jnp.array([0.5, 2.0, 1.3])

  def subset_logits(p):  # concat fusion of bias-free linear encoders, features masked
    z = {m: x[m] @ p[m]['kernel'] for m in mods}
    out = {}
    for r in range(4):
      for s in itertools.combinations(mods, r):
        feats = jnp.concatenate([z[m] if m in s else jnp.zeros_like(z[m]) for m in mods], -1)
        out[s] = feats @ p['head']['kernel'] + p['head']['bias']
    return out

  def ce(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], -1))

  def released_loss(p):
    return ce(agm_modulated_output(mono_modal_responses(subset_logits(p), mods), k_M, mods))

  plain = jax.grad(lambda p: ce(subset_logits(p)[mods]))(params)
  hooked = jax.grad(released_loss)(params)
  np.testing.assert_allclose(released_loss(params), ce(subset_logits(params)[mods]), rtol=1e-5)
  for i, m in enumerate(mods):
    np.testing.assert_allclose(hooked[m]['kernel'], k_M[i] * plain[m]['kernel'], rtol=1e-4,
                               atol=1e-6)
  # The transform's encoder form gives the same encoder updates.
  responses = mono_modal_responses(subset_logits(params), mods)
  scores = response_scores([responses[m] for m in mods], labels)
  tx = agm_transform(mods, labels_of, alpha=1.0)
  state = tx.init(params)._replace(score_avg=scores + jnp.array([0.1, -0.2, 0.05]),
                                   count=jnp.asarray(4))
  k = agm_coefficients(scores, state.score_avg, 1.0)
  out, _ = tx.update(plain, state, params, observations=obs_for(responses, 0, labels))
  for i, m in enumerate(mods):
    np.testing.assert_allclose(out[m]['kernel'], k[i] * plain[m]['kernel'], rtol=1e-5)
  # gradient_form='output' leaves the gradients alone and only tracks the average.
  tx_out = agm_transform(mods, labels_of, gradient_form='output')
  out, st = tx_out.update(plain, state, params, observations=obs_for(responses, 0, labels))
  chex.assert_trees_all_close(out, plain)
  assert int(st.count) == 5


def test_released_clip():
  params = make_params()
  grads = jax.tree.map(jnp.ones_like, params)
  grads['head']['kernel'] = grads['head']['kernel'] * 3.0  # an entry outside [-1, 1]
  tx = agm_transform(MODS, labels_of, released_clip=True)
  obs = obs_for(constant_responses((0.5, 0.5)), 0, jnp.zeros((2,), jnp.int32))
  out, state = tx.update(grads, tx.init(params), params, observations=obs)
  norm = math.sqrt(sum(float(jnp.sum(g**2)) for g in jax.tree.leaves(out)))
  np.testing.assert_allclose(norm, 1.0, rtol=1e-4)
  assert float(state.diagnostics['clipped']) == 1.0
  small = jax.tree.map(lambda g: 0.1 * g / 3.0, grads)
  out, state = tx.update(small, tx.init(params), params, observations=obs)
  chex.assert_trees_all_close(out, small)  # no entry outside [-1, 1]: untouched
  assert float(state.diagnostics['clipped']) == 0.0


def test_three_modalities_transform():
  mods = ('audio', 'visual', 'text')
  params = make_params(mods)
  grads = jax.tree.map(jnp.ones_like, params)
  tx = agm_transform(mods, labels_of)
  obs = obs_for(constant_responses((0.4, 1.0, 1.9), mods), 0, jnp.zeros((2,), jnp.int32))
  out, state = jax.jit(tx.update)(grads, tx.init(params), params, observations=obs)
  s = np.array([0.4, 1.0, 1.9])
  expected = np.exp(1.0 - np.exp((s.sum() - s) / 2 - s))
  for i, m in enumerate(mods):
    np.testing.assert_allclose(out[m]['conv']['kernel'], expected[i] * grads[m]['conv']['kernel'],
                               rtol=1e-4)


@pytest.mark.parametrize('kwargs, match', [
    (dict(alpha=0.0), 'alpha'),
    (dict(alpha=float('nan')), 'alpha'),
    (dict(cap=0.0), 'cap'),
    (dict(start_epoch=-1), 'start_epoch'),
    (dict(start_epoch=3, end_epoch=2), 'end_epoch'),
    (dict(gradient_form='hooks'), 'gradient_form'),
    (dict(released_clip=1), 'released_clip'),
    (dict(min_prob=0.0), 'min_prob'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    agm_transform(MODS, labels_of, **kwargs)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='at least two'):
    agm_transform(('audio',), labels_of)
  with pytest.raises(ValueError, match='lacks the coalitions'):
    mono_modal_responses({('audio', 'visual'): jnp.zeros((1, 2))}, MODS)
  params = make_params()
  tx = agm_transform(MODS, labels_of)
  with pytest.raises(ValueError, match='observations'):
    tx.update(params, tx.init(params), params)
  with pytest.raises(ValueError, match='lacks'):
    tx.update(params, tx.init(params), params,
              observations=obs_for({'audio': jnp.zeros((2, 2))}, 0, jnp.zeros((2,), jnp.int32)))
  tx3 = agm_transform(('audio', 'visual', 'text'), labels_of)
  obs3 = obs_for(constant_responses((0.5, 0.5, 0.5), ('audio', 'visual', 'text')), 0,
                 jnp.zeros((2,), jnp.int32))
  with pytest.raises(ValueError, match="labelled 'text'"):
    tx3.update(params, tx3.init(params), params, observations=obs3)
