"""Model soups: the uniform average of the parameters of several checkpoints of one run.

Averaging the weights of checkpoints along one run (a "uniform soup", Wortsman et al. 2022)
usually retrieves as well as the best of them and more robustly. ``uniform_soup`` works on
any pytrees of arrays (numpy or global jax.Arrays, whose shardings it keeps), so the trainer
uses it for its end-of-run soup and the exporter for ``--soup``.
"""

import jax
import jax.numpy as jnp


def uniform_soup(param_trees):
  """Leaf-wise mean of an iterable of same-structure pytrees, in each leaf's dtype.

  Sums in float32 (at least), one tree at a time, so a generator of restored checkpoints
  never holds more than the running sum and one checkpoint in memory.
  """
  total, count = None, 0
  for tree in param_trees:
    if total is None:
      dtypes = jax.tree.map(lambda x: x.dtype, tree)
      total = jax.tree.map(lambda x: jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32)),
                           tree)
    else:
      if jax.tree.structure(tree) != jax.tree.structure(total):
        raise ValueError(f"checkpoint {count} has another parameter structure than checkpoint 0")
      total = jax.tree.map(jnp.add, total, tree)
    count += 1
  if not count:
    raise ValueError("uniform_soup needs at least one parameter tree")
  return jax.tree.map(lambda s, dtype: (s / count).astype(dtype), total, dtypes)


def checkpoint_params(checkpointer, steps, state_like):
  """Yields the params of each checkpoint step, restored onto ``state_like``'s shardings."""
  available = set(checkpointer.manager.all_steps())
  missing = [s for s in steps if s not in available]
  if missing:
    raise ValueError(f"no checkpoint for step(s) {missing}; available: {sorted(available)}")
  for step in steps:
    yield checkpointer.restore_params(step, state_like)["params"]


def soup_of_checkpoints(checkpointer, steps, state_like):
  """Uniform soup of the params of checkpoint ``steps`` (restored one at a time)."""
  if not steps:
    raise ValueError("a soup needs at least one checkpoint step")
  return uniform_soup(checkpoint_params(checkpointer, steps, state_like))
