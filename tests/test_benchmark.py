"""The benchmark script runs end to end and ends with its JSON line (no timing asserted)."""

import json

from redreg_jax import benchmark


def test_benchmark_prints_table_and_json(capsys):
  benchmark.main(["--methods=redreg", "--width=0.0625", "--batch_size=8", "--steps=2",
                  "--warmup=1", "--rounds=1"])
  lines = capsys.readouterr().out.strip().splitlines()
  result = json.loads(lines[-1])
  assert set(result["methods"]) == {"joint", "redreg"}  # joint is always the reference.
  assert result["methods"]["joint"]["ratio_to_joint"] == 1.0
  assert result["methods"]["redreg"]["median_s"] > 0
  # Which encoder the twins ran on is reported, since it sets RedReg's extra cost.
  assert result["methods"]["redreg"]["dominant"].split()[0] in ("audio", "visual")
  assert any(line.startswith("redreg ") for line in lines)
