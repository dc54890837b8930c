"""End to end: `python -m gemb.main --config=configs/tiny.py`, the two-stage run users start with."""

import json
import os
import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_command(workdir, data_dir, *overrides):
  return [sys.executable, "-m", "gemb.main", "--config=configs/tiny.py", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", *overrides]


def child_env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # one CPU device, as a user's run on this machine
  return env


def test_tiny_two_stage_run_learns_logs_and_soups(tmp_path, emoji_data_dir):
  workdir = str(tmp_path / "run")
  out = subprocess.run(main_command(workdir, emoji_data_dir), cwd=ROOT, env=child_env(),
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "stage 1/2 'align'" in out.stderr and "stage 2/2 'finetune'" in out.stderr
  assert "run ETA" in out.stderr  # console progress

  # Each stage ends with an eval; the last one must beat chance by 5x on held-out emoji.
  for step, stage in ((200, "align"), (300, "finetune")):
    with open(os.path.join(workdir, "eval", f"step_{step}.json")) as f:
      result = json.load(f)
    assert result["stage"] == stage and result["step"] == step
  i2t = result["tasks"]["emoji_image_to_name"]
  assert i2t["num_queries"] == i2t["num_candidates"] > 100
  assert i2t["R@1"] >= 5 * i2t["chance_R@1"], i2t
  assert set(i2t["by_dim"]) == {"32", "128"}

  # The soup of the last 2 checkpoints, compared with the best single checkpoint.
  with open(os.path.join(workdir, "eval", "soup.json")) as f:
    assert json.load(f)["stage"] == "soup"
  with open(os.path.join(workdir, "eval", "soup_vs_best.md")) as f:
    assert "| emoji_image_to_name (R@1) |" in f.read()

  events = EventAccumulator(os.path.join(workdir, "tensorboard"),
                            size_guidance={"scalars": 0, "tensors": 0})
  events.Reload()
  scalars = set(events.Tags()["scalars"])
  for tag in ("train/loss", "train/loss/emoji_image_to_name", "train/loss/emoji_name_to_image",
              "train/temperature", "train/learning_rate", "train/grad_norm",
              "train/examples_per_s", "train/steps_per_s", "train/model_flops_per_s",
              "eval/emoji_image_to_name/R@1@128", "eval/score"):
    assert tag in scalars, (tag, sorted(scalars))
  losses = [e.value for e in events.Scalars("train/loss")]
  assert [e.step for e in events.Scalars("train/loss")][-1] == 300
  assert losses[-1] < losses[0]
  assert min(e.value for e in events.Scalars("train/model_flops_per_s")) > 0
  assert "config/text_summary" in events.Tags()["tensors"] or \
      any("config" in t for t in events.Tags()["tensors"])
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert os.path.exists(os.path.join(workdir, "tokenizer.model"))


def test_config_typo_fails_before_any_work(tmp_path):
  for flag, words in (("--config.optimizer.warmup_stepz=5", ("warmup_stepz", "warmup_steps")),
                      ("--config.stages[1].steps=abc", ("steps", "abc")),
                      ("--config.data.mixing=exemple", ("data.mixing", "exemple")),
                      ("--config.stages[0].data.batch_sise=3", ("stages[0]", "batch_sise")),
                      ("--config.stages[1].loss.kind=3", ("stages[1]", "loss.kind=3"))):
    out = subprocess.run(main_command(str(tmp_path / "run"), str(tmp_path / "data"), flag),
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert all(w in out.stderr for w in words), (flag, out.stderr[-2000:])
    assert not os.path.exists(tmp_path / "run")


def test_override_of_a_section_a_stage_lacks_names_the_flag(tmp_path):
  """A stage written as a plain dict has only the sections it names: overriding a key of
  another fails at flag parsing with the flag named, not a bare KeyError."""
  config = tmp_path / "raw_stages.py"
  config.write_text("from configs import tiny\n"
                    "def get_config(arg=None):\n"
                    "  c = tiny.get_config(arg)\n"
                    "  c.stages = [dict(name='a', steps=2, freeze=''), "
                    "dict(name='b', steps=2, freeze='')]\n"
                    "  return c\n")
  for flag, words in (("--config.stages[0].loss.kind=sigmoid",
                       ("--config.stages[0].loss.kind", "no 'loss' section", "stage()")),
                      ("--config.optimzer.warmup_steps=5",
                       ("--config.optimzer.warmup_steps", "no key 'optimzer'"))):
    out = subprocess.run([sys.executable, "-m", "gemb.main", f"--config={config}",
                          f"--workdir={tmp_path / 'run'}", flag],
                         cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert all(w in out.stderr for w in words), (flag, out.stderr[-2000:])
    assert "Traceback" not in out.stderr
    assert not os.path.exists(tmp_path / "run")


def test_any_stage_key_can_be_overridden_from_the_command_line():
  """--config.stages[i].<section>.<key> sets a key for one stage, also one the stage's dict
  does not name (it inherits the top level's); the other stage keeps its own value."""
  code = ("import sys; from absl import flags; from gemb import main; "
          "from gemb.run import curriculum; flags.FLAGS(sys.argv); "
          "main.check_overrides(flags.FLAGS['config']); "
          "print([(s.config.loss.kind, s.config.data.batch_size) "
          "for s in curriculum.resolve_stages(flags.FLAGS.config)])")
  out = subprocess.run([sys.executable, "-c", code, "--config=configs/tiny.py", "--workdir=/x",
                        "--config.stages[1].loss.kind=sigmoid",
                        "--config.stages[0].data.batch_size=32"],
                       cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr[-2000:]
  # tiny: both stages inherit loss.kind="infonce"; stage 1 sets its own batch_size=64.
  assert out.stdout.strip().splitlines()[-1] == "[('infonce', 32), ('sigmoid', 64)]"
