"""Config parsing, overrides and errors."""

import os
import subprocess
import sys

import pytest

from configs import synthetic as synthetic_config
from redreg_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_parse_arg():
  # k=v words are config-field overrides (load_config applies them), not arguments.
  a = config_lib.parse_arg("redreg,smoke,seed=3", method="joint", smoke=False)
  assert a.method == "redreg" and a.smoke is True and "seed" not in a
  assert config_lib.parse_arg(None, method="joint").method == "joint"


def test_methods_and_smoke():
  c = synthetic_config.get_config("joint_star,smoke")
  assert c.method == "joint_star" and c.num_epochs == 3 and c.data.num_train == 256
  full = synthetic_config.get_config("joint")
  assert full.data.num_train > c.data.num_train
  assert full.optim.momentum == 0.9 and full.optim.weight_decay == 1e-4


def test_unknown_method_lists_valid():
  with pytest.raises(ValueError, match="Unknown method 'nope'; valid: .*joint"):
    synthetic_config.get_config("nope")


def _launch(*args, timeout=120):
  return subprocess.run([sys.executable, os.path.join(ROOT, "launch.py"), *args],
                        capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_launch_unknown_field_is_one_clear_error(tmp_path):
  r = _launch("--config=configs/synthetic.py:joint,smoke", f"--workdir={tmp_path}",
              "--config.optim.nonexistent=1")
  assert r.returncode != 0
  assert "nonexistent" in r.stderr
  assert not os.path.exists(tmp_path / "config.json")


def test_launch_unknown_method(tmp_path):
  r = _launch("--config=configs/synthetic.py:bogus", f"--workdir={tmp_path}")
  assert r.returncode != 0 and "Unknown method 'bogus'" in r.stderr


def test_config_arg_typo_lists_valid_words():
  import pytest  # pylint: disable=g-import-not-at-top
  from redreg_jax import config_lib  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="Unknown config argument 'smok'.*smoke, tiny"):
    config_lib.load_config("configs/synthetic.py:redreg,smok")


def test_config_arg_field_overrides():
  import pytest  # pylint: disable=g-import-not-at-top
  from redreg_jax import config_lib  # pylint: disable=g-import-not-at-top
  c = config_lib.load_config("configs/synthetic.py:redreg,smoke,num_epochs=2,optim.beta=0.5")
  assert c.num_epochs == 2 and c.optim.beta == 0.5
  with pytest.raises(ValueError, match="Unknown config field 'optim.betta'"):
    config_lib.load_config("configs/synthetic.py:redreg,optim.betta=0.5")
