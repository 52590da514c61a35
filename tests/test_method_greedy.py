"""Greedy wired into the trainer: its two-branch model, the cut, speeds through the real step.

The transform's own maths (schedule, speeds by hand on constant gradients) is in
tests/test_greedy.py; here the model (models.BypassFusion), the method module
(redreg_jax/methods/greedy.py) and the train step that joins them.
"""

import dataclasses
import json
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from redreg_jax import config_lib, input_pipeline, methods, models, train
from redreg_jax.greedy import GreedyState
from tests.helpers import data_mesh, tiny_config

MODS = ("a", "b")
B, K = 4, 3
DIMS = {"a": 6, "b": 4}  # Unequal pooled sizes: the fusion does not need them equal.


def _mlp_model(mods=MODS, **kw):
  encoders = {m: {"kind": "mlp", "hidden": DIMS.get(m, 5)} for m in mods}
  return models.MultimodalClassifier(tuple(mods), K, fusion="greedy_bypass",
                                     encoders=encoders, **kw)


def _mlp_inputs(seed=0, mods=MODS):
  keys = jax.random.split(jax.random.key(seed), len(mods))
  return {m: jax.random.normal(k, (B, 5 if m == "a" else 3)) for m, k in zip(mods, keys)}


def _mlp_init():
  model = _mlp_model()
  return model, model.init(jax.random.key(0), _mlp_inputs(), train=False)


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-x))


def _dense(p, x):
  return x @ np.asarray(p["kernel"], np.float64) + np.asarray(p["bias"], np.float64)


def _branches_by_hand(fusion_params, z, means=None, cut=-1):
  """y_m = head_m(z_m * e_m), e_m = sigmoid(W_m relu(W_s [z_a, z_b] + b_s) + b_m)."""
  s = np.maximum(_dense(fusion_params["bypass"], np.concatenate([z["a"], z["b"]], -1)), 0)
  out, excitations = {}, {}
  for i, m in enumerate(MODS):
    e = _sigmoid(_dense(fusion_params[f"bypass_{m}"], s))
    excitations[m] = e
    used = np.broadcast_to(means[m], e.shape) if cut == i else e
    out[m] = _dense(fusion_params[f"branch_{m}"], z[m] * used)
  return out, excitations


def _greedy_state(opt_state) -> GreedyState:
  return next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: isinstance(x, GreedyState))
              if isinstance(s, GreedyState))


# ---------------------------------------------------------------------------------------
# The model: layout, labels, the formula, the running mean, the cut.
# ---------------------------------------------------------------------------------------

def test_bypass_parameters_are_labelled_by_branch():
  _, variables = _mlp_init()
  params = variables["params"]
  assert sorted(params["fusion"]) == ["branch_a", "branch_b", "bypass", "bypass_a", "bypass_b"]
  labels = models.modality_labels(params)
  want = {"branch_a": "a", "branch_b": "b", "bypass": "bypass", "bypass_a": "bypass/a",
          "bypass_b": "bypass/b"}
  for sub, label in want.items():
    assert set(jax.tree.leaves(labels["fusion"][sub])) == {label}, sub
  for m in MODS:
    assert set(jax.tree.leaves(labels[f"encoder_{m}"])) == {m}
  # Shapes: squeeze int(2 (6 + 4) / 4) = 5; each excitation back to its branch's size.
  chex.assert_shape(params["fusion"]["bypass"]["kernel"], (10, 5))
  chex.assert_shape(params["fusion"]["bypass_a"]["kernel"], (5, 6))
  chex.assert_shape(params["fusion"]["branch_b"]["kernel"], (4, K))
  # A late fusion keeps its labels: everything in it is still 'head'.
  late = models.MultimodalClassifier(MODS, K, fusion="sum", encoders={
      m: {"kind": "mlp", "hidden": 4} for m in MODS}).init(
          jax.random.key(0), _mlp_inputs(), train=False)["params"]
  assert set(jax.tree.leaves(models.modality_labels(late)["fusion"])) == {"head"}


def test_branches_and_fused_logits_by_hand():
  model, variables = _mlp_init()
  x = _mlp_inputs(1)
  out = model.apply(variables, x, train=False)
  z = {m: np.asarray(out["features"][m], np.float64) for m in MODS}
  want, _ = _branches_by_hand(variables["params"]["fusion"], z)
  for m in MODS:
    np.testing.assert_allclose(out["branch_logits"][m], want[m], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out["logits"], (want["a"] + want["b"]) / 2, rtol=1e-5, atol=1e-6)
  # Subset logits: the fusion on zeroed features; the full subset is the fused logits.
  subsets = models.subset_logits(model, variables, x)
  chex.assert_trees_all_close(subsets[("a", "b")], out["logits"])
  alone, _ = _branches_by_hand(variables["params"]["fusion"],
                               {"a": z["a"], "b": np.zeros_like(z["b"])})
  np.testing.assert_allclose(subsets[("a",)], (alone["a"] + alone["b"]) / 2, rtol=1e-5,
                             atol=1e-6)


def test_running_mean_is_the_cumulative_mean_of_training_passes():
  model, variables = _mlp_init()
  stats = variables["batch_stats"]["fusion"]
  assert float(stats["excitation_count"]) == 0.0  # init updates nothing
  chex.assert_trees_all_equal(stats["excitation_mean_a"], jnp.zeros(6))
  batch_means = []
  for seed in (1, 2, 3):
    out, mutated = model.apply(variables, _mlp_inputs(seed), train=True, mutable=["batch_stats"])
    z = {m: np.asarray(out["features"][m], np.float64) for m in MODS}
    _, e = _branches_by_hand(variables["params"]["fusion"], z)
    batch_means.append({m: e[m].mean(0) for m in MODS})
    variables = {"params": variables["params"], "batch_stats": mutated["batch_stats"]}
  stats = variables["batch_stats"]["fusion"]
  assert float(stats["excitation_count"]) == 3.0
  for m in MODS:
    np.testing.assert_allclose(stats[f"excitation_mean_{m}"],
                               np.mean([bm[m] for bm in batch_means], axis=0), rtol=1e-5)
  # Evaluation passes read it and change nothing.
  before = jax.device_get(variables["batch_stats"])
  _, mutated = model.apply(variables, _mlp_inputs(4), train=False, mutable=["batch_stats"])
  chex.assert_trees_all_equal(mutated["batch_stats"], before)


@pytest.mark.parametrize("cut", [0, 1])
def test_cut_branch_reads_only_its_own_modality(cut):
  model, variables = _mlp_init()
  _, mutated = model.apply(variables, _mlp_inputs(5), train=True, mutable=["batch_stats"])
  variables = {"params": variables["params"], "batch_stats": mutated["batch_stats"]}
  means = {m: np.asarray(variables["batch_stats"]["fusion"][f"excitation_mean_{m}"])
           for m in MODS}
  caring, other = MODS[cut], MODS[1 - cut]
  x = _mlp_inputs(6)
  kw = {"cut": jnp.int32(cut)}

  def branch_sum(xo, which, fusion_kwargs):
    out, _ = model.apply(variables, {**x, other: xo}, train=True, mutable=["batch_stats"],
                         fusion_kwargs=fusion_kwargs)
    return jnp.sum(out["branch_logits"][which])

  # The cut branch: no gradient to the other modality's input; the other branch: some.
  g_cut = jax.grad(branch_sum)(x[other], caring, kw)
  assert np.all(np.asarray(g_cut) == 0.0)
  assert np.any(np.asarray(jax.grad(branch_sum)(x[other], other, kw)) != 0.0)
  assert np.any(np.asarray(jax.grad(branch_sum)(x[other], caring, None)) != 0.0)
  # Its logits: head_c(z_c * running mean), the mean before this pass.
  out, mutated = model.apply(variables, x, train=True, mutable=["batch_stats"],
                             fusion_kwargs=kw)
  z = {m: np.asarray(out["features"][m], np.float64) for m in MODS}
  want, e = _branches_by_hand(variables["params"]["fusion"], z, means, cut)
  for m in MODS:
    np.testing.assert_allclose(out["branch_logits"][m], want[m], rtol=1e-5, atol=1e-6)
  # The pass still folds the computed (uncut) excitation into the mean.
  np.testing.assert_allclose(mutated["batch_stats"]["fusion"][f"excitation_mean_{caring}"],
                             (means[caring] + e[caring].mean(0)) / 2, rtol=1e-5)
  # No gradient reaches the cut branch's excitation; the shared squeeze still learns.
  def loss(params):
    o, _ = model.apply({"params": params, "batch_stats": variables["batch_stats"]}, x,
                       train=True, mutable=["batch_stats"], fusion_kwargs=kw)
    return sum(jnp.sum(o["branch_logits"][m] ** 2) for m in MODS)
  g = jax.grad(loss)(variables["params"])["fusion"]
  assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(g[f"bypass_{caring}"]))
  assert any(np.any(np.asarray(v) != 0) for v in jax.tree.leaves(g[f"bypass_{other}"]))
  assert any(np.any(np.asarray(v) != 0) for v in jax.tree.leaves(g["bypass"]))


def test_model_refuses_other_than_two_modalities_and_late_fusion_kwargs():
  mods = ("a", "b", "c")
  with pytest.raises(ValueError, match="greedy_bypass fusion joins exactly two modalities"):
    _mlp_model(mods).init(jax.random.key(0), _mlp_inputs(mods=mods), train=False)
  late = models.MultimodalClassifier(MODS, K, fusion="concat", encoders={
      m: {"kind": "mlp", "hidden": 4} for m in MODS})
  with pytest.raises(ValueError, match="takes no fusion_kwargs"):
    late.init(jax.random.key(0), _mlp_inputs(), train=False, fusion_kwargs={"cut": 0})


# ---------------------------------------------------------------------------------------
# Configuration: defaults, errors, every config file.
# ---------------------------------------------------------------------------------------

OPTIM = dict(alpha=0.01, window=5, start_epoch=1)


def _build(optim=None, modalities=("audio", "visual"), fusion="greedy_bypass"):
  return methods.build_method("greedy", {**OPTIM, **(optim or {})}, modalities=modalities,
                              param_labels=models.modality_labels, num_epochs=4,
                              fusion=fusion)


def test_defaults_are_the_released_code():
  spec = methods.get_spec("greedy")
  assert dict(spec.defaults) == OPTIM and spec.fusion == "greedy_bypass"
  assert not spec.unimodal_heads
  # Registered in its module's place: after mmpareto and the methods of the modules before it.
  names = methods.list_methods()
  assert names.index("greedy") > names.index("mmpareto")
  assert methods._MODULES.index("greedy") > methods._MODULES.index("mmpareto")  # pylint: disable=protected-access
  method = _build()
  assert [t.name for t in method.losses] == ["branch"]  # Sum of both branches' CE.
  assert method.transform is not None


@pytest.mark.parametrize("over, field", [
    ({"alpha": 0.0}, "alpha"), ({"alpha": -1.0}, "alpha"), ({"alpha": math.inf}, "alpha"),
    ({"alpha": True}, "alpha"), ({"window": 0}, "window"), ({"window": 2.5}, "window"),
    ({"start_epoch": -1}, "start_epoch"),
])
def test_bad_hyper_parameters_name_the_field(over, field):
  with pytest.raises(ValueError, match=rf"config\.optim\.{field} must be"):
    _build(over)


def test_three_modalities_refused_at_configuration():
  with pytest.raises(ValueError, match=r"greedy is defined for 2 modalities; this run has 3 "
                                       r"\(audio, visual, text\)\. Set config\.modalities"):
    _build(modalities=("audio", "visual", "text"))


def test_late_fusion_refused_naming_the_field_and_value():
  with pytest.raises(ValueError, match=r"config\.model\.fusion='greedy_bypass'.*got 'concat'.*"
                                       r"--config\.model\.fusion=greedy_bypass"):
    _build(fusion="concat")


# Per-example shapes for the datasets that need files (their real ranks); `folder` reads
# them from its manifest.
FOLDER_INFO = dict(modalities=("image", "vector"), num_classes=3,
                   shapes={"image": (8, 8, 3), "vector": (16,)})


def _dataset_info(config):
  if config.data.name == "synthetic_av":
    return input_pipeline.get_dataset(config.data).info
  if config.data.name == "folder":
    raw = FOLDER_INFO
  else:  # data_dir '' : the default shapes, without looking for a prepared build.
    import importlib  # pylint: disable=g-import-not-at-top
    config.data.data_dir = ""
    raw = importlib.import_module(f"data.{config.data.name}").info(config.data)
  return input_pipeline.DatasetInfo(tuple(raw["modalities"]), int(raw["num_classes"]),
                                    {m: tuple(s) for m, s in raw["shapes"].items()})


@pytest.mark.parametrize("name", ["synthetic", "av_digits", "cg_mnist", "cremad",
                                  "kinetics_sounds", "folder", "cmu_mosi"])
def test_every_config_builds_greedy(name):
  config = config_lib.load_config(f"configs/{name}.py:greedy")
  assert config.model.fusion == "greedy_bypass" and config.optim.window == 5
  info = _dataset_info(config)
  if len(info.modalities) != 2:  # CMU-MOSI: three modalities, refused until two are chosen.
    with pytest.raises(ValueError, match="defined for 2 modalities.*config.modalities"):
      _build(modalities=info.modalities)
    config.modalities = ("audio", "text")
    info = input_pipeline.DatasetInfo(config.modalities, info.num_classes,
                                      {m: info.shapes[m] for m in config.modalities})
  method = methods.build_method(config.method, config.optim, modalities=info.modalities,
                                param_labels=models.modality_labels,
                                num_epochs=config.num_epochs, fusion=config.model.fusion)
  model = train.build_model(config, info, method)
  # Abstract init (nothing compiled): the real shapes, the greedy labels on every branch.
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), train.dummy_inputs(info),
                                             train=False))["params"]
  labels = set(jax.tree.leaves(models.modality_labels(params)))
  m0, m1 = info.modalities
  assert labels == {m0, m1, "bypass", f"bypass/{m0}", f"bypass/{m1}"}
  tx = methods.build_optimizer(method, config.optim, steps_per_epoch=4)
  jax.eval_shape(tx.init, params)


# ---------------------------------------------------------------------------------------
# Through the real train step (tiny synthetic_av, 4 steps per epoch).
# ---------------------------------------------------------------------------------------

def _exp(start_epoch=1, **kw):
  return train.Experiment(tiny_config("greedy", **{"optim.start_epoch": start_epoch}), **kw)


@pytest.fixture(scope="module")
def exp0():
  """Greedy unlocked from the first step (start_epoch 0)."""
  return _exp(start_epoch=0)


def _host_inputs(exp, batch):
  return {m: np.asarray(batch[m]) for m in exp.modalities}, np.asarray(batch["label"])


def _branch_loss_fn(exp, batch_stats, inputs, labels, cut):
  def loss(params):
    out, _ = exp.model.apply({"params": params, "batch_stats": batch_stats}, inputs,
                             train=True, mutable=["batch_stats"],
                             fusion_kwargs={"cut": jnp.int32(cut)})
    return sum(methods.cross_entropy(out["branch_logits"][m], labels) for m in exp.modalities)
  return loss


def _group_mu(grads, params):
  """{label: ||g||^2 / ||theta||^2} in float64, from the label tree (independent of greedy.py)."""
  labels = jax.tree.leaves(models.modality_labels(params))
  g_sq, w_sq = {}, {}
  for l, g, w in zip(labels, jax.tree.leaves(grads), jax.tree.leaves(params)):
    g_sq[l] = g_sq.get(l, 0.0) + float(np.sum(np.asarray(g, np.float64) ** 2))
    w_sq[l] = w_sq.get(l, 0.0) + float(np.sum(np.asarray(w, np.float64) ** 2))
  return g_sq, w_sq


def test_speeds_and_rebalancing_step_by_hand(exp0):
  exp, (ma, mv) = exp0, exp0.modalities
  batches = list(exp.train_batches(0))[:2]
  state = exp.init_state()
  host = jax.device_get(state)
  inputs, labels = _host_inputs(exp, batches[0])
  # Step 1, regular: mu of each group from the gradient of the summed branch CE.
  grads = jax.jit(jax.grad(_branch_loss_fn(exp, host.batch_stats, inputs, labels, -1)))(
      host.params)
  g_sq, w_sq = _group_mu(grads, host.params)
  mu_main = [g_sq[m] / w_sq[m] for m in (ma, mv)]
  mu_bypass = [(g_sq[f"bypass/{m}"] + g_sq["bypass"]) / (w_sq[f"bypass/{m}"] + w_sq["bypass"])
               for m in (ma, mv)]
  speeds = [math.log10(b / m) for b, m in zip(mu_bypass, mu_main)]
  d_speed = speeds[0] - speeds[1]
  state, metrics = exp.train_step(state, batches[0])
  gs = _greedy_state(jax.device_get(state.opt_state))
  np.testing.assert_allclose(gs.mu_main_sum, mu_main, rtol=1e-3)
  np.testing.assert_allclose(gs.mu_bypass_sum, mu_bypass, rtol=1e-3)
  np.testing.assert_allclose([metrics[f"speed_{ma}"], metrics[f"speed_{mv}"]], speeds,
                             atol=1e-3)
  np.testing.assert_allclose(metrics["d_speed"], d_speed, atol=1e-3)
  assert float(metrics["rebalancing"]) == 0.0
  assert abs(d_speed) > 0.01, "the fixture should trigger a window"
  caring = 0 if d_speed > 0 else 1
  assert bool(gs.rebalancing) and int(gs.caring) == caring
  # Step 2 re-balances: the loss is the one with branch `caring` cut, not the plain one.
  host = jax.device_get(state)
  inputs, labels = _host_inputs(exp, batches[1])
  want = jax.jit(_branch_loss_fn(exp, host.batch_stats, inputs, labels, caring))(host.params)
  plain = jax.jit(_branch_loss_fn(exp, host.batch_stats, inputs, labels, -1))(host.params)
  state, metrics = exp.train_step(state, batches[1])
  assert float(metrics["rebalancing"]) == 1.0
  np.testing.assert_allclose(metrics["loss"], want, rtol=1e-4)
  assert abs(float(plain) - float(want)) > 1e-4
  gs2 = _greedy_state(jax.device_get(state.opt_state))
  chex.assert_trees_all_close(gs2.mu_main_sum, gs.mu_main_sum)  # Nothing accumulated.
  np.testing.assert_allclose(gs2.d_speed, gs.d_speed)
  # Both forward passes folded into the running means.
  assert float(state.batch_stats["fusion"]["excitation_count"]) == 2.0


def test_apply_kwargs_cut_the_caring_branch_from_the_other_input(exp0):
  exp = exp0
  batch = next(iter(exp.train_batches(0)))
  state, _ = exp.train_step(exp.init_state(), batch)
  host = jax.device_get(state)
  inputs, labels = _host_inputs(exp, batch)
  gs = _greedy_state(host.opt_state)
  assert bool(gs.rebalancing)
  caring, other = exp.modalities[int(gs.caring)], exp.modalities[1 - int(gs.caring)]

  def step_at(epoch):
    return methods.Step(model=exp.model, modalities=exp.modalities, params=host.params,
                        batch_stats=host.batch_stats, method_state=host.method_state,
                        opt_state=host.opt_state, epoch=jnp.int32(epoch), labels=labels,
                        clean=inputs, inputs=inputs, extras={}, input_key=None,
                        observe_key=None)

  kwargs = exp.method.apply_kwargs(step_at(0))
  assert int(kwargs["fusion_kwargs"]["cut"]) == int(gs.caring)

  def branch_sum(x_other, which):
    out, _ = exp.model.apply({"params": host.params, "batch_stats": host.batch_stats},
                             {**inputs, other: x_other}, train=True, mutable=["batch_stats"],
                             **kwargs)
    return jnp.sum(out["branch_logits"][which])

  assert np.all(np.asarray(jax.grad(branch_sum)(inputs[other], caring)) == 0.0)
  assert np.any(np.asarray(jax.grad(branch_sum)(inputs[other], other)) != 0.0)
  # Locked epochs (before start_epoch) never cut, whatever the state says.
  method = dataclasses.replace(exp.method, start_epoch=1)
  assert int(method.apply_kwargs(step_at(0))["fusion_kwargs"]["cut"]) == -1
  assert int(method.apply_kwargs(step_at(1))["fusion_kwargs"]["cut"]) == int(gs.caring)


PLAIN = "greedy_model_plain_test"


@pytest.fixture()
def plain_method():
  """Test only: the Greedy model and loss with plain SGD (no transform, no cut)."""
  methods.register(methods.MethodSpec(
      PLAIN, "test only", lambda setup: methods.Method(setup.name, losses=(methods.BRANCH_CE,)),
      fusion="greedy_bypass"))
  yield
  methods.unregister(PLAIN)


def test_before_start_epoch_a_step_is_a_plain_step(plain_method):  # pylint: disable=unused-argument
  greedy, plain = _exp(start_epoch=1), train.Experiment(tiny_config(PLAIN))
  s_g, s_p = greedy.init_state(), plain.init_state()
  spe = greedy.steps_per_epoch
  for epoch in range(2):
    for i, (b_g, b_p) in enumerate(zip(greedy.train_batches(epoch), plain.train_batches(epoch))):
      s_g, m_g = greedy.train_step(s_g, b_g)
      s_p, m_p = plain.train_step(s_p, b_p)
      if epoch == 0:  # Locked: the speeds are tracked, nothing else differs.
        assert float(m_g["rebalancing"]) == 0.0 and float(m_g["rebalance_next"]) == 0.0
        np.testing.assert_allclose(m_g["loss"], m_p["loss"], rtol=1e-6)
      if epoch == 0 or i == 0:  # The first unlocked step is still a regular one.
        chex.assert_trees_all_close(jax.device_get(s_g.params), jax.device_get(s_p.params),
                                    rtol=1e-6, atol=1e-7)
        chex.assert_trees_all_close(jax.device_get(s_g.batch_stats),
                                    jax.device_get(s_p.batch_stats), rtol=1e-6, atol=1e-7)
  assert int(s_g.step) == 2 * spe
  # Epoch 1 re-balanced, so the runs part.
  gs = _greedy_state(jax.device_get(s_g.opt_state))
  assert float(gs.diagnostics["rebalancing"]) == 1.0
  assert not np.allclose(jax.tree.leaves(jax.device_get(s_g.params))[0],
                         jax.tree.leaves(jax.device_get(s_p.params))[0])


def test_jit_and_no_jit_agree(exp0):
  exp = exp0
  # A regular step, then a re-balancing one. The eager pass runs on host arrays: eager
  # ops on sharded device arrays have aborted XLA's CPU client in CI.
  batches = [jax.device_get(b) for b in list(exp.train_batches(0))[:2]]
  results = []
  for fn in (exp.train_step, exp.step_fn):
    state = exp.init_state() if fn is exp.train_step else jax.device_get(exp.init_state())
    seen = []
    for batch in batches:
      state, metrics = fn(state, batch)
      seen.append(float(metrics["rebalancing"]))
    assert seen == [0.0, 1.0]
    results.append((jax.device_get(state.params), jax.device_get(state.batch_stats),
                    float(metrics["loss"])))
  chex.assert_trees_all_close(results[0][:2], results[1][:2], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(results[0][2], results[1][2], rtol=1e-5)


def test_compiles_once_and_matches_on_4_devices():
  cfg = tiny_config("greedy", **{"optim.start_epoch": 0, "optim.window": 2})
  results = []
  for n_dev in (1, 4):
    mesh = data_mesh(n_dev)
    exp = train.Experiment(cfg, mesh=mesh)
    chex.clear_trace_counter()
    step = jax.jit(chex.assert_max_traces(exp.step_fn, n=1),
                   in_shardings=(exp.repl, exp.data_sharding),
                   out_shardings=(exp.repl, exp.repl), donate_argnums=0)
    state, trace = exp.init_state(), []
    for batch in exp.train_batches(0):
      state, metrics = step(state, batch)
      trace.append({k: float(metrics[k]) for k in ("loss", "d_speed", "rebalancing",
                                                    "caring")})
    # Regular, a window of Q = 2 re-balancing steps, regular again: one trace.
    assert [t["rebalancing"] for t in trace] == [0.0, 1.0, 1.0, 0.0]
    results.append((jax.device_get(state.params), jax.device_get(state.batch_stats), trace))
  chex.assert_trees_all_close(results[0][0], results[1][0], rtol=2e-4, atol=2e-5)
  chex.assert_trees_all_close(results[0][1], results[1][1], rtol=2e-4, atol=2e-5)
  for t1, t4 in zip(results[0][2], results[1][2]):
    assert (t1["rebalancing"], t1["caring"]) == (t4["rebalancing"], t4["caring"])
    np.testing.assert_allclose([t1["loss"], t1["d_speed"]], [t4["loss"], t4["d_speed"]],
                               rtol=2e-4, atol=1e-4)


def test_tiny_train_is_finite_and_logs_speeds(tmp_path):
  summary = train.train_and_evaluate(tiny_config("greedy"), str(tmp_path))
  assert summary["steps"] == 8 and summary["skipped_steps"] == 0
  assert 0.0 <= summary["test"]["accuracy"] <= 1.0
  records = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  steps = [r for r in records if r.get("split") == "train"]
  assert len(steps) == 8
  for r in steps:
    assert all(math.isfinite(r[k]) for k in ("loss", "loss_branch", "d_speed",
                                             "speed_audio", "speed_visual"))
  epochs = [r for r in records if r.get("split") == "train_epoch"]
  # 'rebalancing' averaged over an epoch: the fraction of its steps that re-balanced.
  assert epochs[0]["rebalancing"] == 0.0  # start_epoch 1
  assert 0.0 < epochs[1]["rebalancing"] <= 1.0
  assert [r["rebalancing"] for r in steps[4:]] == [0.0, 1.0, 1.0, 1.0]  # Then a window of 5.
