"""Orbax checkpoints: the latest K for resuming, and the best on validation.

Each checkpoint holds the whole train state (parameters, BatchNorm statistics, the
optimizer state with every balancing transform's windows, EMAs, anchors and traces,
the RNG key and the step) plus a small JSON of host-side bookkeeping. Orbax writes into
a temporary directory and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest usable one.

Arrays are written from one replica each (orbax's `use_replica_parallel=False`, its own
default on GPUs). Orbax's CPU default splits every replicated array into one slice per
replica, an eager dispatch (and, per new shape, a compile) for each slice: with the
parameters replicated over 8 devices that was 2,000 slices and 1-3 s per save of a tiny
model, and a save's cost does not shrink with the model. The files are the same format;
checkpoints written either way restore either way.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

try:  # Orbax's per-host array metadata (its default registry keeps one); optional.
  from orbax.checkpoint._src.metadata import array_metadata_store as _ams
  _ARRAY_METADATA_STORE = _ams.Store()
except (ImportError, AttributeError):  # pragma: no cover (another orbax layout)
  _ARRAY_METADATA_STORE = None


class CorruptCheckpointError(ValueError):
  """No intact checkpoint is left to restore (each unreadable one was named)."""


def _one_line(e: BaseException) -> str:
  text = str(e).strip()
  first = text.splitlines()[0] if text else ""
  return f"{type(e).__name__}: {first[:160]}" if first else type(e).__name__


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """The train state's save handler: orbax's standard types, arrays from one replica."""
  th = ocp.type_handlers
  registry = th.create_type_handler_registry(
      (int, th.ScalarHandler()), (float, th.ScalarHandler()), (bytes, th.ScalarHandler()),
      (np.number, th.ScalarHandler()), (np.ndarray, th.NumpyHandler()),
      (str, th.StringHandler()),
      (jax.Array, th.ArrayHandler(use_replica_parallel=False,
                                  array_metadata_store=_ARRAY_METADATA_STORE)))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def _handlers() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
  registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
  registry.add("state", ocp.args.PyTreeSave, _state_handler())
  # Restore as before: the standard handler fills shardings from the target state.
  registry.add("state", ocp.args.StandardRestore, ocp.StandardCheckpointHandler())
  registry.add("meta", ocp.args.JsonSave, ocp.JsonCheckpointHandler())
  registry.add("meta", ocp.args.JsonRestore, ocp.JsonCheckpointHandler())
  return registry


class Checkpointer:
  """Latest-K checkpoints under DIR/checkpoints and the best one under DIR/best."""

  def __init__(self, workdir: str, keep: int = 3):
    opts = lambda k: ocp.CheckpointManagerOptions(max_to_keep=k, create=True,
                                                  enable_async_checkpointing=False)
    self.latest = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                        options=opts(keep), handler_registry=_handlers())
    self.best = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "best")),
                                      options=opts(1), handler_registry=_handlers())
    self._unreadable: set[tuple[int, int]] = set()  # (id(manager), step) that failed.

  def save(self, step: int, state: Any, meta: dict, *, best: bool = False):
    args = ocp.args.Composite(state=ocp.args.PyTreeSave(state), meta=ocp.args.JsonSave(meta))
    manager = self.best if best else self.latest
    if (id(manager), step) in self._unreadable:  # Replaced by the resumed run's save.
      manager.delete(step)
      self._unreadable.discard((id(manager), step))
    elif manager.latest_step() == step:
      return
    manager.save(step, args=args)
    manager.wait_until_finished()

  def latest_step(self, which: str = "latest") -> int | None:
    return (self.best if which == "best" else self.latest).latest_step()

  def folder(self, step: int, which: str = "latest") -> str:
    """The directory of a checkpoint (for messages)."""
    manager = self.best if which == "best" else self.latest
    return os.path.join(str(manager.directory), str(step))

  def restore(self, abstract_state: Any, which: str = "latest", step: int | None = None):
    """Returns (state, meta) of the newest intact checkpoint, or None if there is none.

    An unreadable checkpoint (a truncated or deleted file) is reported in one line naming
    its folder and the next older one is tried; the unreadable one stays on disk until
    the resumed run saves that step again. With `step` given, only that one.
    """
    manager = self.best if which == "best" else self.latest
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    for i, s in enumerate(steps):
      try:
        return self._restore(manager, s, abstract_state)
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore errors)
        folder = self.folder(s, which)
        older = steps[i + 1] if i + 1 < len(steps) else None
        self._unreadable.add((id(manager), s))
        if older is None:
          raise CorruptCheckpointError(
              f"Checkpoint {folder} is unreadable ({_one_line(e)}) and no older intact one "
              f"is left in {manager.directory}; use a new --workdir (or delete that folder) "
              "to start over.") from None
        if jax.process_index() == 0:
          print(f"Checkpoint {folder} is unreadable ({_one_line(e)}); falling back to "
                f"step {older}.", file=sys.stderr, flush=True)
    return None

  def _restore(self, manager, step: int, abstract_state: Any):
    target, missing = abstract_state, _missing_fields(manager, step, abstract_state)
    if missing:  # Saved before the state had these fields: they keep their initial values.
      target = {f.name: getattr(abstract_state, f.name)
                for f in dataclasses.fields(abstract_state) if f.name not in missing}
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    state = abstract_state.replace(**out.state) if missing else out.state
    return state, out.meta

  def close(self):
    self.latest.close()
    self.best.close()


def _missing_fields(manager, step: int, abstract_state: Any) -> set[str]:
  """Fields of a dataclass state that the checkpoint at `step` does not hold."""
  if not dataclasses.is_dataclass(abstract_state):
    return set()
  saved = manager.item_metadata(step)["state"]
  saved = getattr(saved, "tree", saved)
  if not isinstance(saved, dict):
    return set()
  return {f.name for f in dataclasses.fields(abstract_state)} - set(saved)
