"""configs/backbone_smoke.py end to end on the pretrained all-MiniLM-L6-v2: train (a real
subprocess), preempted by SIGTERM after a checkpoint, resumed to the end, evaluated by the
trainer and by gemb.eval, exported, and the bundle (no flax) reproduces the trainer's eval."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from backbone_fixtures import minilm_dir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "emoji_name_to_image"


def env():
  e = dict(os.environ, GEMB_MINILM_DIR=minilm_dir())
  e.pop("XLA_FLAGS", None)  # one CPU device, as a user's run
  return e


def train_command(workdir, data_dir):
  return [sys.executable, "-m", "gemb.main", "--config=configs/backbone_smoke.py",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}"]


def test_backbone_smoke_run_resumes_evaluates_and_exports(tmp_path):
  from configs import backbone_smoke
  from gemb.data.pipeline import get_tasks, open_split
  from gemb.eval.retrieval import retrieval_metrics
  from gemb.export.__main__ import run as export
  from gemb.serving import Embedder

  workdir, data_dir = str(tmp_path / "run"), str(tmp_path / "tfds")
  config = backbone_smoke.get_config()
  first_save = config.train.checkpoint_every
  total = sum(s.steps for s in config.stages)

  # ---- Train until the first checkpoint, then SIGTERM (a preemption): saves, exits 0.
  proc = subprocess.Popen(train_command(workdir, data_dir), cwd=ROOT, env=env(),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  ckpt = os.path.join(workdir, "checkpoints", str(first_save))
  deadline = time.time() + 600
  while not os.path.exists(ckpt):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    assert time.time() < deadline, "no first checkpoint within 600 s"
    time.sleep(1)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "pretrained: 17 parameter arrays" in err  # MiniLM's weights were copied in
  assert not os.path.exists(os.path.join(workdir, "checkpoints", str(total)))

  # ---- Rerun: resumes from the checkpoint and trains to the end with its evals.
  done = subprocess.run(train_command(workdir, data_dir), cwd=ROOT, env=env(),
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "resumed from step" in done.stderr and "pretrained:" not in done.stderr
  with open(os.path.join(workdir, "tokenizer.json")) as f:  # the backbone's own tokenizer
    assert json.load(f)["truncation"]["max_length"] == 256
  with open(os.path.join(workdir, "eval", f"step_{total}.json")) as f:
    record = json.load(f)
  by_trainer = record["tasks"][TASK]
  assert os.path.exists(os.path.join(workdir, "eval", "soup.json"))
  # The start (MiniLM, the rest random) was evaluated before step 1 and is in every report;
  # the resumed run read it back.
  start = record["baseline"]
  assert start["model"].startswith(f"backbone {minilm_dir()}")
  with open(os.path.join(workdir, "eval", "baseline_finetune.json")) as f:
    assert json.load(f)["tasks"] == start["tasks"]
  with open(os.path.join(workdir, "eval", "soup.json")) as f:
    assert json.load(f)["baseline"] == start
  with open(os.path.join(workdir, "eval", "soup_vs_best.md")) as f:
    assert "| start | soup - start |" in f.read()
  assert start["tasks"][TASK]["NDCG@10"] != by_trainer["NDCG@10"]  # not the trained model

  # ---- gemb.eval on the finished run: the trainer's numbers.
  subprocess.run([sys.executable, "-m", "gemb.eval", f"--workdir={workdir}", f"--tasks={TASK}",
                  "--dims=384"], cwd=ROOT, env=env(), check=True, capture_output=True,
                 timeout=600)
  with open(os.path.join(workdir, "eval", f"step_{total}.json")) as f:
    by_cli = json.load(f)
  by_cli, by_cli_start = by_cli["tasks"][TASK], by_cli["baseline"]["tasks"][TASK]
  assert by_cli["R@1"] == pytest.approx(by_trainer["by_dim"]["384"]["R@1"], abs=1e-6)
  # Its baseline is the same start, rebuilt from the config in another process.
  assert by_cli_start["R@1"] == pytest.approx(start["tasks"][TASK]["by_dim"]["384"]["R@1"],
                                              abs=1e-6)

  # ---- Export; the bundle reproduces the trainer's eval from raw records.
  bundle = str(tmp_path / "bundle")
  manifest = export(workdir, bundle, saved_model="no")
  assert os.path.exists(os.path.join(bundle, "tokenizer.json"))
  assert manifest["model"]["embed_dim"] == 384
  model = Embedder.load(bundle)
  config.data.data_dir = data_dir
  task = get_tasks(config, [TASK])[0]
  source = open_split(config, task, task.eval_split)
  queries, candidates = {}, {}
  for i in range(len(source)):
    record = source[i]
    queries.setdefault(record["item_id"], record["name"])
    candidates.setdefault(record["item_id"], {"image": record["image"]})
  ids = sorted(queries)
  metrics = retrieval_metrics(model.embed([queries[i] for i in ids], task=TASK, dim=384),
                              model.embed([candidates[i] for i in ids], dim=384),
                              [{row: 1} for row in range(len(ids))])
  expected = by_trainer["by_dim"]["384"]
  for name in ("R@1", "R@5", "NDCG@10"):
    assert metrics[name] == pytest.approx(expected[name], abs=1.01 / len(ids)), name
