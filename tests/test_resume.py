"""Exact resume: a real training subprocess killed at several moments (during a checkpoint
save, after a stage boundary, by SIGTERM) and rerun ends bitwise equal to a run that never
stopped. Also: SIGTERM saves and exits within seconds, tmp debris is cleaned, NaN runs stop."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import orbax.checkpoint as ocp
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = (8, 8)  # align, finetune


def command(workdir, data_dir, *extra):
  """A shrunken two-stage tiny run: checkpoints every 2 steps, evals at the stage ends."""
  return [sys.executable, "-m", "gemb.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", f"--config.stages[0].steps={STEPS[0]}",
          f"--config.stages[1].steps={STEPS[1]}", "--config.data.batch_size=32",
          "--config.stages[1].data.batch_size=16", "--config.train.checkpoint_every=2",
          "--config.train.log_every=2", "--config.eval.tasks=('emoji_name_to_image',)",
          "--config.eval.dims=(128,)", *extra]


def env():
  e = dict(os.environ)
  e.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  return e


def start(cmd):
  return subprocess.Popen(cmd, cwd=ROOT, env=env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)


def final_params(workdir):
  state = ocp.PyTreeCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(sum(STEPS)), "state"))
  return {"/".join(map(str, k)): np.asarray(v)
          for k, v in _flatten(state["params"]).items()}


def _flatten(tree, prefix=()):
  if isinstance(tree, dict):
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, prefix + (key,)).items()}
  return {prefix: tree}


def wait_for(proc, condition, what, timeout=300):
  deadline = time.time() + timeout
  while not condition():
    if proc.poll() is not None:
      pytest.fail(f"run exited ({proc.returncode}) before {what}:\n{proc.stderr.read()[-3000:]}")
    if time.time() > deadline:
      proc.kill()
      pytest.fail(f"no {what} within {timeout} s")
    time.sleep(0.002)


def saving(ckpt_dir):
  return lambda: os.path.isdir(ckpt_dir) and any("tmp" in d for d in os.listdir(ckpt_dir))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, emoji_data_dir):
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  out = subprocess.run(command(workdir, emoji_data_dir), cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  return workdir


def test_killed_at_several_points_resumes_bitwise_equal(tmp_path, emoji_data_dir, uninterrupted):
  workdir = str(tmp_path / "run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  cmd = command(workdir, emoji_data_dir)

  # 1. SIGKILL while an (async) checkpoint save is in flight in stage "align" (after a
  # first checkpoint is complete, so the rerun has one to resume from).
  proc = start(cmd)
  wait_for(proc, lambda: os.path.isdir(os.path.join(ckpt_dir, "2")), "checkpoint 2")
  wait_for(proc, saving(ckpt_dir), "checkpoint save")
  proc.kill()
  proc.wait()
  debris = [d for d in os.listdir(ckpt_dir) if "tmp" in d]

  # 2. Rerun; SIGKILL once stage "finetune" has checkpointed (the rerun crossed the boundary).
  proc = start(cmd)
  boundary = os.path.join(ckpt_dir, str(STEPS[0] + 2))
  wait_for(proc, lambda: os.path.isdir(boundary), "a checkpoint in stage 2")
  proc.kill()
  stderr = proc.communicate()[1]
  assert "resumed from step" in stderr
  assert not [d for d in debris if os.path.exists(os.path.join(ckpt_dir, d))], \
      "interrupted-save debris was not cleaned"

  # 3. Rerun; SIGTERM (preemption) mid-stage: it saves the current step and exits cleanly.
  proc = start(cmd)
  late = os.path.join(ckpt_dir, str(STEPS[0] + 4))
  wait_for(proc, lambda: os.path.isdir(late), "a later checkpoint")
  proc.send_signal(signal.SIGTERM)
  t0 = time.time()
  stderr = proc.communicate(timeout=120)[1]
  assert proc.returncode == 0, stderr[-3000:]
  assert "preempted: saved step" in stderr
  print(f"SIGTERM to exit: {time.time() - t0:.1f} s")
  saved = int(stderr.split("preempted: saved step ")[1].split(";")[0])
  assert os.path.isdir(os.path.join(ckpt_dir, str(saved)))

  # 4. Rerun to the end.
  out = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert f"resumed from step {saved}" in out.stderr

  expected, got = final_params(uninterrupted), final_params(workdir)
  assert expected.keys() == got.keys()
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


@pytest.mark.slow
def test_resume_with_grain_workers_is_bitwise_equal(tmp_path, emoji_data_dir):
  workers = ("--config.data.num_workers=2",)
  reference = str(tmp_path / "reference")
  out = subprocess.run(command(reference, emoji_data_dir, *workers), cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  workdir = str(tmp_path / "run")
  proc = start(command(workdir, emoji_data_dir, *workers))
  wait_for(proc, lambda: os.path.isdir(os.path.join(workdir, "checkpoints", "6")), "checkpoint 6")
  proc.kill()
  proc.wait()
  out = subprocess.run(command(workdir, emoji_data_dir, *workers), cwd=ROOT, env=env(),
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  expected, got = final_params(reference), final_params(workdir)
  for name in expected:
    np.testing.assert_array_equal(got[name], expected[name], err_msg=name)


def test_nonfinite_run_stops_with_a_clear_message(tmp_path, emoji_data_dir):
  workdir = str(tmp_path / "run")
  out = subprocess.run(command(workdir, emoji_data_dir, "--config.optimizer.learning_rate=1e30",
                               "--config.train.max_nonfinite_streak=3"),
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=600)
  assert out.returncode != 0
  assert "NaN/Inf in the last" in out.stderr and "last good checkpoint" in out.stderr
