"""Metric logging: metrics.jsonl, TensorBoard event files and the console (process 0)."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any, Mapping

import jax
import numpy as np


def _jsonable(v):
  if isinstance(v, (np.generic,)):
    v = v.item()
  if isinstance(v, np.ndarray):
    return v.tolist()
  if isinstance(v, float) and not math.isfinite(v):
    return str(v)
  return v


def truncate_records(workdir: str, step: int) -> None:
  """Drops metrics.jsonl records after `step` (atomically), before a resumed run appends."""
  path = os.path.join(workdir, "metrics.jsonl")
  if jax.process_index() != 0 or not os.path.exists(path):
    return
  with open(path, encoding="utf-8") as f:
    lines = f.readlines()
  keep = []
  for line in lines:
    try:
      rec = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut short by a crash.
    if int(rec.get("step", 0)) <= step:
      keep.append(json.dumps(rec) + "\n")
  tmp = path + ".tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    f.writelines(keep)
  os.replace(tmp, path)


class MetricLogger:
  """Writes one JSON object per record to DIR/metrics.jsonl and scalars to TensorBoard."""

  def __init__(self, workdir: str, enabled: bool | None = None, purge_step: int | None = None):
    """`purge_step`: a resumed run's step; TensorBoard hides events logged after it."""
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._jsonl = None
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a", encoding="utf-8")
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      tb_dir = os.path.join(workdir, "tensorboard")
      if not purge_step and os.path.isdir(tb_dir):  # A fresh start: no stale curves.
        import shutil  # pylint: disable=g-import-not-at-top
        shutil.rmtree(tb_dir)
      self._tb = SummaryWriter(tb_dir, purge_step=purge_step or None)

  def write(self, record: Mapping[str, Any], prefix: str = ""):
    """Logs a record; scalar entries also go to TensorBoard as `prefix/key`."""
    if not self.enabled:
      return
    rec = {k: _jsonable(v) for k, v in record.items()}
    self._jsonl.write(json.dumps(rec) + "\n")
    step = int(record.get("step", 0))
    for k, v in record.items():
      if k in ("step", "epoch", "split", "kind"):
        continue
      if isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool):
        self._tb.add_scalar(f"{prefix}{k}", float(v), step)

  def flush(self):
    if self.enabled:
      self._jsonl.flush()
      self._tb.flush()

  def close(self):
    if self.enabled:
      self._jsonl.close()
      self._tb.close()


class Progress:
  """Console progress line with rate and ETA, printed every `every` steps."""

  def __init__(self, total_steps: int, start_step: int = 0, every: int = 50,
               enabled: bool | None = None):
    self.total, self.every = total_steps, max(1, every)
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self._t0, self._s0 = time.time(), start_step
    self._first = start_step + 1

  def restart_clock(self, step: int) -> None:
    """Measures the rate (and ETA) from here: call it after compilation."""
    self._t0, self._s0 = time.time(), step

  def update(self, step: int, extra: str = ""):
    first = step == self._first  # The first step prints at once (after compiling).
    if not self.enabled or (step % self.every and step != self.total and not first):
      return
    if first:
      print(f"step {step}/{self.total} {extra}", file=sys.stderr, flush=True)
      return
    dt = time.time() - self._t0
    done = step - self._s0
    rate = done / dt if dt > 0 else 0.0
    eta = (self.total - step) / rate if rate > 0 else float("nan")
    print(f"step {step}/{self.total} ({100.0 * step / max(1, self.total):.0f}%) "
          f"{rate:.1f} steps/s ETA {_fmt_secs(eta)} {extra}", file=sys.stderr, flush=True)


def _fmt_secs(s: float) -> str:
  if not math.isfinite(s):
    return "?"
  s = int(s)
  return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def info(msg: str):
  if jax.process_index() == 0:
    print(msg, file=sys.stderr, flush=True)
