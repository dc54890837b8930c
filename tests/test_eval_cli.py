"""`python -m gemb.eval`: a run's checkpoint re-evaluated, with random-init and chance baselines."""

import importlib
import io
import json
import os
import shutil
import subprocess
import sys

import pytest
from absl import app
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from configs import tiny
from gemb.eval import report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "emoji_image_to_name"
ZERO_SHOT = "emoji_group_zero_shot"
CUSTOM = "my_pairs"  # a manifest dataset from config.data.custom_tasks
eval_cli = importlib.import_module("gemb.eval.__main__")


def write_manifest(root):
  """12 coloured squares with captions; one file serves every split."""
  (root / "img").mkdir()
  lines = []
  for i in range(12):
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (20 * i, 100, 250 - 20 * i)).save(buf, format="PNG")
    (root / "img" / f"{i}.png").write_bytes(buf.getvalue())
    lines.append({"id": i, "image": {"path": f"img/{i}.png"}, "caption": f"square number {i}"})
  (root / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  return f"manifest:{root}/pairs.jsonl"


def config(emoji_data_dir, manifest):
  c = tiny.get_config()
  c.model.update(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32)
  c.data.batch_size = 16
  c.data.data_dir = emoji_data_dir
  c.data.tokenizer_texts = 2000
  c.data.custom_tasks = {CUSTOM: dict(dataset=manifest, query=("image:image",),
                                      candidate=("text:caption",), query_id="id",
                                      candidate_id="id")}
  c.loss.update(matryoshka_dims=(16, 32), matryoshka_weights=(1.0, 1.0))
  c.stages[0].steps, c.stages[1].steps = 2, 2
  c.stages[1].data.batch_size = 16
  c.train.update(checkpoint_every=4, log_every=2)
  c.eval.update(dims=(16, 32), tasks=(TASK, ZERO_SHOT, CUSTOM), batch_size=128)
  return c


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, emoji_data_dir):
  """A 4-step run of a very small model; returns (workdir, the trainer's eval JSON)."""
  from gemb.train.loop import train_and_evaluate
  manifest = write_manifest(tmp_path_factory.mktemp("manifest"))
  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(config(emoji_data_dir, manifest), workdir)
  with open(os.path.join(workdir, "eval", "step_4.json")) as f:
    return workdir, json.load(f)


def without_timings(tasks):
  return {name: {k: v for k, v in m.items() if k != "encode"} for name, m in tasks.items()}


def test_eval_reproduces_trainer_results_and_writes_reports(run_dir):
  workdir, by_trainer = run_dir
  trained, random_init, paths = eval_cli.run(workdir)  # latest step, config's tasks and dims
  assert paths["json"] == os.path.join(workdir, "eval", "step_4.json")
  record = report.read_eval_json(paths["json"])
  assert record["step"] == 4 and set(record["tasks"]) == {TASK, ZERO_SHOT, CUSTOM}
  assert set(record["tasks"][TASK]["by_dim"]) == {"16", "32"}
  # Same params, same corpora, same batch size: the trainer's numbers exactly (all but the
  # measured encode speed).
  assert without_timings(record["tasks"]) == without_timings(by_trainer["tasks"])
  assert "baseline" not in by_trainer
  zero_shot = record["tasks"][ZERO_SHOT]
  assert (zero_shot["num_queries"], zero_shot["num_candidates"]) == (518, 9)
  assert zero_shot["chance_accuracy"] == pytest.approx(1 / 9)
  assert set(zero_shot["by_dim"]["16"]) == {"accuracy", "top5_accuracy", "balanced_accuracy"}
  assert record["tasks"][CUSTOM]["num_queries"] == 12
  for name, metrics in record["tasks"].items():
    assert metrics["encode"]["queries"]["modalities"] == "image", name
    assert metrics["encode"]["candidates"]["modalities"] == "text", name
    assert metrics["encode"]["queries"]["items_per_s"] > 0
  assert zero_shot["encode"]["candidates"]["num_items"] == 9 * 4  # classes x templates

  # The random-init baseline sits next to the tasks: same config, seed and corpora.
  baseline = record["baseline"]
  assert baseline["model"] == "random_init" and baseline["seed"] == 0
  assert without_timings(baseline["tasks"]) == without_timings(random_init)
  assert baseline["tasks"][TASK]["by_dim"]["16"]["R@1"] == random_init[TASK]["by_dim"]["16"]["R@1"]
  assert random_init[TASK]["chance_R@1"] == trained[TASK]["chance_R@1"] > 0
  assert without_timings(random_init) != without_timings(trained)  # Training changed it.

  assert os.path.getsize(paths["png"]) > 1000
  with open(paths["png"], "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  with open(paths["md"]) as f:
    md = f.read()
  assert "The start: random_init" in md and TASK in md and CUSTOM in md
  assert f"{random_init[TASK]['R@1']:.4f}" in md
  assert f"| {ZERO_SHOT} | accuracy | " in md  # the by-dim table judges it by accuracy
  assert "Encode throughput" in md and "| image | " in md

  events = EventAccumulator(os.path.join(workdir, "tensorboard"))
  events.Reload()
  tags = set(events.Tags()["scalars"])
  assert {f"eval/{TASK}/R@1@16", f"eval/{TASK}/R@1@32", f"eval/{ZERO_SHOT}/accuracy@32",
          f"eval/{CUSTOM}/encode/queries_per_s"} <= tags


def test_explicit_step_tasks_and_dims(run_dir):
  workdir, _ = run_dir
  trained, _, _ = eval_cli.run(workdir, step=4, tasks=[CUSTOM, ZERO_SHOT], dims=[8],
                               batch_size=64)
  assert set(trained) == {CUSTOM, ZERO_SHOT}
  assert set(trained[CUSTOM]["by_dim"]) == {"8"}


@pytest.mark.parametrize("kwargs, needle", [
    (dict(step=3), "step=3"),
    (dict(tasks=["no_such_task"]), "no_such_task"),
    (dict(dims=[64]), "64"),
    (dict(dims=[0]), "[0]"),
    (dict(dims=[-8, 16]), "[-8]"),
    (dict(batch_size=12), "batch size 12"),
])
def test_bad_arguments_name_the_value(run_dir, kwargs, needle):
  workdir, _ = run_dir
  with pytest.raises(app.UsageError) as e:
    eval_cli.run(workdir, **kwargs)
  assert needle in str(e.value)
  if "step" in kwargs:
    assert "[2, 4]" in str(e.value)  # lists the available steps (both stage ends)
  if "tasks" in kwargs:
    assert TASK in str(e.value) and CUSTOM in str(e.value)  # lists the known tasks
  if "dims" in kwargs:
    assert "model.embed_dim=32" in str(e.value)


@pytest.mark.parametrize("remove, needle", [
    ("checkpoints", "no checkpoints/ directory"),
    ("checkpoints/*", "no checkpoint in"),
    ("tokenizer.model", "no tokenizer.model"),
])
def test_missing_run_files_are_named(run_dir, tmp_path, remove, needle):
  workdir = tmp_path / "copy"
  shutil.copytree(run_dir[0], workdir)
  for path in workdir.glob(remove):
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  with pytest.raises(app.UsageError, match=needle) as e:
    eval_cli.run(str(workdir))
  assert str(workdir) in str(e.value)


def test_trainer_rejects_impossible_eval_dims_before_training(tmp_path, emoji_data_dir):
  from gemb.train.loop import train_and_evaluate
  c = config(emoji_data_dir, "manifest:unused.jsonl")
  c.eval.dims = (16, 64)
  with pytest.raises(ValueError, match=r"eval.dims: dims \[64\] are impossible.*embed_dim=32"):
    train_and_evaluate(c, str(tmp_path))
  assert not os.path.exists(tmp_path / "tokenizer.model")  # nothing ran
  c.eval.dims, c.eval.batch_size = (16,), 100
  with pytest.raises(ValueError, match=r"batch size 100 must be a positive multiple.*= 8"):
    train_and_evaluate(c, str(tmp_path))


def test_missing_workdir_from_the_command_line(tmp_path):
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  out = subprocess.run([sys.executable, "-m", "gemb.eval", f"--workdir={tmp_path}"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
  assert out.returncode != 0
  assert "config.json" in out.stderr and str(tmp_path) in out.stderr
