"""Contrastive losses of gemb: InfoNCE and sigmoid, Matryoshka, cross-device negatives.

This file owns everything between the model's raw embeddings and the scalar loss:

  * `logit_scale_from_param`: the clipped temperature multiplier,
  * `matryoshka_prefixes`: L2-normalized first-d prefixes of raw embeddings,
  * `contrastive_loss`: InfoNCE (optionally symmetric) or sigmoid (SigLIP) loss, summed over
    Matryoshka dims with weights, with in-batch negatives from every device of the mesh,
    optional hard negatives, false-negative masking by item id and margin masking.

Layout of the score matrix (the same on every device, and in any reference):

    columns = [ candidate 0 .. candidate B-1 | negative (0,0) .. (0,K-1), (1,0) .. (B-1,K-1) ]

i.e. the B global candidates in global batch order, then the B*K global hard negatives in
row-major [B, K] order. The positive of global query g is column g. The ids of the columns
are built with the very same gather + reshape as the embeddings, so masks and embeddings
cannot disagree about which column is which (the bug that once made sentence-transformers
train anchors against their own hard negatives).

Cross-device negatives: with a mesh, the loss runs under `jax.shard_map`; each device gathers
(all_gather, tiled) the candidates, hard negatives and ids of the whole batch, scores only its
LOCAL queries against all global columns, and the per-device sums are psum-ed. Every device
therefore holds a b_local x (B + B*K) score matrix (or, with `score_block`, one b_local x block
slice of it at a time), never a B x B one. The gradient flows back through the all_gather
(its transpose is a reduce-scatter), so each candidate receives the gradient of every
device's queries: no "gather with grad" correction is needed.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from gemb import parallel
from gemb.model.embedder_model import matryoshka

KINDS = ("infonce", "sigmoid")


def logit_scale_from_param(log_scale, max_scale):
  """exp(min(log_scale, log(max_scale))): the logit multiplier (1/temperature), clipped.

  The model owns the learnable `log_scale`; clipping here (as in CLIP, max_scale=100) keeps
  the softmax from collapsing onto one column. Above the clip the gradient is zero.
  """
  if max_scale <= 0:
    raise ValueError(f"max_scale must be > 0, got {max_scale}")
  return jnp.exp(jnp.minimum(log_scale, math.log(max_scale)))


def _check_dims(dims, width):
  for d in dims:
    if isinstance(d, bool) or not isinstance(d, int):
      raise ValueError(f"matryoshka dim {d!r} is not an int (dims={tuple(dims)})")
    if not 0 < d <= width:
      raise ValueError(
          f"matryoshka dim {d} out of range: must be in [1, {width}] (the embedding width); "
          f"dims={tuple(dims)}")


def matryoshka_prefixes(emb, dims):
  """L2-normalized first-d prefixes of raw embeddings `emb` [..., D], one per d in `dims`.

  Returns a list of float32 arrays [..., d]. Raises ValueError naming a dim that is not an
  int in [1, D].
  """
  dims = tuple(dims)
  _check_dims(dims, emb.shape[-1])
  return [matryoshka(emb, d) for d in dims]


class _Settings:
  """The validated loss fields of a config (any object with these attributes)."""

  def __init__(self, config, width):
    self.kind = config.kind
    if self.kind not in KINDS:
      raise ValueError(f"config.kind must be one of {KINDS}, got {self.kind!r}")
    self.symmetric = bool(config.symmetric)
    self.mask_false_negatives = bool(config.mask_false_negatives)
    self.margin = None if config.margin is None else float(config.margin)
    # Columns scored per block (0: all at once); configs without the field score all at once.
    self.score_block = getattr(config, "score_block", 0) or 0
    if isinstance(self.score_block, bool) or not isinstance(self.score_block, int) \
        or self.score_block < 0:
      raise ValueError(f"config.score_block must be an int >= 0 (0 = off), got "
                       f"{self.score_block!r}")
    dims = tuple(config.matryoshka_dims or ())
    weights = tuple(config.matryoshka_weights or ())
    if not dims and not weights:
      # No Matryoshka: one term on the full embedding.
      dims, weights = (width,), (1.0,)
    if len(weights) != len(dims):
      raise ValueError(
          f"config.matryoshka_weights has {len(weights)} entries but config.matryoshka_dims "
          f"has {len(dims)}: weights={weights}, dims={dims}")
    _check_dims(dims, width)
    if len(set(dims)) != len(dims):
      raise ValueError(f"config.matryoshka_dims has a repeated dim: {dims}")
    self.dims = dims
    self.weights = tuple(float(w) for w in weights)


def _check_inputs(query, candidate, negatives, query_id, candidate_id, negative_id,
                  logit_bias, settings):
  if query.ndim != 2:
    raise ValueError(f"query must be [B, D], got shape {query.shape}")
  if candidate.shape != query.shape:
    raise ValueError(f"candidate shape {candidate.shape} != query shape {query.shape}")
  b = query.shape[0]
  for name, ids in (("query_id", query_id), ("candidate_id", candidate_id)):
    if ids.shape != (b,):
      raise ValueError(f"{name} must be [B]=({b},), got shape {ids.shape}")
  if negatives is not None:
    if negatives.ndim != 3 or negatives.shape[0] != b or negatives.shape[2] != query.shape[1]:
      raise ValueError(
          f"negatives must be [B, K, D]=({b}, K, {query.shape[1]}), got shape {negatives.shape}")
    if negative_id is None:
      if settings.mask_false_negatives:
        raise ValueError("negatives given with mask_false_negatives=True but negative_id is None")
    elif negative_id.shape != negatives.shape[:2]:
      raise ValueError(
          f"negative_id must be [B, K]={negatives.shape[:2]}, got shape {negative_id.shape}")
  if settings.kind == "sigmoid" and logit_bias is None:
    raise ValueError("config.kind='sigmoid' needs logit_bias (got None)")


def _score_rows(rows, cols, labels, row_ids, col_ids, col_pad, scale, bias, settings):
  """Loss sum and #correct of local `rows` [b, d] scored against global `cols` [N, d].

  Both are L2-normalized; labels [b] index each row's positive column. Masks (constants of
  the loss: no gradient flows through the decision to drop a column; the positive is never
  dropped): with row_ids [b] and col_ids [N] (None: no id masking) a column with its row's
  id is dropped; col_pad [N] (None: none) drops padding columns for every row; with a
  margin, columns almost as close as the positive. A row is correct if its positive has the
  top logit among the columns it is not masked from.

  The columns are scored in blocks of `settings.score_block` (0: one block of all N): each
  block updates a running max / sum of exponentials (infonce: an online logsumexp) or a
  running sum (sigmoid), a running positive logit and a running argmax. Blocks run under
  lax.scan with the block rematerialized, so forward and backward hold one b x block score
  block at a time, never the b x N matrix.
  """
  b, n = rows.shape[0], cols.shape[0]
  if col_pad is None:
    col_pad = jnp.zeros((n,), bool)
  if row_ids is None:  # no id masking: ids that never match
    row_ids, col_ids = jnp.zeros((b,), jnp.int32), jnp.ones((n,), jnp.int32)
  pos_cos = None
  if settings.margin is not None:
    # HIGHEST: on TPU the default f32 matmul runs in bf16 passes, and a 1e-3 error in a
    # cosine times a logit scale of ~100 is a visible error in the logits.
    pos_cos = jax.lax.stop_gradient(jnp.einsum(
        "bd,bd->b", rows, cols[labels], precision=jax.lax.Precision.HIGHEST))

  def block(carry, blk):
    run_max, run_sum, pos_logit, best, best_col = carry
    blk_cols, blk_index, blk_ids, blk_pad = blk
    cos = jnp.einsum("bd,nd->bn", rows, blk_cols, precision=jax.lax.Precision.HIGHEST)
    is_pos = blk_index[None, :] == labels[:, None]
    drop = blk_pad[None, :] | ((blk_ids[None, :] == row_ids[:, None]) & ~is_pos)
    if pos_cos is not None:
      drop = drop | (~is_pos & (cos > pos_cos[:, None] - settings.margin))
    drop = jax.lax.stop_gradient(drop)
    logits = scale * cos
    pos_logit = pos_logit + jnp.sum(jnp.where(is_pos, logits, 0.0), axis=1)
    if settings.kind == "infonce":
      masked = jnp.where(drop, -jnp.inf, logits)
      # The running max is only a shift (logsumexp is invariant to it): no gradient. A row
      # with every column so far masked keeps max -inf; shift it by 0 instead (its sum is 0).
      new_max = jax.lax.stop_gradient(jnp.maximum(run_max, jnp.max(masked, axis=1)))
      shift = jnp.where(jnp.isfinite(new_max), new_max, 0.0)
      run_sum = (run_sum * jnp.exp(run_max - shift)
                 + jnp.sum(jnp.exp(masked - shift[:, None]), axis=1))
      run_max = new_max
    else:
      logits = logits + bias
      masked = jnp.where(drop, -jnp.inf, logits)
      sign = jnp.where(is_pos, 1.0, -1.0)
      run_sum = run_sum - jnp.sum(jnp.where(drop, 0.0, jax.nn.log_sigmoid(sign * logits)), axis=1)
    masked = jax.lax.stop_gradient(masked)
    blk_best = jnp.max(masked, axis=1)
    better = blk_best > best  # strict: ties keep the earlier column, as jnp.argmax does
    best_col = jnp.where(better, blk_index[jnp.argmax(masked, axis=1)], best_col)
    return (run_max, run_sum, pos_logit, jnp.maximum(best, blk_best), best_col), None

  # Built from rows and labels so that, under shard_map, the carry varies over the batch
  # axes like the values the blocks put in it (lax.scan needs equal types in and out).
  zeros = jnp.zeros_like(rows[:, 0], jnp.float32)
  init = (zeros - jnp.inf, zeros, zeros, zeros - jnp.inf, jnp.zeros_like(labels))
  columns = (cols, jnp.arange(n), col_ids, col_pad)
  size = settings.score_block
  if not size or size >= n:
    carry, _ = block(init, columns)
  else:
    blocks = -(-n // size)
    extra = blocks * size - n  # padding columns: index -1 (never a positive), always dropped
    padded = (jnp.pad(cols, ((0, extra), (0, 0))), jnp.pad(jnp.arange(n), (0, extra),
                                                            constant_values=-1),
              jnp.pad(col_ids, (0, extra)), jnp.pad(col_pad, (0, extra), constant_values=True))
    stacked = jax.tree.map(lambda v: v.reshape((blocks, size) + v.shape[1:]), padded)
    carry, _ = jax.lax.scan(jax.checkpoint(block), init, stacked)
  run_max, run_sum, pos_logit, _, best_col = carry
  if settings.kind == "infonce":
    loss = jnp.sum(run_max + jnp.log(run_sum) - pos_logit)
  else:
    loss = jnp.sum(run_sum)
  return loss, jnp.sum(best_col == labels)


def _local_loss(x, scale, bias, *, settings, axes, global_b):
  """Per-device body: local queries against global columns; returns (loss, metrics).

  `x` holds the local shards (b rows) of a global batch of `global_b`. `axes` are the mesh
  axes the batch is split over (empty: this device holds the whole batch, no collectives).
  """
  def gather(v):  # local [b, ...] -> global [B, ...] in global batch order
    return jax.lax.all_gather(v, axes, tiled=True) if axes else v

  def total(v):
    return jax.lax.psum(v, axes) if axes else v

  q, c = x["query"], x["candidate"]
  b, width = q.shape
  shard = jax.lax.axis_index(axes) if axes else 0
  labels = shard * b + jnp.arange(b)  # global index of each local row = its positive column

  # Gather the raw embeddings once; each Matryoshka prefix is then cut and normalized from
  # them (normalization is per row, so it commutes with the gather).
  cols = gather(c)
  if "negatives" in x:
    cols = jnp.concatenate([cols, gather(x["negatives"]).reshape(-1, width)], axis=0)
  # Masks travel as ids and padding flags per column; _score_rows builds them per block.
  row_ids = col_ids = back_row_ids = back_col_ids = col_pad = None
  if settings.mask_false_negatives:
    row_ids, col_ids = x["candidate_id"], gather(x["candidate_id"])
    if "negative_id" in x:
      col_ids = jnp.concatenate([col_ids, gather(x["negative_id"]).reshape(-1)])
  if "negative_id" in x:
    # Padding hard negatives (id < 0, see gemb/data/examples.py) are never negatives.
    neg_ids = gather(x["negative_id"]).reshape(-1)
    col_pad = jnp.concatenate([jnp.zeros(cols.shape[0] - neg_ids.shape[0], bool), neg_ids < 0])
  sym = settings.kind == "infonce" and settings.symmetric
  if sym:
    all_q = gather(q)
    if settings.mask_false_negatives:
      back_row_ids, back_col_ids = x["query_id"], gather(x["query_id"])

  metrics = {}
  loss = 0.0
  for d, w in zip(settings.dims, settings.weights):
    rows, col_d = matryoshka(q, d), matryoshka(cols, d)
    loss_sum, correct = _score_rows(rows, col_d, labels, row_ids, col_ids, col_pad, scale,
                                    bias, settings)
    if sym:
      back_sum, _ = _score_rows(matryoshka(c, d), matryoshka(all_q, d), labels, back_row_ids,
                                back_col_ids, None, scale, bias, settings)
      loss_sum = 0.5 * (loss_sum + back_sum)
    loss_d = total(loss_sum) / global_b
    metrics[f"loss@{d}"] = loss_d
    loss = loss + w * loss_d
    if d == max(settings.dims):
      metrics["accuracy"] = total(correct).astype(jnp.float32) / global_b
  metrics["loss"] = loss
  metrics["logit_scale"] = scale
  if settings.kind == "sigmoid":
    metrics["logit_bias"] = bias
  return loss, metrics


def contrastive_loss(query, candidate, negatives=None, *, query_id, candidate_id,
                     negative_id=None, logit_scale, logit_bias=None, config, mesh=None,
                     batch_axes=parallel.BATCH_AXES):
  """Contrastive loss of a batch of raw embeddings, with negatives from the whole mesh.

  Args:
    query: [B, D] raw (unnormalized) query embeddings, sharded over `batch_axes`.
    candidate: [B, D] raw embeddings of each query's positive.
    negatives: optional [B, K, D] raw hard negatives, K per query.
    query_id, candidate_id: int32 [B]; negative_id: int32 [B, K]. Item ids: equal ids mean
      identical targets (used by false-negative masking).
    logit_scale: scalar multiplier of the cosines (1/temperature, see
      `logit_scale_from_param`).
    logit_bias: scalar added to the logits; required by "sigmoid", ignored by "infonce"
      (a bias shared by all columns cancels in the softmax).
    config: object with fields kind ("infonce" | "sigmoid"), symmetric, mask_false_negatives,
      margin (float or None), matryoshka_dims, matryoshka_weights (empty: full width only),
      and optionally score_block (int; > 0 scores the columns in blocks of that many, see
      "Memory" below; 0 or absent: all at once).
    mesh: a jax Mesh; None runs on one device without collectives (global = local batch).
    batch_axes: mesh axes the batch dim is split over. Axes the mesh lacks are skipped; other
      mesh axes (e.g. "tensor") see the batch replicated.

  Returns:
    (loss, metrics): scalar loss = sum_d weight_d * loss@d, where loss@d is the base loss on
    the L2-normalized d-prefixes. metrics: "loss", "loss@<d>" (unweighted) per dim,
    "accuracy" (fraction of queries whose positive has the top unmasked logit, at the
    largest dim, over the query->candidate+negatives scores), "logit_scale" and, for
    sigmoid, "logit_bias".

  The losses (for query g of the global batch, columns as in the module docstring, masked
  columns removed; all means are over the B global queries):

    infonce: -log softmax(logit_scale * cos(q_g, columns))[g]. With `symmetric`, the mean of
      that and the candidate->query term -log softmax(logit_scale * cos(c_g, queries))[g]
      (no hard negatives in that direction; masking by query_id).
    sigmoid (SigLIP): -sum_j log_sigmoid(y_gj * (logit_scale * cos(q_g, col_j) + logit_bias)),
      y = +1 for the positive, -1 otherwise. `symmetric` does not apply: every
      (query, candidate) pair is already one binary term.

  Masking (masks are constants: no gradient flows through them; the positive is never
  masked). mask_false_negatives drops column j if its id equals the positive's id
  (candidate_id for candidates and hard negatives; query_id in the symmetric term).
  margin drops column j if cos(q_g, col_j) > cos(q_g, positive) - margin.

  Memory per device: the gathered raw embeddings, B*(1+K)*D floats (plus B*D gathered
  queries for the symmetric term), and per Matryoshka dim d their normalized prefixes,
  B*(1+K)*d, and the b_local x B*(1+K) score matrix (b_local x B for the symmetric term).
  No device builds a B x B matrix; the backward pass keeps the same per-device residuals.
  With score_block = s > 0 the score matrix is never built: blocks of s columns are scored
  one after another (an online logsumexp for infonce) and rematerialized in the backward
  pass, so the score memory is O(b_local x s) instead of O(b_local x B*(1+K)), at the cost
  of computing the scores twice. Values and gradients equal the unblocked loss.
  """
  settings = _Settings(config, query.shape[-1])
  _check_inputs(query, candidate, negatives, query_id, candidate_id, negative_id,
                logit_bias, settings)
  x = {"query": query, "candidate": candidate, "query_id": query_id,
       "candidate_id": candidate_id}
  if negatives is not None:
    x["negatives"] = negatives
    if negative_id is not None:
      x["negative_id"] = negative_id
  scale = jnp.asarray(logit_scale, jnp.float32)
  bias = jnp.asarray(0.0 if logit_bias is None else logit_bias, jnp.float32)
  if scale.shape != () or bias.shape != ():
    raise ValueError(
        f"logit_scale and logit_bias must be scalars, got shapes {scale.shape}, {bias.shape}")

  if mesh is None:
    return _local_loss(x, scale, bias, settings=settings, axes=(), global_b=query.shape[0])
  axes, shards = parallel.batch_shards(mesh, batch_axes)
  if query.shape[0] % shards:
    raise ValueError(
        f"global batch {query.shape[0]} is not divisible by the {shards} shards of mesh axes "
        f"{axes} (mesh shape {dict(mesh.shape)})")
  spec = P(axes) if axes else P()
  fn = jax.shard_map(
      lambda x, s, b: _local_loss(x, s, b, settings=settings, axes=axes,
                                  global_b=query.shape[0]),
      mesh=mesh, in_specs=({k: spec for k in x}, P(), P()), out_specs=P())
  return fn(x, scale, bias)
