"""LoRA (Hu et al. 2021, "Low-Rank Adaptation") for any backbone, on the parameter tree.

``model.lora``: ``rank`` (0 = off), ``alpha``, ``targets`` (a regex over parameter paths
such as "encoder/blocks/attn/qkv" or "encoder/layers/mlp/down"). Every matching parameter
of two or more dims, a kernel W, gets two adapters, A [in, r] (uniform in +-1/sqrt(in), as
PEFT's Kaiming init) and B [r, out] (zeros), and the model computes with the effective kernel
W + alpha / r * A @ B. W itself is frozen; A and B train. The adapters live in the train
state next to the params (``state["lora"]``: the params' nesting, each adapted kernel's leaf
a {"a", "b"} dict), so checkpoints save and restore them like any parameter.

A kernel of any rank is viewed as an [in, out] matrix through its logical axes (the
``out_sharding`` names of gemb.parallel): a leading "layers" axis is a batch axis (one
adapter per layer of a stacked transformer); the input axes are every axis but the last
when the last is "embed" (a projection back to the model width: attention out / o, MLP
down), else the first one (q / k / v / qkv, MLP up / gate, a head). A parameter without
axes is split after its first axis.

Nothing in the model knows LoRA: the same graphdef runs the merged params, so it works for
every backbone family (gemb's transformer, BERT, Gemma 3), and an exported bundle holds the
merged kernels and no LoRA code path.
"""

import math
import re

import jax
import jax.numpy as jnp
from flax import nnx

from gemb.trees import param_path

# The attention and MLP projections of the shared transformer or a pretrained backbone
# ("encoder/..."): gemb's attn/qkv, attn/out, mlp/up/kernel, mlp/down/kernel; BERT's qkv, out,
# up, down; Gemma 3's attn/q, k, v, o and mlp/gate, up, down. Not the embedding tables, the
# norms or the modality embedders.
DEFAULT_TARGETS = r"^encoder/(.*/)?(qkv|q|k|v|o|out|gate|up|down)(/kernel)?$"


def enabled(model_config):
  """Whether ``model.lora`` is on (configs without the key: off)."""
  lora = model_config.get("lora")
  return bool(lora) and int(lora.get("rank", 0)) > 0


def abstract_params(model_config):
  """(params as ShapeDtypeStructs, {parameter path: logical axes or None}) of the model."""
  from gemb.model.embedder_model import MultimodalEmbedder
  abstract = nnx.state(nnx.eval_shape(lambda: MultimodalEmbedder(model_config,
                                                                  rngs=nnx.Rngs(0))))
  axes = {"/".join(map(str, path)): v.get_metadata().get("out_sharding")
          for path, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
  return nnx.to_pure_dict(abstract), axes


def for_config(model_config):
  """The LoRA of ``model_config``, or None when model.lora is off."""
  return LoRA(model_config) if enabled(model_config) else None


def matrix_view(shape, axes):
  """(batch dims, input dims) of a kernel viewed as [*batch, in, out] (see the docstring)."""
  axes = tuple(axes) if axes else (None,) * len(shape)
  batch = 1 if axes[:1] == ("layers",) else 0
  rest = axes[batch:] or (None,)
  n_in = len(rest) - 1 if rest[-1] == "embed" and rest[0] != "embed" else 1
  return batch, n_in


class LoRA:
  """The adapters of one model config: which kernels, and their [in, out] views."""

  def __init__(self, model_config):
    cfg = model_config.lora
    self.rank, self.alpha = int(cfg.rank), float(cfg.alpha)
    if self.rank <= 0:
      raise ValueError(f"model.lora.rank={self.rank}: LoRA is off (rank 0); nothing to adapt")
    if not self.alpha > 0:
      raise ValueError(f"model.lora.alpha={cfg.alpha!r} must be > 0")
    regex = _regex(cfg, "targets")
    self.trainable = _regex(cfg, "trainable") if cfg.get("trainable") else None
    self.scale = self.alpha / self.rank
    params_like, axes = abstract_params(model_config)
    self.views = {}  # path -> (tree keys, kernel shape, batch dims, input dims)
    paths = []
    for path, x in jax.tree_util.tree_flatten_with_path(params_like)[0]:
      name = param_path(path)
      paths.append(name)
      batch, n_in = matrix_view(x.shape, axes.get(name))
      if regex.search(name) and len(x.shape) - batch >= 2:
        keys = tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
        self.views[name] = (keys, tuple(x.shape), batch, n_in)
    if not self.views:
      raise ValueError(f"model.lora.targets={cfg.targets!r} matches no parameter of 2 or more "
                       f"dims; parameters: {paths}")
    too_wide = [n for n, (_, shape, batch, n_in) in self.views.items()
                if self.rank > min(math.prod(shape[batch:batch + n_in]),
                                   math.prod(shape[batch + n_in:]))]
    if too_wide:
      raise ValueError(f"model.lora.rank={self.rank} exceeds the smaller side of the "
                       f"[in, out] view of {too_wide}")

  def shapes(self):
    """{path: (A shape, B shape)}."""
    out = {}
    for name, (_, shape, batch, n_in) in self.views.items():
      lead = shape[:batch]
      fan_in, fan_out = math.prod(shape[batch:batch + n_in]), math.prod(shape[batch + n_in:])
      out[name] = ((*lead, fan_in, self.rank), (*lead, self.rank, fan_out))
    return out

  def init(self, key):
    """Fresh adapters: A uniform in +-1/sqrt(in), B zeros (so the model starts as the base)."""
    tree = {}
    for i, (name, (a_shape, b_shape)) in enumerate(sorted(self.shapes().items())):
      bound = 1.0 / math.sqrt(a_shape[-2])
      a = jax.random.uniform(jax.random.fold_in(key, i), a_shape, jnp.float32, -bound, bound)
      _put(tree, self.views[name][0], {"a": a, "b": jnp.zeros(b_shape, jnp.float32)})
    return tree

  def restore_target(self, params_like):
    """ShapeDtypeStructs of the adapters of the kernels that ``params_like`` holds (all the
    params or a subset), each replicated on its kernel's devices."""
    shapes, tree = self.shapes(), {}
    for path, x in jax.tree_util.tree_flatten_with_path(params_like)[0]:
      name = param_path(path)
      if name in self.views:
        sharding = getattr(x, "sharding", None)
        if isinstance(sharding, jax.sharding.NamedSharding):
          sharding = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
        a_shape, b_shape = shapes[name]
        _put(tree, self.views[name][0], {
            "a": jax.ShapeDtypeStruct(a_shape, jnp.float32, sharding=sharding),
            "b": jax.ShapeDtypeStruct(b_shape, jnp.float32, sharding=sharding)})
    return tree

  def merge(self, params, adapters):
    """``params`` (all or a subset) with every adapted kernel replaced by W + alpha / r * A @ B
    (``adapters``: those of the kernels in ``params``)."""
    def visit(path, w):
      name = param_path(path)
      if name not in self.views:
        return w
      keys, shape, _, _ = self.views[name]
      pair = _get(adapters, keys)
      delta = jnp.einsum("...ir,...ro->...io", pair["a"], pair["b"]).reshape(shape)
      return w + (self.scale * delta).astype(w.dtype)
    return jax.tree_util.tree_map_with_path(visit, params)

  def trains(self, path):
    """Whether base parameter ``path`` trains next to the adapters (model.lora.trainable;
    never an adapted kernel)."""
    return (path not in self.views and self.trainable is not None
            and bool(self.trainable.search(path)))


def _regex(cfg, key):
  try:
    return re.compile(cfg[key])
  except re.error as e:
    raise ValueError(f"model.lora.{key}={cfg[key]!r} is not a regex: {e}") from None


def _put(tree, keys, value):
  for k in keys[:-1]:
    tree = tree.setdefault(k, {})
  tree[keys[-1]] = value


def _get(tree, keys):
  for k in keys:
    tree = tree[k]
  return tree
