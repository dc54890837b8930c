"""The optimizer: AdamW with linear warmup + cosine decay and global-norm clipping.

Weight decay applies to matrices only (ndim >= 2): norms, biases and the scalar
temperature / bias of the contrastive loss are not decayed.
"""

import jax
import optax


def learning_rate_schedule(cfg, total_steps):
  """Linear warmup from 0 to ``cfg.learning_rate``, then cosine decay to ``cfg.end_lr_fraction``."""
  warmup = min(cfg.warmup_steps, total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.end_lr_fraction)


def decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_optimizer(cfg, schedule):
  """AdamW + clipping with ``cfg``'s hyper-parameters and a learning rate ``schedule(step)``
  (gemb.run.curriculum.learning_rate: one schedule over all stages)."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                  mask=decay_mask))
