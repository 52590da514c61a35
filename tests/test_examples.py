"""The examples run as documented (at a tiny size)."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_own_model_example_trains_and_explains_the_gate():
  r = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "own_model_redreg.py"),
                      "--epochs=3", "--steps_per_epoch=12", "--width=8"], cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  lines = r.stdout.splitlines()
  epochs = [l for l in lines if l.startswith("epoch ")]
  assert len(epochs) == 3 and all("gate open" in l and "p_audio" in l for l in epochs)
  # Epochs 0-1 are the warm-up: the note names it.
  assert "kept off by the warm-up" in r.stdout
