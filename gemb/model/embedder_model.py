"""The multimodal embedding model: embedders -> interleave -> shared transformer -> head.

``MultimodalEmbedder(side)`` takes one side of a batch in the format of gemb/batch.py
(any mix of text / image / audio / video segments per example) and returns raw embeddings
``[B, model.embed_dim]``. ``matryoshka(raw, d)`` gives the unit-norm embedding at output
size d (the L2-normalized first-d prefix). Queries, candidates and hard negatives all go
through this one model; the model also owns the contrastive temperature and bias.

The shared transformer is gemb's own (gemb/model/transformer.py, trained from scratch) or a
pretrained backbone (``model.backbone``, gemb/model/backbone.py). With a backbone, text goes
through the backbone's own token table, every token through its own position scheme, and
the sentence-transformers head of the checkpoint (its pooling and Dense layers) is kept
(``model.backbone.head="st"``). What gemb adds in front of the backbone never touches text
(no modality-type or sequence-position vector is added to text tokens), so a text-only
input embeds exactly as the checkpoint's reference implementation embeds it; the other
modalities' embedders project to the backbone's width.
"""

import math

import jax
import jax.numpy as jnp
from flax import nnx

from gemb.batch import MODALITIES, PAD_ID
from gemb.model import backbone
from gemb.model.embedders import EMBEDDERS, param
from gemb.model.transformer import Transformer, layer_norm
from gemb.parallel import constrain

POOLINGS = ("mean", "first", "attention")
HEADS = ("st", "gemb")
_DENSE_ACTIVATIONS = {"identity": lambda x: x, "tanh": jnp.tanh}


class AttentionPool(nnx.Module):
  """Multi-head attention from one learned probe over the valid tokens (MAP head)."""

  def __init__(self, width, heads, *, rngs):
    self.heads, self.head_dim = heads, width // heads
    self.probe = param(rngs, nnx.initializers.normal(0.02), (heads, self.head_dim),
                       ("heads", "head_dim"))
    self.kv = param(rngs, nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2, 3)),
                    (width, 2, heads, self.head_dim), ("embed", "qkv", "heads", "head_dim"))
    self.out = param(rngs, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                     (heads, self.head_dim, width), ("heads", "head_dim", "embed"))

  def __call__(self, x, mask):
    kv = jnp.einsum("bnd,dthk->tbnhk", x, self.kv[...])
    scores = jnp.einsum("hk,bnhk->bhn", self.probe[...], kv[0]) / math.sqrt(self.head_dim)
    scores = jnp.where(mask[:, None, :], scores, jnp.finfo(scores.dtype).min)
    pooled = jnp.einsum("bhn,bnhk->bhk", jax.nn.softmax(scores, axis=-1), kv[1])
    return jnp.einsum("bhk,hkd->bd", pooled, self.out[...])


def matryoshka(raw, dim):
  """Unit-norm float32 embedding at output size ``dim``: the L2-normalized first-``dim`` prefix.

  The squared-norm floor keeps the gradient finite for an all-zero prefix (sqrt has an
  infinite derivative at 0) without touching real embeddings.
  """
  if not 0 < dim <= raw.shape[-1]:
    raise ValueError(f"Matryoshka dim {dim} is impossible for embeddings of size {raw.shape[-1]}")
  prefix = raw[..., :dim].astype(jnp.float32)
  return prefix * jax.lax.rsqrt(jnp.maximum(jnp.sum(prefix * prefix, -1, keepdims=True), 1e-12))


class MultimodalEmbedder(nnx.Module):
  """One model for every modality and every interleaving of them."""

  def __init__(self, cfg, *, rngs):
    for name in cfg.modalities:
      if name not in MODALITIES:
        raise ValueError(f"model.modalities: unknown modality {name!r}; known: {MODALITIES}")
    checkpoint = backbone.resolve(cfg)
    self.pretrained = checkpoint is not None
    pooling = cfg.pooling
    if self.pretrained:
      width, heads = checkpoint.width, int(checkpoint.hf_config["num_attention_heads"])
      pooling = cfg.backbone.pooling or checkpoint.pooling
      self.head_kind = cfg.backbone.head
      if self.head_kind not in HEADS:
        raise ValueError(f"model.backbone.head={self.head_kind!r}; choose one of {HEADS}")
    else:
      width, heads, self.head_kind = cfg.width, cfg.heads, "gemb"
    if pooling not in POOLINGS:
      raise ValueError(f"model.pooling={pooling!r}; choose one of {POOLINGS}")
    self.modalities, self.pooling = tuple(cfg.modalities), pooling
    self.max_positions, self.embed_dim = cfg.max_positions, cfg.embed_dim
    for name in self.modalities:
      if not (self.pretrained and name == "text"):  # a backbone embeds its own text
        setattr(self, name, EMBEDDERS[name](cfg[name], width, rngs=rngs))
    init = nnx.initializers.normal(0.02)
    self.modality_type = param(rngs, init, (len(MODALITIES), width), ("modality", "embed"))
    if self.pretrained:
      # The backbone's own limit (model.max_positions sizes gemb's learned positions only).
      self.max_positions = int(checkpoint.hf_config.get("max_position_embeddings",
                                                        cfg.max_positions))
      self.encoder = backbone.family_class(checkpoint.family)(
          checkpoint.hf_config, scan_layers=cfg.scan_layers, remat_policy=cfg.remat_policy,
          dtype=jnp.dtype(cfg.get("dtype", "float32")), rngs=rngs)
    else:
      self.sequence_position = param(rngs, init, (cfg.max_positions, width),
                                     ("positions", "embed"))
      self.encoder = Transformer(cfg, rngs=rngs)
    if self.pooling == "attention":
      self.pool = AttentionPool(width, heads, rngs=rngs)
    if self.head_kind == "st":
      # The checkpoint's Dense modules; their weights come with the backbone's.
      if cfg.embed_dim != checkpoint.output_dim:
        raise ValueError(f"model.embed_dim={cfg.embed_dim} but {checkpoint.path}'s "
                         f"sentence-transformers head outputs {checkpoint.output_dim} dims "
                         "(set model.embed_dim to it, or model.backbone.head='gemb')")
      self.dense_activations = tuple(d.activation for d in checkpoint.dense)
      self.dense = nnx.List([nnx.Linear(
          d.in_features, d.out_features, use_bias=d.bias, rngs=rngs,
          kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), (None, None)),
          bias_init=nnx.with_partitioning(nnx.initializers.zeros, (None,)))
          for d in checkpoint.dense])
    else:
      # No bias (see gemb/model/transformer.py): a constant added to every embedding does
      # nothing for cosine similarity but offer a shortcut to collapse.
      self.head_norm = layer_norm(width, rngs)
      self.head = nnx.Linear(
          width, cfg.embed_dim, rngs=rngs, use_bias=False,
          kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("embed", "output")))
    # Contrastive temperature (log-parameterized; clipped in gemb.losses) and sigmoid bias.
    self.log_logit_scale = nnx.Param(jnp.asarray(-math.log(cfg.init_temperature), jnp.float32))
    self.logit_bias = nnx.Param(jnp.asarray(cfg.init_bias, jnp.float32))

  def embed_segments(self, name, values, length):
    """One modality's slot array -> tokens [B, S, N, D] and mask [B, S, N]; text through
    the backbone's own token table when there is one."""
    if name == "text" and self.pretrained:
      return self.encoder.embed_ids(values), values != PAD_ID
    return getattr(self, name)(values, length)

  def tokens(self, side):
    """Embeds every segment and lays the tokens out in example order.

    Returns tokens [B, N, D], mask [B, N] and positions [B, N] (the sequence position of
    each token: segments follow the layout, each contributing only its valid tokens).
    """
    layout = side["layout"]
    present = [m for m in MODALITIES if m in side]
    for name in present:
      if name not in self.modalities:
        raise ValueError(f"batch has {name} segments but model.modalities={self.modalities}")
    if not present:
      raise ValueError(f"a batch side needs at least one of {MODALITIES}, got keys {list(side)}")

    toks, masks, counts, slot_of = [], [], [], []
    for name in present:
      m = MODALITIES.index(name)
      t, mask = self.embed_segments(name, side[name], side.get(f"{name}_length"))
      is_m = layout == m
      # j-th segment of modality m (left to right) is slot j; unreferenced slots are padding.
      slots = side[name].shape[1]
      used = jnp.arange(slots)[None, :] < jnp.sum(is_m, axis=1, keepdims=True)
      mask = mask & used[..., None]
      # No modality vector on a backbone's text: text-only inputs stay the checkpoint's.
      toks.append(t if self.pretrained and name == "text" else
                  t + self.modality_type[m].astype(t.dtype))
      masks.append(mask)
      counts.append(jnp.sum(mask, axis=-1))  # [B, slots]
      occurrence = jnp.where(is_m, jnp.cumsum(is_m, axis=1) - 1, -1)  # [B, S]
      slot_of.append((m, slots, occurrence))

    # Start of each layout segment in the interleaved sequence = valid tokens before it.
    seg_len = jnp.zeros(layout.shape, jnp.int32)
    for (m, slots, occ), count in zip(slot_of, counts):
      seg_len += jnp.where(layout == m, jnp.take_along_axis(count, jnp.clip(occ, 0, slots - 1),
                                                             axis=1), 0)
    seg_start = jnp.cumsum(seg_len, axis=1) - seg_len

    positions = []
    for (m, slots, occ), mask in zip(slot_of, masks):
      # offset[b, j] = start of the layout segment that refers to slot j.
      hit = (occ[:, :, None] == jnp.arange(slots)[None, None, :]) & (layout == m)[:, :, None]
      offset = jnp.sum(jnp.where(hit, seg_start[:, :, None], 0), axis=1)  # [B, slots]
      within = jnp.cumsum(mask, axis=-1) - 1
      positions.append(offset[..., None] + within)

    b, width = layout.shape[0], self.modality_type.shape[-1]
    tokens = jnp.concatenate([t.reshape(b, -1, width) for t in toks], axis=1)
    mask = jnp.concatenate([x.reshape(b, -1) for x in masks], axis=1)
    pos = jnp.concatenate([p.reshape(b, -1) for p in positions], axis=1)
    n = tokens.shape[1]
    if n > self.max_positions:
      raise ValueError(f"an example has up to {n} tokens but model.max_positions="
                       f"{self.max_positions}")
    if sum(s for _, s, _ in slot_of) > 1:
      # Put tokens in example order (valid tokens first, by position; padding after).
      order = jnp.argsort(jnp.where(mask, pos, n + jnp.arange(n)), axis=1, stable=True)
      tokens = jnp.take_along_axis(tokens, order[..., None], axis=1)
      mask = jnp.take_along_axis(mask, order, axis=1)
      pos = jnp.take_along_axis(pos, order, axis=1)
    pos = jnp.where(mask, pos, 0)
    return tokens, mask, pos

  def __call__(self, side, *, dropout_key=None):
    """One side of a batch -> raw embeddings [B, embed_dim] (normalize with ``matryoshka``)."""
    if side["layout"].ndim != 2:
      raise ValueError(f"side['layout'] must be [B, S], got shape {side['layout'].shape}")
    tokens, mask, pos = self.tokens(side)
    if self.pretrained:  # the backbone applies its own position scheme
      x = self.encoder(constrain(tokens, ("batch", "length", "embed")), mask, pos,
                       dropout_key=dropout_key)
    else:
      x = tokens + jnp.take(self.sequence_position[...], pos, axis=0)
      x = constrain(x, ("batch", "length", "embed"))
      x = self.encoder(x, mask, dropout_key=dropout_key)
    if self.pooling == "mean":
      weights = mask.astype(x.dtype)[..., None]
      pooled = jnp.sum(x * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    elif self.pooling == "first":
      pooled = x[:, 0]
    else:
      pooled = self.pool(x, mask)
    if self.head_kind == "gemb":
      return self.head(self.head_norm(pooled))
    for dense, activation in zip(self.dense, self.dense_activations):
      pooled = _DENSE_ACTIVATIONS[activation](dense(pooled))
    return pooled
