"""The BERT family (Devlin et al. 2019) as gemb's shared transformer, e.g. all-MiniLM-L6-v2.

Every size comes from the checkpoint's config.json (``hf_config``). The architecture is
BERT's: word + learned absolute position + token-type embeddings, an embeddings LayerNorm,
then post-LayerNorm residual blocks with biases everywhere (x = LN(x + Attn(x)); x =
LN(x + MLP(x))), the MLP's activation as config.json's ``hidden_act`` names it (``gelu`` is
the exact erf form). No final norm: the last block's output is the hidden state.

Interface (../../coord contract, shared with gemb/model/gemma3.py): ``embed_ids`` looks up
the token table; ``__call__(x, mask, positions)`` adds the position scheme (absolute
positions, token type 0, LayerNorm) to input vectors of any modality and runs the blocks
bidirectionally over the valid keys of ``mask``. Layers are stacked with a leading
"layers" axis and run unrolled or with ``lax.scan``, optionally rematerialized, exactly as
gemb/model/transformer.py does; parameters name logical axes only (gemb.parallel maps them).

``params_from_hf`` maps a Hugging Face BertModel state dict (safetensors names, with or
without the ``bert.`` prefix of the task models) onto this module's parameters.
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemb.model.layers import (attention, check_tensors, dropout, key_padding_bias, matmul,
                               param, rows, run_stacked)
from gemb.parallel import constrain

ACT_AXES = ("batch", "length", "embed")
_ACTIVATIONS = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),  # transformers' "gelu" is erf GELU
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
}
# Checkpoint tensors that are not parameters of the encoder: the position-id buffer, the
# [CLS] pooler and the pre-training heads (sentence embeddings pool the hidden states).
_UNUSED_PREFIXES = ("embeddings.position_ids", "pooler.", "cls.")


def _check_config(c):
  for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "intermediate_size", "max_position_embeddings"):
    if not isinstance(c.get(key), int) or c[key] <= 0:
      raise ValueError(f"config.json: BERT needs a positive integer {key!r}, got "
                       f"{c.get(key)!r}")
  if c["hidden_size"] % c["num_attention_heads"]:
    raise ValueError(f"config.json: hidden_size={c['hidden_size']} is not divisible by "
                     f"num_attention_heads={c['num_attention_heads']}")
  if c.get("hidden_act", "gelu") not in _ACTIVATIONS:
    raise ValueError(f"config.json: hidden_act={c['hidden_act']!r} is not supported; "
                     f"supported: {sorted(_ACTIVATIONS)}")
  if c.get("position_embedding_type", "absolute") != "absolute":
    raise ValueError(f"config.json: position_embedding_type="
                     f"{c['position_embedding_type']!r}; only 'absolute' is supported")


def layer_norm(x, scale, bias, eps):
  """LayerNorm in float32 (whatever the compute dtype), result in x's dtype."""
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axis=-1, keepdims=True)
  var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
  return (y + bias.astype(jnp.float32)).astype(x.dtype)


class _Norm(nnx.Module):
  def __init__(self, width, eps):
    self.eps = eps
    self.scale = nnx.Param(jnp.ones((width,), jnp.float32), out_sharding=("embed",))
    self.bias = nnx.Param(jnp.zeros((width,), jnp.float32), out_sharding=("embed",))

  def __call__(self, x):
    return layer_norm(x, self.scale[...], self.bias[...], self.eps)


def _bias(shape, axes):
  return nnx.Param(jnp.zeros(shape, jnp.float32), out_sharding=axes)


class _Block(nnx.Module):
  """Post-LN block: x = LN(x + Attn(x)); x = LN(x + MLP(x)); q, k, v from one fused matmul
  laid out (embed, heads, qkv, head_dim) as gemb/model/transformer.py's Attention."""

  def __init__(self, c, *, rngs):
    d, h = c["hidden_size"], c["num_attention_heads"]
    self.heads, self.head_dim, f = h, d // h, c["intermediate_size"]
    self.act = c.get("hidden_act", "gelu")
    self.hidden_dropout = float(c.get("hidden_dropout_prob", 0.0))
    self.attn_dropout = float(c.get("attention_probs_dropout_prob", 0.0))
    eps = float(c.get("layer_norm_eps", 1e-12))
    init = nnx.initializers.normal(float(c.get("initializer_range", 0.02)))
    self.qkv = param(rngs, init, (d, h, 3, self.head_dim), ("embed", "heads", "qkv", "head_dim"))
    self.qkv_bias = _bias((h, 3, self.head_dim), ("heads", "qkv", "head_dim"))
    self.out = param(rngs, init, (h, self.head_dim, d), ("heads", "head_dim", "embed"))
    self.out_bias = _bias((d,), ("embed",))
    self.attn_norm = _Norm(d, eps)
    self.up = param(rngs, init, (d, f), ("embed", "mlp"))
    self.up_bias = _bias((f,), ("mlp",))
    self.down = param(rngs, init, (f, d), ("mlp", "embed"))
    self.down_bias = _bias((d,), ("embed",))
    self.mlp_norm = _Norm(d, eps)

  def __call__(self, x, mask, key=None):
    b, n, d = x.shape
    dt = x.dtype
    keys = [None] * 3 if key is None else list(jax.random.split(key, 3))
    w = lambda p: p[...].astype(dt)  # noqa: E731
    qkv = matmul(rows(x), w(self.qkv).reshape(d, -1)) + w(self.qkv_bias).reshape(-1)
    qkv = qkv.reshape(b, n, self.heads, 3, self.head_dim)
    q, k, v = qkv[:, :, :, 0], qkv[:, :, :, 1], qkv[:, :, :, 2]
    attn = attention(q, k, v, key_padding_bias(mask), scale=self.head_dim ** -0.5,
                     dropout_rate=self.attn_dropout, key=keys[0])
    attn = (matmul(rows(attn), w(self.out).reshape(-1, d)) + w(self.out_bias)).reshape(b, n, d)
    x = self.attn_norm(x + dropout(attn, self.hidden_dropout, keys[1]))
    hidden = _ACTIVATIONS[self.act](matmul(rows(x), w(self.up)) + w(self.up_bias))
    mlp = (matmul(hidden, w(self.down)) + w(self.down_bias)).reshape(b, n, d)
    x = self.mlp_norm(x + dropout(mlp, self.hidden_dropout, keys[2]))
    return constrain(x, ACT_AXES)


class BertBackbone(nnx.Module):
  """A BERT encoder of the sizes in ``hf_config`` (a config.json as a dict).

  dtype: the compute dtype; None follows the parameters' dtype (gemb's train step casts
  float32 master params to model.dtype, and evaluation runs them in float32).
  """

  def __init__(self, hf_config: dict, *, scan_layers: bool = False, remat_policy: str = "",
               dtype=jnp.float32, rngs: nnx.Rngs):
    c = dict(hf_config)
    _check_config(c)
    if remat_policy and not hasattr(jax.checkpoint_policies, remat_policy):
      raise ValueError(f"model.remat_policy={remat_policy!r} is not a jax.checkpoint_policies "
                       "name (e.g. 'nothing_saveable', 'dots_saveable'); '' disables remat")
    self.width, self.vocab_size = c["hidden_size"], c["vocab_size"]
    self.depth, self.max_positions = c["num_hidden_layers"], c["max_position_embeddings"]
    self.scan, self.remat_policy, self.dtype = scan_layers, remat_policy, dtype
    self.hidden_dropout = float(c.get("hidden_dropout_prob", 0.0))
    init = nnx.initializers.normal(float(c.get("initializer_range", 0.02)))
    d = self.width
    self.word_embeddings = param(rngs, init, (self.vocab_size, d), ("vocab", "embed"))
    self.position_embeddings = param(rngs, init, (self.max_positions, d), ("positions", "embed"))
    self.token_type_embeddings = param(rngs, init, (int(c.get("type_vocab_size", 2)), d),
                                       ("positions", "embed"))
    self.embed_norm = _Norm(d, float(c.get("layer_norm_eps", 1e-12)))

    @nnx.split_rngs(splits=self.depth)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def make_layers(rngs):
      return _Block(c, rngs=rngs)

    self.layers = make_layers(rngs)

  def _dtype(self):
    return self.dtype if self.dtype is not None else self.word_embeddings[...].dtype

  def embed_ids(self, ids):
    """int [..., L] -> [..., L, D]: the word-embedding lookup (BERT has no input scale)."""
    return jnp.take(self.word_embeddings[...], ids, axis=0).astype(self._dtype())

  def __call__(self, x, mask, positions, *, dropout_key=None):
    """x [B, N, D], mask bool [B, N], positions int [B, N] -> hidden states [B, N, D]."""
    dt = self._dtype()
    keys = None if dropout_key is None else jax.random.split(dropout_key, self.depth + 1)
    x = (x.astype(dt) + jnp.take(self.position_embeddings[...], positions, axis=0).astype(dt)
         + self.token_type_embeddings[0].astype(dt))
    x = dropout(self.embed_norm(x), self.hidden_dropout, None if keys is None else keys[0])
    x = constrain(x, ACT_AXES)
    return run_stacked(self.layers, x, None if keys is None else keys[1:],
                       lambda block, x, key: block(x, mask, key),
                       depth=self.depth, scan=self.scan, remat_policy=self.remat_policy)


def _hf_layout(c):
  """{HF tensor name (no prefix): (expected shape, our path, transform to our layout)}."""
  d, h, f, n = (c["hidden_size"], c["num_attention_heads"], c["intermediate_size"],
                c["num_hidden_layers"])
  hd = d // h
  out = {
      "embeddings.word_embeddings.weight": ((c["vocab_size"], d), ("word_embeddings",)),
      "embeddings.position_embeddings.weight": ((c["max_position_embeddings"], d),
                                                ("position_embeddings",)),
      "embeddings.token_type_embeddings.weight": ((int(c.get("type_vocab_size", 2)), d),
                                                  ("token_type_embeddings",)),
      "embeddings.LayerNorm.weight": ((d,), ("embed_norm", "scale")),
      "embeddings.LayerNorm.bias": ((d,), ("embed_norm", "bias")),
  }
  for i in range(n):
    p = f"encoder.layer.{i}."
    for j, name in enumerate(("query", "key", "value")):
      out[f"{p}attention.self.{name}.weight"] = ((d, d), ("qkv", i, j))
      out[f"{p}attention.self.{name}.bias"] = ((d,), ("qkv_bias", i, j))
    out.update({
        f"{p}attention.output.dense.weight": ((d, d), ("out", i)),
        f"{p}attention.output.dense.bias": ((d,), ("out_bias", i)),
        f"{p}attention.output.LayerNorm.weight": ((d,), ("attn_norm", "scale", i)),
        f"{p}attention.output.LayerNorm.bias": ((d,), ("attn_norm", "bias", i)),
        f"{p}intermediate.dense.weight": ((f, d), ("up", i)),
        f"{p}intermediate.dense.bias": ((f,), ("up_bias", i)),
        f"{p}output.dense.weight": ((d, f), ("down", i)),
        f"{p}output.dense.bias": ((d,), ("down_bias", i)),
        f"{p}output.LayerNorm.weight": ((d,), ("mlp_norm", "scale", i)),
        f"{p}output.LayerNorm.bias": ((d,), ("mlp_norm", "bias", i)),
    })
  return out, (d, h, hd, f, n)


def _strip_prefix(names):
  """The checkpoint's name prefix: "" (BertModel) or "bert." (BertForMaskedLM & co.)."""
  if any(k.startswith("embeddings.") for k in names):
    return ""
  if any(k.startswith("bert.embeddings.") for k in names):
    return "bert."
  return ""


def params_from_hf(tensors: Mapping[str, np.ndarray], hf_config: dict) -> dict:
  """A Hugging Face BERT state dict -> the pure dict of ``BertBackbone(hf_config)``'s state
  (float32 numpy). Raises ValueError naming every missing / unexpected tensor and each
  shape mismatch (HF name, got, expected)."""
  c = dict(hf_config)
  _check_config(c)
  layout, (d, h, hd, f, n) = _hf_layout(c)
  prefix = _strip_prefix(tensors)
  ours = {}
  for name, value in tensors.items():
    short = name[len(prefix):] if name.startswith(prefix) else name
    if short.startswith(_UNUSED_PREFIXES) or name.startswith(_UNUSED_PREFIXES):
      continue
    ours[short] = (name, value)
  missing = [prefix + k for k in layout if k not in ours]
  unexpected = [ours[k][0] for k in ours if k not in layout]
  bad_shapes = [f"{ours[k][0]}: got {tuple(np.shape(ours[k][1]))}, expected {layout[k][0]}"
                for k in layout if k in ours and tuple(np.shape(ours[k][1])) != layout[k][0]]
  check_tensors("BERT checkpoint", missing, unexpected, bad_shapes)

  get = lambda k: np.asarray(ours[k][1], np.float32)  # noqa: E731
  stacked = {
      "qkv": np.zeros((n, d, h, 3, hd), np.float32),
      "qkv_bias": np.zeros((n, h, 3, hd), np.float32),
      "out": np.zeros((n, h, hd, d), np.float32), "out_bias": np.zeros((n, d), np.float32),
      "up": np.zeros((n, d, f), np.float32), "up_bias": np.zeros((n, f), np.float32),
      "down": np.zeros((n, f, d), np.float32), "down_bias": np.zeros((n, d), np.float32),
      "attn_norm": {"scale": np.zeros((n, d), np.float32), "bias": np.zeros((n, d), np.float32)},
      "mlp_norm": {"scale": np.zeros((n, d), np.float32), "bias": np.zeros((n, d), np.float32)},
  }
  for k, (_, path) in layout.items():
    value = get(k)
    if path[0] == "qkv":  # torch Linear weight [out = heads * head_dim, in] -> [in, h, hd]
      stacked["qkv"][path[1], :, :, path[2]] = value.T.reshape(d, h, hd)
    elif path[0] == "qkv_bias":
      stacked["qkv_bias"][path[1], :, path[2]] = value.reshape(h, hd)
    elif path[0] == "out":
      stacked["out"][path[1]] = value.T.reshape(h, hd, d)
    elif path[0] in ("up", "down"):
      stacked[path[0]][path[1]] = value.T
    elif path[0] in ("attn_norm", "mlp_norm"):
      stacked[path[0]][path[1]][path[2]] = value
    elif len(path) == 2 and isinstance(path[1], int):
      stacked[path[0]][path[1]] = value
  return {
      "word_embeddings": get("embeddings.word_embeddings.weight"),
      "position_embeddings": get("embeddings.position_embeddings.weight"),
      "token_type_embeddings": get("embeddings.token_type_embeddings.weight"),
      "embed_norm": {"scale": get("embeddings.LayerNorm.weight"),
                     "bias": get("embeddings.LayerNorm.bias")},
      "layers": stacked,
  }


def params_to_hf(params, hf_config) -> dict:
  """The inverse of ``params_from_hf``: this module's pure dict -> BertModel tensors under
  their safetensors names (float32 numpy), for exporting a trained model back to the
  Hugging Face layout."""
  c = dict(hf_config)
  _check_config(c)
  layout, (d, h, hd, f, n) = _hf_layout(c)
  g = lambda x: np.asarray(x, np.float32)  # noqa: E731
  layers = params["layers"]
  out = {}
  for name, (_, path) in layout.items():
    if path[0] == "qkv":
      value = g(layers["qkv"][path[1]])[:, :, path[2]].reshape(d, d).T
    elif path[0] == "qkv_bias":
      value = g(layers["qkv_bias"][path[1]])[:, path[2]].reshape(d)
    elif path[0] == "out":
      value = g(layers["out"][path[1]]).reshape(d, d).T
    elif path[0] in ("up", "down"):
      value = g(layers[path[0]][path[1]]).T
    elif path[0] in ("attn_norm", "mlp_norm"):
      value = g(layers[path[0]][path[1]][path[2]])
    elif len(path) == 2 and isinstance(path[1], int):
      value = g(layers[path[0]][path[1]])
    elif path[0] == "embed_norm":
      value = g(params["embed_norm"][path[1]])
    else:
      value = g(params[path[0]])
    out[name] = np.ascontiguousarray(value)
  return out
