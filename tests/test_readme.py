"""Every README command runs as printed: its module exists and takes the flags it is given.

The README's ```bash blocks are read; each `python` command (after `source
.venv/bin/activate`, as the README says) is checked without running it: `launch.py`
commands through launch.parse_argv and the config they name (file, method, words,
overrides), `python -m MODULE` commands by MODULE existing and its --help listing every
flag used. Shell variables ($m, $M) stand for method names.
"""

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest

import launch
from redreg_jax import config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_commands():
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    text = f.read()
  cmds = []
  for block in re.findall(r"```bash\n(.*?)```", text, re.S):
    block = block.replace("\\\n", " ")
    for line in block.splitlines():
      line = re.sub(r"\s#.*$", "", line).strip()
      line = re.sub(r"\[(--[^\]]*)\]", r"\1", line)  # '[--flag=...]': optional, still checked.
      for cmd in re.split(r"&&|;", line):
        words = shlex.split(cmd.strip()) if cmd.strip() else []
        if words and words[0] in ("python", ".venv/bin/python"):
          cmds.append(words[1:])
  return cmds


COMMANDS = readme_commands()


def _subst(word: str) -> str:
  return word.replace("$M", "joint,redreg").replace("$m", "redreg")


@functools.lru_cache(maxsize=None)
def _help_text(module: str) -> str:
  r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  return r.stdout + r.stderr


def test_the_readme_has_commands():
  assert sum(c[0] == "launch.py" for c in COMMANDS) >= 5
  assert sum(c[0] == "-m" for c in COMMANDS) >= 10


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] == "launch.py"],
                         ids=lambda c: " ".join(c)[:70])
def test_launch_commands_parse_and_their_configs_load(args):
  flags, overrides = launch.parse_argv([_subst(a) for a in args[1:]])
  config = config_lib.load_config(flags["config"])  # File, method and words.
  for key, value in overrides:
    config_lib.apply_override(config, key, value)


@pytest.mark.parametrize("args", [c for c in COMMANDS if c[0] == "-m" and c[1] != "pytest"],
                         ids=lambda c: " ".join(c)[:70])
def test_module_commands_exist_and_take_their_flags(args):
  module = args[1]
  assert importlib.util.find_spec(module) is not None, module
  help_text = _help_text(module)
  flags = {a.split("=")[0] for a in args[2:] if a.startswith("--")}
  missing = [f for f in sorted(flags) if f not in help_text]
  assert not missing, f"python -m {module}: {missing} not in its --help"
  for a in args[2:]:
    if a.startswith("--config="):  # A sweep's config file exists.
      assert os.path.isfile(os.path.join(ROOT, a.split("=", 1)[1].split(":")[0])), a


def test_set_up_python_matches_the_supported_versions():
  """The README's `python3.X -m venv` is a Python pyproject.toml accepts, and its oldest."""
  with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
    oldest = re.search(r'requires-python\s*=\s*">=\s*3\.(\d+)"', f.read())
  with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
    used = set(re.findall(r"python3\.(\d+) -m venv", f.read()))
  assert oldest and used == {oldest.group(1)}, (oldest, used)
