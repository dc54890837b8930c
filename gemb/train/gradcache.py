"""GradCache: the gradient of a contrastive loss over a batch too large to embed at once.

A contrastive loss couples every example of the global batch, so the plain step keeps the
activations of all of them for the backward pass. GradCache (Gao et al., 2021, "Scaling Deep
Contrastive Learning Batch Size under Memory Limited Setup") splits the work in three:

  1. embed the batch chunk by chunk, forward only (no activations kept),
  2. compute the loss, its value and its gradient w.r.t. the embeddings (and the parameters
     the loss reads directly: temperature, bias) once, over the whole cross-device batch,
  3. re-embed each chunk under `jax.vjp` and pull the embedding gradient of that chunk back
     to the parameters, summing over chunks.

Both embedding passes run under `lax.map` / `lax.scan` over the chunks, so activation memory
is that of one chunk; the price is a second forward pass. The loss is the caller's (here the
shard_map contrastive loss with all its options), so the gradient is exactly the uncached
one: the chain rule split at the embeddings. Each chunk gets its own dropout key, the same
in both passes (the masks of pass 3 must be those of pass 1).

Sharding: a batch sharded over S devices along its leading dim is cut into chunks that take
the same share from every device (rows [s*b + j*b/C, s*b + (j+1)*b/C) of device s form chunk
j), so every device works on every chunk and no example moves between devices; the
embeddings are put back in global batch order before the loss.
"""


import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from gemb import parallel


def to_chunks(x, chunks, mesh=None):
  """[B, ...] -> [chunks, B/chunks, ...], chunk j taking rows j*b/C.. of every device's b."""
  axes, shards = parallel.batch_shards(mesh)
  per = x.shape[0] // (shards * chunks)
  x = jnp.swapaxes(x.reshape((shards, chunks, per) + x.shape[1:]), 0, 1)
  x = x.reshape((chunks, shards * per) + x.shape[3:])
  if axes:
    x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(None, axes)))
  return x


def from_chunks(x, mesh=None):
  """Inverse of `to_chunks`: [chunks, B/chunks, ...] -> [B, ...] in global batch order."""
  axes, shards = parallel.batch_shards(mesh)
  chunks, rows = x.shape[:2]
  x = jnp.swapaxes(x.reshape((chunks, shards, rows // shards) + x.shape[2:]), 0, 1)
  x = x.reshape((chunks * rows,) + x.shape[3:])
  if axes:
    x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, P(axes)))
  return x


def num_chunks(batch_size, chunk_size, mesh=None):
  """Chunks of `chunk_size` examples in a global batch; errors name the config field."""
  _, shards = parallel.batch_shards(mesh)
  if chunk_size <= 0 or batch_size % chunk_size:
    raise ValueError(f"config.loss.cache_chunk={chunk_size} must be > 0 and divide the global "
                     f"batch size {batch_size}")
  if chunk_size % shards:
    raise ValueError(f"config.loss.cache_chunk={chunk_size} must be a multiple of the {shards} "
                     f"batch shards of the mesh (each device embeds chunk/shards examples)")
  return batch_size // chunk_size


def chunk_keys(key, chunks):
  """The dropout key of each chunk (None: no dropout), shared by both embedding passes."""
  return None if key is None else jax.random.split(key, chunks)


def cached_value_and_grad(embed_fn, loss_fn, params, inputs, *, chunk_size, mesh=None,
                          key=None):
  """GradCache value-and-grad of ``loss_fn(params, embed_fn(params, inputs, key))``.

  Args:
    embed_fn: ``(params, inputs, key) -> embeddings``, a pytree of arrays whose leading dim
      is the batch dim of `inputs` (rows are embedded independently of each other).
    loss_fn: ``(params, embeddings) -> (loss, aux)`` over the whole batch; it may read
      parameters itself (e.g. the temperature), whose gradient is added.
    params: the pytree differentiated against.
    inputs: pytree of arrays, every leaf with the global batch as leading dim.
    chunk_size: examples per chunk (global); divides the batch and is a multiple of the
      mesh's batch shards.
    mesh: the mesh `inputs` are sharded on over ('data', 'fsdp'), or None (one device).
    key: dropout key or None; each chunk embeds with its own key from `chunk_keys`.

  Returns ((loss, aux), grads), as ``jax.value_and_grad(..., has_aux=True)``.
  """
  batch = jax.tree.leaves(inputs)[0].shape[0]
  chunks = num_chunks(batch, chunk_size, mesh)
  chunked = jax.tree.map(lambda x: to_chunks(x, chunks, mesh), inputs)
  keys = chunk_keys(key, chunks)

  # 1. Embeddings of every chunk, forward only: lax.map keeps nothing for a backward pass.
  frozen = jax.lax.stop_gradient(params)
  stacked = jax.lax.map(lambda xs: embed_fn(frozen, *xs), (chunked, keys))
  embeddings = jax.tree.map(lambda x: from_chunks(x, mesh), stacked)

  # 2. The loss over the whole batch; gradient w.r.t. the embeddings and the loss's params.
  (loss, aux), (grads, emb_grads) = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)(
      params, embeddings)

  # 3. Re-embed chunk by chunk and pull the embedding gradient back to the parameters.
  def accumulate(total, xs):
    chunk, chunk_key, cotangent = xs
    _, pullback = jax.vjp(lambda p: embed_fn(p, chunk, chunk_key), params)
    return jax.tree.map(jnp.add, total, pullback(cotangent)[0]), None

  cotangents = jax.tree.map(lambda x: to_chunks(x, chunks, mesh), emb_grads)
  grads, _ = jax.lax.scan(accumulate, grads, (chunked, keys, cotangents))
  return (loss, aux), grads
