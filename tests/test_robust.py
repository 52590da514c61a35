"""Nothing lost, nothing silent: finite checkpoints only, fresh logs, corrupt-checkpoint
fall-back, the workdir lock, atomic summaries, exit codes and refused config values."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from redreg_jax import checkpoint as ckpt_lib
from redreg_jax import config_checks
from redreg_jax import input_pipeline
from redreg_jax import train
from tests.helpers import launch, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


_launch = launch


def _error_lines(stderr):
  return [l for l in stderr.splitlines() if l.startswith("error:")]


def _all_checkpoints_finite(workdir, method):
  exp = train.Experiment(tiny_config(method))
  ckpt = ckpt_lib.Checkpointer(str(workdir))
  steps = sorted(ckpt.latest.all_steps())
  for s in steps:
    state, _ = ckpt.restore(exp.init_state(), step=s)
    leaves = jax.tree.leaves(jax.device_get((state.params, state.batch_stats,
                                             state.opt_state)))
    assert all(np.all(np.isfinite(x)) for x in leaves
               if np.issubdtype(np.asarray(x).dtype, np.inexact)), s
  ckpt.close()
  return steps


def test_diverging_run_never_writes_a_poisoned_checkpoint(tmp_path):
  # lr 1e6: parameters reach ~1e24 and the RedReg optimizer state NaN within a few steps.
  r = _launch("configs/synthetic.py:redreg,smoke,tiny", tmp_path, "--config.optim.lr=1e6",
              "--config.train.checkpoint_every_steps=2")
  assert r.returncode == 1, r.stderr[-2000:]
  (line,) = _error_lines(r.stderr)
  assert "Non-finite values at step" in line and "likely cause" in line
  steps = _all_checkpoints_finite(tmp_path, "redreg")
  if steps:
    assert f"checkpoints/{max(steps)} (step {max(steps)}) holds a finite state" in line
  else:
    assert "No checkpoint was written" in line
  assert not (tmp_path / "summary.json").exists()


def test_skip_nonfinite_stops_once_too_many_steps_are_skipped(tmp_path):
  r = _launch("configs/synthetic.py:joint,smoke,tiny", tmp_path, "--config.optim.lr=1e6",
              "--config.train.skip_nonfinite=true")
  assert r.returncode == 1, r.stderr[-2000:]
  (line,) = _error_lines(r.stderr)
  assert "steps skipped for non-finite values" in line and "max_skipped_fraction" in line
  assert not (tmp_path / "summary.json").exists()


def test_nonfinite_inputs_are_blamed_on_the_data():
  exp = train.Experiment(tiny_config("joint"))
  state = exp.init_state()
  batch = dict(next(iter(exp.train_batches(0))))
  batch["audio"] = batch["audio"].at[0].set(jnp.inf)
  _, metrics = exp.train_step(state, batch)
  host = train._host_scalars(metrics)  # pylint: disable=protected-access
  assert not host["finite"] and not host["finite_input_audio"] and host["finite_input_visual"]

  class NoCheckpoint:
    latest_step = staticmethod(lambda: None)

  msg = train._nonfinite_message(1, host, "w", NoCheckpoint())  # pylint: disable=protected-access
  assert "non-finite inputs (audio)" in msg and "the data is bad" in msg
  assert "No checkpoint was written" in msg


def test_empty_split_is_one_line_before_anything_is_built():
  config = tiny_config("joint")
  dataset = input_pipeline.get_dataset(config.data)
  dataset.sources = {**dataset.sources,
                     "validation": input_pipeline.SubsetSource(dataset.sources["validation"], [])}
  with pytest.raises(ValueError, match="'validation' split of dataset 'synthetic_av' has "
                     "no examples") as e:
    train.Experiment(config, dataset=dataset)
  assert str(e.value).count("\n") == 0


def test_fresh_start_drops_stale_records(tmp_path):
  # A relaunch that finds no checkpoint (e.g. killed during the first save) starts fresh.
  (tmp_path / "metrics.jsonl").write_text(
      json.dumps({"step": 3, "epoch": 0, "split": "train", "loss": 99.0}) + "\n")
  train.train_and_evaluate(tiny_config("joint", num_epochs=1), str(tmp_path))
  recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  train_steps = [r["step"] for r in recs if r["split"] == "train"]
  assert 99.0 not in [r.get("loss") for r in recs]
  assert train_steps == sorted(set(train_steps)) == list(range(1, len(train_steps) + 1))


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("finished")
  config = tiny_config("joint", num_epochs=2)
  summary = train.train_and_evaluate(config, str(workdir))
  return workdir, config, summary


def test_corrupt_latest_checkpoint_falls_back_to_an_intact_one(finished_run, capfd):
  workdir, config, _ = finished_run
  exp = train.Experiment(config)
  ckpt = ckpt_lib.Checkpointer(str(workdir))
  steps = sorted(ckpt.latest.all_steps())
  assert len(steps) >= 2
  ref, _ = ckpt.restore(exp.init_state(), step=steps[-2])
  ckpt.close()
  latest = workdir / "checkpoints" / str(steps[-1])
  data = [p for p in latest.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data, sorted(str(p) for p in latest.rglob("*"))
  for p in data:  # Truncate the array data of the latest checkpoint.
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
  ckpt = ckpt_lib.Checkpointer(str(workdir))
  state, _ = ckpt.restore(exp.init_state())
  ckpt.close()
  err = capfd.readouterr().err
  lines = [l for l in err.splitlines() if "is unreadable" in l]
  assert len(lines) == 1 and str(latest) in lines[0]
  assert f"falling back to step {steps[-2]}" in lines[0]
  assert int(state.step) == steps[-2]
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(ref.params),
               jax.device_get(state.params))


def test_unreadable_summary_names_the_file(tmp_path):
  path = tmp_path / "summary.json"
  path.write_text('{"method": "jo')
  with pytest.raises(ValueError, match="summary.json is unreadable.*delete it"):
    train._read_summary(str(path))  # pylint: disable=protected-access
  train._write_json_atomic(str(path), {"a": 1})  # pylint: disable=protected-access
  assert json.loads(path.read_text()) == {"a": 1} and not (tmp_path / "summary.json.tmp").exists()


def test_second_process_on_a_workdir_is_refused(tmp_path):
  with train._WorkdirLock(str(tmp_path)):  # pylint: disable=protected-access
    r = _launch("configs/synthetic.py:joint,smoke,tiny", tmp_path)
  assert r.returncode == 1
  (line,) = _error_lines(r.stderr)
  assert f"in use by process {os.getpid()}" in line and ".lock" in line


@pytest.mark.parametrize("override,field", [
    ("--config.model.width=0", "config.model.width"),
    ("--config.optim.lr=-0.01", "config.optim.lr"),
    ("--config.optim.threshold=-1", "config.optim.threshold"),
    ("--config.num_epochs=0", "config.num_epochs"),
    ("--config.batch_size=0", "config.batch_size"),
    ("--config.optim.momentum=1.5", "config.optim.momentum"),
])
def test_bad_values_are_refused_before_anything_runs(override, field, tmp_path):
  r = _launch("configs/synthetic.py:redreg,smoke,tiny", tmp_path / "run", override)
  assert r.returncode == 2, r.stderr[-2000:]
  assert field in r.stderr and "must be" in r.stderr
  assert not (tmp_path / "run").exists()


def test_every_bad_value_is_one_line():
  c = tiny_config("ogm")
  c.optim.alpha = -1.0
  c.optim.lr = 0.0
  c.model.width = -2.0
  bad = config_checks.problems(c)
  assert len(bad) == 3 and all(b.startswith("config.") for b in bad)
  with pytest.raises(ValueError, match="bad config values"):
    train.Experiment(c)
  assert config_checks.problems(tiny_config("redreg")) == []
  c = tiny_config("joint")
  c.model.resnet_blocks = 0
  c.model.encoders = {"audio": {"blocks": 1.5}}
  assert config_checks.problems(c) == ["config.model.resnet_blocks must be 1 <= x, got 0",
                                       "config.model.encoders.audio.blocks must be an integer "
                                       "1 <= x, got 1.5"]
  assert config_checks.Range(0, 1, integer=True).problem(0.5) is not None
  assert config_checks.Range(0, None, low_open=True).problem(float("nan")) is not None


def test_launch_fills_a_persistent_compilation_cache(tmp_path):
  cache = tmp_path / "xla"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  r = subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"),
                      "--config=configs/synthetic.py:joint,smoke,tiny", f"--workdir={tmp_path / 'w'}",
                      "--config.num_epochs=1", f"--compile_cache={cache}"], cwd=ROOT,
                     capture_output=True, text=True, timeout=900, env=env)
  assert r.returncode == 0, r.stderr[-2000:]
  assert any(cache.iterdir())  # The train step's executable is there for the next run.


def test_ctrl_c_during_the_final_evaluation_stops_resumably(tmp_path, monkeypatch, capfd):
  """SIGINT while the best checkpoint is evaluated: the resume line, no summary, no traceback."""
  import signal  # pylint: disable=g-import-not-at-top
  config = tiny_config("joint", num_epochs=1)
  real = train.Experiment.evaluate

  def interrupted(self, state, split, *args, **kwargs):
    if split == "test":  # Only the final evaluation reads the test split.
      os.kill(os.getpid(), signal.SIGINT)
    return real(self, state, split, *args, **kwargs)

  monkeypatch.setattr(train.Experiment, "evaluate", interrupted)
  out = train.train_and_evaluate(config, str(tmp_path))
  assert out["stopped"] == "SIGINT"
  assert not (tmp_path / "summary.json").exists()
  err = capfd.readouterr().err
  assert "Stopped by SIGINT during the final evaluation" in err and "Traceback" not in err
  monkeypatch.setattr(train.Experiment, "evaluate", real)
  summary = train.train_and_evaluate(config, str(tmp_path))  # The relaunch finishes it.
  assert "test" in summary and (tmp_path / "summary.json").exists()
  recs = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert sum(r["split"] == "test" for r in recs) == 1  # No duplicate final record.
