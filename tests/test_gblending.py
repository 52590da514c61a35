"""Tests of G-Blending's OGR and blend weights: Eq.3, 6 and 7 by hand, jit, edge cases."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax.gblending import (blended_loss, gblend_weights, overfitting,
                                  overfitting_generalization,
                                  overfitting_to_generalization_ratio, super_epoch_starts)

# Three heads (audio, visual, multimodal) at checkpoints N and N + n.
TRAIN_BEFORE = jnp.array([2.0, 2.0, 2.0])
TRAIN_AFTER = jnp.array([1.0, 1.5, 0.5])
VAL_BEFORE = jnp.array([2.1, 2.1, 2.2])
VAL_AFTER = jnp.array([1.6, 1.8, 1.9])
ARGS = (TRAIN_BEFORE, TRAIN_AFTER, VAL_BEFORE, VAL_AFTER)


def test_overfitting_and_generalization_by_hand():
  # O_N = L^V - L^T: before [0.1, 0.1, 0.2], after [0.6, 0.3, 1.4].
  np.testing.assert_allclose(overfitting(TRAIN_BEFORE, VAL_BEFORE), [0.1, 0.1, 0.2], atol=1e-6)
  d_o, d_g = overfitting_generalization(*ARGS)
  np.testing.assert_allclose(d_o, [0.5, 0.2, 1.2], atol=1e-6)
  np.testing.assert_allclose(d_g, [0.5, 0.3, 0.3], atol=1e-6)
  np.testing.assert_allclose(overfitting_to_generalization_ratio(*ARGS), [1.0, 2 / 3, 4.0],
                             rtol=1e-5)


@pytest.mark.parametrize('jit', [False, True])
def test_weights_by_hand(jit):
  fn = jax.jit(gblend_weights) if jit else gblend_weights
  w = fn(*ARGS)
  raw = np.array([0.5 / 0.25, 0.3 / 0.04, 0.3 / 1.44])  # dG / dO^2
  np.testing.assert_allclose(w, raw / raw.sum(), rtol=1e-5)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-6)
  chex.assert_trees_all_close(w, gblend_weights(*ARGS), rtol=1e-6)


def test_equal_heads_give_uniform_weights():
  # Identical overfitting and generalisation: no head is preferred.
  same = [jnp.full((4,), v) for v in (2.0, 1.0, 2.2, 1.7)]
  np.testing.assert_allclose(gblend_weights(*same), np.full(4, 0.25), rtol=1e-6)


def test_accuracy_form_flips_signs():
  # Accuracies: O = A^T - A^V, dG = A^V_after - A^V_before.
  acc = (jnp.array([0.5, 0.4]), jnp.array([0.9, 0.6]), jnp.array([0.45, 0.38]),
         jnp.array([0.6, 0.5]))
  d_o, d_g = overfitting_generalization(*acc, higher_is_better=True)
  np.testing.assert_allclose(d_o, [0.25, 0.08], atol=1e-6)
  np.testing.assert_allclose(d_g, [0.15, 0.12], atol=1e-6)
  raw = np.array([0.15 / 0.25**2, 0.12 / 0.08**2])
  np.testing.assert_allclose(gblend_weights(*acc, higher_is_better=True), raw / raw.sum(),
                             rtol=1e-5)


def test_negative_generalization_forms():
  # Head 1's held-out loss grew (dG = -0.1): signed, clipped, or absolute.
  args = (jnp.array([2.0, 2.0]), jnp.array([1.0, 1.0]), jnp.array([2.1, 2.1]),
          jnp.array([1.6, 2.2]))
  # dO = [0.5, 1.1], dG = [0.5, -0.1]
  raw = np.array([0.5 / 0.25, -0.1 / 1.21])
  np.testing.assert_allclose(gblend_weights(*args), raw / raw.sum(), rtol=1e-5)
  np.testing.assert_allclose(gblend_weights(*args, negative='clip'), [1.0, 0.0], atol=1e-6)
  np.testing.assert_allclose(gblend_weights(*args, negative='abs'),
                             np.abs(raw) / np.abs(raw).sum(), rtol=1e-5)


def test_no_generalization_falls_back_to_uniform():
  args = (jnp.array([2.0, 2.0, 2.0]), jnp.array([1.0, 1.0, 1.0]), jnp.array([2.0, 2.0, 2.0]),
          jnp.array([2.5, 2.1, 2.0]))  # every dG <= 0
  np.testing.assert_allclose(gblend_weights(*args, negative='clip'), np.full(3, 1 / 3), rtol=1e-6)


def test_no_change_in_overfitting_dominates():
  # dO = 0 for head 0: dG / eps, the limit of Eq.6.
  args = (jnp.array([2.0, 2.0]), jnp.array([1.5, 1.0]), jnp.array([2.1, 2.1]),
          jnp.array([1.6, 1.6]))
  w = gblend_weights(*args)
  assert np.all(np.isfinite(w)) and float(w[0]) > 0.999


def test_blended_loss_and_stop_gradient():
  losses = jnp.array([1.0, 2.0, 3.0])
  w = jnp.array([0.2, 0.3, 0.5])
  np.testing.assert_allclose(blended_loss(losses, w), 0.2 + 0.6 + 1.5, rtol=1e-6)
  g_w = jax.grad(lambda w: blended_loss(losses, w))(w)
  g_l = jax.grad(lambda l: blended_loss(l, w))(losses)
  np.testing.assert_allclose(g_w, 0.0)
  np.testing.assert_allclose(g_l, w)


def test_super_epoch_starts():
  assert super_epoch_starts(40) == (0, 10, 15, 20, 25, 30, 35)
  assert super_epoch_starts(12, super_epoch=4, first_super_epoch=None) == (0, 4, 8)
  assert super_epoch_starts(40, online=False) == (0,)


@pytest.mark.parametrize('kwargs, match', [
    (dict(negative='drop'), 'negative'),
    (dict(eps=0.0), 'eps'),
    (dict(higher_is_better='no'), 'higher_is_better'),
])
def test_bad_hyper_parameters_raise(kwargs, match):
  with pytest.raises(ValueError, match=match):
    gblend_weights(*ARGS, **kwargs)


def test_bad_shapes_raise():
  with pytest.raises(ValueError, match='same length'):
    gblend_weights(TRAIN_BEFORE, TRAIN_AFTER[:2], VAL_BEFORE, VAL_AFTER)
  with pytest.raises(ValueError, match='K >= 2'):
    gblend_weights(*(x[:1] for x in ARGS))
  with pytest.raises(ValueError, match='super_epoch'):
    super_epoch_starts(10, super_epoch=0)
  with pytest.raises(ValueError, match='1-D'):
    blended_loss(jnp.ones((3,)), jnp.ones((2,)))
