"""Tests of the InfoReg transform: equations by hand, windows, jit, chaining."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from redreg_jax.inforeg import (INFOREG_PRESETS, inforeg_transform, performance_gap,
                                window_ratio)
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
  return {k: jax.tree.map(lambda _, k=k: k if k != 'head' else 'head', v)
          for k, v in params.items()}


def const_grads(params, values):
  """Every leaf of group k filled with values[k] (head: 1)."""
  return {k: jax.tree.map(lambda x, k=k: jnp.full_like(x, values.get(k, 1.0)), v)
          for k, v in params.items()}


def obs_for(probs, epoch, mods=MODS):
  """Observations whose branch m has batch-mean true-class probability probs[m]."""
  logits = {m: jnp.tile(jnp.array([[math.log(p / (1 - p)), 0.0]]), (2, 1))
            for m, p in zip(mods, probs)}
  return Observations(branch_logits=logits, labels=jnp.zeros((2,), jnp.int32),
                      features={}, epoch=jnp.asarray(epoch, jnp.int32))


def test_performance_gap_by_hand():
  np.testing.assert_allclose(performance_gap(jnp.array([0.5, 0.3, 0.2])), [0.25, 0.1, 0.0],
                             atol=1e-6)
  np.testing.assert_allclose(performance_gap(jnp.array([0.4, 0.4])), [0.0, 0.0])
  np.testing.assert_allclose(performance_gap(jnp.array([0.4, 0.4, 0.1])), [0.3, 0.3, 0.0],
                             atol=1e-6)


def test_window_ratio_by_hand():
  np.testing.assert_allclose(window_ratio(jnp.array([[2.0, 1.0], [4.0, 1.0]])), [0.5, 0.0])
  # n = 2: Tr^{e-1} = (2 + 4) / 2 = 3, Tr^{e-2} = (0 + 2) / 2 = 1.
  np.testing.assert_allclose(window_ratio(jnp.array([[0.0], [2.0], [4.0]])), [2 / 3], rtol=1e-6)
  np.testing.assert_allclose(window_ratio(jnp.zeros((3, 2))), [1.0, 1.0])


def run(tx, params_seq, grads_seq, obs_seq, jit):
  update = jax.jit(tx.update) if jit else tx.update
  state = tx.init(params_seq[0])
  outs = []
  for p, g, o in zip(params_seq, grads_seq, obs_seq):
    u, state = update(g, state, p, observations=o)
    outs.append(u)
  return outs, state


def _sequence():
  """Epoch 0: ||g_a||^2 = 15, 45; epoch 1: 60; epoch 2: two steps (15 leaves/encoder)."""
  params = [make_params(seed=s) for s in range(5)]
  grads = [const_grads(params[0], {'audio': a}) for a in (1.0, math.sqrt(3.0), 2.0, 1.0, 1.0)]
  epochs = (0, 0, 1, 2, 2)
  return params, grads, epochs


def test_trace_window_and_regulation_by_hand():
  params, grads, epochs = _sequence()
  obs = [obs_for((0.8, 0.5), e) for e in epochs]
  tx = inforeg_transform(MODS, labels_of)
  outs, state = run(tx, params, grads, obs, jit=True)
  # Epochs 0 and 1 are warm-up (Algorithm 1), and the first step of an epoch has
  # w = w^{epoch start}: the gradients pass unchanged.
  for u, g in zip(outs[:4], grads[:4]):
    chex.assert_trees_all_close(u, g)
  # Epoch 2: Tr_a = 30 then 60 -> ratio 0.5 > K; visual trace flat -> ratio 0.
  np.testing.assert_allclose(state.trace_history, [[30.0, 15.0], [60.0, 15.0]], rtol=1e-6)
  alpha = math.exp(0.9 * math.tanh(0.3))
  expected = dict(grads[4])
  expected['audio'] = jax.tree.map(lambda g, w, w0: g + alpha * (w - w0), grads[4]['audio'],
                                   params[4]['audio'], params[3]['audio'])
  chex.assert_trees_all_close(outs[4], expected, rtol=1e-5)
  diag = optax.tree_utils.tree_get(state, 'diagnostics')
  np.testing.assert_allclose(diag['window_ratio_audio'], 0.5, rtol=1e-6)
  np.testing.assert_allclose(diag['alpha_audio'], alpha, rtol=1e-6)
  assert float(diag['alpha_visual']) == 0.0 and float(diag['in_window_visual']) == 0.0
  np.testing.assert_allclose(diag['trace_audio'], 15.0, rtol=1e-6)  # running mean of epoch 2.
  assert all(jnp.ndim(v) == 0 for v in diag.values())


def test_leader_outside_its_window_is_not_regulated():
  params, grads, epochs = _sequence()
  # Visual leads but its own trace is flat; audio is inside but has Delta = 0.
  obs = [obs_for((0.3, 0.9), e) for e in epochs]
  outs, state = run(inforeg_transform(MODS, labels_of), params, grads, obs, jit=True)
  chex.assert_trees_all_close(outs[4], grads[4])
  assert float(state.diagnostics['in_window_audio']) == 1.0
  # With the official single audio-trace window, the visual leader is regulated.
  tx = inforeg_transform(MODS, labels_of, trace_modalities=('audio',))
  outs, _ = run(tx, params, grads, obs, jit=True)
  alpha = math.exp(0.9 * math.tanh(0.6))
  chex.assert_trees_all_close(outs[4]['audio'], grads[4]['audio'])
  chex.assert_trees_all_close(
      outs[4]['visual'], jax.tree.map(lambda g, w, w0: g + alpha * (w - w0), grads[4]['visual'],
                                      params[4]['visual'], params[3]['visual']), rtol=1e-5)


def test_threshold_closes_window():
  params, grads, epochs = _sequence()
  obs = [obs_for((0.8, 0.5), e) for e in epochs]
  # Ratio 0.5 is not above K = 0.6.
  outs, _ = run(inforeg_transform(MODS, labels_of, threshold_k=0.6), params, grads, obs, True)
  chex.assert_trees_all_close(outs[4], grads[4])


def test_official_preset_moving_average_regulates_from_epoch_zero():
  params, grads, _ = _sequence()
  epochs = (0, 0, 1, 1, 1)
  obs = [obs_for((0.8, 0.5), e) for e in epochs]
  # The window's released forms only; alpha, trace and scores in the paper's forms
  # (their released forms are tested on their own below).
  hp = dict(INFOREG_PRESETS['inforeg_official'], trace_form='paper', score_form='mean',
            alpha_form='paper', alpha_scales=())
  tx = inforeg_transform(MODS, labels_of, **hp)
  outs, state = run(tx, params, grads, obs, jit=True)
  alpha = math.exp(0.9 * math.tanh(0.3))
  # Epoch 0, second step: no history yet -> inside the window (official k = 1).
  chex.assert_trees_all_close(
      outs[1]['audio'], jax.tree.map(lambda g, w, w0: g + alpha * (w - w0), grads[1]['audio'],
                                     params[1]['audio'], params[0]['audio']), rtol=1e-5)
  # Epoch 1: 10-epoch averages, zero-padded: (30/10 - 0) / (30/10) = 1 > 0.05.
  assert state.trace_history.shape == (11, 2)
  np.testing.assert_allclose(state.diagnostics['window_ratio_audio'], 1.0)
  chex.assert_trees_all_close(
      outs[4]['audio'], jax.tree.map(lambda g, w, w0: g + alpha * (w - w0), grads[4]['audio'],
                                     params[4]['audio'], params[2]['audio']), rtol=1e-5)
  chex.assert_trees_all_close(outs[4]['visual'], grads[4]['visual'])


def test_three_modalities():
  mods = ('audio', 'visual', 'text')
  params = [make_params(mods, seed=s) for s in range(2)]
  grads = [const_grads(params[0], {}) for _ in range(2)]
  obs = [obs_for((0.7, 0.5, 0.2), 0, mods)] * 2
  tx = inforeg_transform(mods, labels_of, warmup_epochs=0)
  outs, state = run(tx, params, grads, obs, jit=True)
  deltas = {'audio': 0.35, 'visual': 0.3, 'text': 0.0}  # Eq.10 by hand.
  for m, d in deltas.items():
    coef = math.exp(0.9 * math.tanh(d)) if d > 0 else 0.0
    np.testing.assert_allclose(state.diagnostics[f'alpha_{m}'], coef, rtol=1e-5)
    chex.assert_trees_all_close(
        outs[1][m], jax.tree.map(lambda g, w, w0: g + coef * (w - w0), grads[1][m],
                                 params[1][m], params[0][m]), rtol=1e-5)
  chex.assert_trees_all_close(outs[1]['head'], grads[1]['head'])


def test_jit_matches_eager_with_one_trace():
  params, grads, epochs = _sequence()
  obs = [obs_for((0.8, 0.5), e) for e in epochs]
  tx = inforeg_transform(MODS, labels_of)
  eager, eager_state = run(tx, params, grads, obs, jit=False)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def step(g, s, p, o):
    return tx.update(g, s, p, observations=o)

  state = tx.init(params[0])
  for p, g, o, e in zip(params, grads, obs, eager):
    u, state = step(g, state, p, o)
    chex.assert_trees_all_close(u, e, rtol=1e-6)
  chex.assert_trees_all_close(state, eager_state, rtol=1e-6)
  # The state keeps its structure, shapes and dtypes (a scan/fori_loop carry).
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(params[0]))


def test_chain_with_weight_decay_and_momentum_matches_numpy():
  """Three SGD-momentum steps over an epoch boundary, against a numpy loop."""
  params = {'audio': {'w': jnp.array([1.0, -2.0])}, 'visual': {'w': jnp.array([0.5])},
            'head': {'w': jnp.array([3.0])}}
  labels = {'audio': {'w': 'audio'}, 'visual': {'w': 'visual'}, 'head': {'w': 'head'}}
  grads = [{'audio': {'w': jnp.array(a)}, 'visual': {'w': jnp.array(v)},
            'head': {'w': jnp.array(h)}}
           for a, v, h in (([0.5, 0.1], [0.2], [1.0]), ([0.3, -0.4], [0.1], [0.5]),
                           ([0.2, 0.2], [-0.3], [0.1]), ([0.1, 0.5], [0.4], [0.2]))]
  epochs = (0, 0, 0, 1)
  lr, wd, mu = 0.1, 1e-4, 0.9
  tx = optax.chain(inforeg_transform(MODS, labels, warmup_epochs=0),
                   optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu))
  state = tx.init(params)
  p = params
  for g, e in zip(grads, epochs):
    u, state = tx.update(g, state, p, observations=obs_for((0.9, 0.6), e))
    p = optax.apply_updates(p, u)

  alpha = math.exp(0.9 * math.tanh(0.3))  # audio leads by 0.3, always in window.
  w = {k: np.asarray(v['w'], np.float64) for k, v in params.items()}
  mom = {k: np.zeros_like(v) for k, v in w.items()}
  anchor, last_epoch = None, None
  for g, e in zip(grads, epochs):
    if e != last_epoch:
      anchor, last_epoch = w['audio'].copy(), e
    for k in w:
      gk = np.asarray(g[k]['w'], np.float64)
      if k == 'audio':
        gk = gk + alpha * (w[k] - anchor)
      gk = gk + wd * w[k]
      mom[k] = gk + mu * mom[k]
      w[k] = w[k] - lr * mom[k]
  for k in w:
    np.testing.assert_allclose(p[k]['w'], w[k], rtol=1e-5)
  assert float(optax.tree_utils.tree_get(state, 'diagnostics')['alpha_audio']) > 1.0


@pytest.mark.parametrize('kwargs, match', [
    (dict(beta=-0.1), 'beta'),
    (dict(threshold_k='0.04'), 'threshold_k'),
    (dict(moving_average=0), 'moving_average'),
    (dict(warmup_epochs=-1), 'warmup_epochs'),
    (dict(trace_modalities=('text',)), 'trace_modalities'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    inforeg_transform(MODS, labels_of, **kwargs)


def test_bad_modalities_and_labels_raise():
  with pytest.raises(ValueError, match='modalities'):
    inforeg_transform(('audio',), labels_of)
  params = make_params()
  tx = inforeg_transform(('audio', 'text'), labels_of)
  with pytest.raises(ValueError, match="'text'"):
    tx.update(params, tx.init(params), params,
              observations=obs_for((0.6, 0.5), 0, ('audio', 'text')))
  with pytest.raises(ValueError, match='params'):
    tx.update(params, tx.init(params), None, observations=obs_for((0.6, 0.5), 0))


# The released code's forms, each switched on alone (docs/reproducing.md).

def _diag_at_each_step(tx, params, grads, obs):
  update = jax.jit(tx.update)
  state = tx.init(params[0])
  diags = []
  for p, g, o in zip(params, grads, obs):
    _, state = update(g, state, p, observations=o)
    diags.append(jax.device_get(state.diagnostics))
  return diags, state


def test_released_trace_sums_kernel_means_over_steps():
  params, grads, _ = _sequence()
  epochs = (0, 0, 1, 1, 1)
  obs = [obs_for((0.5, 0.5), e) for e in epochs]  # No gap: no regulation acts.
  paper, s_paper = _diag_at_each_step(inforeg_transform(MODS, labels_of, warmup_epochs=0),
                                      params, grads, obs)
  released, s_rel = _diag_at_each_step(
      inforeg_transform(MODS, labels_of, warmup_epochs=0, trace_form='released'),
      params, grads, obs)
  # Paper: mean over steps of ||g_a||^2 (15 leaves): (15 + 45) / 2 = 30.
  np.testing.assert_allclose(paper[1]['trace_audio'], 30.0, rtol=1e-6)
  # Released: sum over steps of the kernel's element mean of g^2: 1 + 3 = 4.
  np.testing.assert_allclose(released[1]['trace_audio'], 4.0, rtol=1e-6)
  np.testing.assert_allclose(s_rel.trace_history[-1], [4.0, 2.0], rtol=1e-6)
  np.testing.assert_allclose(s_paper.trace_history[-1], [30.0, 15.0], rtol=1e-6)
  # Nothing else moved: the regulation coefficients are the same (all zero here).
  for a, b in zip(paper, released):
    for m in MODS:
      assert a[f'alpha_{m}'] == b[f'alpha_{m}'] == 0.0


def test_released_trace_is_taken_after_regulation():
  params, grads, _ = _sequence()
  obs = [obs_for((0.8, 0.5), 0)] * 2
  tx = inforeg_transform(MODS, labels_of, warmup_epochs=0, trace_form='released')
  outs, state = run(tx, params[:2], grads[:2], obs, jit=True)
  want = sum(float(jnp.mean(jnp.square(o['audio']['conv']['kernel']))) for o in outs)
  np.testing.assert_allclose(state.diagnostics['trace_audio'], want, rtol=1e-5)
  assert want != pytest.approx(4.0)  # The regulation changed the audio kernel gradient.


def test_score_sum_changes_only_the_gap():
  params, grads, _ = _sequence()
  obs = [obs_for((0.8, 0.5), 0)] * 2  # Batch of 2: sums 1.6 and 1.0.
  _, state = run(inforeg_transform(MODS, labels_of, warmup_epochs=0, score_form='sum'),
                 params[:2], grads[:2], obs, jit=True)
  np.testing.assert_allclose(state.diagnostics['score_audio'], 1.6, rtol=1e-5)
  np.testing.assert_allclose(state.diagnostics['delta_audio'], 0.6, rtol=1e-5)
  np.testing.assert_allclose(state.diagnostics['alpha_audio'], math.exp(0.9 * math.tanh(0.6)),
                             rtol=1e-5)
  np.testing.assert_allclose(state.diagnostics['alpha_visual'], 0.0)


@pytest.mark.parametrize('probs,leader,scale', [((0.8, 0.5), 'audio', 0.95),
                                                ((0.5, 0.8), 'visual', 0.1)])
def test_released_alpha(probs, leader, scale):
  params, grads, _ = _sequence()
  obs = [obs_for(probs, 0)] * 2
  tx = inforeg_transform(MODS, labels_of, warmup_epochs=0, alpha_form='released',
                         alpha_scales=(0.95, 0.1))
  outs, state = run(tx, params[:2], grads[:2], obs, jit=True)
  alpha = scale * math.exp(math.tanh(0.3))
  np.testing.assert_allclose(state.diagnostics[f'alpha_{leader}'], alpha, rtol=1e-5)
  chex.assert_trees_all_close(
      outs[1][leader], jax.tree.map(lambda g, w, w0: g + alpha * (w - w0), grads[1][leader],
                                    params[1][leader], params[0][leader]), rtol=1e-5)
  other = [m for m in MODS if m != leader][0]
  chex.assert_trees_all_equal(outs[1][other], grads[1][other])


def test_released_forms_rejected_when_malformed():
  with pytest.raises(ValueError, match='alpha_scales'):
    inforeg_transform(MODS, labels_of, alpha_form='released')
  with pytest.raises(ValueError, match='alpha_scales'):
    inforeg_transform(MODS, labels_of, alpha_scales=(0.95, 0.1))
  with pytest.raises(ValueError, match='trace_form'):
    inforeg_transform(MODS, labels_of, trace_form='official')
  with pytest.raises(ValueError, match='score_form'):
    inforeg_transform(MODS, labels_of, score_form='max')
