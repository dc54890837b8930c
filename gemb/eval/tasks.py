"""Evaluation tasks on held-out splits: embed every side once, score at every Matryoshka dim.

A retrieval task's eval split becomes unique queries, unique candidates and which candidates
are relevant for each query (gemb.data.pipeline.retrieval_corpus); a zero-shot
classification task's becomes one query per record, its class, and the prompts of every
class (classification_corpus). Each side is embedded once, at the model's full output size,
in global batches sharded over the mesh's batch axes: every process feeds the rows of each
batch that its devices hold and gets the whole batch's embeddings back, so evaluation runs
unchanged on any number of processes. A Matryoshka dim is then the normalized prefix of
those embeddings, ranked by the blocked top-k of gemb.eval.retrieval.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from gemb import parallel
from gemb.data.pipeline import classification_corpus, get_tasks, retrieval_corpus
from gemb.data.tasks import ClassificationSpec
from gemb.eval import report
from gemb.eval.classification import class_embeddings, classification_metrics
from gemb.eval.retrieval import encode, retrieval_metrics
from gemb.batch import MODALITIES
from gemb.model.embedder_model import matryoshka


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _embed(params, side, *, graphdef):
  # Module-level jit: periodic evals reuse the compiled encoder instead of retracing it.
  return nnx.merge(graphdef, params)(side).astype(jnp.float32)


# (graphdef, batch size, side signature) that _embed has compiled: a later eval of the same
# model skips timed_encode's warm-up batch (a whole padded batch, ~3 s for a Whisper side).
_compiled = set()


def check_dims(dims, embed_dim):
  """Sorted unique Matryoshka dims, or a ValueError naming the impossible ones."""
  dims = sorted({int(d) for d in dims})
  bad = [d for d in dims if not 0 < d <= embed_dim]
  if not dims or bad:
    raise ValueError(f"impossible Matryoshka dim(s) {bad or dims}: dims must be in "
                     f"[1, model.embed_dim={embed_dim}]")
  return dims


def check_batch_size(batch_size, mesh):
  """A ValueError unless the eval batch splits evenly over the devices of the batch axes."""
  _, shards = parallel.batch_shards(mesh)
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size <= 0 or batch_size % shards:
    raise ValueError(f"eval batch size {batch_size!r} must be a positive multiple of the "
                     f"devices on the batch axes ({' * '.join(parallel.BATCH_AXES)} = {shards})")


def process_rows(mesh, batch_size):
  """The rows of every global batch that this process feeds: those its devices hold."""
  slices = parallel.batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
  return np.unique(np.concatenate([np.arange(batch_size)[s[0]] for s in slices.values()]))


def make_embed_fn(graphdef, params, mesh, batch_size):
  """Global side batch [batch_size, ...] (numpy, the same in every process) -> float32 raw
  embeddings [batch_size, model.embed_dim], whole in every process."""
  check_batch_size(batch_size, mesh)
  rows = process_rows(mesh, batch_size)

  def run(side):
    if len(rows) < batch_size:
      side = jax.tree.map(lambda x: x[rows], side)
    with jax.set_mesh(mesh):
      out = _embed(params, parallel.host_to_global(side, mesh), graphdef=graphdef)
    if jax.process_count() == 1:
      return out  # read back by encode after every batch is dispatched
    return multihost_utils.process_allgather(out, tiled=True)
  return run


def load_tasks(config, tokenizer, names=None):
  """name -> the corpus of each eval task's eval split (retrieval or classification)."""
  names = tuple(names or config.eval.tasks)
  return {t.name: (classification_corpus if isinstance(t, ClassificationSpec)
                   else retrieval_corpus)(config, t, tokenizer)
          for t in get_tasks(config, names)}


def side_modalities(side):
  """"image", "text+image", ...: the modalities a side's examples hold, in MODALITIES order."""
  used = set(np.unique(side["layout"]).tolist())
  return "+".join(m for i, m in enumerate(MODALITIES) if i in used)


def timed_encode(embed_fn, side, batch_size, compile_key=None):
  """(embeddings, the "encode" entry of one side): items/s after a one-batch warm-up, so a
  first call's compilation is not counted. ``compile_key``: skip the warm-up when a call
  with this key already ran one (the compiled function is cached)."""
  num = len(side["layout"])
  if jax.process_count() > 1:
    # Every process runs the same collectives only if it holds the same corpus.
    multihost_utils.assert_equal(np.int64(num), "eval corpora differ between processes")
  if compile_key is None or compile_key not in _compiled:
    encode(embed_fn, jax.tree.map(lambda x: x[:1], side), batch_size)
    _compiled.add(compile_key)
  start = time.perf_counter()
  embeddings = encode(embed_fn, side, batch_size)
  seconds = time.perf_counter() - start
  return embeddings, {"modalities": side_modalities(side), "num_items": num,
                      "seconds": seconds, "items_per_s": num / seconds}


def score(corpus, embeddings, dim):
  """The task's metrics at Matryoshka ``dim`` from its raw embeddings (name -> [n, D])."""
  at_dim = {side: np.asarray(matryoshka(jnp.asarray(e), dim)) for side, e in embeddings.items()}
  if "labels" in corpus:
    classes = class_embeddings(at_dim["prompts"], corpus["num_templates"])
    return classification_metrics(at_dim["queries"], classes, corpus["labels"])
  return retrieval_metrics(at_dim["queries"], at_dim["candidates"], corpus["qrels"])


def evaluate_dims(graphdef, params, mesh, tasks, dims, batch_size):
  """Every task's metrics at the largest dim, each dim's under "by_dim" (quality metrics
  only), and the encode throughput of each side under "encode" (see gemb.eval.report)."""
  embed = make_embed_fn(graphdef, params, mesh, batch_size)
  results = {}
  for name, corpus in tasks.items():
    sides = ("queries", "prompts") if "labels" in corpus else ("queries", "candidates")
    embeddings, speed = {}, {}
    for side in sides:
      signature = tuple((p, np.shape(x)[1:], np.asarray(x).dtype.str) for p, x in
                        jax.tree_util.tree_flatten_with_path(corpus[side])[0])
      embeddings[side], speed[side] = timed_encode(embed, corpus[side], batch_size,
                                                   (graphdef, batch_size, signature))
    by_dim = {d: score(corpus, embeddings, d) for d in sorted(dims)}
    results[name] = dict(by_dim[max(dims)],
                         by_dim={str(d): report.quality_metrics(m) for d, m in by_dim.items()},
                         encode={"queries": speed["queries"], "candidates": speed[sides[1]]})
    if corpus.get("num_skipped_records"):  # bad records left out under on_bad_record=skip
      results[name]["num_skipped_records"] = corpus["num_skipped_records"]
  return results
