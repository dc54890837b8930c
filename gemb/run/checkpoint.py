"""Orbax checkpoints of everything a run needs to continue exactly where it stopped.

A checkpoint ``<workdir>/checkpoints/<step>/`` holds three items: ``state`` (params +
optimizer state + step + guard counters, restored directly onto the current mesh's
shardings, whatever mesh wrote it), ``data`` (the grain iterator position of the stage
that was running, as JSON, so a resumed run sees exactly the batches it would have seen)
and ``meta`` (JSON: the curriculum position, stage index and name, and the stage's
resolved config). Saves are asynchronous; a save interrupted mid-way leaves only a
``*.orbax-checkpoint-tmp`` directory, which orbax ignores on restore and deletes at
start-up.

With several jax processes every one of them calls save/restore (orbax coordinates them
and writes each array shard once). The iterator position counts global batches and is the
same in every process (gemb/data/pipeline.py), so it is one JSON item, checked equal across
processes at save, rather than grain's per-process files: a checkpoint written by N
processes restores under any other process count.

What is kept: the latest ``keep`` checkpoints, plus the ``keep_best`` best by the eval
score passed to ``save`` (checkpoints saved without one count only as "latest"), plus any
``pinned`` steps (e.g. each stage's last step, for a soup of stages).
"""

import hashlib
import json

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from gemb import paths
from gemb.run.state import abstract_state

BEST_METRIC = "score"  # key of the metrics dict given to save()


def checkpoint_dir(path):
  """A run's workdir or its checkpoints/ directory -> the checkpoints directory."""
  nested = paths.Path(path) / "checkpoints"
  return nested if nested.is_dir() else paths.Path(path)


class Checkpointer:
  """Thin policy layer over ocp.CheckpointManager (which paths, what to keep, what to save).

  ``read_only``: open another run's checkpoints (its workdir or checkpoints directory).
  """

  def __init__(self, workdir, *, keep=3, keep_best=0, pinned=(), async_save=True,
               read_only=False):
    keep_policies = [policies.LatestN(keep)]
    if keep_best:
      keep_policies.append(policies.BestN(
          get_metric_fn=lambda m: m[BEST_METRIC], reverse=False, n=keep_best,
          keep_checkpoints_without_metrics=False))
    if pinned:
      keep_policies.append(policies.CustomSteps(tuple(pinned)))
    # Absolute (paths.Path): orbax needs it.
    directory = checkpoint_dir(workdir) if read_only else paths.Path(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            create=not read_only, read_only=read_only, cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save),
        item_names=("state", "data", "meta"))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def save(self, step, state, data_iterator, meta, *, score=None, force=False):
    """Starts an (async) save; ``score`` (higher is better) ranks it for keep_best."""
    data_state = data_iterator.get_state()
    if jax.process_count() > 1:
      digest = hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).digest()
      multihost_utils.assert_equal(np.frombuffer(digest, np.uint8),
                                   f"data iterator positions differ across processes at step "
                                   f"{step}: the processes did not read the same global batches")
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)),
        metrics=None if score is None else {BEST_METRIC: float(score)}, force=force)

  def _restore_tree(self, step, target, partial=False):
    # PyTree (not Standard) args on both sides: a manager binds one handler per item, and
    # only the PyTree handler restores a subset of the saved tree (params without
    # optimizer state).
    return self.manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=partial)))["state"]

  def restore_state(self, step, state_like):
    """The ``state`` item, resharded onto the shardings of ``state_like``."""
    return self._restore_tree(step, abstract_state(state_like))

  def restore_meta(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(
        meta=ocp.args.JsonRestore()))["meta"]

  def restore_data(self, step, data_iterator):
    """Moves ``data_iterator`` (in place) to where the run was at ``step``."""
    data_iterator.set_state(self.manager.restore(step, args=ocp.args.Composite(
        data=ocp.args.JsonRestore()))["data"])

  def restore_params(self, step, params_like):
    """Only the parameters (``state["params"]``) of ``step``, onto ``params_like``'s
    shardings; ``params_like`` may hold a subset of the saved parameters."""
    return self._restore_tree(step, {"params": abstract_state(params_like)},
                              partial=True)["params"]

  def wait(self):
    self.manager.wait_until_finished()

  def close(self):
    self.manager.close()
