"""End to end: a run trained by the trainer, exported, retrieves from raw records exactly as
the trainer's own evaluation scored it."""

import json
import os

import pytest

from configs import tiny
from configs.common import stage

TASK = "emoji_image_to_name"


@pytest.mark.slow
def test_trained_run_bundle_reproduces_the_trainers_eval(tmp_path, emoji_data_dir):
  from gemb.data.pipeline import get_tasks, open_split
  from gemb.eval.retrieval import retrieval_metrics
  from gemb.export.__main__ import run
  from gemb.serving import Embedder
  from gemb.train.loop import train_and_evaluate

  c = tiny.get_config()
  c.model.update(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32)
  c.data.update(batch_size=16, data_dir=emoji_data_dir, tokenizer_texts=2000,
                instructions=True)
  c.loss.update(matryoshka_dims=(16, 32), matryoshka_weights=(1.0, 1.0))
  c.stages = [stage("train", 6)]  # one stage: tiny's two would end at step 300
  c.train.update(checkpoint_every=3, log_every=3, keep_checkpoints=2)
  c.eval.update(dims=(16, 32), tasks=(TASK,))
  workdir = str(tmp_path / "run")
  train_and_evaluate(c, workdir)
  with open(os.path.join(workdir, "eval", "step_6.json")) as f:
    by_trainer = json.load(f)["tasks"][TASK]

  manifest = run(workdir, str(tmp_path / "bundle"), saved_model="no")
  assert manifest["source"]["steps"] == [6]
  model = Embedder.load(str(tmp_path / "bundle"))

  # The eval split's raw records, deduplicated by id as gemb.data.pipeline.retrieval_corpus.
  task = get_tasks(c, [TASK])[0]
  source = open_split(c, task, task.eval_split)
  queries, candidates = {}, {}
  for i in range(len(source)):
    record = source[i]
    queries.setdefault(record["item_id"], {"image": record["image"]})
    candidates.setdefault(record["item_id"], record["name"])
  ids = sorted(queries)
  qrels = [{row: 1} for row in range(len(ids))]  # one candidate per id, same order
  for dim in (16, 32):
    metrics = retrieval_metrics(model.embed([queries[i] for i in ids], task=TASK, dim=dim),
                                model.embed([candidates[i] for i in ids], dim=dim), qrels)
    expected = by_trainer["by_dim"][str(dim)]
    for name in ("R@1", "R@5", "R@10", "NDCG@10", "MRR@10"):
      # Embeddings agree to 1e-5; only an exact near-tie could move one query's rank.
      assert metrics[name] == pytest.approx(expected[name], abs=1.01 / len(ids)), (dim, name)
  assert metrics["num_queries"] == by_trainer["num_queries"]

  soup = run(workdir, str(tmp_path / "soup"), soup=True, saved_model="no")
  assert soup["source"] == {"workdir": workdir, "steps": [3, 6], "soup": True}
