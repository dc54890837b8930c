"""Evaluation tasks on held-out splits: embed both sides, retrieve, score.

Each task (gemb/data/tasks.py) is evaluated on its eval split: unique queries, unique
candidates and which candidates are relevant for each query
(gemb.data.pipeline.retrieval_corpus). Embeddings are computed on the device mesh (batches
sharded over the batch axes), then ranked by the blocked top-k of gemb.eval.retrieval.
"""

import functools

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from gemb import parallel
from gemb.data.pipeline import get_tasks, retrieval_corpus
from gemb.eval.retrieval import encode, retrieval_metrics
from gemb.model.embedder_model import matryoshka


@functools.partial(jax.jit, static_argnames=("graphdef", "dim"))
def _embed(params, side, *, graphdef, dim):
  # Module-level jit: periodic evals reuse the compiled encoder instead of retracing it.
  return matryoshka(nnx.merge(graphdef, params)(side), dim)


def make_embed_fn(graphdef, params, mesh, dim):
  """numpy side batch -> numpy unit-norm embeddings at Matryoshka ``dim``."""
  def run(side):
    with jax.set_mesh(mesh):
      out = _embed(params, parallel.whole_to_global(side, mesh), graphdef=graphdef, dim=dim)
    return np.asarray(multihost_utils.process_allgather(out, tiled=True))
  return run


def load_tasks(config, tokenizer, names=None):
  """name -> retrieval corpus (queries, candidates, qrels) of each eval task's eval split."""
  names = tuple(names or config.eval.tasks)
  return {t.name: retrieval_corpus(config, t, tokenizer) for t in get_tasks(config, names)}


def evaluate_dims(graphdef, params, mesh, tasks, dims, batch_size):
  """Every metric at the largest dim, plus the ranking metrics of each dim under "by_dim"."""
  results = {}
  for dim in sorted(dims, reverse=True):
    for name, metrics in evaluate(graphdef, params, mesh, tasks, dim=dim,
                                  batch_size=batch_size).items():
      if dim == max(dims):
        results[name] = dict(metrics, by_dim={})
      results[name]["by_dim"][str(dim)] = {k: v for k, v in metrics.items()
                                           if k.startswith(("R@", "NDCG", "MRR"))}
  return results


def evaluate(graphdef, params, mesh, tasks, *, dim, batch_size):
  """Retrieval metrics per task at one Matryoshka dim."""
  embed = make_embed_fn(graphdef, params, mesh, dim)
  results = {}
  for name, corpus in tasks.items():
    queries = encode(embed, corpus["queries"], batch_size)
    candidates = encode(embed, corpus["candidates"], batch_size)
    results[name] = retrieval_metrics(queries, candidates, corpus["qrels"])
  return results
