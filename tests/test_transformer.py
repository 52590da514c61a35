"""SequenceTransformerEncoder: shapes, pooling, masking, dropout, errors.

One small model is compiled a handful of times; shape-only checks use
jax.eval_shape, which traces without compiling.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax.transformer import SequenceTransformerEncoder

MODEL = SequenceTransformerEncoder(num_layers=2, num_heads=2, dim=8, mlp_dim=16,
                                   dropout=0.5, max_len=12)


@jax.jit
def _eval(params, x, mask):
  return MODEL.apply(params, x, train=False, mask_BxT=mask)


@jax.jit
def _train(params, x, rng):
  return MODEL.apply(params, x, train=True, rngs={'dropout': rng})


@pytest.fixture(scope='module')
def setup():
  x = jax.random.normal(jax.random.key(0), (2, 6, 5))
  params = jax.jit(lambda k, x: MODEL.init(k, x, train=False))(jax.random.key(1), x)
  return params, x


def test_shapes_and_mean_pooling(setup):
  params, x = setup
  fmap, pooled = _eval(params, x, jnp.ones((2, 6), bool))
  chex.assert_shape(fmap, (2, 6, 8))
  chex.assert_shape(pooled, (2, 8))
  chex.assert_trees_all_close(pooled, fmap.mean(axis=1), atol=1e-6)
  # Without a mask: the same plain mean.
  chex.assert_trees_all_close(MODEL.apply(params, x, train=False)[1], pooled, atol=1e-5)
  # Different input widths and model widths share one pooled feature size.
  for d_in, dim in ((74, 8), (300, 4)):
    m = SequenceTransformerEncoder(num_layers=1, num_heads=2, dim=dim, mlp_dim=8,
                                   pooled_dim=16, max_len=50)
    xi = jax.ShapeDtypeStruct((3, 50, d_in), jnp.float32)
    p = jax.eval_shape(lambda k, x, m=m: m.init(k, x, train=False), jax.random.key(0), xi)
    fm, z = jax.eval_shape(lambda p, x, m=m: m.apply(p, x, train=False), p, xi)
    assert fm.shape == (3, 50, dim) and z.shape == (3, 16)


def test_positions_and_mask(setup):
  params, x = setup
  full = jnp.ones((2, 6), bool)
  fmap, _ = _eval(params, x, full)
  fmap_rev, _ = _eval(params, x[:, ::-1], full)
  # Learned positions: reversing the input is not just reversing the output.
  assert not np.allclose(fmap, fmap_rev[:, ::-1], atol=1e-5)
  mask = jnp.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]], bool)
  _, pooled = _eval(params, x, mask)
  _, pooled2 = _eval(params, x.at[0, 4:].set(100.0), mask)  # Only padding changes.
  chex.assert_trees_all_close(pooled[0], pooled2[0], atol=1e-5)
  chex.assert_trees_all_close(pooled[1], _eval(params, x, full)[1][1], atol=1e-6)
  # Equal to encoding the 4 real steps alone.
  prefix = MODEL.apply(params, x[:1, :4], train=False)[1]
  chex.assert_trees_all_close(pooled[0], prefix[0], atol=1e-4)


def test_dropout_only_in_training(setup):
  params, x = setup
  full = jnp.ones((2, 6), bool)
  chex.assert_trees_all_equal(_eval(params, x, full)[1], _eval(params, x, full)[1])
  t1 = _train(params, x, jax.random.key(3))[1]
  t2 = _train(params, x, jax.random.key(4))[1]
  assert not np.allclose(t1, t2)
  # Same key, same mask: dropout is reproducible.
  chex.assert_trees_all_equal(t1, _train(params, x, jax.random.key(3))[1])


def test_errors():
  with pytest.raises(ValueError, match='max_len'):
    jax.eval_shape(lambda k: MODEL.init(k, jnp.ones((1, 13, 3)), train=False),
                   jax.random.key(0))
  bad = SequenceTransformerEncoder(num_layers=1, num_heads=3, dim=8, mlp_dim=8)
  with pytest.raises(ValueError, match='num_heads=3 must divide dim=8'):
    jax.eval_shape(lambda k: bad.init(k, jnp.ones((1, 2, 3)), train=False), jax.random.key(0))
