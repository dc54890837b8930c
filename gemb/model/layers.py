"""Layer helpers shared by the embedders, the shared transformer and the model's head."""

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
