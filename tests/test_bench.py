"""The bench command's measurements and the bfloat16 compute switch (model.dtype)."""
import jax
import numpy as np
import pytest

from configs import bench as bench_config
from gemb import bench, parallel
from gemb.run.state import create_train_state
from gemb.train.step import make_train_step


def tiny_bench_config(**loss):
  c = bench_config.get_config("small")
  c.model.width, c.model.depth, c.model.mlp_dim, c.model.embed_dim = 32, 1, 64, 16
  c.model.text.vocab_size, c.model.text.max_len, c.model.image.size = 64, 6, 16
  c.loss.matryoshka_dims = (16,)
  c.data.batch_size = 16
  c.bench.devices = 1
  c.bench.warmup, c.bench.steps = 1, 2
  c.loss.update(loss)
  return c


def test_run_reports_time_flops_and_compiled_memory():
  plain = bench.run(tiny_bench_config())
  cached = bench.run(tiny_bench_config(cache_chunk=4, score_block=8))
  for r in (plain, cached):
    assert r["ran"] and r["examples_per_s"] > 0 and np.isfinite(r["loss"])
    m = r["memory_bytes"]
    assert m["total"] == m["temp"] + m["arguments"] + m["outputs"] - m["aliased"] > 0
    assert r["peak_rss_mib"] > 100
    assert r["mfu"] is None  # a float32 CPU step has no bf16 peak to compare with
  # The same first step, whichever way its gradient is computed.
  np.testing.assert_allclose(cached["loss"], plain["loss"], rtol=1e-5)
  assert cached["memory_bytes"]["temp"] < plain["memory_bytes"]["temp"]
  config = tiny_bench_config(cache_chunk=4)
  config.bench.compile_only = True
  only = bench.run(config)
  assert not only["ran"] and "step_s_median" not in only


def test_embed_mode_times_the_eval_encoder():
  config = tiny_bench_config()
  config.bench.mode, config.bench.embed_batch = "embed", 8
  r = bench.run(config)
  assert r["mode"] == "embed" and r["batch"] == 8 and r["examples_per_s"] > 0
  # Forward FLOPs of one image and one text, without the loss's logits.
  forward, _ = bench.flops_per_example(config)
  assert r["flops_per_example_fwd"] == forward - 4 * config.data.batch_size * 16
  config.bench.mode = "eval"
  with pytest.raises(ValueError, match="bench.mode='eval'"):
    bench.run(config)


def test_bf16_peaks():
  assert bench.bf16_peak("NVIDIA H100 80GB HBM3") == 989e12
  assert bench.bf16_peak("NVIDIA H200") == 989e12
  assert bench.bf16_peak("cpu") is None


@pytest.mark.slow  # CI time: the default suite checks GradCache / bench without it
def test_bfloat16_compute_is_close_to_float32():
  """model.dtype=bfloat16 runs the step in bf16 (params stay float32) and trains like f32."""
  def steps(dtype):
    config = tiny_bench_config()
    config.model.dtype = dtype
    mesh = parallel.make_mesh(config.mesh, devices=jax.devices()[:1])
    graphdef, state, shardings, tx, schedule = create_train_state(config, mesh)
    step = make_train_step(graphdef, tx, schedule, config, mesh, shardings)
    batch = parallel.host_to_global(bench.synthetic_batch(config), mesh)
    with jax.set_mesh(mesh):
      hlo = step.lower(state, batch).as_text()
      losses = []
      for _ in range(3):
        state, metrics = step(state, batch)
        losses.append(float(metrics.compute()["loss"]))
    return losses, state, hlo

  f32, f32_state, f32_hlo = steps("float32")
  bf16, bf16_state, bf16_hlo = steps("bfloat16")
  assert "bf16" in bf16_hlo and "bf16" not in f32_hlo
  assert f32[-1] < f32[0]  # it trains, and bf16 follows it
  np.testing.assert_allclose(bf16, f32, rtol=2e-2)
  assert all(x.dtype == np.float32 for x in jax.tree.leaves(bf16_state["params"]))
