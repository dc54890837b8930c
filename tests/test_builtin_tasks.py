"""Every built-in task, end to end on the small builds: records -> batches -> model -> loss."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from gemb import losses
from gemb.data import pipeline, sources
from gemb.data.tasks import TaskSpec
from gemb.data.tokenizer import Tokenizer
from gemb.batch import MODALITIES
from gemb.model.embedder_model import MultimodalEmbedder
from gemb.train.step import embed_batch

# Retrieval tasks (zero-shot classification has no training pairs: test_eval_classification).
TASKS = sorted(n for n, t in sources.BUILTIN_TASKS.items() if isinstance(t, TaskSpec))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  c = tiny.get_config()
  c.data.data_dir = str(tmp_path_factory.mktemp("small_tfds"))
  c.data.builtin_config = "small"
  c.data.batch_size = 4
  c.data.num_negatives = 2
  c.data.instructions = True
  c.data.tasks = tuple(TASKS)
  c.data.weights = (1.0,) * len(TASKS)
  c.eval.tasks = ()
  c.model.modalities = MODALITIES
  c.model.update(dict(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32))
  c.loss.matryoshka_dims, c.loss.matryoshka_weights = (16, 32), (1.0, 1.0)
  tokenizer = Tokenizer.train(pipeline.tokenizer_corpus(c), 1024)
  model = MultimodalEmbedder(c.model, rngs=nnx.Rngs(0))
  return c, tokenizer, model


def test_suite_covers_every_modality_as_query_and_candidate():
  tasks = [sources.BUILTIN_TASKS[n] for n in TASKS]
  as_query = {s.modality for t in tasks for s in t.query}
  as_candidate = {s.modality for t in tasks for s in t.candidate}
  assert as_query == as_candidate == set(MODALITIES)
  assert any(len({s.modality for s in t.query}) > 1 for t in tasks)  # interleaved queries


@pytest.mark.parametrize("name", TASKS)
def test_task_trains_and_evaluates(setup, name):
  c, tokenizer, model = setup
  c = c.copy_and_resolve_references()
  c.data.tasks, c.data.weights = (name,), (1.0,)
  task = pipeline.get_tasks(c, [name])[0]
  b = next(iter(pipeline.train_dataset(c, tokenizer, seed=0)))
  b.pop("task_index"), b.pop("skipped")
  assert b["query"]["layout"].shape[0] == 4
  if task.negatives is not None:
    assert b["negatives"]["layout"].shape[:2] == (4, 2)
  graphdef, params = nnx.split(model)

  @jax.jit
  def loss(params, b):
    m = nnx.merge(graphdef, params)
    q, cand, neg = embed_batch(m, b)
    return losses.contrastive_loss(q, cand, neg, query_id=b["query_id"],
                                   candidate_id=b["candidate_id"],
                                   negative_id=b.get("negative_id"), logit_scale=10.0,
                                   logit_bias=0.0, config=c.loss)[0]

  value = float(loss(params, b))
  assert np.isfinite(value) and value > 0
  corpus = pipeline.retrieval_corpus(c, task, tokenizer)
  assert len(corpus["qrels"]) > 0 and all(corpus["qrels"])
