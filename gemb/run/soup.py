"""Model soups of checkpoints (Wortsman et al. 2022, as in the Gemini Embedding recipe): the
uniform average of the parameters of several checkpoints of one run.

The trainer's end-of-run soup and its comparison with the best checkpoint are in
gemb/train/soup.py; gemb.export --soup exports one.
"""

import jax
import jax.numpy as jnp


def uniform_soup(param_trees):
  """Leaf-wise mean of an iterable of same-structure pytrees, in each leaf's dtype.

  Works on numpy trees and on global jax.Arrays (whose shardings it keeps). Sums in float32
  (at least), one tree at a time, so a generator of restored checkpoints never holds more
  than the running sum and one checkpoint in memory.
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


def soup_of_checkpoints(checkpointer, steps, params_like):
  """Uniform soup of the params of checkpoint ``steps``, restored one at a time onto
  ``params_like``'s shardings (the trainer's end-of-run soup and gemb.export --soup)."""
  if not steps:
    raise ValueError("a soup needs at least one checkpoint step")
  available = set(checkpointer.all_steps())
  missing = [s for s in steps if s not in available]
  if missing:
    raise ValueError(f"no checkpoint for step(s) {missing}; available: {sorted(available)}")
  return uniform_soup(checkpointer.restore_params(s, params_like) for s in steps)
