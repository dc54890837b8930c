"""Orbax checkpoints of everything a run needs to continue exactly where it stopped.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items: ``state`` (params +
optimizer state + step, restored directly onto the current mesh's shardings), ``data``
(the grain iterator position as JSON, so a resumed run sees exactly the batches it would
have seen) and ``meta`` (JSON: stage, examples seen, ...). Saves are asynchronous; a save
interrupted mid-way leaves only a ``*.orbax-checkpoint-tmp`` directory, which orbax
ignores on restore and we delete at start-up.

With several jax processes every one of them calls save/restore (orbax coordinates them
and writes each array shard once). The iterator position counts global batches and is the
same in every process (gemb/data/pipeline.py), so it is one JSON item, checked equal across
processes at save, rather than grain's per-process files: a checkpoint written by N
processes restores under any other process count.
"""

import hashlib
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from gemb import paths
from gemb.train.state import abstract_state


class Checkpointer:
  """Thin policy layer over ocp.CheckpointManager (which paths, what to keep, what to save)."""

  def __init__(self, workdir, *, keep=3, async_save=True):
    directory = paths.Path(workdir) / "checkpoints"  # absolute: orbax needs it
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, cleanup_tmp_directories=True,
            enable_async_checkpointing=async_save),
        item_names=("state", "data", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def save(self, step, state, data_iterator, meta, *, force=False):
    """Starts an (async) save; returns whether one was started."""
    data_state = data_iterator.get_state()
    if jax.process_count() > 1:
      digest = hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).digest()
      multihost_utils.assert_equal(np.frombuffer(digest, np.uint8),
                                   f"data iterator positions differ across processes at step "
                                   f"{step}: the processes did not read the same global batches")
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step, state_like, data_iterator):
    """Restores ``state`` onto the shardings of ``state_like`` and ``data_iterator`` in place.

    Returns (state, meta).
    """
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state(state_like)),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    data_iterator.set_state(restored["data"])
    return restored["state"], restored["meta"]

  def restore_params(self, step, state_like):
    """Restores only ``state`` onto the shardings of ``state_like`` (no data iterator)."""
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state(state_like))))
    return restored["state"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
