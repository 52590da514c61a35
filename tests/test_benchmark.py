"""The benchmark script runs end to end and ends with its JSON line (no timing asserted)."""

import contextlib
import io
import json
import os
import re

import pytest

from redreg_jax import benchmark
from tests.helpers import tiny_config


@pytest.fixture(scope="module")
def result():
  """One benchmark run shared by the tests below (each method's step compiles once):
  RedReg (the projection path), a twin-subsample override and PMR (an epoch hook), at
  the tests' tiny size with one block per ResNet stage: these tests check what the
  benchmark reports, not its times."""
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    benchmark.main(["--methods=redreg,redreg@twin_examples=2,pmr", "--width=0.0625",
                    "--shapes=tiny", "--blocks=1", "--batch_size=8", "--steps=2", "--warmup=1",
                    "--rounds=1", "--flops=all"])
  lines = out.getvalue().strip().splitlines()
  return json.loads(lines[-1]), lines


def test_benchmark_prints_table_and_json(result):
  result, lines = result
  assert set(result["methods"]) == {"joint", "redreg", "redreg@twin_examples=2", "pmr"}
  assert result["methods"]["joint"]["ratio_to_joint"] == 1.0  # joint is always the reference.
  assert result["methods"]["redreg"]["median_s"] > 0
  # Which encoder the twins ran on is reported, since it sets RedReg's extra cost.
  assert result["methods"]["redreg"]["dominant"].split()[0] in ("audio", "visual")
  # The gate's share tells whether the timed steps took the projection path.
  assert 0.0 <= result["methods"]["redreg"]["gate_open"] <= 1.0
  assert "gate_open" not in result["methods"]["joint"]
  lo, hi = result["methods"]["redreg"]["round_ratios"]
  assert 0 < lo <= hi
  assert result["methods"]["joint"]["round_ratios"] == [1.0, 1.0]
  assert any(line.startswith("redreg ") for line in lines)


def test_benchmark_times_epoch_hooks(result):
  result, _ = result
  assert result["methods"]["pmr"]["hook_s"] > 0 and result["methods"]["pmr"]["hook_epochs"] > 0
  assert "hook_s" not in result["methods"]["joint"]  # joint has no epoch hook.


def test_benchmark_reports_flops_and_memory(result):
  result, _ = result
  assert result["joint_gflop"] > 0  # XLA's cost analysis of the compiled joint step.
  assert result["peak_rss_mb"] > 0 and "reference" not in result
  mem = result["joint_step_memory_mb"]  # What the step itself holds, by XLA's analysis.
  assert mem["temporaries"] > 0 and mem["arguments"] > 0
  assert mem["live"] == pytest.approx(mem["arguments"] + mem["outputs"] - mem["aliased"]
                                      + mem["temporaries"], abs=0.2)


def test_benchmark_counts_each_methods_flops(result):
  """--flops=all: a method's FLOP ratio to joint, to read its time ratio against."""
  methods = result[0]["methods"]
  assert methods["joint"]["flop_ratio"] == 1.0
  # RedReg adds the twin forward pass (2B examples through one encoder) and the projection.
  assert methods["redreg"]["flop_ratio"] > 1.05 and methods["redreg"]["gflop"] > 0
  # An optim override is its own row: twins on 2 of 8 examples cost less arithmetic.
  assert 1.0 < methods["redreg@twin_examples=2"]["flop_ratio"] < methods["redreg"]["flop_ratio"]


def test_benchmark_refuses_an_unknown_override():
  with pytest.raises(SystemExit, match="joint has no optim field 'twin_examples'"):
    benchmark.main(["--methods=joint@twin_examples=2", "--width=0.0625", "--batch_size=8",
                    "--steps=2", "--warmup=1", "--rounds=1"])


def test_torch_reference_without_torch_says_how_to_install(monkeypatch):
  monkeypatch.setattr(benchmark, "torch_available", lambda: False)  # As on CI.
  with pytest.raises(SystemExit, match="pip install -r requirements-bench.txt"):
    benchmark.main(["--reference=torch", "--width=0.0625", "--batch_size=8", "--steps=2",
                    "--warmup=1", "--rounds=1"])


def test_torch_reference_is_not_imported_by_the_library():
  """torch_reference.py runs as its own process; nothing in the package imports it."""
  root = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "redreg_jax")
  for dirpath, _, files in os.walk(root):
    for name in files:
      if name.endswith(".py") and name != "torch_reference.py":
        with open(os.path.join(dirpath, name), encoding="utf-8") as f:
          text = f.read()
        imports = re.findall(r"^\s*(?:import torch|from torch|from redreg_jax import "
                             r"torch_reference|import redreg_jax.torch_reference)", text, re.M)
        assert not imports, name


def benchmark_args(argv):
  return benchmark._parser().parse_args(argv)


def test_blocks_and_tiny_shapes_reach_the_config():
  args = benchmark_args(["--shapes=tiny", "--blocks=1", "--batch_size=8", "--steps=2"])
  c = benchmark._config("redreg", args)
  assert c.model.resnet_blocks == 1
  tiny = tiny_config().data  # The tests' own tiny inputs.
  assert (c.data.audio_freq, c.data.audio_time, c.data.frames, c.data.image_size) == (
      tiny.audio_freq, tiny.audio_time, tiny.frames, tiny.image_size)
  assert c.data.num_train == 8 * (2 + 3 + 1)  # The timed steps, warm-up and one spare.
  default = benchmark._config("redreg", benchmark_args([]))
  assert default.model.get("resnet_blocks") is None  # ResNet-18's two blocks per stage.


def test_torch_reference_mirrors_the_blocks_per_stage():
  """--reference=torch builds the PyTorch net with the JAX net's blocks per stage."""
  from redreg_jax import train  # pylint: disable=g-import-not-at-top
  for flags, blocks in ((["--blocks=1"], 1), ([], 2)):
    args = benchmark_args(["--shapes=tiny", "--width=0.0625", "--batch_size=8", *flags])
    spec = benchmark.torch_spec(train.Experiment(benchmark._config("joint", args)), 1, 2)
    assert (spec["blocks"], spec["audio"], spec["visual"]) == (blocks, [16, 16], [1, 16])
