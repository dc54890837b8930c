"""`python -m gemb.eval`: a run's checkpoint re-evaluated, with random-init and chance baselines."""

import importlib
import json
import os
import subprocess
import sys

import pytest
from absl import app
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import tiny

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "emoji_image_to_name"
eval_cli = importlib.import_module("gemb.eval.__main__")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, emoji_data_dir):
  """A 4-step run of a very small model; returns (workdir, the trainer's eval JSON)."""
  from gemb.train.loop import train_and_evaluate
  c = tiny.get_config()
  c.model.update(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32)
  c.data.batch_size = 16
  c.data.data_dir = emoji_data_dir
  c.data.tokenizer_texts = 2000
  c.loss.update(matryoshka_dims=(16, 32), matryoshka_weights=(1.0, 1.0))
  c.train.update(steps=4, checkpoint_every=4, log_every=2)
  c.eval.update(dims=(16, 32), tasks=(TASK,))
  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "eval", "step_4.json")) as f:
    return workdir, json.load(f)


def test_eval_reproduces_trainer_results_and_writes_reports(run_dir):
  workdir, by_trainer = run_dir
  trained, random_init, paths = eval_cli.run(workdir)  # latest step, config's tasks and dims
  assert paths["json"] == os.path.join(workdir, "eval", "step_4.json")
  with open(paths["json"]) as f:
    record = json.load(f)
  assert record["step"] == 4 and set(record["tasks"]) == {TASK}
  assert set(record["tasks"][TASK]["by_dim"]) == {"16", "32"}
  # Same params, same corpus, same batch size: the trainer's numbers exactly.
  assert record == by_trainer

  assert os.path.getsize(paths["png"]) > 1000
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(paths["md"]) as f:
    md = f.read()
  assert "Random init" in md and TASK in md
  assert f"{random_init[TASK]['R@1']:.4f}" in md
  assert set(random_init[TASK]["by_dim"]) == {"16", "32"}
  assert random_init[TASK]["chance_R@1"] == trained[TASK]["chance_R@1"] > 0

  events = EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  assert {f"eval/{TASK}/R@1@16", f"eval/{TASK}/R@1@32"} <= set(events.Tags()["scalars"])


def test_explicit_step_and_dims(run_dir):
  workdir, _ = run_dir
  trained, _, _ = eval_cli.run(workdir, step=4, tasks=[TASK], dims=[8], batch_size=64)
  assert set(trained[TASK]["by_dim"]) == {"8"}


@pytest.mark.parametrize("kwargs, needle", [
    (dict(step=3), "step=3"),
    (dict(tasks=["no_such_task"]), "no_such_task"),
    (dict(dims=[64]), "64"),
    (dict(dims=[0]), "[0]"),
])
def test_bad_arguments_name_the_value(run_dir, kwargs, needle):
  workdir, _ = run_dir
  with pytest.raises(app.UsageError) as e:
    eval_cli.run(workdir, **kwargs)
  assert needle in str(e.value)
  if "step" in kwargs:
    assert "[4]" in str(e.value)  # lists the available steps
  if "tasks" in kwargs:
    assert TASK in str(e.value)  # lists the known tasks


def test_missing_workdir_from_the_command_line(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-m", "gemb.eval", f"--workdir={tmp_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "config.json" in out.stderr and str(tmp_path) in out.stderr
