"""DRBML in the trainer: the epoch-end hook by hand, identity, compile-once, devices, resume.

The mathematics (k-means, purity, Eq.4-6) is tested in tests/test_drbml.py; here the
hook that wires it: which features it reads, which parameters it moves and how far,
what it leaves alone, and that a run through `train.train_and_evaluate` logs the
diagnosis and resumes bit for bit.
"""

import glob
import json
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax import config_lib, drbml as drbml_lib, input_pipeline, methods, models, train
from redreg_jax.methods import drbml as drbml_method
from tests.helpers import data_mesh, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIAG_KEYS = ("purity_train", "purity_val", "gap", "alpha")


def _hook(exp):
  (hook,) = exp.method.epoch_hooks
  assert hook.at == "end"
  return hook.fn


def _train_epoch(exp, state, epoch, step=None):
  for batch in exp.train_batches(epoch):
    state, _ = (step or exp.train_step)(state, batch)
  return state


def _encoder(tree, m):
  return tree[f"encoder_{m}"]


@pytest.fixture(scope="module")
def trained():
  """A tiny drbml Experiment, its initial state and its state after one epoch (host)."""
  exp = train.Experiment(tiny_config("drbml", **{"optim.reinit_every": 1}))
  init = jax.device_get(exp.init_state())
  state = _train_epoch(exp, exp.init_state(), 0)
  return exp, init, state


def _assert_reinit_by_hand(exp, before, after, metrics, init_params):
  """theta_m <- (1 - a_m) theta_m + a_m theta_m^init per encoder (Eq.6); the rest as it was."""
  before, after, init_params = jax.device_get((before, after, init_params))
  lam = float(exp.config.optim.reinit_lambda)
  for m in exp.modalities:
    gap = abs(metrics[f"purity_train_{m}"] - metrics[f"purity_val_{m}"])  # Eq.4
    np.testing.assert_allclose(metrics[f"gap_{m}"], gap, rtol=1e-6)
    a = math.tanh(lam * gap)  # Eq.5
    np.testing.assert_allclose(metrics[f"alpha_{m}"], a, rtol=1e-6)
    want = jax.tree.map(lambda w, w0: (1 - a) * w + a * w0, _encoder(before.params, m),
                        _encoder(init_params, m))
    chex.assert_trees_all_close(_encoder(after.params, m), want, rtol=1e-5, atol=1e-6)
  heads = [k for k in before.params if not k.startswith("encoder_")]
  assert heads
  for k in heads:  # The fusion head is not an encoder: untouched.
    chex.assert_trees_all_equal(after.params[k], before.params[k])
  # BatchNorm statistics and SGD momentum stay (the released code re-initialises
  # `named_parameters` only and keeps the optimiser).
  chex.assert_trees_all_equal(after.batch_stats, before.batch_stats)
  chex.assert_trees_all_equal(after.opt_state, before.opt_state)
  assert int(after.method_state["reinits"]) == int(before.method_state["reinits"]) + 1


# ---------------------------------------------------------------------------------------
# Registry, presets, build-time checks.
# ---------------------------------------------------------------------------------------

def test_registered_after_mmpareto_with_the_library_presets():
  names = methods.list_methods()
  assert names[names.index("mmpareto") + 1:][:2] == ["drbml", "drbml_official"]
  assert not {"drbml", "drbml_official"} & methods.STAR_METHODS
  for name in ("drbml", "drbml_official"):
    optim = methods.method_config(name)
    preset = drbml_lib.DRBML_PRESETS[name]
    fields = drbml_method._LIB_KWARGS.items()  # pylint: disable=protected-access
    got = {kw: optim[f] for f, kw in fields if kw in preset}
    assert got == preset, name
    assert optim.diagnosis_train_fraction == 1.0 and optim.kmeans_max_iters == 300
  # Only the multimodal CE, plain SGD (no transform), one epoch-end hook.
  method = methods.build_method("drbml", methods.method_config("drbml"),
                                modalities=("audio", "visual"),
                                param_labels=models.modality_labels, num_epochs=40)
  assert [t.name for t in method.losses] == ["multimodal"] and method.transform is None
  assert [h.at for h in method.epoch_hooks] == ["end"]


@pytest.mark.parametrize("field, value", [
    ("reinit_lambda", -1.0), ("reinit_lambda", float("inf")), ("reinit_every", 0),
    ("max_reinits", 0), ("skip_first_reinit", "yes"), ("kmeans_scaling", "zscore"),
    ("kmeans_init", "farthest"), ("kmeans_restarts", 0), ("kmeans_max_iters", 0),
    ("diagnosis_train_fraction", 0.0), ("diagnosis_train_fraction", 1.5),
])
def test_bad_hyper_parameters_rejected_at_build_naming_the_field(field, value):
  optim = {**methods.method_config("drbml"), field: value}  # A dict: no ConfigDict casts.
  with pytest.raises(ValueError, match=rf"config\.optim\.{field}"):
    methods.build_method("drbml", optim, modalities=("audio", "visual"),
                         param_labels=models.modality_labels, num_epochs=40)


def test_every_config_file_builds_both_presets():
  for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*.py"))):
    if path.endswith("__init__.py"):
      continue
    for name in ("drbml", "drbml_official"):
      for variant in ("", ",smoke") + ((",cpu",) if "cg_mnist" in path else ()):
        c = config_lib.load_config(f"{path}:{name}{variant}")
        method = methods.build_method(c.method, c.optim, modalities=("a", "b", "c"),
                                      param_labels=models.modality_labels,
                                      num_epochs=c.num_epochs)
        assert method.epoch_hooks, (path, name, variant)
  # Short budgets diagnose after every epoch; the paper's datasets get its lambda and H.
  assert config_lib.load_config("configs/cg_mnist.py:drbml_official,cpu").optim.reinit_every == 1
  mosi = config_lib.load_config("configs/cmu_mosi.py:drbml").optim
  assert (mosi.reinit_lambda, mosi.reinit_every) == (8.0, 5)
  assert config_lib.load_config("configs/kinetics_sounds.py:drbml").optim.reinit_lambda == 7.0


def test_schedule_with_the_count_is_algorithm_1_and_the_released_cap():
  for name, want in (("drbml", [0, 20, 40, 60, 80]), ("drbml_official", [20, 40, 60])):
    kw = drbml_lib.DRBML_PRESETS[name]
    spec = drbml_lib.drbml(("audio", "visual"), models.modality_labels, **kw)
    count, done = 0, []
    for epoch in range(100):  # What the hook does, the count carried in method_state.
      if drbml_method.is_due(spec, epoch, count):
        count += 1
        done.append(epoch)
    assert done == want == [e for e in range(100) if spec.should_reinit(e)]
  capped = drbml_lib.drbml(("audio",), models.modality_labels, every=5, max_reinits=2)
  assert drbml_method.is_due(capped, 10, 1) and not drbml_method.is_due(capped, 10, 2)
  # The k-means key depends on (seed, epoch) only.
  chex.assert_trees_all_equal(drbml_method.diagnosis_key(3, 7), drbml_method.diagnosis_key(3, 7))
  assert not np.array_equal(drbml_method.diagnosis_key(3, 7), drbml_method.diagnosis_key(3, 8))


# ---------------------------------------------------------------------------------------
# The hook on a tiny model.
# ---------------------------------------------------------------------------------------

def test_initial_parameters_are_recreated_bit_for_bit(trained):
  """theta_init is not stored: a new Experiment (a resumed run) recreates it from the seed."""
  exp, init, _ = trained
  again = train.Experiment(exp.config, dataset=exp.dataset)
  chex.assert_trees_all_equal(jax.device_get(again.init_state().params), init.params)
  chex.assert_trees_all_equal(jax.device_get(exp.init_state().params), init.params)


def test_hook_reinit_by_hand(trained):
  exp, init, state = trained
  update = _hook(exp)(methods.EpochContext(0, state, exp))
  metrics = dict(update.metrics)
  assert metrics["reinit_count"] == 1
  assert {f"{k}_{m}" for k in DIAG_KEYS for m in exp.modalities} <= set(metrics)
  # The tiny run has a purity gap, so the check below is not of alpha = 0.
  assert max(metrics[f"alpha_{m}"] for m in exp.modalities) > 0.05
  _assert_reinit_by_hand(exp, state, update.state, metrics, init.params)
  # The purities are those of the whole training set and of the validation split
  # (Eq.1-3), k-means keyed by (seed, epoch).
  spec = drbml_lib.drbml(exp.modalities, models.modality_labels, lam=3.0)
  d, v = exp.outputs(state, "train"), exp.outputs(state, "validation")
  assert len(d["label"]) == 64 and len(v["label"]) == 32
  _, diag = spec.diagnose(d["features"], d["label"], v["features"], v["label"],
                          exp.info.num_classes, drbml_method.diagnosis_key(exp.config.seed, 0))
  for m in exp.modalities:
    np.testing.assert_allclose(metrics[f"purity_train_{m}"], diag[f"purity_train_{m}"])
    np.testing.assert_allclose(metrics[f"purity_val_{m}"], diag[f"purity_val_{m}"])


def test_hook_on_a_seeded_subset_of_the_training_set(trained):
  exp, init, state = trained
  optim = exp.config.optim.copy_and_resolve_references()
  optim.diagnosis_train_fraction = 0.5
  method = methods.build_method("drbml", optim, modalities=exp.modalities,
                                param_labels=models.modality_labels, num_epochs=2)
  update = method.epoch_hooks[0].fn(methods.EpochContext(0, state, exp))
  idx = input_pipeline.seeded_subset(64, 0.5, exp.config.seed)
  d = exp.outputs(state, "train", idx)
  v = exp.outputs(state, "validation")
  spec = drbml_lib.drbml(exp.modalities, models.modality_labels)
  _, diag = spec.diagnose(d["features"], d["label"], v["features"], v["label"],
                          exp.info.num_classes, drbml_method.diagnosis_key(exp.config.seed, 0))
  for m in exp.modalities:
    np.testing.assert_allclose(update.metrics[f"purity_train_{m}"], diag[f"purity_train_{m}"])
  _assert_reinit_by_hand(exp, state, update.state, dict(update.metrics), init.params)


def test_identity_where_it_should_not_act(trained):
  exp, _, state = trained
  host = jax.device_get(state)

  def hook_with(epoch, state=state, **over):
    optim = exp.config.optim.copy_and_resolve_references()
    optim.update(over)
    method = methods.build_method("drbml", optim, modalities=exp.modalities,
                                  param_labels=models.modality_labels, num_epochs=40)
    return method.epoch_hooks[0].fn(methods.EpochContext(epoch, state, exp))

  # Epochs off the schedule, epoch 0 of the released code, a reached cap: nothing runs.
  assert hook_with(3, reinit_every=2) is None
  assert hook_with(0, reinit_every=1, skip_first_reinit=True) is None
  capped = state.replace(method_state={"reinits": jnp.int32(3)})
  assert hook_with(6, reinit_every=2, max_reinits=3, state=capped) is None
  # lambda = 0: the diagnosis is made and logged, the parameters are exactly theta.
  update = hook_with(0, reinit_every=1, reinit_lambda=0.0)
  assert all(update.metrics[f"alpha_{m}"] == 0.0 for m in exp.modalities)
  assert max(update.metrics[f"gap_{m}"] for m in exp.modalities) > 0
  after = jax.device_get(update.state)
  chex.assert_trees_all_equal(after.params, host.params)
  chex.assert_trees_all_equal(after.batch_stats, host.batch_stats)
  assert int(after.method_state["reinits"]) == 1


def test_step_compiles_once_across_steps_and_the_hook():
  exp = train.Experiment(tiny_config("drbml", **{"optim.reinit_every": 1}))
  chex.clear_trace_counter()
  step = exp.jit_train_step(chex.assert_max_traces(exp.step_fn, n=1))
  state, acted = exp.init_state(), []
  for epoch in range(2):
    state = _train_epoch(exp, state, epoch, step)
    state, scalars = exp.run_epoch_hooks("end", epoch, state)
    acted.append(scalars.get("reinit_count"))
  assert acted == [1, 2]
  assert int(state.method_state["reinits"]) == 2


def test_one_and_four_devices_agree():
  cfg = tiny_config("drbml", **{"optim.reinit_every": 1, "optim.lr": 1e-3})
  runs = []
  for n in (1, 4):
    exp = train.Experiment(cfg, mesh=data_mesh(n))
    state = _train_epoch(exp, exp.init_state(), 0)
    state, scalars = exp.run_epoch_hooks("end", 0, state)
    state = _train_epoch(exp, state, 1)  # A step on the re-initialised encoders.
    runs.append((jax.device_get(state), scalars))
  (s1, m1), (s4, m4) = runs
  assert set(m1) == set(m4) and m1["reinit_count"] == 1
  for k in m1:
    np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5, atol=1e-6, err_msg=k)
  chex.assert_trees_all_close(s1.params, s4.params, rtol=1e-5, atol=1e-6)
  chex.assert_trees_all_close(s1.batch_stats, s4.batch_stats, rtol=1e-5, atol=1e-6)


def _three_modality_dataset(num_classes=3, dims=(6, 5, 4), sizes=(48, 24, 24)):
  """Vectors of three modalities whose means follow the class (MLP encoders)."""
  rng = np.random.default_rng(0)
  mods = ("audio", "visual", "text")
  centers = {m: rng.normal(size=(num_classes, d)).astype(np.float32) for m, d in zip(mods, dims)}
  sources = {}
  for split, n in zip(("train", "validation", "test"), sizes):
    y = rng.integers(0, num_classes, n).astype(np.int32)
    arrays = {m: centers[m][y] + rng.normal(size=(n, c.shape[1])).astype(np.float32)
              for m, c in centers.items()}
    arrays["label"] = y
    sources[split] = input_pipeline.ArraySource(arrays, mods + ("label",))
  info = input_pipeline.DatasetInfo(mods, num_classes, {m: (d,) for m, d in zip(mods, dims)})
  return input_pipeline.Dataset(info, sources, {True: None, False: None})


def test_three_modalities():
  exp = train.Experiment(tiny_config("drbml", **{"optim.reinit_every": 1}),
                         dataset=_three_modality_dataset())
  assert exp.modalities == ("audio", "visual", "text")
  init = exp.init_state()
  state = _train_epoch(exp, exp.init_state(), 0)
  update = _hook(exp)(methods.EpochContext(0, state, exp))
  assert {f"{k}_{m}" for k in DIAG_KEYS for m in exp.modalities} <= set(update.metrics)
  _assert_reinit_by_hand(exp, state, update.state, dict(update.metrics), init.params)


# ---------------------------------------------------------------------------------------
# Through the loop: the records, and resuming after an interruption.
# ---------------------------------------------------------------------------------------

class _Stop(train._StopFlag):  # pylint: disable=protected-access
  """The loop's SIGTERM flag, raised by the test after a given step (no real signal)."""

  current = None

  def __enter__(self):
    _Stop.current = self
    return self


def _records(workdir, split):
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [r for r in map(json.loads, lines) if r["split"] == split]


def _final_state(cfg, workdir):
  from redreg_jax import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  ckpt = ckpt_lib.Checkpointer(str(workdir))
  state, _ = ckpt.restore(train.Experiment(cfg).init_state())
  ckpt.close()
  return jax.device_get(state)


def test_train_logs_the_diagnosis_and_resumes_bit_for_bit(tmp_path, monkeypatch):
  # 3 epochs of 4 steps; diagnoses after epochs 0 and 1, then the cap of 2 stops it.
  cfg = tiny_config("drbml", num_epochs=3, **{"optim.reinit_every": 1,
                                              "optim.max_reinits": 2})
  ref, cut = tmp_path / "ref", tmp_path / "cut"
  summary = train.train_and_evaluate(cfg, str(ref))
  assert summary["steps"] == 12
  epochs = _records(ref, "train_epoch")
  assert [r.get("reinit_count") for r in epochs] == [1, 2, None]
  for r in epochs[:2]:
    for m in ("audio", "visual"):
      assert 0 < r[f"purity_train_{m}"] <= 1 and 0 < r[f"purity_val_{m}"] <= 1
      assert r[f"alpha_{m}"] == pytest.approx(math.tanh(3.0 * r[f"gap_{m}"]), rel=1e-6)

  # Interrupted in mid-epoch 1, after the first re-initialisation: the resumed run
  # recreates theta_init and reads the count from the checkpoint.
  update = train.log_lib.Progress.update

  def stop_at_6(self, step, *a, **k):
    update(self, step, *a, **k)
    if step == 6:
      _Stop.current.signal = "SIGTERM"

  with monkeypatch.context() as patch:
    patch.setattr(train, "_StopFlag", _Stop)
    patch.setattr(train.log_lib.Progress, "update", stop_at_6)
    assert train.train_and_evaluate(cfg, str(cut)) == {"stopped": "SIGTERM", "step": 6}
  assert not (cut / "summary.json").exists()
  resumed = train.train_and_evaluate(cfg, str(cut))
  a, b = _final_state(cfg, ref), _final_state(cfg, cut)
  chex.assert_trees_all_equal(a.params, b.params)
  chex.assert_trees_all_equal(a.batch_stats, b.batch_stats)
  chex.assert_trees_all_equal(a.opt_state, b.opt_state)
  assert int(a.method_state["reinits"]) == int(b.method_state["reinits"]) == 2
  for split in ("train", "train_epoch", "validation", "test"):
    assert _records(ref, split) == _records(cut, split), split
  assert resumed["test"] == summary["test"]
