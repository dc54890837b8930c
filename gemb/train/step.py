"""The jitted train step: embed every side of a batch, contrastive loss, guarded AdamW update.

Params and optimizer state keep the shardings they were born with (in/out shardings are
pinned, the state buffer is donated), so a step never recompiles or reshards after the
first call. The batch arrives sharded over ('data', 'fsdp'); the loss's shard_map gathers
candidates across devices.

Guards: a step whose loss or gradient is not finite leaves params and optimizer state
unchanged (the update is skipped, not applied with NaNs) and counts itself in the state
(``nonfinite_steps`` in total, ``nonfinite_streak`` in a row); the loop stops the run
when the streak reaches ``train.max_nonfinite_streak``. Frozen parameters (a stage's
``freeze`` regex) get a zero gradient and a zero update. With LoRA the gradient is taken
with respect to the adapters (and the base params model.lora.trainable names) only, and the
model runs with the adapters merged into their kernels (gemb.run.state.Trainable).
With config.loss.cache_chunk > 0 the value and gradient come from GradCache
(gemb/train/gradcache.py): the same loss, the activations of one chunk at a time.
"""

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gemb import losses
from gemb.batch import SIDES, flatten_negatives
from gemb.run.state import Trainable
from gemb.train import gradcache
from gemb.train.metrics import TrainMetrics


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


def _zero_where(mask, tree):
  return jax.tree.map(lambda m, x: jnp.zeros_like(x) if m else x, mask, tree)


def make_train_step(graphdef, tx, schedule, config, mesh, state_shardings, frozen=None):
  """-> jitted ``step(state, batch) -> (state, TrainMetrics)``.

  ``frozen``: pytree of bools like ``Trainable.of(state)`` (True = not trained), or None.
  """
  trainable = Trainable(config.model)
  dropout = config.model.dropout > 0
  base_key = jax.random.key(config.seed)
  cache_chunk = config.loss.get("cache_chunk", 0)  # 0: plain value_and_grad
  dtype = jnp.dtype(config.model.get("dtype", "float32"))

  def train_step(state, batch):
    key = jax.random.fold_in(base_key, state["step"]) if dropout else None
    sides = in_compute_dtype({s: batch[s] for s in SIDES if s in batch}, dtype)

    train = trainable.of(state)  # what gets a gradient: the params, or LoRA's adapters

    def model(train):
      return nnx.merge(graphdef, in_compute_dtype(
          trainable.model_params(state["params"], train), dtype))

    def loss_fn(train):
      return batch_loss(model(train), dict(batch, **sides), config.loss, mesh, key)

    if cache_chunk:  # GradCache: same value and gradient, activations of one chunk
      (loss, aux), grads = gradcache.cached_value_and_grad(
          lambda train, chunk, k: embed_batch(model(train), chunk, k),
          lambda train, emb: embeddings_loss(model(train), emb, batch, config.loss, mesh),
          train, sides, chunk_size=cache_chunk, mesh=mesh, key=key)
    else:
      (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(train)
    if frozen is not None:
      grads = _zero_where(frozen, grads)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state["opt_state"], train)
    if frozen is not None:  # weight decay and Adam momentum would still move them
      updates = _zero_where(frozen, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep_old = lambda new, old: jax.tree.map(  # noqa: E731
        lambda n, o: jnp.where(finite, n, o), new, old)
    train = keep_old(optax.apply_updates(train, updates), train)
    opt_state = keep_old(opt_state, state["opt_state"])
    nonfinite = state["nonfinite_steps"] + (~finite).astype(jnp.int32)
    streak = jnp.where(finite, 0, state["nonfinite_streak"] + 1)
    new_state = {"step": state["step"] + 1, **trainable.updated(state, train),
                 "opt_state": opt_state, "nonfinite_steps": nonfinite, "nonfinite_streak": streak}
    step_metrics = TrainMetrics.single_from_model_output(
        loss=loss, accuracy=aux.get("accuracy", jnp.nan), grad_norm=grad_norm,
        learning_rate=schedule(state["step"]), temperature=1.0 / aux["logit_scale"],
        nonfinite_steps=nonfinite, nonfinite_streak=streak)
    return new_state, step_metrics

  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  return jax.jit(train_step, out_shardings=(state_shardings, replicated), donate_argnums=(0,))
