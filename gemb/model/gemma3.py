"""The Gemma 3 text transformer (Gemma3TextModel, EmbeddingGemma) as a gemb backbone.

Every size comes from the checkpoint's config.json. What makes it Gemma 3, each as the
reference (transformers' modeling_gemma3.py + masking_utils.py) computes it:

- RMSNorm scaled by (1 + w), computed in float32 and cast back; four per layer (before and
  after attention, before and after the MLP) plus QK-norm on every head of q and k.
- Grouped-query attention: ``num_attention_heads`` query heads share ``num_key_value_heads``
  key/value heads; scores scaled by ``query_pre_attn_scalar ** -0.5`` (not head_dim's root).
- RoPE (rotate-half layout) with two base frequencies: ``rope_local_base_freq`` on
  sliding-window layers, ``rope_theta`` (and ``rope_scaling``, which Gemma 3 applies to the
  global layers only) on full-attention layers; config.json's ``layer_types`` says which is which.
- Bidirectional sliding window: with ``use_bidirectional_attention`` transformers rewrites
  ``sliding_window`` to ``sliding_window // 2 + 1`` and lets a query see keys with
  ``|q - k| < sliding_window`` (so 512 -> keys within 256 positions on either side). gemb
  always attends bidirectionally and measures the distance between ``positions``, so
  interleaved multimodal sequences keep the scheme.
- GeGLU MLP: down(gelu_tanh(gate(x)) * up(x)).
- Input embedding times sqrt(hidden_size), the scale rounded to the compute dtype first as the
  reference does (``embed_scale.to(weight.dtype)``: 27.75 instead of 27.71 in bfloat16).

Layers are stacked (a leading "layers" axis on every weight) and run unrolled or under
``lax.scan`` with optional remat, like gemb/model/transformer.py. Under scan each layer gets
its kind as a scanned boolean and selects its RoPE table and mask with it, so one compiled
layer serves both kinds. Parameters are float32; activations run in ``dtype`` with norms,
softmax and RoPE tables in float32.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemb.model.layers import (attention, check_tensors, key_padding_bias, matmul, param,
                               rows)
from gemb.parallel import constrain

ACT_AXES = ("batch", "length", "embed")
_INIT = nnx.initializers.normal(0.02)  # Gemma's initializer_range, for from-scratch runs


@dataclasses.dataclass(frozen=True)
class Gemma3Config:
  width: int
  depth: int
  heads: int
  kv_heads: int
  head_dim: int
  mlp_dim: int
  vocab_size: int
  eps: float
  query_scale: float
  half_window: int            # a sliding layer's query sees keys with |dq| <= half_window
  sliding: tuple              # per layer: True = sliding window, False = global
  local_inv_freq: tuple       # RoPE inverse frequencies (float32) of the sliding layers
  global_inv_freq: tuple      # ... of the global layers (after rope_scaling)
  softcap: float | None       # attn_logit_softcapping (None in Gemma 3)
  attention_dropout: float


def _rope_inv_freq(base, head_dim, scaling, field):
  inv = 1.0 / (base ** (np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)))
  inv = inv.astype(np.float32)
  kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default"))
  if kind == "linear":  # positions divided by the factor (Gemma 3 4B+ global layers)
    inv = (inv / np.float32(scaling["factor"])).astype(np.float32)
  elif kind != "default":
    raise ValueError(f"config.json {field}: rope_type {kind!r} is not supported by gemb's "
                     "Gemma 3 (supported: default, linear)")
  return tuple(float(f) for f in inv)


def parse_config(hf_config):
  """config.json (a dict) -> Gemma3Config; a missing or unsupported field is named."""
  c = dict(hf_config)
  if c.get("model_type") != "gemma3_text":
    raise ValueError(f"config.json model_type={c.get('model_type')!r}: Gemma3Backbone reads "
                     "Gemma 3 text checkpoints (model_type 'gemma3_text')")

  def need(key):
    if key not in c or c[key] is None:
      raise ValueError(f"config.json has no {key!r} (needed by the Gemma 3 backbone)")
    return c[key]

  width, depth = int(need("hidden_size")), int(need("num_hidden_layers"))
  heads = int(need("num_attention_heads"))
  kv_heads = int(c.get("num_key_value_heads") or heads)
  head_dim = int(c.get("head_dim") or width // heads)
  if heads % kv_heads:
    raise ValueError(f"config.json num_attention_heads={heads} is not a multiple of "
                     f"num_key_value_heads={kv_heads}")
  act = c.get("hidden_activation") or c.get("hidden_act") or "gelu_pytorch_tanh"
  if act != "gelu_pytorch_tanh":
    raise ValueError(f"config.json hidden_activation={act!r}: only 'gelu_pytorch_tanh' "
                     "(Gemma's GeGLU) is supported")
  if c.get("attention_bias"):
    raise ValueError("config.json attention_bias=true: Gemma 3 projections have no bias")
  types = c.get("layer_types")
  if types is None:  # older configs: every `pattern`-th layer is global
    pattern = int(c.get("sliding_window_pattern") or c.get("_sliding_window_pattern") or 6)
    types = ["full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
             for i in range(depth)]
  if len(types) != depth or set(types) - {"sliding_attention", "full_attention"}:
    raise ValueError(f"config.json layer_types must list {depth} entries of 'sliding_attention'"
                     f" / 'full_attention', got {types}")
  window = int(need("sliding_window"))
  # transformers' Gemma3TextConfig: "sliding_window // 2 + 1 ... exclusive bounds" for
  # bidirectional models; gemb is always bidirectional, so causal checkpoints get the same
  # symmetric window of the same total width.
  half_window = window // 2
  rope = c.get("rope_parameters") or {}
  local = rope.get("sliding_attention") or {}
  glob = dict(rope.get("full_attention") or {})
  if c.get("rope_scaling"):
    glob.update(c["rope_scaling"])
  local_base = float(local.get("rope_theta", c.get("rope_local_base_freq", 10_000.0)))
  global_base = float(glob.get("rope_theta", c.get("rope_theta", 1_000_000.0)))
  return Gemma3Config(
      width=width, depth=depth, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
      mlp_dim=int(need("intermediate_size")), vocab_size=int(need("vocab_size")),
      eps=float(c.get("rms_norm_eps", 1e-6)),
      query_scale=float(c.get("query_pre_attn_scalar") or head_dim) ** -0.5,
      half_window=half_window, sliding=tuple(t == "sliding_attention" for t in types),
      local_inv_freq=_rope_inv_freq(local_base, head_dim, local, "rope_parameters"),
      global_inv_freq=_rope_inv_freq(global_base, head_dim, glob, "rope_scaling"),
      softcap=c.get("attn_logit_softcapping"),
      attention_dropout=float(c.get("attention_dropout") or 0.0))


class RMSNorm(nnx.Module):
  """x / rms(x) * (1 + scale), in float32 (scale starts at 0: the identity)."""

  def __init__(self, dim, eps, axis_name, *, rngs):
    del rngs
    self.eps = eps
    self.scale = nnx.Param(jnp.zeros((dim,), jnp.float32), out_sharding=(axis_name,))

  def __call__(self, x):
    y = x.astype(jnp.float32)
    y = y * jax.lax.rsqrt(jnp.mean(y * y, axis=-1, keepdims=True) + self.eps)
    return (y * (1.0 + self.scale[...])).astype(x.dtype)


def rope_tables(positions, inv_freq):
  """positions [B, N] -> (cos, sin) [B, N, 1, head_dim] in float32 (rotate-half layout)."""
  freqs = positions.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq, jnp.float32)
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x, cos, sin):
  half = x.shape[-1] // 2
  rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
  return (x * cos.astype(x.dtype) + rotated * sin.astype(x.dtype)).astype(x.dtype)


class Attention(nnx.Module):
  def __init__(self, cfg, dtype, *, rngs):
    self.cfg, self.dtype = cfg, dtype
    d, h, kv, hd = cfg.width, cfg.heads, cfg.kv_heads, cfg.head_dim
    self.q = param(rngs, _INIT, (d, h, hd), ("embed", "heads", "head_dim"))
    self.k = param(rngs, _INIT, (d, kv, hd), ("embed", "kv_heads", "head_dim"))
    self.v = param(rngs, _INIT, (d, kv, hd), ("embed", "kv_heads", "head_dim"))
    self.o = param(rngs, _INIT, (h, hd, d), ("heads", "head_dim", "embed"))
    self.q_norm = RMSNorm(hd, cfg.eps, "head_dim", rngs=rngs)
    self.k_norm = RMSNorm(hd, cfg.eps, "head_dim", rngs=rngs)

  def __call__(self, x, bias, cos, sin, key):
    cfg, dt = self.cfg, self.dtype
    b, n, d = x.shape
    xr = rows(x)
    q = matmul(xr, self.q[...].astype(dt).reshape(d, -1)).reshape(b, n, cfg.heads, cfg.head_dim)
    k = matmul(xr, self.k[...].astype(dt).reshape(d, -1)).reshape(b, n, cfg.kv_heads, cfg.head_dim)
    v = matmul(xr, self.v[...].astype(dt).reshape(d, -1)).reshape(b, n, cfg.kv_heads, cfg.head_dim)
    q = apply_rope(self.q_norm(q), cos, sin)
    k = apply_rope(self.k_norm(k), cos, sin)
    out = attention(q, k, v, bias, scale=cfg.query_scale, dropout_rate=cfg.attention_dropout,
                    key=key, softcap=cfg.softcap)
    return matmul(rows(out), self.o[...].astype(dt).reshape(-1, d)).reshape(b, n, d)


class MLP(nnx.Module):
  def __init__(self, cfg, dtype, *, rngs):
    self.dtype = dtype
    self.gate = param(rngs, _INIT, (cfg.width, cfg.mlp_dim), ("embed", "mlp"))
    self.up = param(rngs, _INIT, (cfg.width, cfg.mlp_dim), ("embed", "mlp"))
    self.down = param(rngs, _INIT, (cfg.mlp_dim, cfg.width), ("mlp", "embed"))

  def __call__(self, x):
    dt, xr = self.dtype, rows(x)
    gate = jax.nn.gelu(matmul(xr, self.gate[...].astype(dt)), approximate=True)
    h = gate * matmul(xr, self.up[...].astype(dt))
    return matmul(h, self.down[...].astype(dt)).reshape(x.shape)


class Layer(nnx.Module):
  """x + post_norm(attn(pre_norm(x))), then the same around the MLP (Gemma 3's sandwich)."""

  def __init__(self, cfg, dtype, *, rngs):
    self.attn_norm = RMSNorm(cfg.width, cfg.eps, "embed", rngs=rngs)
    self.attn = Attention(cfg, dtype, rngs=rngs)
    self.post_attn_norm = RMSNorm(cfg.width, cfg.eps, "embed", rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.width, cfg.eps, "embed", rngs=rngs)
    self.mlp = MLP(cfg, dtype, rngs=rngs)
    self.post_mlp_norm = RMSNorm(cfg.width, cfg.eps, "embed", rngs=rngs)

  def __call__(self, x, bias, cos, sin, key):
    x = x + self.post_attn_norm(self.attn(self.attn_norm(x), bias, cos, sin, key))
    x = x + self.post_mlp_norm(self.mlp(self.mlp_norm(x)))
    return constrain(x, ACT_AXES)


class Gemma3Backbone(nnx.Module):
  """Gemma 3 text transformer: embed_ids for token vectors, __call__ for the layers."""

  def __init__(self, hf_config, *, scan_layers=False, remat_policy="", dtype=jnp.float32,
               rngs):
    cfg = parse_config(hf_config)
    if remat_policy and not hasattr(jax.checkpoint_policies, remat_policy):
      raise ValueError(f"remat_policy={remat_policy!r} is not a jax.checkpoint_policies name "
                       "(e.g. 'nothing_saveable', 'dots_saveable'); '' disables remat")
    self.cfg, self.scan, self.remat_policy, self.dtype = cfg, scan_layers, remat_policy, dtype
    self.width, self.vocab_size = cfg.width, cfg.vocab_size
    self.embedding = param(rngs, _INIT, (cfg.vocab_size, cfg.width), ("vocab", "embed"))

    @nnx.split_rngs(splits=cfg.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs):
      return Layer(cfg, dtype, rngs=rngs)

    self.layers = make_layers(rngs)
    self.final_norm = RMSNorm(cfg.width, cfg.eps, "embed", rngs=rngs)

  def embed_ids(self, ids):
    """int ids [..., L] -> [..., L, D] in the compute dtype, times sqrt(D) (no positions)."""
    scale = jnp.asarray(math.sqrt(self.cfg.width), jnp.float32).astype(self.dtype)
    # Look up first, then cast: a cast table would be a 0.4 GB bf16 copy per call (262144 rows).
    return jnp.take(self.embedding[...], ids, axis=0).astype(self.dtype) * scale

  def __call__(self, x, mask, positions, *, dropout_key=None):
    cfg = self.cfg
    x = constrain(x.astype(self.dtype), ACT_AXES)
    # Additive float32 biases (gemb.model.layers.attention): padding keys [B, 1, 1, Nk];
    # sliding layers also drop keys farther than the window, [B, 1, Nq, Nk].
    full_bias = key_padding_bias(mask)
    dist = jnp.abs(positions[:, :, None] - positions[:, None, :])[:, None]
    sliding_bias = jnp.where(dist <= cfg.half_window, full_bias, jnp.finfo(jnp.float32).min)
    local_rope = rope_tables(positions, cfg.local_inv_freq)
    global_rope = rope_tables(positions, cfg.global_inv_freq)
    graphdef, stacked = nnx.split(self.layers)
    keys = None if dropout_key is None else jax.random.split(dropout_key, cfg.depth)

    def layer(x, per_layer, is_sliding):
      state, key = per_layer
      if isinstance(is_sliding, bool):  # unrolled: each layer knows its kind
        bias, (cos, sin) = (sliding_bias, local_rope) if is_sliding else (full_bias, global_rope)
      else:  # scanned flag: one compiled layer serves both kinds
        bias = jnp.where(is_sliding, sliding_bias, full_bias)
        cos = jnp.where(is_sliding, local_rope[0], global_rope[0])
        sin = jnp.where(is_sliding, local_rope[1], global_rope[1])
      return nnx.merge(graphdef, state)(x, bias, cos, sin, key)

    if self.remat_policy:
      layer = jax.checkpoint(layer, policy=getattr(jax.checkpoint_policies, self.remat_policy),
                             prevent_cse=not self.scan, static_argnums=() if self.scan else (2,))
    if self.scan:
      x, _ = jax.lax.scan(lambda x, xs: (layer(x, xs[:2], xs[2]), None), x,
                          (stacked, keys, jnp.asarray(cfg.sliding)))
    else:
      for i in range(cfg.depth):
        x = layer(x, jax.tree.map(lambda a, i=i: a[i], (stacked, keys)), cfg.sliding[i])
    return self.final_norm(x)


# HF tensor name (after the checkpoint's prefix) -> (gemb path, how to reshape the torch
# weight into gemb's layout). torch Linear weights are [out, in].
def _layer_map(cfg):
  d, h, kv, hd, f = cfg.width, cfg.heads, cfg.kv_heads, cfg.head_dim, cfg.mlp_dim
  return {
      "self_attn.q_proj.weight": (("attn", "q"), (h * hd, d), lambda w: w.T.reshape(d, h, hd)),
      "self_attn.k_proj.weight": (("attn", "k"), (kv * hd, d), lambda w: w.T.reshape(d, kv, hd)),
      "self_attn.v_proj.weight": (("attn", "v"), (kv * hd, d), lambda w: w.T.reshape(d, kv, hd)),
      "self_attn.o_proj.weight": (("attn", "o"), (d, h * hd), lambda w: w.T.reshape(h, hd, d)),
      "self_attn.q_norm.weight": (("attn", "q_norm", "scale"), (hd,), None),
      "self_attn.k_norm.weight": (("attn", "k_norm", "scale"), (hd,), None),
      "mlp.gate_proj.weight": (("mlp", "gate"), (f, d), lambda w: w.T),
      "mlp.up_proj.weight": (("mlp", "up"), (f, d), lambda w: w.T),
      "mlp.down_proj.weight": (("mlp", "down"), (d, f), lambda w: w.T),
      "input_layernorm.weight": (("attn_norm", "scale"), (d,), None),
      "post_attention_layernorm.weight": (("post_attn_norm", "scale"), (d,), None),
      "pre_feedforward_layernorm.weight": (("mlp_norm", "scale"), (d,), None),
      "post_feedforward_layernorm.weight": (("post_mlp_norm", "scale"), (d,), None),
  }


# Where Gemma 3 checkpoints keep the text model: Gemma3TextModel (EmbeddingGemma) has no
# prefix, Gemma3ForCausalLM "model.", the multimodal Gemma3ForConditionalGeneration one of the
# last two (its vision tower's tensors are then reported as unexpected).
PREFIXES = ("", "model.", "language_model.model.", "model.language_model.")
IGNORED = "lm_head.weight"  # the causal LM head (tied to the embedding in Gemma 3), any prefix


def params_from_hf(tensors, hf_config):
  """HF Gemma 3 tensors -> the pure dict of Gemma3Backbone's state, float32 numpy.

  Raises ValueError naming every missing and unexpected tensor and every shape mismatch.
  """
  cfg = parse_config(hf_config)
  prefix = next((p for p in PREFIXES if p + "embed_tokens.weight" in tensors), "")
  used, missing, bad = set(), [], []

  def take(name, shape):
    full = prefix + name
    if full not in tensors:
      missing.append(full)
      return np.zeros(shape, np.float32)
    used.add(full)
    w = np.asarray(tensors[full])
    if tuple(w.shape) != tuple(shape):
      bad.append(f"{full}: got {tuple(w.shape)}, expected {tuple(shape)}")
      return np.zeros(shape, np.float32)
    return w.astype(np.float32)

  embedding = take("embed_tokens.weight", (cfg.vocab_size, cfg.width))
  final = take("norm.weight", (cfg.width,))
  layers = {}
  for name, (path, shape, convert) in _layer_map(cfg).items():
    per_layer = [take(f"layers.{i}.{name}", shape) for i in range(cfg.depth)]
    stacked = np.stack([convert(w) if convert else w for w in per_layer])
    node = layers
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = stacked
  unexpected = sorted(n for n in tensors if n not in used and not n.endswith(IGNORED))
  check_tensors("Gemma 3 checkpoint", missing, unexpected, bad)
  return {"embedding": embedding, "layers": layers, "final_norm": {"scale": final}}


def params_to_hf(params, hf_config):
  """The inverse of ``params_from_hf``: Gemma3Backbone's pure dict -> Gemma3TextModel
  tensors under their safetensors names (no prefix, as EmbeddingGemma's), float32 numpy,
  for exporting a trained model back to the Hugging Face layout."""
  cfg = parse_config(hf_config)
  g = lambda x: np.ascontiguousarray(np.asarray(x, np.float32))  # noqa: E731
  out = {"embed_tokens.weight": g(params["embedding"]),
         "norm.weight": g(params["final_norm"]["scale"])}
  for name, (path, shape, convert) in _layer_map(cfg).items():
    stacked = params["layers"]
    for key in path:
      stacked = stacked[key]
    for i in range(cfg.depth):
      w = np.asarray(stacked[i], np.float32)
      # Every conversion above is a transpose then a reshape, so its inverse is the reshape
      # to the transposed torch shape then a transpose.
      out[f"layers.{i}.{name}"] = g(w.reshape(shape[::-1]).T if convert else w)
  return out
