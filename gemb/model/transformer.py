"""The shared bidirectional pre-norm transformer that every modality's tokens go through.

Layers are created stacked (one parameter array per weight with a leading "layers" axis)
and run either with ``lax.scan`` (one compiled layer: fast compiles, the choice for deep
TPU models) or unrolled (the CPU choice: scan cost ~35% of the bench step's throughput),
optionally rematerialized with a named ``jax.checkpoint_policies`` policy. Parameters are
the same in both modes, so a checkpoint does not care which one trained it.

No biases anywhere (dense layers and LayerNorms, as in PaLM): a bias adds one vector to every
token, and in contrastive training from scratch Adam grows such vectors at the learning rate
per step in the direction that makes every embedding alike (the loss of a many-task mixture
falls to its chance value by collapse, with a zero gradient, within ~50 steps: measured on
the from-scratch configs/default.py of 2026-11). Position and modality-type embeddings
remain the only input-independent vectors. Queries and keys have no bias anyway (a key bias
has a zero gradient).
"""

import jax
import jax.numpy as jnp
from flax import nnx

from gemb.model.layers import (attention, dropout, key_padding_bias, layer_norm, matmul, param,
                               rows, run_stacked)
from gemb.parallel import constrain

ACT_AXES = ("batch", "length", "embed")


class Attention(nnx.Module):
  """Multi-head self-attention with a key padding mask; q, k, v from one fused matmul.

  The projections run as 2-D matmuls over (batch * length) rows: XLA's CPU backend then
  computes each weight gradient from its operands as laid out, where a dot contracting over
  two (batch, length) axes made it transpose the (much larger) activation gradient first
  (measured: attention forward+backward 190 -> 145 ms at the bench dims). The qkv weight is
  laid out (embed, heads, qkv, head_dim) so that flattening its last three axes keeps the
  head axis major, and a tensor-parallel sharding over heads survives the reshape.
  """

  def __init__(self, width, heads, *, rngs):
    if width % heads:
      raise ValueError(f"model.width={width} is not divisible by model.heads={heads}")
    self.heads, self.head_dim = heads, width // heads
    init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2, 3))
    self.qkv = param(rngs, init, (width, heads, 3, self.head_dim),
                     ("embed", "heads", "qkv", "head_dim"))
    self.out = param(rngs, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                     (heads, self.head_dim, width), ("heads", "head_dim", "embed"))

  def __call__(self, x, mask):
    b, n, width = x.shape
    qkv = matmul(rows(x), self.qkv[...].reshape(width, -1))
    qkv = qkv.reshape(b, n, self.heads, 3, self.head_dim)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    out = attention(q, k, v, key_padding_bias(mask), scale=self.head_dim ** -0.5)
    return matmul(rows(out), self.out[...].reshape(-1, width)).reshape(b, n, width)


class MLP(nnx.Module):
  def __init__(self, width, mlp_dim, *, rngs):
    kinit = nnx.initializers.lecun_normal()
    self.up = nnx.Linear(width, mlp_dim, rngs=rngs, use_bias=False,
                         kernel_init=nnx.with_partitioning(kinit, ("embed", "mlp")))
    self.down = nnx.Linear(mlp_dim, width, rngs=rngs, use_bias=False,
                           kernel_init=nnx.with_partitioning(kinit, ("mlp", "embed")))

  def __call__(self, x):
    # 2-D rows for the weight gradients' layout (see Attention); the Linears hold the
    # kernels, layers.matmul multiplies (float32 accumulation in bfloat16). tanh-approximate
    # GELU: ~5% faster on CPU than the erf form at equal quality.
    hidden = jax.nn.gelu(matmul(rows(x), self.up.kernel[...]), approximate=True)
    return matmul(hidden, self.down.kernel[...]).reshape(x.shape)


class Block(nnx.Module):
  """Pre-norm residual block: x + Attn(LN(x)), then x + MLP(LN(x))."""

  def __init__(self, cfg, *, rngs):
    self.dropout_rate = cfg.dropout
    self.norm1 = layer_norm(cfg.width, rngs)
    self.attn = Attention(cfg.width, cfg.heads, rngs=rngs)
    self.norm2 = layer_norm(cfg.width, rngs)
    self.mlp = MLP(cfg.width, cfg.mlp_dim, rngs=rngs)

  def __call__(self, x, mask, key=None):
    k1, k2 = (None, None) if key is None else jax.random.split(key)
    x = x + dropout(self.attn(self.norm1(x), mask), self.dropout_rate, k1)
    x = x + dropout(self.mlp(self.norm2(x)), self.dropout_rate, k2)
    return constrain(x, ACT_AXES)


class Transformer(nnx.Module):
  """``depth`` stacked Blocks and a final LayerNorm."""

  def __init__(self, cfg, *, rngs):
    self.depth, self.scan, self.remat_policy = cfg.depth, cfg.scan_layers, cfg.remat_policy
    if self.remat_policy and not hasattr(jax.checkpoint_policies, self.remat_policy):
      raise ValueError(f"model.remat_policy={self.remat_policy!r} is not a jax.checkpoint_policies "
                       "name (e.g. 'nothing_saveable', 'dots_saveable'); '' disables remat")

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_blocks(rngs):
      return Block(cfg, rngs=rngs)

    self.blocks = make_blocks(rngs)
    self.norm = layer_norm(cfg.width, rngs)

  def __call__(self, x, mask, *, dropout_key=None):
    keys = None if dropout_key is None else jax.random.split(dropout_key, self.depth)
    x = run_stacked(self.blocks, x, keys, lambda block, x, key: block(x, mask, key),
                    depth=self.depth, scan=self.scan, remat_policy=self.remat_policy)
    return self.norm(x)
