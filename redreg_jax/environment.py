"""What a run ran on: package versions, backend, CPU and its vector ISA.

A result reproduces to the last digit only on the same software *and* the same class of
CPU: XLA's CPU backend generates code for the widest vector ISA the CPU offers (or the
one `XLA_FLAGS=--xla_cpu_max_isa=...` caps it at), and a different vector width changes
the order of floating-point sums, hence the rounding, hence the trained model. Every
`summary.json` records this so a reader can tell which published row a run should match
(README, "The main job"; docs/reproducing.md, "Reproducing to the digit").
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import re

import jax

PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy")

# Newest first: the first the CPU has (and the cap allows) is what XLA generates for.
# Names as `--xla_cpu_max_isa` spells them, with the /proc/cpuinfo flag that implies each.
_ISA_FLAGS = (("AVX512", "avx512f"), ("AVX2", "avx2"), ("AVX", "avx"), ("SSE4_2", "sse4_2"))


def _cpuinfo(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
  """(model name, flag set) of the first CPU; ("", set()) where there is no such file."""
  try:
    with open(path, encoding="utf-8", errors="replace") as f:
      text = f.read()
  except OSError:
    return "", set()
  model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
  flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
  return (model.group(1).strip() if model else "",
          set(flags.group(1).split()) if flags else set())


def max_isa_cap(xla_flags: str | None = None) -> str | None:
  """The `--xla_cpu_max_isa` value in XLA_FLAGS (upper case), or None."""
  flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
  m = re.search(r"--xla_cpu_max_isa=(\S+)", flags)
  return m.group(1).upper() if m else None


def vector_isa(cpu_flags: set[str], cap: str | None = None) -> str:
  """The widest x86 vector ISA XLA may use: the CPU's, lowered to `cap` if one is set.

  AVX512 sub-extensions (VNNI, BF16) are folded into AVX512: they matter for int8 and
  bfloat16, not for this project's float32 arithmetic. Non-x86 CPUs give "".
  """
  names = [n for n, _ in _ISA_FLAGS]
  have = next((n for n, flag in _ISA_FLAGS if flag in cpu_flags), "")
  if cap:
    base = next((n for n in names if cap.startswith(n)), None)
    if base is not None and have in names and names.index(base) > names.index(have):
      return base  # Capped below what the CPU has.
  return have


def describe() -> dict:
  """The environment block of summary.json."""
  versions = {}
  for name in PACKAGES:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      versions[name] = None
  model, flags = _cpuinfo()
  cap = max_isa_cap()
  devices = jax.devices()
  return {"versions": versions, "python": platform.python_version(),
          "backend": devices[0].platform, "device_kind": devices[0].device_kind,
          "devices": len(devices), "cpu": model or platform.processor(),
          "machine": platform.machine(), "vector_isa": vector_isa(flags, cap),
          "xla_flags": os.environ.get("XLA_FLAGS", "")}


def one_line(env: dict) -> str:
  """e.g. 'jax 0.10.2, flax 0.12.8, optax 0.2.8 on cpu (Intel Xeon, AVX512)'."""
  v = env["versions"]
  pkgs = ", ".join(f"{k} {v[k]}" for k in ("jax", "flax", "optax") if v.get(k))
  where = env["backend"]
  if env["backend"] == "cpu":
    where += f" ({', '.join(x for x in (env['cpu'], env['vector_isa']) if x)})"
  else:
    where += f" ({env['device_kind']} x{env['devices']})"
  return f"{pkgs} on {where}"
