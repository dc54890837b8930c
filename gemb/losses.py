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
therefore holds a b_local x (B + B*K) score matrix, never a B x B one. The gradient flows back
through the all_gather (its transpose is a reduce-scatter), so each candidate receives the
gradient of every device's queries: no "gather with grad" correction is needed.
"""

import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

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


def _score_rows(rows, cols, labels, drop_ids, scale, bias, settings):
  """Loss sum and #correct of local `rows` [b, d] scored against global `cols` [N, d].

  Both are L2-normalized; labels [b] index each row's positive column; drop_ids [b, N] marks
  false negatives by id (None: no id masking). Returns (loss_sum, num_correct), where a row is
  correct if its positive has the top logit among the columns it is not masked from.
  """
  # HIGHEST: on TPU the default f32 matmul runs in bf16 passes, and a 1e-3 error in a cosine
  # times a logit scale of ~100 is a visible error in the logits. The matmul is tiny anyway.
  cos = jnp.einsum("bd,nd->bn", rows, cols, precision=jax.lax.Precision.HIGHEST)
  is_pos = jnp.arange(cols.shape[0])[None, :] == labels[:, None]
  drop = jnp.zeros_like(is_pos) if drop_ids is None else drop_ids
  if settings.margin is not None:
    # A column almost as close as the positive is likely an unlabeled positive. Masks are
    # constants of the loss: no gradient flows through the decision to drop a column.
    c = jax.lax.stop_gradient(cos)
    pos_cos = jnp.take_along_axis(c, labels[:, None], axis=1)
    drop = drop | (~is_pos & (c > pos_cos - settings.margin))
  drop = jax.lax.stop_gradient(drop)
  logits = scale * cos
  if settings.kind == "infonce":
    masked = jnp.where(drop, -jnp.inf, logits)
    pos_logit = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
    loss = jnp.sum(jax.nn.logsumexp(masked, axis=1) - pos_logit)
  else:
    logits = logits + bias
    masked = jnp.where(drop, -jnp.inf, logits)
    sign = jnp.where(is_pos, 1.0, -1.0)
    loss = -jnp.sum(jnp.where(drop, 0.0, jax.nn.log_sigmoid(sign * logits)))
  correct = jnp.sum(jnp.argmax(masked, axis=1) == labels)
  return loss, correct


def _id_mask(row_ids, col_ids, labels):
  """[b, N] bool: column has the same item id as the row's positive but is not the positive."""
  is_pos = jnp.arange(col_ids.shape[0])[None, :] == labels[:, None]
  return (col_ids[None, :] == row_ids[:, None]) & ~is_pos


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
  q_drop = c_drop = None
  if settings.mask_false_negatives:
    col_ids = gather(x["candidate_id"])
    if "negative_id" in x:
      col_ids = jnp.concatenate([col_ids, gather(x["negative_id"]).reshape(-1)])
    q_drop = _id_mask(x["candidate_id"], col_ids, labels)
  if "negative_id" in x:
    # Padding hard negatives (id < 0, see gemb/data/examples.py) are never negatives.
    neg_ids = gather(x["negative_id"]).reshape(-1)
    pad = jnp.concatenate([jnp.zeros(cols.shape[0] - neg_ids.shape[0], bool), neg_ids < 0])
    pad = jnp.broadcast_to(pad[None, :], (b, cols.shape[0]))
    q_drop = pad if q_drop is None else q_drop | pad
  sym = settings.kind == "infonce" and settings.symmetric
  if sym:
    all_q = gather(q)
    if settings.mask_false_negatives:
      c_drop = _id_mask(x["query_id"], gather(x["query_id"]), labels)

  metrics = {}
  loss = 0.0
  for d, w in zip(settings.dims, settings.weights):
    rows, col_d = matryoshka(q, d), matryoshka(cols, d)
    loss_sum, correct = _score_rows(rows, col_d, labels, q_drop, scale, bias, settings)
    if sym:
      back_sum, _ = _score_rows(matryoshka(c, d), matryoshka(all_q, d), labels,
                                c_drop, scale, bias, settings)
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
                     batch_axes=("data", "fsdp")):
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
      margin (float or None), matryoshka_dims, matryoshka_weights (empty: full width only).
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
  axes = tuple(a for a in batch_axes if a in mesh.shape)
  shards = math.prod(mesh.shape[a] for a in axes)
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
