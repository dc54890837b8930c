"""Shared check of the pretrained towers' tests (test_whisper.py, test_efficientnet.py)."""

import jax
import numpy as np

from gemb import parallel
from gemb.run.curriculum import param_path
from gemb.run.init_params import load_pretrained_params
from gemb.run.state import create_train_state


def check_pretrained_params_land(config, prefix, pretrained):
  """A fresh train state on a 2x2x2 mesh, with config's pretrained parts loaded: every
  array under ``prefix`` equals ``pretrained``'s, every other one is the fresh one, and every
  sharding is kept. -> {path: loaded array}."""
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  _, state, _, _, _ = create_train_state(config, mesh)
  fresh = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(state["params"])[0]}
  loaded = load_pretrained_params(config.model, state["params"])
  flat = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(loaded)[0]}
  expected = {prefix + param_path(p): x
              for p, x in jax.tree_util.tree_flatten_with_path(pretrained)[0]}
  assert set(expected) <= set(flat)
  for path, x in flat.items():
    assert x.sharding == fresh[path].sharding, path
    if path in expected:
      np.testing.assert_array_equal(np.asarray(x), expected[path])
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(fresh[path]))
  return flat, expected
