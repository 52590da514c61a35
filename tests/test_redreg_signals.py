"""RedReg's pure signals (redreg_signals.py) against values worked out by hand."""

import math

from absl.testing import absltest
import chex
import jax
import jax.numpy as jnp
import numpy as np

from redreg_jax import redreg_signals as sig

EPS = 1e-12


class TrueClassProbTest(absltest.TestCase):

  def test_eq14_by_hand(self):
    # Row 0: softmax([0, ln 3]) = [1/4, 3/4], label 1 -> 3/4; row 1: [1/2, 1/2] -> 1/2.
    logits = jnp.array([[0.0, math.log(3.0)], [0.0, 0.0]])
    p = sig.branch_true_class_prob(logits, jnp.array([1, 0]))
    np.testing.assert_allclose(p, (0.75 + 0.5) / 2, rtol=1e-6)


class WindowTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_push_and_growth_rate_eq15_16(self):
    push = self.variant(sig.push_window)
    rate = self.variant(lambda w, c: sig.growth_rate(w, c, EPS))
    window = jnp.zeros((2, 3))  # M = 2, L = 2.
    count = jnp.zeros((), jnp.int32)
    seq = [[0.2, 0.5], [0.4, 0.5], [0.5, 0.25]]
    for i, p in enumerate(seq[:2]):
      window, count = push(window, count, jnp.array(p))
      s, full = rate(window, count)
      self.assertEqual(int(count), i + 1)
      self.assertFalse(bool(full))
      np.testing.assert_array_equal(s, [0.0, 0.0])  # Undefined until full.
    window, count = push(window, count, jnp.array(seq[2]))
    s, full = rate(window, count)
    self.assertTrue(bool(full))
    np.testing.assert_allclose(window, np.array(seq).T)
    # audio: now mean(0.4, 0.5) = 0.45, prev mean(0.2, 0.4) = 0.3 -> 0.15 / 0.3.
    # visual: now 0.375, prev 0.5 -> -0.125 / 0.5.
    np.testing.assert_allclose(s, [0.5, -0.25], rtol=1e-5)
    # The count saturates at L+1 and the oldest value drops out.
    window, count = push(window, count, jnp.array([0.5, 0.25]))
    s, _ = rate(window, count)
    self.assertEqual(int(count), 3)
    np.testing.assert_allclose(s, [(0.5 - 0.45) / 0.45, (0.25 - 0.375) / 0.375],
                               rtol=1e-5)


class RedundancyTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_eq20_by_hand(self):
    score = self.variant(lambda *a: sig.redundancy_score(*a, EPS))
    z1 = jnp.array([[1.0, 2.0]])
    z2 = jnp.zeros((1, 2))
    x1 = jnp.ones((1, 4))
    x2 = jnp.zeros((1, 4))
    # mean((z1 - z2)^2) = (1 + 4) / 2; mean((x1 - x2)^2) = 1.
    np.testing.assert_allclose(score(z1, z2, x1, x2), 2.5, rtol=1e-6)
    # Doubling the input difference quarters the score.
    np.testing.assert_allclose(score(z1, z2, 2 * x1, x2), 2.5 / 4, rtol=1e-6)
    # Identical inputs: eps keeps the ratio finite.
    self.assertTrue(np.isfinite(float(score(z1, z2, x1, x1))))

  @chex.variants(with_jit=True, without_jit=True)
  def test_ema_normalise(self):
    norm = self.variant(lambda v, e, r, ok: sig.ema_normalise(
        v, e, r, momentum=0.9, eps=EPS, valid=ok))
    ema = jnp.zeros(2)
    ready = jnp.zeros(2, bool)
    # Step 1: audio valid (2.0) initialises its EMA; visual not computed.
    out, ema, ready = norm(jnp.array([2.0, 7.0]), ema, ready, jnp.array([True, False]))
    np.testing.assert_allclose(out[0], 1.0, rtol=1e-6)
    np.testing.assert_allclose(ema, [2.0, 0.0])
    np.testing.assert_array_equal(ready, [True, False])
    # Step 2: audio 4.0 -> EMA 0.9 * 2 + 0.1 * 4 = 2.2 before dividing; visual 3.0
    # initialises.
    out, ema, ready = norm(jnp.array([4.0, 3.0]), ema, ready, jnp.array([True, True]))
    np.testing.assert_allclose(ema, [2.2, 3.0], rtol=1e-6)
    np.testing.assert_allclose(out, [4.0 / 2.2, 1.0], rtol=1e-6)
    # Step 3: nothing computed, nothing moves.
    _, ema2, ready2 = norm(jnp.array([9.0, 9.0]), ema, ready, jnp.array([False, False]))
    np.testing.assert_array_equal(ema2, ema)
    np.testing.assert_array_equal(ready2, ready)

  def test_eq21_by_hand(self):
    r = sig.redundant_phase_indicator(jnp.array([1.0, 0.5]), jnp.array([0.4, -0.2]), 0.5)
    # Only positive growth is subtracted: 1 - 0.5 * 0.4, 0.5 - 0.
    np.testing.assert_allclose(r, [0.8, 0.5], rtol=1e-6)


class CoinfoTest(chex.TestCase):

  def _features(self):
    return {
        'audio': jnp.array([[1.0, 0.0], [0.0, 1.0]]),
        'visual': jnp.array([[1.0, 1.0], [0.0, 2.0]]),
        'text': jnp.array([[-1.0, 0.0], [0.0, -3.0]]),
    }

  @chex.variants(with_jit=True, without_jit=True)
  def test_eq23_two_modalities(self):
    feats = sig.stack_features(self._features(), ('audio', 'visual'))
    sim = self.variant(sig.coinfo_similarity)
    # Row cosines 1/sqrt(2) and 1, batch mean; symmetric in the dominant index.
    expected = (1 / math.sqrt(2) + 1) / 2
    np.testing.assert_allclose(sim(feats, jnp.int32(0)), expected, rtol=1e-6)
    np.testing.assert_allclose(sim(feats, jnp.int32(1)), expected, rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_eq23_three_modalities_traced_dominant(self):
    feats = sig.stack_features(self._features(), ('audio', 'visual', 'text'))
    sim = self.variant(sig.coinfo_similarity)
    av = (1 / math.sqrt(2) + 1) / 2
    # audio dominant: mean of cos(a, v) and cos(a, t) = -1.
    np.testing.assert_allclose(sim(feats, jnp.int32(0)), (av - 1) / 2, rtol=1e-6)
    # visual dominant: cos(v, a) = av, cos(v, t) = mean(-1/sqrt(2), -1) = -av.
    np.testing.assert_allclose(sim(feats, jnp.int32(1)), 0.0, atol=1e-6)

  def test_zero_features_give_zero_cosine(self):
    feats = jnp.stack([jnp.zeros((2, 3)), jnp.ones((2, 3))])
    np.testing.assert_allclose(sig.coinfo_similarity(feats, jnp.int32(0)), 0.0)

  def test_unequal_or_missing_features_raise(self):
    with self.assertRaisesRegex(ValueError, 'common shape'):
      sig.stack_features({'a': jnp.ones((2, 3)), 'v': jnp.ones((2, 4))}, ('a', 'v'))
    with self.assertRaisesRegex(ValueError, 'lacks modalities'):
      sig.stack_features({'a': jnp.ones((2, 3))}, ('a', 'v'))


class TauAndGateTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_tau_eq24(self):
    tau = self.variant(lambda e: sig.tau_schedule(e, 5, 0.2, 0.5))
    for epoch, expected in [(0, 0.2), (2, 0.35), (4, 0.5), (9, 0.5)]:
      np.testing.assert_allclose(tau(jnp.int32(epoch)), expected, rtol=1e-6)
    # E = 1 has no schedule: tau_min.
    np.testing.assert_allclose(sig.tau_schedule(jnp.int32(0), 1, 0.2, 0.5), 0.2)

  def _gate(self, **kw):
    args = dict(epoch=jnp.int32(3), window_full=jnp.bool_(True),
                r_dominant=jnp.float32(0.3), sim=jnp.float32(0.4), tau=jnp.float32(0.3))
    opts = dict(warmup_epochs=2, threshold=0.15)
    for k in list(kw):
      if k in args:
        args[k] = kw.pop(k)
    opts.update(kw)
    return jax.jit(lambda a: sig.redreg_gate(**a, **opts))(args)

  def test_open(self):
    open_, f = self._gate()
    self.assertTrue(bool(open_))
    self.assertFalse(any(bool(x) for x in f))

  def test_each_reason_closes_alone(self):
    cases = {
        'warmup': dict(epoch=jnp.int32(1)),
        'window': dict(window_full=jnp.bool_(False)),
        'monitor': dict(r_dominant=jnp.float32(0.15)),  # r > R is strict.
        'coinfo': dict(sim=jnp.float32(0.29)),
    }
    for reason, kw in cases.items():
      open_, f = self._gate(**kw)
      self.assertFalse(bool(open_), reason)
      closed = {k for k, v in f._asdict().items() if bool(v)}
      self.assertEqual(closed, {reason})
    # sim >= tau is inclusive.
    self.assertTrue(bool(self._gate(sim=jnp.float32(0.3))[0]))
    # An uncomputed redundancy score closes the monitor factor.
    open_, f = self._gate(monitor_valid=jnp.bool_(False))
    self.assertFalse(bool(open_))
    self.assertTrue(bool(f.monitor))

  def test_ablations_drop_their_factor(self):
    open_, f = self._gate(r_dominant=jnp.float32(-1.0), use_monitor=False)
    self.assertTrue(bool(open_))
    self.assertFalse(bool(f.monitor))
    open_, f = self._gate(sim=jnp.float32(-1.0), use_coinfo=False)
    self.assertTrue(bool(open_))
    self.assertFalse(bool(f.coinfo))
    # Dropping one factor leaves the others in force.
    open_, f = self._gate(epoch=jnp.int32(0), use_monitor=False, use_coinfo=False)
    self.assertFalse(bool(open_))
    self.assertTrue(bool(f.warmup))


class ProjectionTest(chex.TestCase):

  def test_eq29_by_hand(self):
    d = {'a': jnp.array([1.0, 0.0]), 'b': jnp.array([0.0, 1.0])}
    g = {'a': jnp.array([1.0, 0.0]), 'b': jnp.array([1.0, 0.0])}
    per = sig.orthogonal_complement(d, g, EPS, 'per_tensor')
    chex.assert_trees_all_close(per, {'a': jnp.array([0.0, 0.0]),
                                      'b': jnp.array([0.0, 1.0])}, atol=1e-7)
    # Globally <d, g> = 1, <g, g> = 2: d_perp = d - g / 2.
    glob = sig.orthogonal_complement(d, g, EPS, 'global')
    chex.assert_trees_all_close(glob, {'a': jnp.array([0.5, 0.0]),
                                       'b': jnp.array([-0.5, 1.0])}, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True)
  def test_orthogonality_and_eq31(self):
    keys = jax.random.split(jax.random.PRNGKey(0), 4)
    d = {'w': jax.random.normal(keys[0], (3, 4)), 'b': jax.random.normal(keys[1], (4,))}
    g = {'w': jax.random.normal(keys[2], (3, 4)), 'b': jax.random.normal(keys[3], (4,))}
    dot = lambda x, y: float(jnp.vdot(x, y))
    for projection in sig.PROJECTIONS:
      d_perp = self.variant(
          lambda d, g: sig.orthogonal_complement(d, g, EPS, projection))(d, g)
      g_t = sig.corrected_gradient(g, d_perp, jnp.float32(0.9), True)  # Eq.30
      if projection == 'per_tensor':
        for k in g:
          self.assertAlmostEqual(dot(d_perp[k], g[k]), 0.0, places=5)
          self.assertAlmostEqual(dot(g_t[k], g[k]), dot(g[k], g[k]), places=4)  # Eq.31
      else:
        total = sum(dot(d_perp[k], g[k]) for k in g)
        self.assertAlmostEqual(total, 0.0, places=5)
        self.assertAlmostEqual(sum(dot(g_t[k], g[k]) for k in g),
                               sum(dot(g[k], g[k]) for k in g), places=4)  # Eq.31
        # Globally orthogonal does not mean orthogonal per tensor.
        self.assertGreater(abs(dot(d_perp['w'], g['w'])), 1e-3)

  def test_zero_gradient_keeps_drift(self):
    d = {'w': jnp.array([1.0, -2.0])}
    g = {'w': jnp.zeros(2)}
    chex.assert_trees_all_close(sig.orthogonal_complement(d, g, EPS), d)

  def test_bad_projection_raises(self):
    with self.assertRaisesRegex(ValueError, 'projection'):
      sig.orthogonal_complement({}, {}, EPS, 'layerwise')


class CorrectionTest(absltest.TestCase):

  def test_eq30_and_shut_gate_is_bit_identical(self):
    g = {'w': jnp.array([-0.0, 1.0, 2.0])}
    d_perp = {'w': jnp.array([1.0, 0.0, -1.0])}
    out = sig.corrected_gradient(g, d_perp, jnp.float32(0.5), jnp.bool_(True))
    np.testing.assert_allclose(out['w'], [0.5, 1.0, 1.5])
    shut = sig.corrected_gradient(g, d_perp, jnp.float32(0.5), jnp.bool_(False))
    np.testing.assert_array_equal(shut['w'], g['w'])
    self.assertTrue(bool(jnp.signbit(shut['w'][0])))  # -0.0 survives.

  def test_effective_beta(self):
    p = jnp.array([0.7, 0.4])
    np.testing.assert_allclose(sig.effective_beta(0.9, p, jnp.int32(0)), 0.9)
    np.testing.assert_allclose(
        sig.effective_beta(0.9, p, jnp.int32(0), 'confidence_gap'),
        math.exp(0.9 * math.tanh(0.3)), rtol=1e-6)
    # M = 3: p_weak is the least confident other modality.
    p3 = jnp.array([0.5, 0.8, 0.2])
    got = jax.jit(lambda p, d: sig.effective_beta(0.9, p, d, 'confidence_gap'))(
        p3, jnp.int32(1))
    np.testing.assert_allclose(got, math.exp(0.9 * math.tanh(0.6)), rtol=1e-6)
    with self.assertRaisesRegex(ValueError, 'beta_schedule'):
      sig.effective_beta(0.9, p, jnp.int32(0), 'linear')


if __name__ == '__main__':
  absltest.main()
