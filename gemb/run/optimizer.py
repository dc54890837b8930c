"""The optimizer: AdamW with linear warmup + cosine decay and global-norm clipping.

Weight decay applies to matrices only (ndim >= 2): norms, biases and the scalar
temperature / bias of the contrastive loss are not decayed. ``fast_params`` (a regex
searched in each parameter's path) names parameters whose updates are ``fast_lr_multiplier``
times larger: new input projections next to a pretrained backbone learn at 1e-3 while the
backbone moves at 5e-5 (configs/default.py).
"""

import re

import jax
import optax

from gemb.trees import param_path


def learning_rate_schedule(cfg, total_steps):
  """Linear warmup from 0 to ``cfg.learning_rate``, then cosine decay to ``cfg.end_lr_fraction``."""
  warmup = min(cfg.warmup_steps, total_steps)
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.learning_rate, warmup_steps=warmup,
      decay_steps=max(total_steps, warmup + 1),
      end_value=cfg.learning_rate * cfg.end_lr_fraction)


def decay_mask(params):
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def scale_matching(pattern, multiplier):
  """Multiplies the updates of the parameters whose path matches ``pattern`` ("" = none).
  Stateless, so stages that differ in it share one optimizer state."""
  regex = re.compile(pattern) if pattern else None

  def update(updates, state, params=None):
    del params
    if regex is None or multiplier == 1.0:
      return updates, state
    return jax.tree_util.tree_map_with_path(
        lambda path, u: u * multiplier if regex.search(param_path(path)) else u, updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg, schedule):
  """AdamW + clipping with ``cfg``'s hyper-parameters and a learning rate ``schedule(step)``
  (gemb.run.curriculum.learning_rate: one schedule over all stages)."""
  return optax.chain(
      optax.clip_by_global_norm(cfg.grad_clip_norm) if cfg.grad_clip_norm else optax.identity(),
      optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                  mask=decay_mask),
      scale_matching(cfg.get("fast_params", ""), float(cfg.get("fast_lr_multiplier", 1.0))))
