"""Checkpoint saves: one replica writes each array, and the format is orbax's standard."""

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from redreg_jax import checkpoint as ckpt_lib


def _replicated_tree():
  mesh = jax.make_mesh((len(jax.devices()),), ("data",))
  rep = NamedSharding(mesh, P())
  # Odd shapes no other test uses, so a slice per replica would need fresh compiles.
  return {f"w{i}": jax.device_put(jnp.full((i + 3, 5, 7), float(i)), rep) for i in range(12)}


def test_saving_a_replicated_state_compiles_nothing(tmp_path):
  assert len(jax.devices()) == 8
  tree = _replicated_tree()
  compiles = []
  listener = lambda event, secs, **kw: compiles.append(event) if "compile" in event else None
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    ckpt = ckpt_lib.Checkpointer(str(tmp_path))
    ckpt.save(1, tree, {"epoch": 0})
    ckpt.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  # Orbax's replica-parallel save slices every array once per replica (jitted slices).
  assert compiles == [], compiles
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  out, meta = ckpt.restore(tree)
  ckpt.close()
  assert meta == {"epoch": 0}
  for k, v in tree.items():
    assert out[k].sharding == v.sharding
    np.testing.assert_array_equal(out[k], v)


def test_checkpoints_of_orbax_standard_save_still_restore(tmp_path):
  """A workdir written by the earlier StandardSave path resumes unchanged."""
  tree = _replicated_tree()
  manager = ocp.CheckpointManager(str(tmp_path / "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(create=True))
  manager.save(4, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                          meta=ocp.args.JsonSave({"epoch": 1})))
  manager.wait_until_finished()
  manager.close()
  ckpt = ckpt_lib.Checkpointer(str(tmp_path))
  assert ckpt.latest_step() == 4
  out, meta = ckpt.restore(tree)
  ckpt.save(5, out, meta)  # And the new path appends to it.
  again, _ = ckpt.restore(tree, step=5)
  ckpt.close()
  assert meta == {"epoch": 1}
  jax.tree.map(np.testing.assert_array_equal, again, tree)
