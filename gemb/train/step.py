"""The jitted train step: embed every side of a batch, contrastive loss, AdamW update.

Params and optimizer state keep the shardings they were born with (in/out shardings are
pinned, the state buffer is donated), so a step never recompiles or reshards after the
first call. The batch arrives sharded over ('data', 'fsdp'); the loss's shard_map gathers
candidates across devices. With config.loss.cache_chunk > 0 the value and gradient come from
GradCache (gemb/train/gradcache.py): the same loss, the activations of one chunk at a time.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gemb import losses
from gemb.model.batch import SIDES, flatten_negatives
from gemb.train import gradcache


def embed_batch(model, batch, dropout_key=None):
  """Raw embeddings of the query, candidate and (optional) hard-negative sides."""
  keys = [None] * 3 if dropout_key is None else list(jax.random.split(dropout_key, 3))
  query = model(batch["query"], dropout_key=keys[0])
  candidate = model(batch["candidate"], dropout_key=keys[1])
  negatives = None
  if "negatives" in batch:
    b, k = batch["negatives"]["layout"].shape[:2]
    negatives = model(flatten_negatives(batch["negatives"]), dropout_key=keys[2])
    negatives = negatives.reshape(b, k, -1)
  return query, candidate, negatives


def in_compute_dtype(tree, dtype):
  """Float arrays of `tree` (params, or a batch's media) cast to the compute dtype.

  Mixed precision by casting: the float32 master params are cast inside the step, so the
  gradient arrives back in float32. Scalars (the loss's temperature and bias) stay float32.
  """
  def cast(x):
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) and x.ndim else x
  return jax.tree.map(cast, tree)


def embeddings_loss(model, embeddings, batch, loss_cfg, mesh):
  """Contrastive loss of (query, candidate, negatives) raw embeddings -> (loss, metrics)."""
  query, candidate, negatives = embeddings
  scale = losses.logit_scale_from_param(model.log_logit_scale[...], loss_cfg.max_logit_scale)
  bias = model.logit_bias[...]
  if not loss_cfg.learn_temperature:
    scale, bias = jax.lax.stop_gradient(scale), jax.lax.stop_gradient(bias)
  return losses.contrastive_loss(
      query, candidate, negatives, query_id=batch["query_id"], candidate_id=batch["candidate_id"],
      negative_id=batch.get("negative_id"), logit_scale=scale, logit_bias=bias, config=loss_cfg,
      mesh=mesh)


def batch_loss(model, batch, loss_cfg, mesh, dropout_key=None):
  """Contrastive loss of one batch -> (loss, metrics)."""
  return embeddings_loss(model, embed_batch(model, batch, dropout_key), batch, loss_cfg, mesh)


def make_train_step(graphdef, tx, schedule, config, mesh, state_shardings):
  """-> jitted ``step(state, batch) -> (state, metrics)``."""
  dropout = config.model.dropout > 0
  base_key = jax.random.key(config.seed)
  cache_chunk = config.loss.get("cache_chunk", 0)  # 0: plain value_and_grad
  dtype = jnp.dtype(config.model.get("dtype", "float32"))

  def train_step(state, batch):
    key = jax.random.fold_in(base_key, state["step"]) if dropout else None
    sides = in_compute_dtype({s: batch[s] for s in SIDES if s in batch}, dtype)

    def model(params):
      return nnx.merge(graphdef, in_compute_dtype(params, dtype))

    def loss_fn(params):
      return batch_loss(model(params), dict(batch, **sides), config.loss, mesh, key)

    if cache_chunk:  # GradCache: same value and gradient, activations of one chunk
      (loss, metrics), grads = gradcache.cached_value_and_grad(
          lambda params, chunk, k: embed_batch(model(params), chunk, k),
          lambda params, emb: embeddings_loss(model(params), emb, batch, config.loss, mesh),
          state["params"], sides, chunk_size=cache_chunk, mesh=mesh, key=key)
    else:
      (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   learning_rate=schedule(state["step"]))
    return {"step": state["step"] + 1, "params": params, "opt_state": opt_state}, metrics

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(train_step, out_shardings=(state_shardings, replicated), donate_argnums=(0,))
