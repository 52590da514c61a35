"""Orbax checkpoints: the latest K for resuming, and the best on validation.

Each checkpoint holds the whole train state (parameters, BatchNorm statistics, the
optimizer state with every balancing transform's windows, EMAs, anchors and traces,
the RNG key and the step) plus a small JSON of host-side bookkeeping. Orbax writes into
a temporary directory and renames it when complete, so a crash mid-save leaves the
previous checkpoint as the latest usable one.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import orbax.checkpoint as ocp


class Checkpointer:
  """Latest-K checkpoints under DIR/checkpoints and the best one under DIR/best."""

  def __init__(self, workdir: str, keep: int = 3):
    opts = lambda k: ocp.CheckpointManagerOptions(max_to_keep=k, create=True,
                                                  enable_async_checkpointing=False)
    self.latest = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "checkpoints")),
                                        options=opts(keep))
    self.best = ocp.CheckpointManager(os.path.abspath(os.path.join(workdir, "best")),
                                      options=opts(1))

  def save(self, step: int, state: Any, meta: dict, *, best: bool = False):
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    manager = self.best if best else self.latest
    if manager.latest_step() == step:
      return
    manager.save(step, args=args)
    manager.wait_until_finished()

  def latest_step(self, which: str = "latest") -> int | None:
    return (self.best if which == "best" else self.latest).latest_step()

  def restore(self, abstract_state: Any, which: str = "latest", step: int | None = None):
    """Returns (state, meta) of the latest (or best) checkpoint, or None if there is none."""
    manager = self.best if which == "best" else self.latest
    step = manager.latest_step() if step is None else step
    if step is None:
      return None
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
