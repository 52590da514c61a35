"""Tests of PMR: prototypes, rho and Eq.11 coefficients by hand, the loss, jit, M = 3."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax.pmr import (PMR_PRESETS, class_feature_sums, class_prototypes, imbalance_ratio,
                            pmr, pmr_coefficients, pmr_loss, pmr_loss_weights,
                            prototype_entropy, prototype_logits, prototype_scores,
                            prototypes_from_sums, prototypical_cross_entropy, update_prototypes)


def test_class_prototypes_by_hand():
  z = jnp.array([[1.0, 0.0], [3.0, 0.0], [0.0, 2.0], [0.0, 4.0]])
  y = jnp.array([0, 0, 1, 1])
  np.testing.assert_allclose(class_prototypes(z, y, 3), [[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]])
  # Padding rows are ignored; batches accumulate.
  mask = jnp.array([True, False, True, True])
  np.testing.assert_allclose(class_prototypes(z, y, 3, mask_N=mask)[0], [1.0, 0.0])
  s1, c1 = class_feature_sums(z[:2], y[:2], 3)
  s2, c2 = class_feature_sums(z[2:], y[2:], 3)
  np.testing.assert_allclose(prototypes_from_sums(s1 + s2, c1 + c2), class_prototypes(z, y, 3))


def test_update_prototypes_eq12():
  old = jnp.array([[1.0, 1.0], [2.0, 2.0]])
  new = jnp.array([[3.0, 1.0], [0.0, 0.0]])
  out = update_prototypes(old, new, jnp.array([5.0, 0.0]), 0.2)
  # 0.2 old + 0.8 new; class 1 unseen this epoch keeps its prototype.
  np.testing.assert_allclose(out, [[2.6, 1.0], [2.0, 2.0]], rtol=1e-6)


def test_prototype_logits_are_minus_euclidean_distance():
  logits = prototype_logits(jnp.array([[0.0, 0.0]]), jnp.array([[3.0, 4.0], [0.0, 1.0]]))
  np.testing.assert_allclose(logits, [[-5.0, -1.0]])
  # At z = c the distance's gradient is defined (0), not NaN.
  g = jax.grad(lambda z: jnp.sum(prototype_logits(z, jnp.zeros((2, 2)))))(jnp.zeros((1, 2)))
  assert np.all(np.isfinite(g))


def test_rho_and_coefficients_by_hand():
  np.testing.assert_allclose(imbalance_ratio(1.5, 2.0), 0.75)
  # rho = 0.75 < 1: beta = 1/rho - 1 = 1/3 on modality 0's PCE and modality 1's PER.
  pce, per = pmr_coefficients(jnp.array([1.5, 2.0]))
  np.testing.assert_allclose(pce, [1 / 3, 0.0], rtol=1e-6)
  np.testing.assert_allclose(per, [0.0, 1 / 3], rtol=1e-6)
  # rho = 1.5 >= 1: gamma = rho - 1 = 0.5 on modality 1's PCE and modality 0's PER.
  pce, per = pmr_coefficients(jnp.array([3.0, 2.0]))
  np.testing.assert_allclose(pce, [0.0, 0.5], rtol=1e-6)
  np.testing.assert_allclose(per, [0.5, 0.0], rtol=1e-6)
  # Clipped at 1 (Eq.11), and nothing at a tie.
  np.testing.assert_allclose(pmr_coefficients(jnp.array([5.0, 1.0]))[0], [0.0, 1.0])
  for x in pmr_coefficients(jnp.array([2.0, 2.0])):
    np.testing.assert_allclose(x, [0.0, 0.0])
  # Released code: constant weight on the lagging modality, no PER.
  pce, per = pmr_coefficients(jnp.array([1.5, 2.0]), form='released')
  np.testing.assert_allclose(pce, [1.0, 0.0])
  np.testing.assert_allclose(per, [0.0, 0.0])


def test_three_modalities_generalisation():
  pce, per = pmr_coefficients(jnp.array([3.0, 2.5, 4.0]))
  np.testing.assert_allclose(pce, [4 / 3 - 1, 4 / 2.5 - 1, 0.0], rtol=1e-6)
  np.testing.assert_allclose(per, [3 / 2.5 - 1, 0.0, 4 / 2.5 - 1], rtol=1e-6)
  pce, _ = pmr_coefficients(jnp.array([3.0, 2.5, 4.0]), form='released')
  np.testing.assert_allclose(pce, [1.0, 1.0, 0.0])
  spec = pmr(('audio', 'visual', 'text'))
  feats = {m: jax.random.normal(jax.random.PRNGKey(i), (6, 3)) for i, m in
           enumerate(spec.modalities)}
  labels = jnp.array([0, 1, 0, 1, 0, 1])
  protos = {m: class_prototypes(f, labels, 2) for m, f in feats.items()}
  loss, aux = jax.jit(spec.loss)(feats, protos, labels, jnp.asarray(0))
  assert np.isfinite(float(loss)) and 'rho' not in aux and 'pce_weight_text' in aux


def _two_modality_batch():
  # Audio: each sample sits on its class prototype; visual: both samples at the origin.
  feats = [jnp.array([[0.0, 0.0], [3.0, 4.0]]), jnp.zeros((2, 2))]
  protos = [jnp.array([[0.0, 0.0], [3.0, 4.0]]), jnp.array([[0.0, 0.0], [1.0, 0.0]])]
  return feats, protos, jnp.array([0, 1])


@pytest.mark.parametrize('jit', [False, True])
def test_loss_by_hand(jit):
  feats, protos, labels = _two_modality_batch()
  fn = lambda f, p, y, e: pmr_loss(f, p, y, epoch=e, alpha=2.0, mu=0.1, reg_epochs=3)
  fn = jax.jit(fn) if jit else fn
  loss, aux = fn(feats, protos, labels, jnp.asarray(1))
  p_a = 1 / (1 + math.exp(-5))  # true-class probability of both audio samples
  s_a, s_v = 2 * p_a, 1.0  # visual: 1/(1+e^-1) + e^-1/(1+e^-1) = 1
  rho = s_a / s_v
  gamma = min(max(rho - 1, 0), 1)
  pce_v = math.log(1 + math.exp(-1)) + 0.5
  h_a = -(p_a * math.log(p_a) + (1 - p_a) * math.log(1 - p_a))
  np.testing.assert_allclose(aux['rho'], rho, rtol=1e-5)
  np.testing.assert_allclose(aux['score'], [s_a, s_v], rtol=1e-5)
  np.testing.assert_allclose(aux['pce_weight'], [0.0, 2.0 * gamma], rtol=1e-5)
  np.testing.assert_allclose(aux['per_weight'], [0.1 * gamma, 0.0], rtol=1e-5)
  np.testing.assert_allclose(loss, 2.0 * gamma * pce_v - 0.1 * gamma * h_a, rtol=1e-5)
  # After E_r epochs only the PCE remains.
  loss_late, _ = fn(feats, protos, labels, jnp.asarray(3))
  np.testing.assert_allclose(loss_late, 2.0 * gamma * pce_v, rtol=1e-5)


def test_pieces_by_hand():
  logits = jnp.array([[0.0, -1.0], [0.0, -1.0]])
  labels = jnp.array([0, 1])
  np.testing.assert_allclose(prototype_scores(logits, labels), 1.0, rtol=1e-6)
  np.testing.assert_allclose(prototypical_cross_entropy(logits, labels),
                             math.log(1 + math.exp(-1)) + 0.5, rtol=1e-6)
  p = 1 / (1 + math.exp(-1))
  np.testing.assert_allclose(prototype_entropy(logits),
                             -(p * math.log(p) + (1 - p) * math.log(1 - p)), rtol=1e-6)


def test_gradients_reach_features_not_prototypes_or_weights():
  feats, protos, labels = _two_modality_batch()
  f = lambda feats, protos: pmr_loss(feats, protos, labels, epoch=0, mu=0.0)[0]
  g_feats, g_protos = jax.grad(f, argnums=(0, 1))(feats, protos)
  chex.assert_trees_all_close(g_protos, jax.tree.map(jnp.zeros_like, protos))
  assert float(jnp.abs(g_feats[1]).sum()) > 0  # the lagging visual encoder is pushed.
  np.testing.assert_allclose(g_feats[0], 0.0)  # the leader has weight 0 without PER.


def test_identity_on_a_tie_and_outside_the_window():
  z = jax.random.normal(jax.random.PRNGKey(0), (4, 3))
  labels = jnp.array([0, 1, 2, 0])
  protos = class_prototypes(z, labels, 3)
  loss, aux = pmr_loss([z, z], [protos, protos], labels, epoch=0)  # equal scores
  assert float(loss) == 0.0 and float(aux['rho']) == 1.0
  grads = jax.grad(lambda z2: pmr_loss([z, z2], [protos, protos], labels, epoch=0)[0])(z)
  np.testing.assert_allclose(grads, 0.0)
  pce_w, per_w = pmr_loss_weights(jnp.array([1.0, 3.0]), alpha=1.0, mu=0.1, epoch=101,
                                  reg_epochs=200, end_epoch=100)
  np.testing.assert_allclose(pce_w, 0.0)
  np.testing.assert_allclose(per_w, 0.0)


def test_spec_and_prototype_epoch_hook():
  spec = pmr(('audio', 'visual'), **PMR_PRESETS['pmr_official'])
  feats, protos, labels = _two_modality_batch()
  named = dict(zip(spec.modalities, feats))
  sums = {m: class_feature_sums(f, labels, 2)[0] for m, f in named.items()}
  counts = {m: class_feature_sums(f, labels, 2)[1] for m, f in named.items()}
  first = spec.update_prototypes(None, sums, counts)
  np.testing.assert_allclose(first['audio'], [[0.0, 0.0], [3.0, 4.0]])
  later = spec.update_prototypes({m: p + 1.0 for m, p in first.items()}, sums, counts)
  np.testing.assert_allclose(later['audio'], 0.2 * (first['audio'] + 1) + 0.8 * first['audio'],
                             rtol=1e-6)
  loss, aux = spec.loss(named, dict(zip(spec.modalities, protos)), labels, jnp.asarray(0))
  np.testing.assert_allclose(aux['pce_weight_visual'], 1.0)  # released: constant alpha.
  np.testing.assert_allclose(aux['per_weight_audio'], 0.0)
  np.testing.assert_allclose(loss, math.log(1 + math.exp(-1)) + 0.5, rtol=1e-5)


@pytest.mark.parametrize('kwargs, match', [
    (dict(alpha=0.0), 'alpha'),
    (dict(mu=-1e-3), 'mu'),
    (dict(momentum=1.0), 'momentum'),
    (dict(reg_epochs=-1), 'reg_epochs'),
    (dict(reg_epochs=2.5), 'reg_epochs'),
    (dict(end_epoch=-3), 'end_epoch'),
    (dict(coefficient_form='clip'), 'coefficient_form'),
    (dict(subset_fraction=0.0), 'subset_fraction'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    pmr(('audio', 'visual'), **kwargs)


def test_bad_modalities_raise():
  with pytest.raises(ValueError, match='at least two'):
    pmr(('audio',))
  with pytest.raises(ValueError, match='at least two'):
    pmr(('audio', 'audio'))
  with pytest.raises(ValueError, match='one array per modality'):
    pmr_loss([jnp.zeros((2, 2))], [jnp.zeros((2, 2))], jnp.array([0, 1]), epoch=0)
  with pytest.raises(ValueError, match='form'):
    pmr_coefficients(jnp.array([1.0, 2.0]), form='other')
