"""The sharded train step: equal to one device, pinned shardings, no recompilation."""

import jax
import numpy as np
import pytest

from configs import tiny
from configs.common import model_config
from gemb import parallel
from gemb.batch import IMAGE, TEXT
from gemb.run.curriculum import frozen_mask
from gemb.run.state import create_train_state
from gemb.train.step import make_train_step

B, K = 16, 2


def small_config():
  c = tiny.get_config()
  c.model = model_config(width=32, depth=2, heads=4, mlp_dim=64, embed_dim=16, vocab_size=64,
                         text_len=6, image_size=8, patch=4, modalities=("text", "image"))
  c.model.dropout = 0.1  # exercises the per-step dropout keys too
  c.loss.matryoshka_dims = (8, 16)
  c.loss.matryoshka_weights = (0.5, 1.0)
  c.optimizer.warmup_steps = 1
  return c


def batches(n, seed=0):
  """Image -> text batches with K hard-negative texts and some duplicate candidate ids."""
  rng = np.random.default_rng(seed)
  out = []
  for _ in range(n):
    ids = rng.integers(0, 12, B).astype(np.int32)  # duplicates -> false-negative masking
    out.append({
        "query": {"layout": np.full((B, 1), IMAGE, np.int32),
                  "image": rng.uniform(-1, 1, (B, 1, 8, 8, 3)).astype(np.float32)},
        "candidate": {"layout": np.full((B, 1), TEXT, np.int32),
                      "text": rng.integers(1, 64, (B, 1, 6)).astype(np.int32)},
        "negatives": {"layout": np.full((B, K, 1), TEXT, np.int32),
                      "text": rng.integers(1, 64, (B, K, 1, 6)).astype(np.int32)},
        "query_id": ids, "candidate_id": ids,
        "negative_id": rng.integers(12, 40, (B, K)).astype(np.int32),
    })
  return out


def run_steps(config, mesh, data, frozen_pattern=""):
  graphdef, state, shardings, tx, schedule = create_train_state(config, mesh)
  frozen = frozen_mask(state["params"], frozen_pattern) if frozen_pattern else None
  step = make_train_step(graphdef, tx, schedule, config, mesh, shardings, frozen)
  losses = []
  with jax.set_mesh(mesh):
    for batch in data:
      state, metrics = step(state, parallel.host_to_global(batch, mesh))
      losses.append(float(metrics.compute()["loss"]))
  return state, shardings, step, losses


@pytest.fixture(scope="module")
def single_device_run():
  config = small_config()
  mesh = parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  return run_steps(config, mesh, batches(3))


def test_sharded_steps_equal_single_device(single_device_run):
  ref_state, _, _, ref_losses = single_device_run
  config = small_config()
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  state, shardings, step, losses = run_steps(config, mesh, batches(3))
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  assert losses[0] != losses[-1]  # the steps actually trained
  # atol: the three steps move each element by up to ~6e-4 (Adam, lr <= 3e-4 in warm-up).
  # Adam divides each gradient element by its own RMS, so the float32 reassociation of the
  # sharded reductions can show as ~1e-6 in an element with a tiny gradient (seen: 1.03e-6
  # in one of 192 elements, 2026-11-27); a real sharding error is far larger.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                                                       atol=5e-6),
               state["params"], ref_state["params"])
  # Shardings are pinned: params keep the rules' layout after the steps ...
  kernel = state["params"]["encoder"]["blocks"]["mlp"]["up"]["kernel"]
  assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  jax.tree.map(lambda x, s: x.sharding.is_equivalent_to(s, x.ndim) or pytest.fail(str(x.sharding)),
               state, shardings)
  # ... and Adam's moments are sharded like their parameters.
  mu = state["opt_state"][1][0].mu["encoder"]["blocks"]["mlp"]["up"]["kernel"]
  assert mu.sharding.spec == kernel.sharding.spec
  # One compilation for all steps.
  assert step._cache_size() == 1


def test_no_recompile_after_first_step():
  config = small_config()
  mesh = parallel.make_mesh(dict(data=4, fsdp=2, tensor=1))
  _, _, step, _ = run_steps(config, mesh, batches(2, seed=1))
  assert step._cache_size() == 1


def test_nonfinite_step_is_skipped_and_counted():
  config = small_config()
  config.model.dropout = 0.0  # dropout keys follow the step counter, which NaN steps advance
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  good = batches(3)
  poisoned = dict(good[1], query=dict(good[1]["query"]))
  poisoned["query"]["image"] = np.full_like(good[1]["query"]["image"], np.nan)
  # good, NaN, NaN, good, good: the NaN steps change nothing (params, Adam, schedule count).
  state, _, _, losses = run_steps(config, mesh, [good[0], poisoned, poisoned, good[1], good[2]])
  ref_state, _, _, ref_losses = run_steps(config, mesh, good)
  assert np.isnan(losses[1]) and np.isnan(losses[2])
  np.testing.assert_allclose([losses[0], losses[3], losses[4]], ref_losses, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6,
                                                       atol=1e-7),
               state["params"], ref_state["params"])
  assert int(state["nonfinite_steps"]) == 2 and int(state["nonfinite_streak"]) == 0
  assert int(state["step"]) == 5


def test_frozen_parameters_do_not_move():
  config = small_config()
  config.optimizer.weight_decay = 0.5  # decay would move them if the update were not masked
  mesh = parallel.make_mesh(dict(data=8, fsdp=1, tensor=1))
  graphdef, init, _, _, _ = create_train_state(config, mesh)
  init = jax.tree.map(np.asarray, init["params"])
  state, _, _, _ = run_steps(config, mesh, batches(2), frozen_pattern="^(image|encoder/blocks/mlp)/")
  after = state["params"]
  np.testing.assert_array_equal(after["image"]["proj"]["kernel"], init["image"]["proj"]["kernel"])
  np.testing.assert_array_equal(after["encoder"]["blocks"]["mlp"]["up"]["kernel"],
                                init["encoder"]["blocks"]["mlp"]["up"]["kernel"])
  assert not np.array_equal(after["text"]["table"], init["text"]["table"])
  assert not np.array_equal(after["encoder"]["blocks"]["attn"]["qkv"],
                            init["encoder"]["blocks"]["attn"]["qkv"])
