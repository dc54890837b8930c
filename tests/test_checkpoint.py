"""Checkpoints: restore onto another mesh / device count, keep latest N + best K + pinned,
init_from another run's params (a subset, no optimizer state), and the model soup."""

import grain
import jax
import numpy as np
import pytest

from configs import tiny
from configs.common import model_config
from gemb import parallel
from gemb.run.checkpoint import Checkpointer
from gemb.run.init_params import load_init_params
from gemb.run.state import create_train_state


def small_config(seed=0):
  c = tiny.get_config()
  c.seed = seed
  c.model = model_config(width=32, depth=2, heads=4, mlp_dim=64, embed_dim=16, vocab_size=64,
                         text_len=6, image_size=8, patch=4, modalities=("text", "image"))
  c.loss.matryoshka_dims = (16,)
  c.loss.matryoshka_weights = (1.0,)
  return c


def data_iterator(position=0):
  """A grain iterator over 0, 1, 2, ... advanced to ``position``."""
  iterator = iter(grain.MapDataset.range(100).to_iter_dataset())
  for _ in range(position):
    next(iterator)
  return iterator


def state_on(mesh_shape, devices=None, seed=0):
  mesh = parallel.make_mesh(dict(zip(("data", "fsdp", "tensor"), mesh_shape)), devices=devices)
  return create_train_state(small_config(seed), mesh)[1]


def as_numpy(tree):
  return jax.tree.map(np.asarray, tree)


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, as_numpy(a), as_numpy(b))


def test_restore_onto_another_mesh_and_fewer_devices(tmp_path):
  saved = state_on((2, 2, 2), seed=1)
  ckpt = Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(7, saved, data_iterator(5), {"stage_index": 0, "stage": "align"})
  for shape, devices in (((8, 1, 1), None), ((1, 2, 2), jax.devices()[:4]),
                         ((1, 1, 1), jax.devices()[:1])):
    target = state_on(shape, devices)  # seed 0: other values, the new mesh's shardings
    restored = ckpt.restore_state(7, target)
    assert_trees_equal(restored, saved)
    jax.tree.map(lambda r, t: r.sharding.is_equivalent_to(t.sharding, r.ndim) or
                 pytest.fail(f"{r.sharding} != {t.sharding}"), restored, target)
  iterator = data_iterator()
  ckpt.restore_data(7, iterator)
  assert next(iterator) == 5
  assert ckpt.restore_meta(7)["stage"] == "align"
  ckpt.close()


def test_keeps_latest_best_and_pinned(tmp_path):
  state = state_on((8, 1, 1))
  ckpt = Checkpointer(str(tmp_path), keep=2, keep_best=1, pinned=(3,), async_save=False)
  for step, score in zip(range(1, 8), (0.5, 0.9, 0.1, None, 0.2, 0.3, None)):
    ckpt.save(step, state, data_iterator(), {"stage_index": 0}, score=score)
  # latest 2 (6, 7), best by score (2), pinned (3).
  assert ckpt.all_steps() == [2, 3, 6, 7]
  ckpt.close()


def test_init_from_copies_matching_params_only(tmp_path):
  source = state_on((2, 2, 2), seed=1)
  ckpt = Checkpointer(str(tmp_path / "source"), async_save=False)
  ckpt.save(4, source, data_iterator(), {"stage_index": 0})
  ckpt.close()
  fresh = state_on((8, 1, 1), seed=0)
  params = load_init_params(str(tmp_path / "source"), "^(text|encoder)/", fresh["params"])
  src, new, old = as_numpy(source["params"]), as_numpy(params), as_numpy(fresh["params"])
  np.testing.assert_array_equal(new["text"]["table"], src["text"]["table"])
  np.testing.assert_array_equal(new["encoder"]["blocks"]["mlp"]["up"]["kernel"],
                                src["encoder"]["blocks"]["mlp"]["up"]["kernel"])
  np.testing.assert_array_equal(new["image"]["proj"]["kernel"], old["image"]["proj"]["kernel"])
  assert not np.array_equal(new["text"]["table"], old["text"]["table"])
  assert params["text"]["table"].sharding == fresh["params"]["text"]["table"].sharding
  with pytest.raises(ValueError, match="no checkpoint"):
    load_init_params(str(tmp_path / "nowhere"), ".*", fresh["params"])
  with pytest.raises(ValueError, match="matches no parameter"):
    load_init_params(str(tmp_path / "source"), "^nothing/", fresh["params"])
