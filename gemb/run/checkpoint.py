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

Faults. Once a save has finished, process 0 seals it: ``<step>/gemb_sha256.json`` records
the size and SHA-256 of every file of the checkpoint, so a truncated or deleted file and
flipped bytes (which orbax restores silently, as wrong numbers) are found before a restore
(``problem``). A save that would not fit on a local disk (less free space than the newest
sealed checkpoint took) is refused before it starts; a save that fails part-way (the disk
filled up during it, say) raises ``CheckpointError`` at the next ``poll`` / ``save`` /
``wait`` (the trainer polls every step). Either names the step, the cause and the intact
checkpoints a rerun resumes from (orbax removes the partial save's
``*.orbax-checkpoint-tmp`` at that rerun).
"""

import errno
import hashlib
import json
import shutil
import threading

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as policies

from gemb import paths
from gemb.run.state import abstract_state

BEST_METRIC = "score"  # key of the metrics dict given to save()
DIGEST_FILE = "gemb_sha256.json"  # in each step directory: relative path -> [size, sha256]


class CheckpointError(RuntimeError):
  """A save that failed, or no checkpoint to resume from intact; the message says what to
  do next."""


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
    self.directory, self.async_save, self._pending = directory, async_save, None
    # Sealing reads the whole checkpoint back (~0.5 s per 100 MB here): a thread does it,
    # off the training loop's path (hashlib releases the GIL on large buffers).
    self._sealing = None

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def step_dir(self, step):
    return self.directory / str(step)

  def save(self, step, state, data_iterator, meta, *, score=None, force=False):
    """Starts an (async) save; ``score`` (higher is better) ranks it for keep_best. First
    finishes (and seals) the previous save, raising CheckpointError if it failed."""
    self._finish()
    data_state = data_iterator.get_state()
    if jax.process_count() > 1:
      digest = hashlib.sha256(json.dumps(data_state, sort_keys=True).encode()).digest()
      multihost_utils.assert_equal(np.frombuffer(digest, np.uint8),
                                   f"data iterator positions differ across processes at step "
                                   f"{step}: the processes did not read the same global batches")
    try:
      self._check_free_space()
      saved = self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeSave(state),
          data=ocp.args.JsonSave(data_state),
          meta=ocp.args.JsonSave(meta)),
          metrics=None if score is None else {BEST_METRIC: float(score)}, force=force)
    except Exception as e:  # the synchronous part: creating directories, writing metadata
      raise self._save_failed(step, e) from e
    if saved:
      self._pending = step
      if not self.async_save:
        self.wait()
    return saved

  def _check_free_space(self):
    """Raises ENOSPC before a save that cannot fit on a local disk: less free space than
    the newest sealed checkpoint took. (A save that fails part-way also stops the run, but
    orbax's writer threads then print their own stacks under gemb's message.)"""
    if paths.is_url(self.directory):
      return
    for step in reversed(self.all_steps()):  # the newest sealed one (sealing runs behind)
      try:
        digest = json.loads((self.step_dir(step) / DIGEST_FILE).read_text())
      except (OSError, ValueError):
        continue
      needed = sum(size for size, _ in digest.values())
      free = shutil.disk_usage(self.directory).free
      if free < needed:
        raise OSError(errno.ENOSPC, f"No space left on device ({free / 1e6:.1f} MB free)")
      return

  def poll(self):
    """Raises CheckpointError as soon as a background save has failed (and seals one that
    succeeded); cheap, so the trainer calls it every step."""
    if self._pending is not None and not self.manager.is_saving_in_progress():
      self._finish()

  def _finish(self):
    """Waits for the pending save; seals it, or raises CheckpointError if it failed."""
    step, self._pending = self._pending, None
    if step is None:
      return
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._save_failed(step, e) from e
    if jax.process_index() == 0:
      self._join_sealing()
      self._sealing = threading.Thread(target=_seal, args=(self.step_dir(step),),
                                       name=f"gemb-seal-{step}")
      self._sealing.start()

  def _join_sealing(self):
    if self._sealing is not None:
      self._sealing.join()
      self._sealing = None

  def _save_failed(self, step, error):
    # (tensorstore appends its whole spec to an error: not what a user needs.)
    cause = " ".join(str(error).split()).split(" [tensorstore_spec=")[0][:600] or \
        type(error).__name__
    disk_full = (isinstance(error, OSError) and error.errno == errno.ENOSPC) or any(
        s in cause for s in ("No space left on device", "os_error_code='28'", "Disk quota"))
    self.manager.reload()
    intact = self.all_steps()
    resume = (f"a rerun of the same command resumes from step {intact[-1]}, the newest of "
              f"the intact checkpoints {intact} in {self.directory}" if intact else
              "no checkpoint was written before, so a rerun starts from step 0")
    fix = (f"Free space on the disk of {self.directory} (the last checkpoint took "
           f"{_size_mb(self.step_dir(intact[-1])):.1f} MB) or" if disk_full and intact else
           "Free space on that disk or" if disk_full else "Fix the cause or")
    return CheckpointError(
        f"saving checkpoint step {step} to {self.step_dir(step)} failed"
        f"{' (disk full)' if disk_full else ''}: {cause}. The run stopped at once; {resume}. "
        f"{fix} move the workdir, then rerun the same command.")

  def problem(self, step):
    """Why checkpoint ``step`` is not intact (a file missing, truncated or changed since it
    was saved), or None. Only sealed checkpoints can be checked (see DIGEST_FILE)."""
    directory = self.step_dir(step)
    if not directory.is_dir():
      return f"{directory} does not exist"
    digest_path = directory / DIGEST_FILE
    if not digest_path.exists():
      return None
    try:
      expected = json.loads(digest_path.read_text())
    except (OSError, ValueError) as e:
      return f"its file list {digest_path} is unreadable ({e})"
    for rel, (size, sha) in sorted(expected.items()):
      path = directory / rel
      if not path.exists():
        return f"{path} is missing"
      found = path.stat().length
      if found != size:
        return f"{path} has {found} bytes, {size} when it was saved (truncated?)"
      if _sha256(path) != sha:
        return f"{path} differs from what was saved (its SHA-256 changed: flipped bytes?)"
    return None

  def newest_intact(self, restore, steps=None):
    """-> (step, restore(step), [(newer step, why it is corrupt)]) for the newest of
    ``steps`` (default: all) that is intact; (None, None, [all of them]) when none is.

    A sealed checkpoint is intact if its files match their digest; an unsealed one (killed
    between orbax's commit and the seal, or saved by an older gemb) if it restores. A sealed
    checkpoint whose files are intact but that does not restore is no corruption: it does
    not fit the config (another model), and CheckpointError says so.
    """
    corrupt = []
    for step in sorted(self.all_steps() if steps is None else steps, reverse=True):
      reason = self.problem(step)
      if reason is None:
        try:
          return step, restore(step), corrupt
        except Exception as e:  # pylint: disable=broad-except
          cause = " ".join(str(e).split())[:500] or type(e).__name__
          if (self.step_dir(step) / DIGEST_FILE).exists():
            raise CheckpointError(
                f"checkpoint {self.step_dir(step)} is intact (its files match their SHA-256) "
                f"but does not restore: {cause}. Was it saved with another config? Rerun "
                f"with the run's own config or another --workdir.") from e
          reason = f"it does not restore: {cause}"
      corrupt.append((step, reason))
    return None, None, corrupt

  def restore_newest_intact(self, restore):
    """The trainer's resume: (step, restore(step)) of the newest intact checkpoint, or
    (None, None) without checkpoints. Newer corrupt ones are moved out of the way (to
    <workdir>/corrupt_checkpoints/, kept for inspection; the run saves those steps again),
    each logged with why; when none is intact, CheckpointError says how to start over."""
    step, restored, corrupt = self.newest_intact(restore)
    if step is None and corrupt:
      listing = "; ".join(f"step {s}: {reason}" for s, reason in corrupt)
      raise CheckpointError(
          f"no intact checkpoint in {self.directory}: {listing}. To start over from step 0: "
          f"mv {self.directory} {self.directory}.corrupt, then rerun the same command.")
    if not corrupt:
      return step, restored
    aside = self.directory.parent / "corrupt_checkpoints"
    targets = {}
    for bad, _ in corrupt:  # a free name: an earlier fallback may have moved this step too
      targets[bad], suffix = aside / str(bad), 1
      while targets[bad].exists():
        targets[bad], suffix = aside / f"{bad}.{suffix}", suffix + 1
    # Every process judged the same files alike; one moves them, after all have looked.
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("gemb: before moving corrupt checkpoints")
    for bad, reason in corrupt:
      if jax.process_index() == 0:
        aside.mkdir(parents=True, exist_ok=True)
        self.step_dir(bad).rename(targets[bad])
      logging.warning("checkpoint step %d (%s) is corrupt: %s; moved it to %s; resuming from "
                      "step %d, the newest intact checkpoint", bad, self.step_dir(bad), reason,
                      targets[bad], step)
    if jax.process_count() > 1:
      multihost_utils.sync_global_devices("gemb: after moving corrupt checkpoints")
    self.manager.reload()
    return step, restored

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
    """The parameters the model of ``step`` computes with, onto ``params_like``'s shardings;
    ``params_like`` may hold a subset of them. A run with LoRA (gemb/model/lora.py) saved
    its adapters next to the frozen kernels (``state["lora"]``): they come back merged into
    their kernels, so soups, exports, evaluations and init_from see the adapted model."""
    adapters = self._lora(step)
    target = {"params": abstract_state(params_like)}
    if adapters is None:
      return self._restore_tree(step, target, partial=True)["params"]
    target["lora"] = adapters.restore_target(params_like)
    restored = self._restore_tree(step, target, partial=True)
    return adapters.merge(restored["params"], restored["lora"])

  def _lora(self, step):
    """The LoRA of the run that saved ``step`` (its meta holds the stage's config), or None."""
    from gemb.model import lora
    from gemb.run.workdir import config_from_json
    config = self.restore_meta(step).get("config")
    return None if config is None else lora.for_config(config_from_json(config).model)

  def wait(self):
    """Waits for the pending save (raises CheckpointError if it failed, else seals it)."""
    self._finish()
    self._join_sealing()

  def close(self):
    self._join_sealing()
    self.manager.close()


def _files(directory, prefix=""):
  """Relative path -> path of every file under ``directory`` but the digest itself (walked
  with iterdir: epath has no recursive glob for object stores)."""
  out = {}
  for p in sorted(directory.iterdir()):
    if p.is_dir():
      out.update(_files(p, f"{prefix}{p.name}/"))
    elif not p.name.startswith(DIGEST_FILE):
      out[prefix + p.name] = p
  return out


def _sha256(path):
  h = hashlib.sha256()
  with path.open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 24), b""):
      h.update(chunk)
  return h.hexdigest()


def _seal(directory):
  """Writes DIGEST_FILE of a finished checkpoint (atomically: a temp file, then a rename)."""
  digest = {rel: [p.stat().length, _sha256(p)] for rel, p in _files(directory).items()}
  tmp = directory / (DIGEST_FILE + ".tmp")
  tmp.write_text(json.dumps(digest, indent=1, sort_keys=True))
  tmp.rename(directory / DIGEST_FILE)


def _size_mb(directory):
  return sum(p.stat().length for p in _files(directory).values()) / 1e6
