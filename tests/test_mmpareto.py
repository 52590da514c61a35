"""Tests of MMPareto and per_loss_grads: weights by hand, rescaling, jit, chaining."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from redreg_jax.mmpareto import mmpareto_transform, pareto_weights, per_loss_grads
from redreg_jax.observations import Observations

MODS = ('audio', 'visual')
LABELS = {'audio': {'a': 'audio', 'b': 'audio'}, 'visual': {'a': 'visual'}, 'head': {'w': 'head'}}


def tree(audio_a, audio_b, visual_a, head):
  return {'audio': {'a': jnp.array(audio_a, jnp.float32), 'b': jnp.array(audio_b, jnp.float32)},
          'visual': {'a': jnp.array(visual_a, jnp.float32)},
          'head': {'w': jnp.array(head, jnp.float32)}}


def obs_with(g_mm, g_uni):
  return Observations(branch_logits={}, labels=jnp.zeros((1,), jnp.int32), features={},
                      epoch=jnp.asarray(0), aux_grads={'multimodal': g_mm, 'unimodal': g_uni})


def test_pareto_weights_by_hand():
  # Agreeing gradients: equal weights.
  k_mm, k_uni, cos = pareto_weights(1.0, 0.5, 1.0)
  np.testing.assert_allclose([k_mm, k_uni, cos], [0.5, 0.5, 0.5])
  # g_mm = [1, 0], g_uni = [-1, 1]: k = (2 + 1) / (1 + 2 + 2) = 0.6.
  k_mm, k_uni, cos = pareto_weights(1.0, -1.0, 2.0)
  np.testing.assert_allclose([k_mm, k_uni, cos], [0.6, 0.4, -1 / np.sqrt(2)], rtol=1e-6)
  # It is the minimiser of ||k g_mm + (1 - k) g_uni|| over [0, 1].
  ks = np.linspace(0, 1, 10001)
  norms = np.linalg.norm(ks[:, None] * [1.0, 0.0] + (1 - ks[:, None]) * [-1.0, 1.0], axis=1)
  assert abs(ks[np.argmin(norms)] - 0.6) < 1e-3
  # Clipped at the ends; a zero gradient gives cos 0 and no NaN.
  np.testing.assert_allclose(pareto_weights(1.0, -0.0, 0.0)[:2], [0.0, 1.0])
  assert np.all(np.isfinite(pareto_weights(0.0, 0.0, 0.0)))


def expected_update(g_mm, g_uni, gamma, rescale):
  """Numpy MMPareto for the fixture tree (audio: two tensors, visual: one)."""
  out = {'head': None}
  for m, names in (('audio', ('a', 'b')), ('visual', ('a',))):
    mm = [np.asarray(g_mm[m][n], np.float64) for n in names]
    uni = [np.asarray(g_uni[m][n], np.float64) for n in names]
    v_mm, v_uni = np.concatenate(mm), np.concatenate(uni)
    cos = v_mm @ v_uni / np.linalg.norm(v_mm) / np.linalg.norm(v_uni)
    if cos > 0:
      k = 0.5
    else:
      k = np.clip((v_uni @ v_uni - v_mm @ v_uni) / np.sum((v_mm - v_uni) ** 2), 0, 1)
    new = [2 * (k * a + (1 - k) * b) for a, b in zip(mm, uni)]
    plain = [a + b for a, b in zip(mm, uni)]
    if rescale == 'tensor':
      scales = [max(1.0, np.linalg.norm(p) / np.linalg.norm(n)) for n, p in zip(new, plain)]
    else:
      s = max(1.0, np.linalg.norm(np.concatenate(plain)) / np.linalg.norm(np.concatenate(new)))
      scales = [s] * len(new)
    out[m] = {n: gamma * s * x for n, s, x in zip(names, scales, new)}
  return out


@pytest.mark.parametrize('rescale', ['tensor', 'encoder'])
@pytest.mark.parametrize('jit', [False, True])
def test_update_by_hand(rescale, jit):
  # Audio conflicts (cos < 0): min-norm weights; visual agrees: 0.5 / 0.5.
  g_mm = tree([1.0, 0.0], [0.5], [1.0, 2.0], [9.0])
  g_uni = tree([-1.0, 1.0], [-2.0], [3.0, 1.0], [7.0])
  incoming = tree([5.0, 5.0], [5.0], [5.0, 5.0], [4.0])
  tx = mmpareto_transform(MODS, LABELS, rescale=rescale)
  update = jax.jit(tx.update) if jit else tx.update
  out, state = update(incoming, tx.init(incoming), None, observations=obs_with(g_mm, g_uni))
  want = expected_update(g_mm, g_uni, 1.5, rescale)
  for m in MODS:
    chex.assert_trees_all_close(out[m], want[m], rtol=1e-5)
  chex.assert_trees_all_close(out['head'], incoming['head'])  # non-encoder: unchanged.
  diag = optax.tree_utils.tree_get(state, 'diagnostics')
  assert float(diag['cos_audio']) < 0 < float(diag['cos_visual'])
  np.testing.assert_allclose(diag['k_mm_visual'], 0.5)
  chex.assert_trees_all_equal_shapes_and_dtypes(state, tx.init(incoming))


def test_rescale_never_shrinks():
  # Agreeing, equal gradients: 2 * (0.5 g + 0.5 g) = 2 g = plain sum, scale 1.
  g = tree([1.0, 2.0], [3.0], [1.0, 1.0], [0.0])
  out, _ = mmpareto_transform(MODS, LABELS, gamma=1.0).update(
      g, None, None, observations=obs_with(g, g))
  chex.assert_trees_all_close(out['audio'], jax.tree.map(lambda x: 2 * x, g['audio']))
  # Opposite gradients: the min-norm combination is 0; nothing to rescale, no NaN.
  neg = jax.tree.map(jnp.negative, g)
  out, _ = mmpareto_transform(MODS, LABELS).update(g, None, None, observations=obs_with(g, neg))
  chex.assert_trees_all_close(out['audio'], jax.tree.map(jnp.zeros_like, g['audio']))


def test_three_modalities():
  labels = {'audio': {'a': 'audio'}, 'visual': {'a': 'visual'}, 'text': {'a': 'text'},
            'head': {'w': 'head'}}

  def t(a, v, x, h):
    return {'audio': {'a': jnp.array(a)}, 'visual': {'a': jnp.array(v)},
            'text': {'a': jnp.array(x)}, 'head': {'w': jnp.array(h)}}

  g_mm = t([1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [1.0])
  g_uni = t([-1.0, 1.0], [2.0, 0.0], [0.0, -1.0], [1.0])
  tx = mmpareto_transform(('audio', 'visual', 'text'), labels, gamma=1.0)
  out, state = jax.jit(tx.update)(g_mm, tx.init(g_mm), None, observations=obs_with(g_mm, g_uni))
  # audio: k = 0.6 -> 2 * [0.2, 0.4] = [0.4, 0.8], rescaled to ||[0, 1]|| = 1.
  np.testing.assert_allclose(out['audio']['a'], np.array([0.4, 0.8]) / np.sqrt(0.8), rtol=1e-5)
  # visual agrees: 2 * 0.5 * (g_mm + g_uni) = [3, 1].
  np.testing.assert_allclose(out['visual']['a'], [3.0, 1.0], rtol=1e-6)
  # text: k = (1 + 2) / (4 + 1 + 4) = 1/3 -> 2 * [0, 0] = 0.
  np.testing.assert_allclose(out['text']['a'], [0.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(state.diagnostics['k_mm_text'], 1 / 3, rtol=1e-5)


def test_chain_with_weight_decay_and_momentum_matches_numpy():
  params = tree([1.0, -1.0], [0.5], [0.2, 0.3], [2.0])
  steps = [(tree([1.0, 0.0], [0.5], [1.0, 2.0], [1.0]),
            tree([-1.0, 1.0], [-2.0], [3.0, 1.0], [0.5])),
           (tree([0.2, 0.1], [0.3], [-1.0, 0.5], [0.3]),
            tree([0.1, 0.4], [0.1], [1.0, 0.2], [0.1]))]
  lr, wd, mu, gamma = 0.1, 1e-4, 0.9, 1.5
  tx = optax.chain(mmpareto_transform(MODS, LABELS, gamma=gamma),
                   optax.add_decayed_weights(wd), optax.sgd(lr, momentum=mu))
  state, p = tx.init(params), params
  for g_mm, g_uni in steps:
    total = jax.tree.map(jnp.add, g_mm, g_uni)
    u, state = jax.jit(tx.update)(total, state, p, observations=obs_with(g_mm, g_uni))
    p = optax.apply_updates(p, u)

  w = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  mom = jax.tree.map(np.zeros_like, w)
  for g_mm, g_uni in steps:
    g = expected_update(g_mm, g_uni, gamma, 'tensor')
    g['head'] = {'w': np.asarray(g_mm['head']['w'] + g_uni['head']['w'], np.float64)}
    g = jax.tree.map(lambda gk, wk: gk + wd * wk, g, w)
    mom = jax.tree.map(lambda gk, mk: gk + mu * mk, g, mom)
    w = jax.tree.map(lambda wk, mk: wk - lr * mk, w, mom)
  chex.assert_trees_all_close(p, jax.tree.map(lambda x: x.astype(np.float32), w), rtol=1e-5)


def test_per_loss_grads_equals_separate_grads():
  params = {'enc': jax.random.normal(jax.random.PRNGKey(0), (3, 4)),
            'head': jax.random.normal(jax.random.PRNGKey(1), (4, 2)),
            'uni': jax.random.normal(jax.random.PRNGKey(2), (4, 2))}
  x = jax.random.normal(jax.random.PRNGKey(3), (5, 3))
  y = jnp.array([0, 1, 1, 0, 1])

  def ce(logits):
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], axis=-1))

  def loss_mm(p):
    return ce(jnp.tanh(x @ p['enc']) @ p['head'])

  def loss_uni(p):
    return ce(jnp.tanh(x @ p['enc']) @ p['uni'])

  def losses_fn(p):
    return jnp.stack([loss_mm(p), loss_uni(p)]), {'feature_mean': jnp.mean(x @ p['enc'])}

  @jax.jit
  def compute(p):
    separate = ((loss_mm(p), loss_uni(p)), (jax.grad(loss_mm)(p), jax.grad(loss_uni)(p)))
    return per_loss_grads(lambda q: losses_fn(q)[0], p), separate, per_loss_grads(
        losses_fn, p, has_aux=True)

  (losses, grads_L), (want_losses, want_grads), ((_, aux), grads_aux_L) = compute(params)
  np.testing.assert_allclose(losses, want_losses, rtol=1e-6)
  for i in (0, 1):
    chex.assert_trees_all_close(jax.tree.map(lambda g, i=i: g[i], grads_L), want_grads[i],
                                rtol=1e-5, atol=1e-7)
  chex.assert_trees_all_close(grads_aux_L, grads_L, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(aux['feature_mean'], jnp.mean(x @ params['enc']), rtol=1e-6)
  with pytest.raises(ValueError, match='1-D'):
    per_loss_grads(loss_mm, params)


@pytest.mark.parametrize('kwargs, match', [
    (dict(gamma=0.0), 'gamma'),
    (dict(gamma=float('nan')), 'gamma'),
    (dict(rescale='global'), 'rescale'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    mmpareto_transform(MODS, LABELS, **kwargs)


def test_missing_aux_grads_or_labels_raise():
  g = tree([1.0, 0.0], [0.5], [1.0, 2.0], [9.0])
  tx = mmpareto_transform(MODS, LABELS)
  obs = Observations(branch_logits={}, labels=jnp.zeros((1,), jnp.int32), features={},
                     epoch=jnp.asarray(0))
  with pytest.raises(ValueError, match='aux_grads'):
    tx.update(g, tx.init(g), None, observations=obs)
  tx = mmpareto_transform(('audio', 'text'), LABELS)
  with pytest.raises(ValueError, match="'text'"):
    tx.update(g, tx.init(g), None, observations=obs_with(g, g))
