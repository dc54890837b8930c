"""Evaluation tasks on held-out splits: embed both sides, retrieve, score.

Each task names a query side, a candidate side and which candidates are relevant for each
query. Embeddings are computed on the device mesh (batches sharded over the batch axes),
then ranked by the blocked top-k of gemb.eval.retrieval.
"""

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from gemb import parallel
from gemb.data.pipeline import retrieval_split
from gemb.eval.retrieval import encode, retrieval_metrics
from gemb.model.embedder_model import matryoshka


def make_embed_fn(graphdef, params, mesh, dim):
  """numpy side batch -> numpy unit-norm embeddings at Matryoshka ``dim``."""
  @jax.jit
  def embed(params, side):
    return matryoshka(nnx.merge(graphdef, params)(side), dim)

  def run(side):
    with jax.set_mesh(mesh):
      out = embed(params, parallel.host_to_global(side, mesh))
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))
  return run


def qrels_from_ids(query_ids, candidate_ids):
  """Relevance by item id: candidate j is relevant to query i when their ids match."""
  by_id = {}
  for j, c in enumerate(candidate_ids):
    by_id.setdefault(int(c), []).append(j)
  return [{j: 1 for j in by_id.get(int(q), [])} for q in query_ids]


def builtin_tasks(data_cfg, tokenizer, split="test"):
  """name -> (query side, candidate side, qrels) for the configured built-in dataset."""
  data = retrieval_split(data_cfg, tokenizer, split)
  images, texts = data["images"], data["texts"]
  prefix = data_cfg.dataset
  return {
      f"{prefix}_image_to_text": (images, texts, qrels_from_ids(data["image_ids"], data["text_ids"])),
      f"{prefix}_text_to_image": (texts, images, qrels_from_ids(data["text_ids"], data["image_ids"])),
  }


def evaluate(graphdef, params, mesh, tasks, *, dim, batch_size):
  """Retrieval metrics per task at one Matryoshka dim (sides are embedded once, reused)."""
  embed = make_embed_fn(graphdef, params, mesh, dim)
  cache, results = {}, {}
  for name, (queries, candidates, qrels) in tasks.items():
    for side in (queries, candidates):
      if id(side) not in cache:
        cache[id(side)] = encode(embed, side, batch_size)
    results[name] = retrieval_metrics(cache[id(queries)], cache[id(candidates)], qrels)
  return results
