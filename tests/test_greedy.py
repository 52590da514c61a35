"""Tests of Greedy: utilisation rates and learning speeds by hand, the re-balancing schedule."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from redreg_jax.greedy import (conditional_learning_speeds, conditional_utilization_rates,
                               greedy_transform, rebalance_target, relative_gradient_speed,
                               speed_imbalance, utilization_imbalance)
from redreg_jax.observations import Observations

MODS = ('audio', 'visual')
GROUPS = ('audio', 'visual', 'bypass/audio', 'bypass/visual', 'bypass', 'head')


def make_params():
  # Every group one leaf of four ones: ||theta||^2 = 4.
  return {g.replace('/', '_'): {'kernel': jnp.ones((4,))} for g in GROUPS}


def labels_of(params):
  return {k: {'kernel': k.replace('bypass_', 'bypass/')} for k in params}


def grads_for(values, shared=0.0):
  """Constant gradients: values[group] on every entry (mu = value^2 without sharing)."""
  out = {g.replace('/', '_'): {'kernel': jnp.full((4,), values.get(g, 0.0))} for g in GROUPS}
  out['bypass']['kernel'] = jnp.full((4,), shared)
  return out


def obs(epoch):
  return Observations(branch_logits={}, labels=jnp.zeros((1,), jnp.int32), features={},
                      epoch=jnp.asarray(epoch, jnp.int32))


# Branch 0 (audio) learns from visual 100x faster than from audio, branch 1 the reverse.
AUDIO_BIASED = {'audio': 0.1, 'bypass/audio': 1.0, 'visual': 1.0, 'bypass/visual': 0.1}


def test_utilization_rates_by_hand():
  u = conditional_utilization_rates(0.8, jnp.array([0.6, 0.7]))
  np.testing.assert_allclose(u, [0.25, 0.125], rtol=1e-6)
  np.testing.assert_allclose(utilization_imbalance(u), 0.125, rtol=1e-6)
  u = conditional_utilization_rates(jnp.array([0.8, 0.5]), jnp.array([0.6, 0.5]))
  np.testing.assert_allclose(u, [0.25, 0.0], rtol=1e-6)


def test_learning_speeds_by_hand():
  np.testing.assert_allclose(relative_gradient_speed(4 * 0.01, 4.0), 0.01, rtol=1e-6)
  s = conditional_learning_speeds(jnp.array([2.0, 1.0]), jnp.array([0.02, 1.0]))
  np.testing.assert_allclose(s, [2.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(speed_imbalance(s), 2.0, atol=1e-6)
  for d, expect in ((0.5, (True, 0)), (-0.5, (True, 1)), (0.005, (False, 0))):
    trigger, caring = rebalance_target(d, 0.01)
    assert (bool(trigger), int(caring)) == expect


def run(tx, seq, jit):
  params = make_params()
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params)
  states = []
  for grads, epoch in seq:
    out, state = update(grads, state, params, observations=obs(epoch))
    chex.assert_trees_all_close(out, grads)  # Greedy never changes the updates.
    states.append(state)
  return states


@pytest.mark.parametrize('jit', [False, True])
def test_schedule_by_hand(jit):
  tx = greedy_transform(MODS, labels_of, alpha=0.01, window=3, start_epoch=1)
  zeros = grads_for({})
  seq = ([(grads_for(AUDIO_BIASED), 0), (grads_for(AUDIO_BIASED), 1)]
         + [(zeros, 1)] * 3 + [(grads_for(AUDIO_BIASED), 1)])
  states = run(tx, seq, jit)
  # Step 1 (epoch 0, locked). The shared bypass leaf (zero gradient) halves both bypass mu:
  # s(v|a) = log10(0.5 / 0.01), s(a|v) = log10(0.005 / 1), d = 4; no re-balancing.
  np.testing.assert_allclose(states[0].d_speed, 4.0, rtol=1e-5)
  np.testing.assert_allclose(states[0].mu_main_sum, [0.01, 1.0], rtol=1e-5)
  assert not bool(states[0].rebalancing)
  # Step 2 (epoch 1): d = 4 > alpha: the next Q = 3 steps re-balance audio (caring 0).
  assert bool(states[1].rebalancing) and int(states[1].caring) == 0
  for i in (2, 3):
    assert bool(states[i].rebalancing) and int(states[i].caring) == 0
    chex.assert_trees_all_close(states[i].mu_main_sum, states[1].mu_main_sum)  # no accumulation
  assert not bool(states[4].rebalancing)  # window of 3 closed after steps 3, 4, 5.
  chex.assert_trees_all_close(states[4].mu_bypass_sum, states[1].mu_bypass_sum)
  np.testing.assert_allclose(states[5].mu_main_sum, [0.03, 3.0], rtol=1e-5)
  assert bool(states[5].rebalancing)  # still imbalanced: a new window.
  diag = optax.tree_utils.tree_get(states[1], 'diagnostics')
  np.testing.assert_allclose(diag['speed_audio'], math.log10(50.0), rtol=1e-5)
  assert float(diag['rebalance_next']) == 1.0


def test_visual_biased_cares_for_visual_and_shared_bypass_counts_for_both():
  tx = greedy_transform(MODS, labels_of, start_epoch=0)
  biased = {'audio': 1.0, 'bypass/audio': 0.1, 'visual': 0.1, 'bypass/visual': 0.0}
  (state,) = run(tx, [(grads_for(biased, shared=1.0), 0)], jit=False)
  # bypass_a: (0.04 + 4) / 8; bypass_v: (0 + 4) / 8; main_a = 1, main_v = 0.01.
  np.testing.assert_allclose(state.mu_bypass_sum, [4.04 / 8, 0.5], rtol=1e-5)
  d = math.log10(4.04 / 8 / 1.0) - math.log10(0.5 / 0.01)
  np.testing.assert_allclose(state.d_speed, d, rtol=1e-5)
  assert bool(state.rebalancing) and int(state.caring) == 1


def test_balanced_speeds_never_rebalance():
  tx = greedy_transform(MODS, labels_of, start_epoch=0)
  even = {'audio': 0.5, 'bypass/audio': 0.5, 'visual': 0.3, 'bypass/visual': 0.3}
  states = run(tx, [(grads_for(even), 0)] * 4, jit=True)
  for s in states:
    np.testing.assert_allclose(s.d_speed, 0.0, atol=1e-6)
    assert not bool(s.rebalancing)


@pytest.mark.parametrize('mods', [('audio',), ('audio', 'visual', 'text'), ('audio', 'audio')])
def test_other_than_two_modalities_refused(mods):
  with pytest.raises(ValueError, match='exactly two'):
    greedy_transform(mods, labels_of)


@pytest.mark.parametrize('kwargs, match', [
    (dict(alpha=0.0), 'alpha'),
    (dict(alpha=True), 'alpha'),
    (dict(window=0), 'window'),
    (dict(start_epoch=-1), 'start_epoch'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    greedy_transform(MODS, labels_of, **kwargs)


def test_late_fusion_without_bypass_raises():
  params = {'audio': {'kernel': jnp.ones((2,))}, 'visual': {'kernel': jnp.ones((2,))}}
  labels = {'audio': {'kernel': 'audio'}, 'visual': {'kernel': 'visual'}}
  tx = greedy_transform(MODS, labels)
  with pytest.raises(ValueError, match='intermediate-fusion'):
    tx.update(params, tx.init(params), params, observations=obs(0))
  with pytest.raises(ValueError, match='params'):
    tx.update(params, tx.init(params), observations=obs(0))
