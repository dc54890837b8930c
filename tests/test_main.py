"""End to end: `python -m gemb.main` on configs/tiny.py, SIGKILLed and resumed, as users run it."""

import json
import os
import subprocess
import sys
import time

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(workdir, data_dir, *overrides):
  return [sys.executable, "-m", "gemb.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", *overrides]


def child_env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run on this machine
  return env


def test_tiny_run_killed_after_first_checkpoint_resumes_and_learns(tmp_path, emoji_data_dir):
  workdir = str(tmp_path / "run")
  cmd = main_command(workdir, emoji_data_dir)
  first_ckpt = os.path.join(workdir, "checkpoints", "100")
  proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(), stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 300
  while not os.path.isdir(first_ckpt) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.2)
  assert proc.poll() is None, f"training exited early:\n{proc.stderr.read()[-3000:]}"
  assert os.path.isdir(first_ckpt), "no checkpoint within 300 s"
  proc.kill()  # SIGKILL: no chance to clean up
  proc.wait()
  assert not os.path.exists(os.path.join(workdir, "eval"))

  rerun = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True,
                         timeout=400)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert "resumed from step" in rerun.stderr

  with open(os.path.join(workdir, "eval", "step_300.json")) as f:
    result = json.load(f)
  assert result["step"] == 300
  i2t = result["tasks"]["emoji_image_to_name"]
  assert i2t["num_queries"] == i2t["num_candidates"] > 100
  # Held-out emoji never seen in training: retrieval must beat chance by 5x.
  assert i2t["R@1"] >= 5 * i2t["chance_R@1"], i2t
  assert set(i2t["by_dim"]) == {"32", "128"}

  events = EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  loss_steps = [e.step for e in events.Scalars("train/loss")]
  assert loss_steps[-1] == 300 and len(loss_steps) >= 4
  losses = [e.value for e in events.Scalars("train/loss")]
  assert losses[-1] < losses[0]
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))


def test_config_typo_fails_before_any_work(tmp_path):
  out = subprocess.run(main_command(str(tmp_path / "run"), str(tmp_path / "data"),
                                    "--config.train.stepz=5"),
                       cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "stepz" in out.stderr and "steps" in out.stderr  # "Did you mean ..."
  assert not os.path.exists(tmp_path / "run")
