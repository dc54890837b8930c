"""Layer helpers shared by the embedders, the transformers (gemb's own and the pretrained
families) and the model's head."""

import jax
import jax.numpy as jnp
from flax import nnx


def rows(x):
  """(batch, length, ...) -> (batch * length, features): one matmul row per token (2-D
  matmuls: see transformer.Attention)."""
  return x.reshape(x.shape[0] * x.shape[1], -1)


def einsum(spec, a, b, *, out_dtype=None):
  """``jnp.einsum(spec, a, b)`` accumulated in float32, -> ``out_dtype`` (None: the operands'
  result type). Float32 operands: exactly jnp.einsum. Why for bfloat16: XLA:CPU's fast
  bfloat16 dot kernels are the ones with a float32 result; a bfloat16-result dot runs below
  float32 speed (measured on an AVX512-BF16 AMD EPYC at 4096 x 384 x 1536: float32 177
  GFLOP/s, bfloat16 -> bfloat16 152, bfloat16 -> float32 350). Autodiff's backward dots
  contract a leading axis, which that backend computes in float32 whatever the input type.
  """
  out = jnp.einsum(spec, a, b, preferred_element_type=jnp.float32)
  return out.astype(out_dtype or jnp.result_type(a, b))


def matmul(x, w):
  """x [M, K] @ w [K, N] -> [M, N] in x's dtype, accumulated in float32 (see `einsum`)."""
  return einsum("mk,kn->mn", x, w, out_dtype=x.dtype)


def dropout(x, rate, key):
  """Inverted dropout; identity when ``key`` is None (evaluation) or rate is 0."""
  if key is None or rate == 0.0:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def key_padding_bias(mask):
  """bool [B, Nk] (True = a real key) -> the additive float32 bias [B, 1, 1, Nk] of
  ``attention``. A finite fill (not -inf) keeps a row of only padding NaN-free; its output
  is unused."""
  return jnp.where(mask, 0.0, jnp.finfo(jnp.float32).min)[:, None, None, :]


def attention(q, k, v, bias, *, scale, dropout_rate=0.0, key=None, softcap=None):
  """Softmax attention of every family: q [B, Nq, H, D], k and v [B, Nk, KV, D] with H a
  multiple of KV (grouped-query: query head j reads key/value head j // (H // KV), the
  order of transformers' repeat_kv), ``bias`` an additive float32 mask broadcastable to
  [B, 1, Nq, Nk] (``key_padding_bias``, or a per-query one such as a sliding window).
  Scores, softmax statistics and the normalization are float32; the two matmuls take v's
  dtype in. -> [B, Nq, H, D] in v's dtype.

  Why this form (measured on XLA:CPU, BERT at batch 64 x 128 tokens, 12 heads of 32): the
  two matmuls run with (batch, head) leading, one 4-D dot each (the grouped heads folded
  into the query rows, not a 5-D dot), and the softmax is normalized after the value matmul
  (dividing [.., Nq, D], not the [.., Nq, Nk] weights): forward 140 -> 40 ms a layer and
  forward+backward 75 -> 53 ms, against an einsum over (batch, length, head) layouts with
  jax.nn.softmax. Dropout on the weights commutes with the late normalization: it drops
  terms of the numerator only, as dropping normalized weights does.
  """
  b, nq, h, d = q.shape
  kv_heads = k.shape[2]
  groups = h // kv_heads
  qt = q.reshape(b, nq, kv_heads, groups, d).transpose(0, 2, 3, 1, 4)
  qt = qt.reshape(b, kv_heads, groups * nq, d)
  kt, vt = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
  scores = einsum("bhqd,bhkd->bhqk", qt * jnp.asarray(scale, qt.dtype), kt,
                  out_dtype=jnp.float32)
  if softcap:
    scores = jnp.tanh(scores / softcap) * softcap
  if groups > 1 and bias.shape[2] > 1:  # a per-query bias repeats for each grouped head
    bias = jnp.tile(bias, (1, 1, groups, 1))
  scores = scores + bias
  # Any per-row shift leaves the softmax unchanged: the max is a constant for autodiff.
  weights = jnp.exp(scores - jax.lax.stop_gradient(scores.max(-1, keepdims=True)))
  total = weights.sum(-1, keepdims=True)
  weights = dropout(weights, dropout_rate, key)
  out = einsum("bhqk,bhkd->bhqd", weights.astype(v.dtype), vt, out_dtype=jnp.float32) / total
  out = out.astype(v.dtype).reshape(b, kv_heads, groups, nq, d).transpose(0, 3, 1, 2, 4)
  return out.reshape(b, nq, h, d)


def param(rngs, init, shape, axes):
  """An nnx.Param carrying logical axis names (gemb.parallel maps them onto the mesh)."""
  return nnx.Param(init(rngs.params(), shape, jnp.float32), out_sharding=axes)


def layer_norm(width, rngs):
  """LayerNorm with a scale and no bias (gemb/model/transformer.py says why no biases)."""
  return nnx.LayerNorm(
      width, rngs=rngs, epsilon=1e-6, use_bias=False,
      scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)))


def run_stacked(layers, x, keys, call, *, depth, scan, remat_policy):
  """``x`` through ``depth`` layers built stacked by nnx.vmap (one array per weight with a
  leading "layers" axis): with lax.scan (one compiled layer) or unrolled, rematerialized
  with the jax.checkpoint_policies policy named ``remat_policy`` ("" = off). The parameters
  are the same in both modes. ``call(layer, x, key) -> x``; ``keys``: [depth] PRNG keys (one
  per layer) or None."""
  graphdef, stacked = nnx.split(layers)

  def layer(x, per_layer):
    state, key = per_layer
    return call(nnx.merge(graphdef, state), x, key), None

  if remat_policy:
    layer = jax.checkpoint(layer, policy=getattr(jax.checkpoint_policies, remat_policy),
                           prevent_cse=not scan)
  if scan:
    x, _ = jax.lax.scan(layer, x, (stacked, keys))
  else:
    for i in range(depth):
      x, _ = layer(x, jax.tree.map(lambda a, i=i: a[i], (stacked, keys)))
  return x


def check_tensors(checkpoint, missing, unexpected, bad_shapes):
  """Raises one ValueError naming every missing / unexpected tensor and shape mismatch of a
  pretrained ``checkpoint`` (e.g. "BERT checkpoint") against its config.json."""
  problems = []
  if missing:
    problems.append(f"missing tensors: {', '.join(missing)}")
  if unexpected:
    problems.append(f"unexpected tensors: {', '.join(unexpected)}")
  if bad_shapes:
    problems.append(f"shape mismatches: {'; '.join(bad_shapes)}")
  if problems:
    raise ValueError(f"{checkpoint} does not match config.json: " + " | ".join(problems))
