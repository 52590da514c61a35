"""Test-wide setup, set once before JAX initialises.

8 fake CPU devices, so the sharded path is what the tests run. XLA's CPU backend
optimisation is turned down: the tests compile many small ResNet-18 steps and this
halves compile time without changing what is computed (tests only; the real path
keeps XLA's defaults). The tests also use XLA's classic elemental IR emitters for fused
loops in place of its MLIR fusion emitters (`--xla_cpu_use_fusion_emitters=false`):
the same computation, compiled faster at the tests' tiny sizes (the whole suite's
CPU-seconds before and after: README, "Tests").
"""

import os
import sys
import tempfile

_FLAGS = ("--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0 "
          "--xla_llvm_disable_expensive_passes=true --xla_cpu_use_fusion_emitters=false")
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _FLAGS).strip()
# One persistent compilation cache for the session, its xdist workers and the launch.py
# subprocesses they start: the same tiny step is compiled once, not once per process.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    tempfile.gettempdir(), f"redreg_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")
import jax  # noqa: E402

jax.config.update("jax_platforms", "cpu")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
  sys.path.insert(0, ROOT)
