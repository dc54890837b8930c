"""Meshes, logical-axis sharding rules, and host <-> global array transfer.

Parameters and key activations carry *logical* axis names ("embed", "mlp", "heads", ...).
``LOGICAL_RULES`` maps each one onto the physical mesh axes ("data", "fsdp", "tensor"), so
data / fully-sharded / tensor parallelism is a config change (``config.mesh``), not a code
change. A logical axis whose mesh axes do not divide the array dimension is replicated
instead, so odd sizes (a 1000-token vocabulary on a 3-way tensor axis) still work.
"""

import math

import jax
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

# logical axis -> mesh axis (or tuple of mesh axes, or None = replicated).
LOGICAL_RULES = (
    ("batch", BATCH_AXES),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),  # grouped-query attention's key/value heads (Gemma 3)
    ("qkv", None),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("patch", None),
    ("layers", None),
    ("length", None),
    ("positions", None),
    ("modality", None),
    ("output", None),
)
_RULES = dict(LOGICAL_RULES)


def make_mesh(mesh_config, devices=None):
  """Mesh over ``MESH_AXES`` with sizes from config; one size may be -1 (= the rest)."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = [int(mesh_config[name]) for name in MESH_AXES]
  if sizes.count(-1) > 1:
    raise ValueError(f"config.mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError("config.mesh: sizes must be positive or -1, got "
                     f"{dict(zip(MESH_AXES, sizes))}")
  if -1 in sizes:
    if len(devices) % fixed:
      raise ValueError(f"config.mesh: {len(devices)} devices are not divisible by {fixed}")
    sizes[sizes.index(-1)] = len(devices) // fixed
  if math.prod(sizes) != len(devices):
    raise ValueError(f"config.mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"there are {len(devices)}")
  # Auto axes: shardings propagate through jit (GSPMD), which the logical-rules style needs.
  return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(jax.sharding.AxisType.Auto,) * 3,
                       devices=devices)


def logical_to_spec(logical_axes, shape=None, mesh=None):
  """PartitionSpec for logical axis names; drops mesh axes that do not divide ``shape``."""
  spec, used = [], set()
  for i, name in enumerate(logical_axes):
    if name is not None and name not in _RULES:
      raise KeyError(f"logical axis {name!r} has no rule in gemb.parallel.LOGICAL_RULES")
    target = _RULES.get(name) if name is not None else None
    axes = (target,) if isinstance(target, str) else tuple(target or ())
    axes = tuple(a for a in axes if a not in used)  # a mesh axis may shard one dim only
    if mesh is not None:
      axes = tuple(a for a in axes if mesh.shape.get(a, 1) > 1)
      if shape is not None and axes and shape[i] % math.prod(mesh.shape[a] for a in axes):
        axes = ()
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else (axes or None))
  return P(*spec)


def constrain(x, logical_axes):
  """Pin an activation's sharding by logical names; a no-op outside a mesh context."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  return jax.lax.with_sharding_constraint(x, logical_to_spec(logical_axes, x.shape, mesh))


def variable_axes(variable):
  """Logical axes of an nnx.Variable (its ``out_sharding`` metadata), or () if none."""
  return tuple(variable.get_metadata().get("out_sharding") or ())


def state_specs(abstract_state, mesh):
  """A pure-dict tree of PartitionSpecs for an abstract nnx.State, following the rules."""
  def spec(v):
    axes = variable_axes(v)
    if not axes:
      return P()
    if len(axes) != len(v.shape):
      raise ValueError(f"logical axes {axes} do not match shape {v.shape}")
    return logical_to_spec(axes, v.shape, mesh)
  specs = jax.tree.map(spec, abstract_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
  return nnx.to_pure_dict(specs, extract_fn=lambda x: x)


def create_sharded(make_module, mesh):
  """Builds an NNX module with every parameter born sharded on ``mesh``.

  Returns (graphdef, params): ``params`` is a pure dict of global jax.Arrays. Nothing is
  materialized unsharded: shapes come from nnx.eval_shape and init runs under jit with
  out_shardings (a large model never exists whole on one device).
  """
  abstract = nnx.eval_shape(make_module)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), state_specs(abstract_state, mesh))

  def init():
    return nnx.to_pure_dict(nnx.state(make_module()))

  with jax.set_mesh(mesh):
    params = jax.jit(init, out_shardings=shardings)()
  return graphdef, params


def batch_sharding(mesh, ndim=1):
  """Sharding of an array whose leading dim is the batch."""
  return NamedSharding(mesh, P(BATCH_AXES, *([None] * (ndim - 1))))


def host_to_global(tree, mesh):
  """Process-local numpy batch -> global jax.Arrays sharded over the batch axes.

  Each process passes its own slice of the global batch (disjoint data shards).
  """
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(batch_sharding(mesh, np.ndim(x)), x), tree)


def replicated(mesh):
  return NamedSharding(mesh, P())
