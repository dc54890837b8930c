"""The train state (step, params, optimizer state, guard counters), born sharded, and its shardings.

The state is a plain dict of global jax.Arrays, so orbax saves it and jit pins it as is.
Parameters follow the logical-axis rules of gemb.parallel; each optimizer slot (Adam's
mu / nu) takes the sharding of the parameter it belongs to, so FSDP shards them too.
"""

import jax
import jax.numpy as jnp
from flax import nnx

from gemb import parallel
from gemb.model.embedder_model import MultimodalEmbedder
from gemb.run import curriculum
from gemb.run.optimizer import make_optimizer


def _path_keys(path):
  return tuple(getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path)


def like_params_shardings(tree, params, mesh):
  """Sharding for every leaf of ``tree``: that of the parameter whose path it ends with."""
  by_path = {_path_keys(p): (x.shape, x.sharding)
             for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

  def pick(path, leaf):
    keys = _path_keys(path)
    for start in range(len(keys)):
      hit = by_path.get(keys[start:])
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return parallel.replicated(mesh)
  return jax.tree_util.tree_map_with_path(pick, tree)


def create_train_state(config, mesh):
  """-> (graphdef, state, state_shardings, first stage's optimizer, lr schedule of the run).

  Every stage's optimizer is the same chain with its own hyper-parameters and this one
  schedule, so one optimizer state serves the whole curriculum.
  """
  seed = config.seed
  stages = curriculum.resolve_stages(config)
  schedule = curriculum.learning_rate(stages)
  tx = make_optimizer(stages[0].config.optimizer, schedule)
  graphdef, params = parallel.create_sharded(
      lambda: MultimodalEmbedder(config.model, rngs=nnx.Rngs(seed)), mesh)
  opt_shardings = like_params_shardings(jax.eval_shape(tx.init, params), params, mesh)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(params)
  counter = lambda: jax.device_put(jnp.zeros((), jnp.int32), parallel.replicated(mesh))  # noqa: E731
  state = {"step": counter(), "params": params, "opt_state": opt_state,
           "nonfinite_steps": counter(), "nonfinite_streak": counter()}
  shardings = jax.tree.map(lambda x: x.sharding, state)
  return graphdef, state, shardings, tx, schedule


def abstract_state(state):
  """ShapeDtypeStructs with shardings: the restore target for orbax."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
