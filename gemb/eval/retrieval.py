"""The retrieval engine: embed a corpus, find each query's exact top-k, score the ranking.

This file owns
  * ``top_k``: exact maximum-inner-product search by blocked matmul, optionally with the
    candidates sharded over a device mesh;
  * ``encode``: running an embedding function over a whole side in static-shape batches;
  * ``retrieval_metrics``: the eval-JSON metrics of one task from its two embedding tables.

Evaluation corpora are large (a 1M-document corpus against 10k queries is a 10^10-entry score
matrix, 40 GB in float32), so ``top_k`` never materializes the Q x C scores: it walks over
blocks of candidates and keeps a running top-k, holding only Q x (k + block) scores at a time.
"""
import functools

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from gemb import parallel
from gemb.eval import metrics

NDCG_MRR_CUTOFF = 10  # The eval JSON reports NDCG@10 and MRR@10 (DESIGN.md).
RECALL_KS = (1, 5, 10)
# The ranking metrics retrieval_metrics reports (higher is better): what train.best_metric
# may name.
METRICS = tuple(f"R@{k}" for k in RECALL_KS) + (f"NDCG@{NDCG_MRR_CUTOFF}",
                                                 f"MRR@{NDCG_MRR_CUTOFF}")


def _merge(scores_a, index_a, scores_b, index_b, k):
  """Top-k of the union of two scored index sets, ties toward the lower index.

  lax.top_k keeps the earlier position among equal values. Callers pass the set with the
  lower indices first and each set sorted by (score desc, index asc), so the earlier position
  is always the lower index and the tie-break is exact.
  """
  return _select(jnp.concatenate([scores_a, scores_b], axis=1),
                 jnp.concatenate([index_a, index_b], axis=1), k)


def _select(scores, index, k):
  """The k best columns of (scores, index) [Q, n]; among equal scores the earlier column."""
  best, pos = lax.top_k(scores, k)
  return best, jnp.take_along_axis(index, pos, axis=1)


def _blocked_top_k(queries, candidates, k, block, base, num_valid):
  """Top-k of queries [Q, D] against candidates [m, D] (m a multiple of block).

  candidates[j] has global index base + j; indices >= num_valid are padding and get score
  -inf and index -1, so they lose to every real candidate.
  """
  num_q = queries.shape[0]
  blocks = candidates.reshape(-1, block, candidates.shape[1])
  offsets = base + block * jnp.arange(blocks.shape[0], dtype=jnp.int32)

  def step(carry, xs):
    blk, offset = xs
    # HIGHEST: on TPU the default f32 matmul uses bf16 passes, which reorders near-ties.
    scores = jnp.dot(queries, blk.T, precision=lax.Precision.HIGHEST)
    index = offset + jnp.arange(block, dtype=jnp.int32)
    valid = index < num_valid
    scores = jnp.where(valid[None, :], scores, -jnp.inf)
    index = jnp.broadcast_to(jnp.where(valid, index, -1), scores.shape)
    return _merge(*carry, scores, index, k), None

  init = (jnp.full((num_q, k), -jnp.inf, jnp.float32), jnp.full((num_q, k), -1, jnp.int32))
  (scores, index), _ = lax.scan(step, init, (blocks, offsets))
  return scores, index


def _pad_rows(x, rows):
  return jnp.pad(x, ((0, rows - x.shape[0]), (0, 0)))


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _top_k_single(queries, candidates, k, block):
  num_c = candidates.shape[0]
  queries, candidates = queries.astype(jnp.float32), candidates.astype(jnp.float32)
  candidates = _pad_rows(candidates, -(-num_c // block) * block)
  return _blocked_top_k(queries, candidates, k, block, 0, num_c)


@functools.partial(jax.jit,
                   static_argnames=("k", "block", "shard", "num_valid", "mesh", "axes"))
def _top_k_sharded(queries, candidates, k, block, shard, num_valid, mesh, axes):
  _, num_shards = parallel.batch_shards(mesh, axes)
  queries, candidates = queries.astype(jnp.float32), candidates.astype(jnp.float32)
  candidates = _pad_rows(candidates, shard * num_shards)  # No-op when padded on the host.

  def per_device(q, c):
    base = lax.axis_index(axes) * shard
    scores, index = _blocked_top_k(q, c, k, block, base, num_valid)
    # Shard d holds indices [d * shard, (d + 1) * shard): after a tiled gather, equal scores
    # sit in global index order, so _select's earlier-column tie-break is the lower index.
    scores = lax.all_gather(scores, axes, axis=1, tiled=True)
    index = lax.all_gather(index, axes, axis=1, tiled=True)
    return _select(scores, index, k)

  # check_vma=False: the merged result is identical on every device, but the checker cannot
  # see that through all_gather + top_k and would reject out_specs=P().
  fn = jax.shard_map(per_device, mesh=mesh, in_specs=(jax.P(), jax.P(axes)),
                     out_specs=(jax.P(), jax.P()), check_vma=False)
  return fn(queries, candidates)


def top_k(queries, candidates, k, *, block_size=4096, mesh=None, axis=("data", "fsdp")):
  """Exact top-k candidates of each query by dot product.

  Args:
    queries: float [Q, D] query embeddings (L2-normalized, so the dot product is the cosine).
    candidates: float [C, D] candidate embeddings.
    k: how many candidates to return per query, 1 <= k <= C.
    block_size: candidates scored per matmul; memory is O(Q * (k + block_size)), never
      O(Q * C).
    mesh: optional jax.sharding.Mesh. Candidates are then sharded over the devices of the
      mesh axes in `axis` (padded to a multiple), each device finds the top-k of its shard
      block by block, and the per-device top-k are all-gathered and merged. Queries are
      replicated.
    axis: mesh axis name(s) to shard candidates over; names the mesh lacks are skipped.

  Returns:
    (scores float32 [Q, k], indices int32 [Q, k]) best first. Equal scores are ordered by
    candidate index, lower first, so the ranking does not depend on block_size or mesh.
  """
  q_shape, c_shape = np.shape(queries), np.shape(candidates)
  if len(q_shape) != 2 or len(c_shape) != 2 or q_shape[1] != c_shape[1]:
    raise ValueError(
        f"queries [Q, D] and candidates [C, D] must share D, got {q_shape} and {c_shape}")
  num_c = c_shape[0]
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= num_c:
    raise ValueError(f"k must be an int in [1, {num_c}] (the number of candidates), got {k!r}")
  if isinstance(block_size, bool) or not isinstance(block_size, (int, np.integer)) \
      or block_size < 1:
    raise ValueError(f"block_size must be a positive int, got {block_size!r}")
  k = int(k)
  if mesh is None:
    return _top_k_single(queries, candidates, k=k, block=int(min(block_size, num_c)))

  names = (axis,) if isinstance(axis, str) else tuple(axis)
  axes, num_shards = parallel.batch_shards(mesh, names)
  if not axes:
    raise ValueError(f"none of the axes {names} is in the mesh, whose axes are "
                     f"{mesh.axis_names}")
  shard = -(-num_c // num_shards)
  block = int(min(block_size, shard))
  shard = -(-shard // block) * block
  if not isinstance(candidates, jax.Array):
    # Pad and shard on the host: staging a large corpus on one device first could OOM it.
    candidates = np.asarray(candidates, np.float32)
    candidates = np.pad(candidates, ((0, shard * num_shards - num_c), (0, 0)))
    candidates = jax.device_put(candidates, jax.NamedSharding(mesh, jax.P(axes)))
  return _top_k_sharded(queries, candidates, k=k, block=block, shard=shard, num_valid=num_c,
                        mesh=mesh, axes=axes)


def encode(embed_fn, side, batch_size):
  """Embeds every example of a side, batch_size examples per call.

  Args:
    embed_fn: side batch (dict of arrays with leading dim batch_size) -> [batch_size, D];
      should be jitted: calls get the same shapes but for the text length (a multiple of
      TEXT_BUCKET), so it compiles once per text length met.
    side: dict (or any pytree) of numpy arrays with a common leading dim n.
    batch_size: examples per call. The last batch is padded by repeating the last example,
      and the padding rows are dropped from the result. A side with text is batched
      shortest texts first, each batch's text cut to its longest text (see
      _by_text_length); the result is in the side's order.

  The batches depend only on (side, batch_size), so processes holding the same side call
  embed_fn with the same global batches in the same order: a multi-process embed_fn
  (gemb.eval.tasks.make_embed_fn) feeds its devices' rows of each and gathers the result.

  Returns:
    np.ndarray [n, D].
  """
  leaves = jax.tree.leaves(side)
  if not leaves:
    raise ValueError("side has no arrays to embed")
  sizes = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(sizes) != 1 or None in sizes:
    raise ValueError(
        f"side arrays must share a leading dim, got {[np.shape(x) for x in leaves]}")
  (n,) = sizes
  if n == 0:
    raise ValueError("side has no examples (leading dim 0)")
  if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) \
      or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  side = jax.tree.map(np.asarray, side)
  order, extent = _by_text_length(side, n)
  outputs = []
  for start in range(0, n, batch_size):
    rows = order[np.minimum(np.arange(start, start + batch_size), n - 1)]
    batch = jax.tree.map(lambda x: x[rows], side)
    if extent is not None:  # text padding past the batch's longest text changes nothing
      batch["text"] = batch["text"][..., :_bucket(extent[rows].max(), side["text"].shape[-1])]
    # Dispatch every batch before reading any result back, so host and device overlap.
    outputs.append(embed_fn(batch))
  outputs = [np.asarray(o) for o in outputs]
  for o in outputs:
    if o.ndim != 2 or o.shape[0] != batch_size:
      raise ValueError(f"embed_fn must return [batch_size={batch_size}, D], got {o.shape}")
  embeddings = np.concatenate(outputs)[:n]
  unsorted = np.empty_like(embeddings)
  unsorted[order] = embeddings
  return unsorted


TEXT_BUCKET = 16  # eval batches cut text padding to a multiple of this many tokens


def _by_text_length(side, n):
  """(row order, text extent per row): a side with text is embedded shortest texts first,
  each batch's text cut after its longest one (rounded up to TEXT_BUCKET tokens: a few
  shapes to compile), which pads never change (gemb/batch.py) and which saves most of a
  text encoder's work on short texts (names, titles, definitions). The order depends only
  on the side, so every process of a multi-process eval forms the same batches."""
  text = side.get("text") if isinstance(side, dict) else None
  if text is None or text.ndim != 3 or text.shape[-1] <= TEXT_BUCKET:
    return np.arange(n), None
  nonpad = text != 0  # batch.py: 0 pads text
  # The end of each row's last token over its slots (ids are left-aligned in their slot).
  extent = np.where(nonpad.any(-1), text.shape[-1] - np.argmax(nonpad[..., ::-1], -1), 0)
  extent = extent.max(-1)
  return np.argsort(extent, kind="stable"), extent


def _bucket(length, limit):
  return int(min(limit, max(TEXT_BUCKET, -(-length // TEXT_BUCKET) * TEXT_BUCKET)))


def retrieval_metrics(query_emb, cand_emb, qrels, ks=RECALL_KS, *, mesh=None,
                      block_size=4096):
  """The eval-JSON metrics of one retrieval task.

  Args:
    query_emb: float [Q, D] L2-normalized query embeddings.
    cand_emb: float [C, D] L2-normalized candidate embeddings.
    qrels: list of Q dicts {candidate index: grade > 0} (see gemb.eval.metrics).
    ks: cutoffs for R@k.
    mesh: optional mesh to shard the candidates over (see top_k).
    block_size: candidates per matmul block (see top_k).

  Returns:
    {"R@k" for k in ks, "NDCG@10", "MRR@10": fractions in [0, 1], "num_queries": Q,
    "num_candidates": C, "chance_R@1": expected R@1 of a random ranking}. A cutoff above C
    is evaluated at C, which is the same value since every candidate is then ranked.
  """
  num_q, num_c = np.shape(query_emb)[0], np.shape(cand_emb)[0]
  if len(qrels) != num_q:
    raise ValueError(f"qrels has {len(qrels)} queries but query_emb has {num_q} rows")
  chance = metrics.chance_recall_at_1(qrels, num_c)  # Also checks the qrels' index range.
  ks = tuple(ks)
  if not ks or any(isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1
                   for k in ks):
    raise ValueError(f"ks must be positive ints, got {ks!r}")
  cut = lambda k: int(min(k, num_c))
  depth = max(cut(k) for k in ks + (NDCG_MRR_CUTOFF,))
  _, ranked = top_k(query_emb, cand_emb, depth, block_size=block_size, mesh=mesh)
  ranked = np.asarray(ranked)
  result = {f"R@{k}": metrics.recall_at_k(ranked, qrels, cut(k)) for k in ks}
  result[f"NDCG@{NDCG_MRR_CUTOFF}"] = metrics.ndcg_at_k(ranked, qrels, cut(NDCG_MRR_CUTOFF))
  result[f"MRR@{NDCG_MRR_CUTOFF}"] = metrics.mrr_at_k(ranked, qrels, cut(NDCG_MRR_CUTOFF))
  result["num_queries"] = int(num_q)
  result["num_candidates"] = int(num_c)
  result["chance_R@1"] = chance
  return result
