"""Layer helpers shared by the embedders, the transformers (gemb's own and the pretrained
families) and the model's head."""

import jax
import jax.numpy as jnp
from flax import nnx


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
