"""The train state (step, params, optimizer state, guard counters), born sharded, and its shardings.

The state is a plain dict of global jax.Arrays, so orbax saves it and jit pins it as is.
Parameters follow the logical-axis rules of gemb.parallel; each optimizer slot (Adam's
mu / nu) takes the sharding of the parameter it belongs to, so FSDP shards them too.
With LoRA (``model.lora``, gemb/model/lora.py) the state also holds the adapters
(``state["lora"]``, replicated: they are small), and the optimizer trains only them and the
base params that ``model.lora.trainable`` names (``Trainable``): the rest of the base has
no gradient and no optimizer state.
"""

import dataclasses
import re

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from gemb import parallel
from gemb.model import lora
from gemb.model.embedder_model import MultimodalEmbedder
from gemb.run import curriculum
from gemb.run.optimizer import make_optimizer
from gemb.trees import param_path

# Folded into the seed's key for the LoRA A matrices, apart from the model's init streams.
_LORA_KEY = 0x10A
# The contrastive loss's temperature and bias: no part of the embedding model (a bundle
# leaves them out), they train next to LoRA's adapters as in full training
# (loss.learn_temperature decides).
LOSS_PARAMS = ("log_logit_scale", "logit_bias")


class Trainable:
  """What the optimizer updates, as one pytree (``of``), and how the state's params and the
  model's params follow from it. Without LoRA: the params. With LoRA: {"lora": the adapters,
  "params": the base params that model.lora.trainable names, and LOSS_PARAMS}."""

  def __init__(self, model_config):
    self.adapters = lora.for_config(model_config)

  def trains(self, path):
    """Whether base parameter ``path`` is in ``of(state)`` (with LoRA on)."""
    return path in LOSS_PARAMS or self.adapters.trains(path)

  def of(self, state):
    if self.adapters is None:
      return state["params"]
    return {"lora": state["lora"], "params": _subset(state["params"], self.trains)}

  def model_params(self, params, trainable):
    """The params the model computes with, given the state's params and ``trainable``."""
    if self.adapters is None:
      return trainable
    return self.adapters.merge(_replace(params, trainable["params"]), trainable["lora"])

  def effective(self, state):
    """The params the model of ``state`` computes with (adapters merged)."""
    return self.model_params(state["params"], self.of(state))

  def updated(self, state, trainable):
    """The state's params (and adapters) once ``trainable`` was updated."""
    if self.adapters is None:
      return {"params": trainable}
    return {"params": _replace(state["params"], trainable["params"]), "lora": trainable["lora"]}

  def frozen_mask(self, state, pattern):
    """A stage's ``freeze`` regex (checked against every parameter) as bools like
    ``of(state)``; None when the stage freezes nothing. A frozen kernel's adapters are
    frozen with it (their path is the kernel's), so ``"^encoder/"`` holds a backbone still
    with LoRA on as without."""
    if not pattern:
      return None
    mask = curriculum.frozen_mask(state["params"], pattern)
    if self.adapters is None:
      return mask
    regex = re.compile(pattern)
    # An adapter leaf is <kernel path>/a or /b.
    adapters = jax.tree_util.tree_map_with_path(
        lambda p, _: bool(regex.search(param_path(p[:-1]))), state["lora"])
    return {"lora": adapters, "params": _subset(mask, self.trains)}


def _subset(params, keep):
  """The nested dict of the leaves whose path string ``keep`` accepts."""
  out = {}
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    if keep(param_path(path)):
      node = out
      for k in path[:-1]:
        node = node.setdefault(k.key, {})
      node[path[-1].key] = x
  return out


def _replace(params, subset):
  """``params`` with the leaves that ``subset`` (from _subset) holds taken from it."""
  flat = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(subset)[0]}
  return jax.tree_util.tree_map_with_path(lambda p, x: flat.get(param_path(p), x), params)


def like_params_shardings(tree, params, mesh):
  """Sharding for every leaf of ``tree``: that of the parameter whose path it ends with."""
  by_path = {param_path(p): (x.shape, x.sharding)
             for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}

  def pick(path, leaf):
    keys = param_path(path).split("/")
    for start in range(len(keys)):
      hit = by_path.get("/".join(keys[start:]))
      if hit is not None and hit[0] == leaf.shape:
        return hit[1]
    return parallel.replicated(mesh)
  return jax.tree_util.tree_map_with_path(pick, tree)


@dataclasses.dataclass(frozen=True)
class TrainSetup:
  """What a train step is built from, besides the state it updates."""
  graphdef: nnx.GraphDef            # the model's structure (its params are in the state)
  shardings: dict                   # the sharding of every leaf of the state
  tx: optax.GradientTransformation  # the first stage's optimizer
  schedule: optax.Schedule          # the learning rate of the whole run, by global step


def create_train_state(config, mesh):
  """-> (TrainSetup, state): the train state of ``config``'s model at its seed, born sharded
  on ``mesh``: a dict of step, params, opt_state, nonfinite_steps and nonfinite_streak.

  Every stage's optimizer is the same chain with its own hyper-parameters and this one
  schedule, so one optimizer state serves the whole curriculum.
  """
  seed = config.seed
  stages = curriculum.resolve_stages(config)
  schedule = curriculum.learning_rate(stages)
  tx = make_optimizer(stages[0].config.optimizer, schedule)
  graphdef, params = parallel.create_sharded(
      lambda: MultimodalEmbedder(config.model, rngs=nnx.Rngs(seed)), mesh)
  state = {"params": params}
  trainable = Trainable(config.model)
  if trainable.adapters is not None:
    key = jax.random.fold_in(jax.random.key(seed), _LORA_KEY)
    with jax.set_mesh(mesh):
      state["lora"] = jax.jit(trainable.adapters.init,
                              out_shardings=parallel.replicated(mesh))(key)
  train = trainable.of(state)
  opt_shardings = like_params_shardings(jax.eval_shape(tx.init, train), train, mesh)
  with jax.set_mesh(mesh):
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(train)
  counter = lambda: jax.device_put(jnp.zeros((), jnp.int32), parallel.replicated(mesh))  # noqa: E731
  state = {"step": counter(), **state, "opt_state": opt_state,
           "nonfinite_steps": counter(), "nonfinite_streak": counter()}
  shardings = jax.tree.map(lambda x: x.sharding, state)
  return TrainSetup(graphdef, shardings, tx, schedule), state


def abstract_state(state):
  """ShapeDtypeStructs with shardings: the restore target for orbax."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
