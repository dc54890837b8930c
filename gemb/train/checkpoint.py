"""Orbax checkpoints of everything a run needs to continue exactly where it stopped.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items: ``state`` (params +
optimizer state + step, restored directly onto the current mesh's shardings), ``data``
(the grain iterator position, so a resumed run sees exactly the batches it would have
seen) and ``meta`` (JSON: stage, examples seen, ...). Saves are asynchronous; a save
interrupted mid-way leaves only a ``*.orbax-checkpoint-tmp`` directory, which orbax
ignores on restore and we delete at start-up.
"""

import os

import grain
import orbax.checkpoint as ocp

from gemb.train.state import abstract_state


class Checkpointer:
  """Thin policy layer over ocp.CheckpointManager (which paths, what to keep, what to save)."""

  def __init__(self, workdir, *, keep=3, async_save=True):
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")  # orbax needs absolute
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
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain.checkpoint.CheckpointSave(data_iterator),
        meta=ocp.args.JsonSave(meta)), force=force)

  def restore(self, step, state_like, data_iterator):
    """Restores ``state`` onto the shardings of ``state_like`` and ``data_iterator`` in place.

    Returns (state, meta).
    """
    restored = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state(state_like)),
        data=grain.checkpoint.CheckpointRestore(data_iterator),
        meta=ocp.args.JsonRestore()))
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
