"""Checkpoint faults: a corrupt latest checkpoint (a truncated array file, flipped bytes, a
deleted state/_METADATA) is found, named and fallen back from, by the trainer and by
gemb.eval; a save that fails (a full disk: a real small tmpfs where this machine lets us
mount one, else an injected ENOSPC) stops the run at once with one message, the previous
checkpoints intact and no eval result for a step without a checkpoint."""

import contextlib
import errno
import glob
import json
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest

from gemb.run.checkpoint import DIGEST_FILE, CheckpointError, Checkpointer
from tests.test_checkpoint import assert_trees_equal, data_iterator, state_on

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def largest_array_file(step_dir):
  return max(glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True),
             key=os.path.getsize)


# Each corrupts a checkpoint's directory -> (the broken file, what Checkpointer.problem says).

def truncate(step_dir):
  path = largest_array_file(step_dir)
  size = os.path.getsize(path)
  os.truncate(path, size // 2)
  return path, f"{path} has {size // 2} bytes, {size} when it was saved (truncated?)"


def flip_bytes(step_dir):
  path = largest_array_file(step_dir)
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    for i in range(len(data) // 3, len(data), 97):
      data[i] ^= 0xFF
    f.seek(0)
    f.write(data)
  return path, f"{path} differs from what was saved (its SHA-256 changed: flipped bytes?)"


def delete_metadata(step_dir):
  path = os.path.join(step_dir, "state", "_METADATA")
  os.remove(path)
  return path, f"{path} is missing"


CORRUPTIONS = {"truncated_array_file": truncate, "flipped_bytes": flip_bytes,
               "deleted_state_metadata": delete_metadata}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoints directory with steps 2 and 4 (different states), saved asynchronously."""
  root = str(tmp_path_factory.mktemp("saved"))
  states = {2: state_on((8, 1, 1), seed=1), 4: state_on((8, 1, 1), seed=2)}
  ckpt = Checkpointer(root, keep=3)
  for step, state in states.items():
    ckpt.save(step, state, data_iterator(step), {"stage_index": 0})
  ckpt.wait()
  ckpt.close()
  return root, states


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_each_corruption_is_found_and_named(kind, saved, tmp_path):
  root = str(tmp_path / "copy")
  shutil.copytree(saved[0], root)
  ckpt = Checkpointer(root, async_save=False)
  assert ckpt.problem(2) is None and ckpt.problem(4) is None  # sealed and intact
  _, reason = CORRUPTIONS[kind](os.path.join(root, "checkpoints", "4"))
  assert ckpt.problem(4) == reason and ckpt.problem(2) is None
  target = saved[1][2]
  step, restored, corrupt = ckpt.newest_intact(lambda s: ckpt.restore_state(s, target))
  assert step == 2 and corrupt == [(4, reason)]
  assert_trees_equal(restored, saved[1][2])
  ckpt.close()


def test_an_unsealed_checkpoint_is_judged_by_restoring_it(saved, tmp_path):
  """A checkpoint without its file list (killed between orbax's commit and the seal, or
  saved by an older gemb) counts as intact if it restores."""
  root = str(tmp_path / "copy")
  shutil.copytree(saved[0], root)
  for step in (2, 4):
    os.remove(os.path.join(root, "checkpoints", str(step), DIGEST_FILE))
  delete_metadata(os.path.join(root, "checkpoints", "4"))
  ckpt = Checkpointer(root, async_save=False)
  assert ckpt.problem(4) is None  # nothing to compare with
  step, restored, corrupt = ckpt.newest_intact(lambda s: ckpt.restore_state(s, saved[1][2]))
  assert step == 2 and corrupt[0][0] == 4 and corrupt[0][1].startswith("it does not restore: ")
  assert_trees_equal(restored, saved[1][2])
  ckpt.close()


def test_an_intact_checkpoint_that_does_not_fit_the_config_is_no_corruption(saved, tmp_path):
  ckpt = Checkpointer(saved[0], async_save=False)
  other = state_on((8, 1, 1))
  other["params"] = {"only": other["step"]}  # another model
  with pytest.raises(CheckpointError, match=r"checkpoints/4 is intact .* but does not "
                     r"restore: .*another config"):
    ckpt.newest_intact(lambda s: ckpt.restore_state(s, other))
  ckpt.close()


# ---------------------------------------------------------------------------------------
# Full disk.

@contextlib.contextmanager
def small_tmpfs(path, megabytes):
  """A tmpfs of ``megabytes`` at ``path``, or a skip where mounting is not allowed."""
  os.makedirs(path, exist_ok=True)
  out = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", path],
                       capture_output=True, text=True)
  if out.returncode:
    pytest.skip(f"cannot mount a tmpfs here ({out.stderr.strip()}); the injected ENOSPC "
                "test covers the same handling")
  try:
    yield path
  finally:
    subprocess.run(["umount", "-l", path], check=True)


def fill(directory):
  """Fills the file system of ``directory`` to the last byte."""
  with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
    for block in (1 << 20, 4096, 1):
      with contextlib.suppress(OSError):
        while True:
          f.write(b"\0" * block)


def test_a_save_that_cannot_fit_is_refused_before_it_starts(tmp_path):
  state = state_on((8, 1, 1))
  with small_tmpfs(str(tmp_path / "disk"), 64) as disk:
    ckpt = Checkpointer(disk, keep=3)
    ckpt.save(1, state, data_iterator(1), {"stage_index": 0})
    ckpt.wait()
    fill(disk)
    with pytest.raises(CheckpointError, match=r"saving checkpoint step 2 .* failed \(disk full\): "
                       r"\[Errno 28\] No space left on device \(0.0 MB free\)\. .* resumes from "
                       r"step 1"):
      ckpt.save(2, state, data_iterator(2), {"stage_index": 0})
    assert not os.path.exists(os.path.join(disk, "checkpoints", "2.orbax-checkpoint-tmp"))
    ckpt.close()


def test_disk_full_during_an_async_save_on_a_real_tmpfs(tmp_path, monkeypatch):
  """The disk fills up after the free-space check passed: orbax's background write fails."""
  monkeypatch.setattr(Checkpointer, "_check_free_space", lambda self: None)
  state = state_on((8, 1, 1))
  with small_tmpfs(str(tmp_path / "disk"), 64) as disk:
    ckpt = Checkpointer(disk, keep=3)
    ckpt.save(1, state, data_iterator(1), {"stage_index": 0})
    ckpt.wait()
    fill(disk)
    ckpt.save(2, state, data_iterator(2), {"stage_index": 0})  # returns: the write is async
    deadline = time.time() + 60
    with pytest.raises(CheckpointError) as e:
      while time.time() < deadline:
        ckpt.poll()
        time.sleep(0.05)
    message = str(e.value)
    assert message.startswith(f"saving checkpoint step 2 to {disk}/checkpoints/2 failed "
                              "(disk full): ")
    assert "No space left on device" in message
    assert (f"a rerun of the same command resumes from step 1, the newest of the intact "
            f"checkpoints [1] in {disk}/checkpoints") in message
    # The rerun (after space was freed) finds step 1 intact.
    os.remove(os.path.join(disk, "filler"))
    rerun = Checkpointer(disk, async_save=False)
    assert rerun.all_steps() == [1] and rerun.problem(1) is None
    assert_trees_equal(rerun.restore_state(1, state), state)
    rerun.close()


def test_injected_enospc_is_raised_once_with_the_resume_step(tmp_path, monkeypatch):
  """The same without a mount: the background write of step 2's data item raises ENOSPC."""
  from orbax.checkpoint._src.handlers import json_checkpoint_handler
  handler = json_checkpoint_handler.JsonCheckpointHandler
  real_save = handler._save_fn

  async def full_disk(self, item, directory):
    if "2.orbax-checkpoint-tmp" in str(directory):
      raise OSError(errno.ENOSPC, "No space left on device")
    return await real_save(self, item, directory)

  monkeypatch.setattr(handler, "_save_fn", full_disk)
  state = state_on((8, 1, 1))
  ckpt = Checkpointer(str(tmp_path), keep=3)
  ckpt.save(1, state, data_iterator(1), {"stage_index": 0})
  ckpt.save(2, state, data_iterator(2), {"stage_index": 0})  # seals 1, starts 2
  deadline = time.time() + 60
  with pytest.raises(CheckpointError, match=r"saving checkpoint step 2 .* failed \(disk full\): "
                     r".*No space left on device.* The run stopped at once; a rerun of the same "
                     r"command resumes from step 1, the newest of the intact checkpoints \[1\]"):
    while time.time() < deadline:
      ckpt.poll()
      time.sleep(0.05)
  ckpt.wait()  # reported once: nothing pending any more
  assert ckpt.problem(1) is None


# ---------------------------------------------------------------------------------------
# End to end: the training command and gemb.eval.

STEPS = (4, 2)  # align, finetune: checkpoints at 2, 4, 6


def command(workdir, data_dir, *extra):
  return [sys.executable, "-m", "gemb.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.stages[0].steps={STEPS[0]}",
          f"--config.stages[1].steps={STEPS[1]}", "--config.data.batch_size=32",
          "--config.stages[1].data.batch_size=16", "--config.train.checkpoint_every=2",
          "--config.train.keep_checkpoints=3", "--config.train.log_every=2",
          "--config.eval.tasks=('emoji_name_to_image',)", "--config.eval.dims=(128,)",
          "--config.soup.kind=none", *extra]


def run(cmd, **kw):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
                        **kw)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, emoji_data_dir):
  workdir = str(tmp_path_factory.mktemp("finished") / "run")
  out = run(command(workdir, emoji_data_dir))
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


# The default suite reruns the trainer on one corruption kind (each kind's detection and the
# fallback are tested above on a Checkpointer); the other two are slow (~2 min each here).
@pytest.mark.parametrize("kind", [
    "truncated_array_file",
    pytest.param("flipped_bytes", marks=pytest.mark.slow),
    pytest.param("deleted_state_metadata", marks=pytest.mark.slow)])
def test_training_falls_back_to_the_newest_intact_checkpoint(kind, finished_run, tmp_path,
                                                            emoji_data_dir):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  latest = os.path.join(workdir, "checkpoints", "6")
  path, _ = CORRUPTIONS[kind](latest)
  out = run(command(workdir, emoji_data_dir))
  assert out.returncode == 0, out.stderr[-3000:]
  moved = os.path.join(workdir, "corrupt_checkpoints", "6")
  assert (f"checkpoint step 6 ({latest}) is corrupt: {path}" in out.stderr and
          f"moved it to {moved}; resuming from step 4, the newest intact checkpoint"
          in out.stderr), out.stderr[-3000:]
  assert "resumed from step 4" in out.stderr
  assert os.path.isdir(moved)
  # Steps 5-6 were trained again: a new, intact step 6, evaluated.
  ckpt = Checkpointer(workdir, async_save=False)
  assert ckpt.all_steps() == [2, 4, 6] and ckpt.problem(6) is None
  ckpt.close()
  with open(os.path.join(workdir, "eval", "step_6.json")) as f:
    assert json.load(f)["step"] == 6


def test_training_stops_when_no_checkpoint_is_intact(finished_run, tmp_path, emoji_data_dir):
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  for step in (2, 4, 6):
    truncate(os.path.join(workdir, "checkpoints", str(step)))
  out = run(command(workdir, emoji_data_dir))
  assert out.returncode == 1
  ckpt_dir = os.path.join(workdir, "checkpoints")
  assert f"no intact checkpoint in {ckpt_dir}: step 6: " in out.stderr
  assert f"To start over from step 0: mv {ckpt_dir} {ckpt_dir}.corrupt" in out.stderr
  assert "Traceback" not in out.stderr  # one message, not a stack
  assert sorted(os.listdir(ckpt_dir)) == ["2", "4", "6"]  # nothing moved: the user decides


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_eval_falls_back_or_names_the_corrupt_checkpoint(kind, finished_run, tmp_path):
  from absl import app
  from gemb.eval.__main__ import run as evaluate
  workdir = str(tmp_path / "run")
  shutil.copytree(finished_run, workdir)
  latest = os.path.join(workdir, "checkpoints", "6")
  path, _ = CORRUPTIONS[kind](latest)
  with pytest.raises(app.UsageError) as e:
    evaluate(workdir, step=6)
  assert str(e.value).startswith(f"--step=6: checkpoint {latest} is corrupt: {path}")
  assert str(e.value).endswith(f"The newest intact one: python -m gemb.eval "
                               f"--workdir={workdir} --step=4")
  trained, _, paths = evaluate(workdir)  # the latest: falls back, saying so
  assert paths["json"].endswith("step_4.json")
  with open(paths["json"]) as f:
    assert json.load(f)["step"] == 4


def test_disk_full_stops_the_run_at_once(tmp_path, emoji_data_dir):
  """A real full disk under a training run: once checkpoint 2 is sealed the disk fills up;
  the save of step 4 fails and the run stops with one message; no eval result claims a
  step after 2."""
  with small_tmpfs(str(tmp_path / "disk"), 200) as disk:
    workdir = os.path.join(disk, "run")
    sealed = os.path.join(workdir, "checkpoints", "2", DIGEST_FILE)
    filled = threading.Event()

    def fill_after_checkpoint_2():
      deadline = time.time() + 500
      while not os.path.exists(sealed) and time.time() < deadline:
        time.sleep(0.01)
      fill(disk)
      filled.set()

    threading.Thread(target=fill_after_checkpoint_2, daemon=True).start()
    out = run(command(workdir, emoji_data_dir, "--config.stages[0].steps=8",
                      "--config.eval.every=2"))
    assert filled.is_set()
    assert out.returncode == 1, out.stderr[-3000:]
    assert "(disk full)" in out.stderr and "resumes from step 2" in out.stderr, \
        out.stderr[-3000:]
    assert "Traceback" not in out.stderr
    os.remove(os.path.join(disk, "filler"))
    ckpt = Checkpointer(workdir, async_save=False)
    assert ckpt.all_steps() == [2] and ckpt.problem(2) is None
    ckpt.close()
    evals = glob.glob(os.path.join(workdir, "eval", "step_*.json"))
    assert all(int(os.path.basename(p)[5:-5]) <= 2 for p in evals), evals
