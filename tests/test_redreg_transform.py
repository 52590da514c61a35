"""The RedReg optax transform (redreg.py): gate, anchor, state, chain, jit."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from redreg_jax.observations import Observations
from redreg_jax.redreg import RedRegState, redreg_transform

MODS = ('audio', 'visual')
LABELS = {'audio': {'b': 'audio', 'w': 'audio'}, 'head': {'w': 'head'},
          'visual': {'w': 'visual'}}


def make_params(shift=0.0):
  return {
      'audio': {'b': jnp.array([0.5, -1.0, 2.0]) + shift,
                'w': jnp.arange(6.0).reshape(2, 3) / 10 - shift},
      'head': {'w': jnp.ones((3, 2)) * (1 + shift)},
      'visual': {'w': jnp.array([[1.0, -2.0], [0.5, 0.25]]) + 2 * shift},
  }


def make_grads(seed=0, params=None):
  params = make_params() if params is None else params
  leaves, tdef = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(
      tdef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def make_obs(epoch, *, dominant='audio', mods=MODS, shared=True, red=None,
             valid=None, batch=4, classes=3):
  """Observations where `dominant` is the most confident branch."""
  labels = jnp.arange(batch) % classes
  onehot = jax.nn.one_hot(labels, classes)
  logits = {m: onehot * (3.0 if m == dominant else 0.5 + 0.1 * i)
            for i, m in enumerate(mods)}
  base = jnp.arange(batch * 4, dtype=jnp.float32).reshape(batch, 4) + 1.0
  if shared:  # Identical features: sim = 1 >= tau.
    feats = {m: base for m in mods}
  else:  # Mutually orthogonal features: sim = 0 < tau.
    feats = {m: jnp.tile(jax.nn.one_hot(i, 4), (batch, 1)) for i, m in enumerate(mods)}
  red = {m: 1.0 for m in mods} if red is None else red
  valid = {m: True for m in mods} if valid is None else valid
  return Observations(
      branch_logits=logits, labels=labels, features=feats,
      epoch=jnp.int32(epoch),
      redundancy={m: jnp.float32(v) for m, v in red.items()},
      redundancy_valid={m: jnp.bool_(v) for m, v in valid.items()})


def diag(state):
  return {k: float(v) for k, v in optax.tree_utils.tree_get(state, 'diagnostics').items()}


def open_tx(**kw):
  """A transform whose gate opens from the second step on, given shared features."""
  return compiled(**kw)[0]


def compiled(**kw):
  """(open_tx(**kw), its jitted update), cached so each setting compiles once."""
  return _compiled(tuple(sorted(kw.items())))


@functools.lru_cache(maxsize=None)
def _compiled(items):
  opts = dict(num_epochs=4, window=1, warmup_epochs=0)
  opts.update(items)
  tx = redreg_transform(MODS, LABELS, **opts)
  return tx, jax.jit(tx.update)


def numpy_project(d, g, eps=1e-12):
  return d - (np.vdot(d, g) / (np.vdot(g, g) + eps)) * g


class HyperParameterTest(parameterized.TestCase):

  @parameterized.parameters(
      ('modalities', dict(modalities=('audio',))),
      ('modalities', dict(modalities=('audio', 'audio'))),
      ('num_epochs', dict(num_epochs=0)),
      ('window', dict(window=0)),
      ('window', dict(window=2.5)),
      ('threshold', dict(threshold=float('nan'))),
      ('beta', dict(beta=-0.1)),
      ('gamma', dict(gamma=-1.0)),
      ('tau_min', dict(tau_min=-2.0)),
      ('tau_max', dict(tau_max=1.5)),
      ('tau_min', dict(tau_min=0.6, tau_max=0.5)),
      ('eps', dict(eps=0.0)),
      ('warmup_epochs', dict(warmup_epochs=-1)),
      ('redundancy_norm', dict(redundancy_norm='batch')),
      ('ema_momentum', dict(ema_momentum=1.0)),
      ('projection', dict(projection='layer')),
      ('beta_schedule', dict(beta_schedule='cosine')),
      ('reset_window_each_epoch', dict(reset_window_each_epoch=1)),
      ('anchor', dict(anchor='step')),
      ('anchor_ema_decay', dict(anchor_ema_decay=1.5)),
      ('use_monitor', dict(use_monitor='yes')),
      ('use_gate', dict(use_gate=None)),
  )
  def test_bad_value_raises_naming_argument(self, name, kw):
    args = dict(modalities=MODS, param_labels=LABELS, num_epochs=3)
    args.update(kw)
    with self.assertRaisesRegex(ValueError, name):
      redreg_transform(**args)

  def test_labels_must_cover_every_modality(self):
    tx = redreg_transform(MODS, {'audio': {'b': 'audio', 'w': 'audio'},
                                 'head': {'w': 'head'}, 'visual': {'w': 'head'}},
                          num_epochs=3)
    with self.assertRaisesRegex(ValueError, 'visual'):
      tx.init(make_params())
    tx = redreg_transform(MODS, {'audio': 'audio'}, num_epochs=3)
    with self.assertRaisesRegex(ValueError, 'structure'):
      tx.init(make_params())

  def test_update_needs_params_and_observations(self):
    tx = open_tx()
    state = tx.init(make_params())
    with self.assertRaisesRegex(ValueError, 'params'):
      tx.update(make_grads(), state, observations=make_obs(0))
    with self.assertRaisesRegex(ValueError, 'observations'):
      tx.update(make_grads(), state, make_params())
    with self.assertRaisesRegex(ValueError, 'redundancy'):
      tx.update(make_grads(), state, make_params(),
                observations=make_obs(0)._replace(redundancy={}, redundancy_valid={}))


class TransformTest(chex.TestCase):

  def _two_steps(self, tx_kw, obs2, params2=None, grads2=None):
    """Step 1 at make_params(); step 2 at params2 (drifted), both with obs2's setup."""
    params1 = make_params()
    params2 = make_params(0.3) if params2 is None else params2
    grads2 = make_grads(1) if grads2 is None else grads2
    tx, update = compiled(**tx_kw)
    state = tx.init(params1)
    _, state = update(make_grads(0), state, params1, observations=obs2)
    out, state = update(grads2, state, params2, observations=obs2)
    return out, state, params1, params2, grads2

  def test_state_shapes_and_diagnostics_are_scalars(self):
    tx, update = compiled(window=3)
    state = tx.init(make_params())
    self.assertIsInstance(state, RedRegState)
    chex.assert_shape(state.prob_window, (2, 4))
    chex.assert_shape((state.red_ema, state.red_ema_ready), (2,))
    _, new_state = update(make_grads(), state, make_params(), observations=make_obs(0))
    chex.assert_trees_all_equal_shapes_and_dtypes(state, new_state)
    d = optax.tree_utils.tree_get(new_state, 'diagnostics')
    for key in ('p_audio', 'S_visual', 'red_raw_audio', 'red_norm_visual', 'r_audio',
                'sim', 'tau', 'gate_open', 'gate_closed_by_warmup',
                'gate_closed_by_window', 'gate_closed_by_monitor',
                'gate_closed_by_coinfo', 'dominant', 'correction_norm', 'beta_eff'):
      self.assertIn(key, d)
    self.assertTrue(all(v.shape == () for v in d.values()))

  def test_open_gate_applies_eq30_to_dominant_only(self):
    out, state, params1, params2, grads2 = self._two_steps(dict(), make_obs(0))
    d = diag(state)
    self.assertEqual(d['gate_open'], 1.0)
    self.assertEqual(d['dominant'], 0.0)
    # Hand computation: anchor = params at the epoch's first step (params1).
    norm_sq = 0.0
    for k in ('b', 'w'):
      g = np.asarray(grads2['audio'][k], np.float64)
      drift = np.asarray(params2['audio'][k] - params1['audio'][k], np.float64)
      d_perp = numpy_project(drift.ravel(), g.ravel()).reshape(g.shape)
      np.testing.assert_allclose(out['audio'][k], g + 0.9 * d_perp, rtol=1e-5, atol=1e-6)
      self.assertAlmostEqual(float(np.vdot(out['audio'][k], g)), float(np.vdot(g, g)),
                             places=4)  # Eq.31
      norm_sq += float(np.sum((0.9 * d_perp) ** 2))
    self.assertAlmostEqual(d['correction_norm'], math.sqrt(norm_sq), places=5)
    # Every other leaf is the incoming gradient, bit for bit.
    for k in ('head', 'visual'):
      chex.assert_trees_all_equal(out[k], grads2[k])

  def test_non_dominant_leaves_bit_identical_incl_negative_zero(self):
    grads2 = make_grads(1)
    grads2['visual']['w'] = grads2['visual']['w'].at[0, 0].set(-0.0)
    grads2['head']['w'] = grads2['head']['w'].at[1, 1].set(-0.0)
    out, state, *_ = self._two_steps(dict(), make_obs(0), grads2=grads2)
    self.assertEqual(diag(state)['gate_open'], 1.0)
    for k in ('visual', 'head'):
      np.testing.assert_array_equal(out[k]['w'], grads2[k]['w'])
      np.testing.assert_array_equal(jnp.signbit(out[k]['w']), jnp.signbit(grads2[k]['w']))

  def test_visual_dominant_is_corrected_instead(self):
    out, state, params1, params2, grads2 = self._two_steps(
        dict(), make_obs(0, dominant='visual'))
    self.assertEqual(diag(state)['dominant'], 1.0)
    chex.assert_trees_all_equal(out['audio'], grads2['audio'])
    g = np.asarray(grads2['visual']['w']).ravel()
    drift = np.asarray(params2['visual']['w'] - params1['visual']['w']).ravel()
    np.testing.assert_allclose(out['visual']['w'].ravel(),
                               g + 0.9 * numpy_project(drift, g), rtol=1e-5, atol=1e-6)

  def test_global_projection(self):
    out, _, _, _, grads2 = self._two_steps(dict(projection='global'), make_obs(0))
    corr = {k: out['audio'][k] - grads2['audio'][k] for k in ('b', 'w')}
    total = sum(float(jnp.vdot(corr[k], grads2['audio'][k])) for k in corr)
    self.assertAlmostEqual(total, 0.0, places=5)  # Orthogonal over the encoder.
    self.assertGreater(abs(float(jnp.vdot(corr['w'], grads2['audio']['w']))), 1e-4)

  def test_gate_closes_for_each_reason(self):
    cases = {
        'warmup': (dict(warmup_epochs=1), make_obs(0)),
        'monitor': (dict(threshold=5.0), make_obs(0)),
        'coinfo': (dict(), make_obs(0, shared=False)),
        'window': (dict(window=3), make_obs(0)),
    }
    for reason, (tx, obs) in cases.items():
      out, state, _, _, grads2 = self._two_steps(tx, obs)
      d = diag(state)
      self.assertEqual(d['gate_open'], 0.0, reason)
      closed = {k for k in ('warmup', 'window', 'monitor', 'coinfo')
                if d[f'gate_closed_by_{k}'] == 1.0}
      self.assertEqual(closed, {reason})
      self.assertEqual(d['correction_norm'], 0.0)
      chex.assert_trees_all_equal(out, grads2)
    # Redundancy of the dominant not computed this step: the monitor stays shut.
    obs = make_obs(0, valid={'audio': False, 'visual': True})
    _, state, *_ = self._two_steps(dict(), obs)
    self.assertEqual(diag(state)['gate_closed_by_monitor'], 1.0)

  def test_ablation_switches_remove_their_factor(self):
    _, state, *_ = self._two_steps(dict(threshold=5.0, use_monitor=False), make_obs(0))
    d = diag(state)
    self.assertEqual((d['gate_open'], d['gate_closed_by_monitor']), (1.0, 0.0))
    _, state, *_ = self._two_steps(dict(use_gate=False), make_obs(0, shared=False))
    d = diag(state)
    self.assertEqual((d['gate_open'], d['gate_closed_by_coinfo']), (1.0, 0.0))
    # Without the monitor the train step need not compute redundancy at all.
    obs = make_obs(0)._replace(redundancy={}, redundancy_valid={})
    _, state, *_ = self._two_steps(dict(use_monitor=False), obs)
    self.assertEqual(diag(state)['gate_open'], 1.0)

  def test_gate_shut_throughout_warmup(self):
    tx, update = compiled(warmup_epochs=2)
    state = tx.init(make_params())
    opened = []
    for step, epoch in enumerate([0, 0, 0, 1, 1, 1, 2, 2]):
      _, state = update(make_grads(step), state, make_params(0.1 * step),
                        observations=make_obs(epoch))
      d = diag(state)
      opened.append(d['gate_open'])
      self.assertEqual(d['gate_closed_by_warmup'], float(epoch < 2))
      if step == 6:  # The epoch's first step resets the anchor: d = 0.
        self.assertEqual(d['correction_norm'], 0.0)
    self.assertEqual(opened, [0.0] * 6 + [1.0, 1.0])
    self.assertGreater(diag(state)['correction_norm'], 0.0)

  def test_anchor_resets_at_each_epoch_boundary(self):
    for kind in ('epoch', 'ema'):
      tx, update = compiled(anchor=kind, anchor_ema_decay=0.5)
      state = tx.init(make_params())
      expected = make_params()
      for step, epoch in enumerate([0, 0, 1, 1, 1, 2]):
        params = make_params(0.1 * (step + 1))
        _, state = update(make_grads(step), state, params, observations=make_obs(epoch))
        if kind == 'epoch':
          if step in (0, 2, 5):  # First step of each epoch.
            expected = params
        else:  # anchor <- 0.5 anchor + 0.5 params after every step.
          expected = jax.tree.map(lambda a, w: 0.5 * a + 0.5 * w, expected, params)
        chex.assert_trees_all_close(state.anchor, expected, rtol=1e-6)
        self.assertEqual(int(state.anchor_epoch), epoch)

  def test_per_epoch_window_reset(self):
    for reset, expected_counts in ((False, [1, 2, 2, 2]), (True, [1, 2, 1, 2])):
      tx, update = compiled(reset_window_each_epoch=reset)
      state = tx.init(make_params())
      counts = []
      for step, epoch in enumerate([0, 0, 1, 1]):
        _, state = update(make_grads(step), state, make_params(0.1 * step),
                             observations=make_obs(epoch))
        counts.append(int(state.window_count))
        self.assertEqual(diag(state)['gate_closed_by_window'], float(counts[-1] < 2))
      self.assertEqual(counts, expected_counts)

  def test_redundancy_ema_advances_only_where_valid(self):
    tx, update = compiled()
    state = tx.init(make_params())
    steps = [({'audio': 2.0, 'visual': 9.0}, {'audio': True, 'visual': False}),
             ({'audio': 100.0, 'visual': 3.0}, {'audio': False, 'visual': True}),
             ({'audio': 4.0, 'visual': 6.0}, {'audio': True, 'visual': True})]
    for step, (red, valid) in enumerate(steps):
      _, state = update(make_grads(step), state, make_params(),
                        observations=make_obs(0, red=red, valid=valid))
    # audio: 2 -> (skip) -> 0.9 * 2 + 0.1 * 4; visual: (skip) -> 3 -> 0.9 * 3 + 0.1 * 6.
    np.testing.assert_allclose(state.red_ema, [2.2, 3.3], rtol=1e-6)
    d = diag(state)
    self.assertAlmostEqual(d['red_norm_audio'], 4.0 / 2.2, places=5)
    self.assertAlmostEqual(d['red_norm_visual'], 6.0 / 3.3, places=5)
    self.assertAlmostEqual(d['red_raw_visual'], 6.0, places=6)
    # 'none' keeps the raw ratio.
    tx, update = compiled(redundancy_norm='none')
    _, state = update(make_grads(), tx.init(make_params()), make_params(),
                         observations=make_obs(0, red={'audio': 0.7, 'visual': 0.2}))
    self.assertAlmostEqual(diag(state)['r_audio'], 0.7, places=6)

  def test_confidence_gap_beta(self):
    obs = make_obs(0)
    out_c, state_c, *_ = self._two_steps(dict(), obs)
    out_g, state_g, _, _, grads2 = self._two_steps(
        dict(beta_schedule='confidence_gap'), obs)
    d = diag(state_g)
    expected = math.exp(0.9 * math.tanh(d['p_audio'] - d['p_visual']))
    self.assertAlmostEqual(d['beta_eff'], expected, places=5)
    self.assertAlmostEqual(diag(state_c)['beta_eff'], 0.9, places=6)
    for k in ('b', 'w'):
      corr_c = out_c['audio'][k] - grads2['audio'][k]
      corr_g = out_g['audio'][k] - grads2['audio'][k]
      np.testing.assert_allclose(corr_g, expected / 0.9 * corr_c, rtol=1e-4, atol=1e-6)

  def test_three_modalities(self):
    mods = ('audio', 'visual', 'text')
    labels = dict(LABELS, text={'w': 'text'})
    params1 = dict(make_params(), text={'w': jnp.array([1.0, 2.0, 3.0])})
    params2 = dict(make_params(0.2), text={'w': jnp.array([1.5, 1.0, 3.0])})
    grads = dict(make_grads(3), text={'w': jnp.array([0.1, 0.2, -0.3])})
    tx = redreg_transform(mods, labels, num_epochs=3, window=1, warmup_epochs=0)
    update = jax.jit(tx.update)
    state = tx.init(params1)
    obs = make_obs(0, dominant='text', mods=mods)
    _, state = update(grads, state, params1, observations=obs)
    out, state = update(grads, state, params2, observations=obs)
    d = diag(state)
    self.assertEqual((d['dominant'], d['gate_open']), (2.0, 1.0))
    for k in ('audio', 'visual', 'head'):
      chex.assert_trees_all_equal(out[k], grads[k])
    g = np.asarray(grads['text']['w'])
    drift = np.asarray(params2['text']['w'] - params1['text']['w'])
    np.testing.assert_allclose(out['text']['w'], g + 0.9 * numpy_project(drift, g),
                               rtol=1e-5, atol=1e-6)

  def test_jit_and_eager_agree_and_trace_once(self):
    tx = open_tx()

    @chex.assert_max_traces(n=1)
    def step(grads, state, params, obs):
      return tx.update(grads, state, params, observations=obs)

    jitted = jax.jit(step)
    s_eager = s_jit = tx.init(make_params())
    for i, epoch in enumerate([0, 0, 0, 1, 1]):
      args = (make_grads(i), make_params(0.1 * i), make_obs(epoch, shared=i != 2))
      u_eager, s_eager = tx.update(args[0], s_eager, args[1], observations=args[2])
      u_jit, s_jit = jitted(args[0], s_jit, args[1], args[2])
      chex.assert_trees_all_close(u_jit, u_eager, rtol=1e-5, atol=1e-6)
      chex.assert_trees_all_close(s_jit, s_eager, rtol=1e-5, atol=1e-6)


def numpy_chain_reference(params, grads_seq, obs_seq, *, lr, wd, momentum, window,
                          warmup, threshold, beta, gamma, tau_min, tau_max,
                          num_epochs, eps=1e-12):
  """RedReg -> add_decayed_weights -> sgd(momentum), written out in numpy."""
  params = {k: np.asarray(v, np.float64) for k, v in params.items()}
  mods = ('audio', 'visual')
  groups = {'audio': ['audio_b', 'audio_w'], 'visual': ['visual_w']}
  trace = {k: np.zeros_like(v) for k, v in params.items()}
  anchor, anchor_epoch = dict(params), -1
  hist, ema, ready = [], {m: 0.0 for m in mods}, {m: False for m in mods}
  opened = []
  for grads, obs in zip(grads_seq, obs_seq):
    g = {k: np.asarray(v, np.float64) for k, v in grads.items()}
    epoch = int(obs['epoch'])
    if epoch != anchor_epoch:
      anchor, anchor_epoch = dict(params), epoch
    p = {}
    for m in mods:
      z = obs['logits'][m] - obs['logits'][m].max(-1, keepdims=True)
      prob = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
      p[m] = prob[np.arange(len(obs['labels'])), obs['labels']].mean()
    hist.append(p)
    full = len(hist) >= window + 1
    r = {}
    for m in mods:
      s = 0.0
      if full:
        now = np.mean([h[m] for h in hist[-window:]])
        prev = np.mean([h[m] for h in hist[-window - 1:-1]])
        s = (now - prev) / (abs(prev) + eps)
      red = 0.0
      if obs['valid'][m]:
        ema[m] = 0.9 * ema[m] + 0.1 * obs['red'][m] if ready[m] else obs['red'][m]
        ready[m] = True
        red = obs['red'][m] / (ema[m] + eps)
      r[m] = (red, s)
    dom = mods[int(np.argmax([p[m] for m in mods]))]
    other = [m for m in mods if m != dom][0]
    za, zo = obs['feats'][dom], obs['feats'][other]
    sim = np.mean(np.sum(za * zo, -1) / (np.linalg.norm(za, axis=-1) *
                                         np.linalg.norm(zo, axis=-1)))
    tau = tau_min + epoch / (num_epochs - 1) * (tau_max - tau_min)
    red, s = r[dom]
    gate = (epoch >= warmup and full and obs['valid'][dom]
            and red - gamma * max(s, 0.0) > threshold and sim >= tau)
    opened.append(gate)
    if gate:
      for k in groups[dom]:
        g[k] = g[k] + beta * numpy_project(params[k] - anchor[k], g[k])  # Eq.30
    for k in params:
      trace[k] = g[k] + wd * params[k] + momentum * trace[k]
      params[k] = params[k] - lr * trace[k]
  return params, opened


class ChainTest(chex.TestCase):

  def test_chain_matches_numpy_reference(self):
    # Flat param dict so the numpy side can index leaves by name.
    rng = np.random.default_rng(0)
    params = {'audio_b': rng.normal(size=(3,)), 'audio_w': rng.normal(size=(2, 3)),
              'head_w': rng.normal(size=(3, 2)), 'visual_w': rng.normal(size=(2, 2))}
    labels = {'audio_b': 'audio', 'audio_w': 'audio', 'head_w': 'head',
              'visual_w': 'visual'}
    hp = dict(window=2, warmup=1, threshold=0.9, beta=0.9, gamma=0.5, tau_min=0.0,
              tau_max=0.3, num_epochs=3)
    epochs = [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]
    obs_seq, grads_seq = [], []
    for i, epoch in enumerate(epochs):
      dom_boost = 2.0 if i % 4 else 0.2  # The dominant modality flips now and then.
      obs_seq.append(dict(
          epoch=epoch, labels=rng.integers(0, 3, size=4),
          logits={'audio': rng.normal(size=(4, 3)) + dom_boost * np.eye(3)[[0, 1, 2, 0]],
                  'visual': rng.normal(size=(4, 3))},
          feats={m: rng.normal(size=(4, 5)) + 1.0 for m in ('audio', 'visual')},
          red={'audio': rng.uniform(0.5, 1.5), 'visual': rng.uniform(0.5, 1.5)},
          valid={'audio': bool(i != 5), 'visual': bool(i % 2)}))
      grads_seq.append({k: rng.normal(size=v.shape) for k, v in params.items()})
    for o in obs_seq:  # Make the audio logits agree with the labels.
      o['logits']['audio'] = o['logits']['audio'] + 1.5 * np.eye(3)[o['labels']]

    expected, opened = numpy_chain_reference(
        params, grads_seq, obs_seq, lr=0.1, wd=1e-4, momentum=0.9,
        **{k: v for k, v in hp.items()})
    # The sequence must exercise both branches of the gate to mean anything.
    self.assertTrue(any(opened) and not all(opened[2:]), opened)

    tx = optax.chain(
        redreg_transform(MODS, labels, num_epochs=hp['num_epochs'], window=hp['window'],
                         threshold=hp['threshold'], beta=hp['beta'], gamma=hp['gamma'],
                         tau_min=hp['tau_min'], tau_max=hp['tau_max'],
                         warmup_epochs=hp['warmup']),
        optax.add_decayed_weights(1e-4),
        optax.sgd(0.1, momentum=0.9))

    @jax.jit
    def train_step(params, opt_state, grads, obs):
      updates, opt_state = tx.update(grads, opt_state, params, observations=obs)
      return optax.apply_updates(params, updates), opt_state

    f32 = lambda t: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), t)
    p = f32(params)
    opt_state = tx.init(p)
    got_open = []
    for o, g in zip(obs_seq, grads_seq):
      obs = Observations(
          branch_logits=f32(o['logits']), labels=jnp.asarray(o['labels'], jnp.int32),
          features=f32(o['feats']), epoch=jnp.int32(o['epoch']),
          redundancy=f32(o['red']),
          redundancy_valid={m: jnp.bool_(v) for m, v in o['valid'].items()})
      p, opt_state = train_step(p, opt_state, f32(g), obs)
      diagnostics = optax.tree_utils.tree_get(opt_state, 'diagnostics')
      got_open.append(bool(diagnostics['gate_open']))
    self.assertEqual(got_open, opened)
    chex.assert_trees_all_close(p, expected, rtol=1e-4, atol=1e-5)


if __name__ == '__main__':
  absltest.main()
