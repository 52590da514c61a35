"""The train step and loop on tiny data: one real step per fusion, compile-once,
learning, BatchNorm handling, determinism, and launch.py end to end."""

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax import train
from tests.helpers import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _first_batch(exp, epoch=0):
  return next(iter(exp.train_batches(epoch)))


@pytest.fixture(scope="module")
def joint_exp():
  return train.Experiment(tiny_config("joint"))


@pytest.mark.parametrize("fusion", ["concat", "sum", "film", "gated"])
def test_one_real_step_per_fusion(fusion):
  exp = train.Experiment(tiny_config("joint_star" if fusion == "sum" else "joint",
                                     **{"model.fusion": fusion}))
  state = exp.init_state()
  params0 = jax.device_get(state.params)
  state, metrics = exp.train_step(state, _first_batch(exp))
  assert int(state.step) == 1
  assert np.isfinite(float(metrics["loss"]))
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), params0,
                         jax.device_get(state.params))
  assert all(jax.tree.leaves(changed["fusion"]))
  assert any(jax.tree.leaves(changed["encoder_audio"]))
  if fusion == "sum":  # joint_star: unimodal heads train too.
    assert "loss_unimodal" in metrics and all(jax.tree.leaves(changed["head_visual"]))


def test_step_compiles_once_and_donates(joint_exp):
  exp = joint_exp
  step = exp.jit_train_step(chex.assert_max_traces(exp.step_fn, n=1))
  state = exp.init_state()
  for i, batch in enumerate(exp.train_batches(0)):
    old_params = state.params
    state, _ = step(state, batch)
    if i == 0:
      assert all(x.is_deleted() for x in jax.tree.leaves(old_params))  # Donated.
    if i == 2:
      break
  assert int(state.step) == 3


def test_loss_falls_on_tiny_problem(joint_exp):
  exp = joint_exp
  state = exp.init_state()
  batch = _first_batch(exp)
  losses = []
  for _ in range(15):
    state, metrics = exp.train_step(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses


def test_batchnorm_train_updates_eval_does_not(joint_exp):
  exp = joint_exp
  state = exp.init_state()
  bs0 = jax.device_get(state.batch_stats)
  state, _ = exp.train_step(state, _first_batch(exp))
  bs1 = jax.device_get(state.batch_stats)
  assert not np.array_equal(bs0["encoder_audio"]["resnet"]["bn_init"]["mean"],
                            bs1["encoder_audio"]["resnet"]["bn_init"]["mean"])
  before = jax.device_get(state.batch_stats)
  res = exp.evaluate(state, "validation")
  chex.assert_trees_all_equal(before, jax.device_get(state.batch_stats))
  assert 0.0 <= res["accuracy"] <= 1.0 and res["num_examples"] == 32
  assert set(res) >= {"accuracy_audio", "accuracy_visual", "macro_f1", "confusion_matrix"}


def test_same_seed_same_run(joint_exp):
  def run():
    exp = joint_exp
    state = exp.init_state()
    for i, batch in enumerate(exp.train_batches(0)):
      state, _ = exp.train_step(state, batch)
      if i == 1:
        break
    return jax.device_get(state.params)
  chex.assert_trees_all_equal(run(), run())


def test_eval_covers_every_example_once(joint_exp):
  exp = joint_exp
  state = exp.init_state()
  res = exp.evaluate(state, "test", return_features=True)
  np.testing.assert_array_equal(res["_outputs"]["label"],
                                exp.dataset.sources["test"]._arrays["label"])


def test_launch_smoke_end_to_end(tmp_path):
  workdir = tmp_path / "run"
  r = subprocess.run(
      [sys.executable, os.path.join(ROOT, "launch.py"), "--config=configs/synthetic.py:joint,smoke",
       f"--workdir={workdir}", "--config.data.num_train=64", "--config.data.num_validation=32",
       "--config.data.num_test=32", "--config.num_epochs=2", "--config.model.width=0.0625",
       "--config.data.image_size=16", "--config.data.audio_freq=16", "--config.data.audio_time=16"],
      capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "test" in r.stdout and "accuracy_visual" in r.stdout
  cfg = json.loads((workdir / "config.json").read_text())
  assert cfg["method"] == "joint" and cfg["data"]["num_train"] == 64
  records = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [r for r in records if r.get("split") == "validation"]
  assert len(evals) == 3  # Two epochs plus the final evaluation of the best checkpoint.
  for rec in evals:
    assert {"step", "epoch", "split", "accuracy", "accuracy_audio", "accuracy_visual",
            "macro_f1"} <= set(rec)
  assert any(r.get("split") == "test" for r in records)
  assert os.listdir(workdir / "tensorboard")
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["best_epoch"] in (0, 1) and 0 <= summary["test"]["accuracy"] <= 1
  # What it ran on, so a reader can tell which published row it should match.
  env = summary["environment"]
  assert env["versions"]["jax"] == jax.__version__ and env["backend"] == "cpu"


def test_outputs_over_a_subset_match_the_full_split(joint_exp):
  exp = joint_exp
  state = exp.init_state()
  full = exp.outputs(state, "train")
  n = len(full["label"])
  assert n == len(exp.dataset.sources["train"])
  idx = np.array([n - 1, 0, 2])
  sub = exp.outputs(state, "train", indices=idx)
  np.testing.assert_array_equal(sub["label"], full["label"][idx])
  for m in exp.modalities:
    assert sub["features"][m].shape == (3, full["features"][m].shape[1])
    np.testing.assert_allclose(sub["features"][m], full["features"][m][idx], rtol=1e-5,
                               atol=1e-6)
