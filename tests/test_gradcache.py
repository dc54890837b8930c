"""GradCache (gemb/train/gradcache.py) against plain autodiff of the uncached loss.

The reference is `jax.value_and_grad` of the ordinary batch loss (every example embedded at
once, activations kept), on the real model with hard negatives, id masking, Matryoshka and
both loss kinds, on one device and on the 8-device mesh. GradCache must give the same loss
and parameter gradients to 1e-5, and the whole train step with cache_chunk the same state.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from configs.common import model_config
from gemb import parallel
from gemb.batch import IMAGE, SIDES, TEXT
from gemb.model.embedder_model import MultimodalEmbedder
from gemb.train import gradcache
from gemb.run.state import create_train_state
from gemb.train.step import batch_loss, embed_batch, embeddings_loss, make_train_step

B, K = 32, 2


def small_config(kind="infonce", dropout=0.0):
  c = tiny.get_config()
  c.model = model_config(width=32, depth=1, heads=4, mlp_dim=64, embed_dim=16, vocab_size=64,
                         text_len=6, image_size=8, patch=4, modalities=("text", "image"))
  c.model.dropout = dropout
  c.loss.kind = kind
  c.loss.margin = 0.2 if kind == "sigmoid" else None
  c.loss.matryoshka_dims = (8, 16)
  c.loss.matryoshka_weights = (0.5, 1.0)
  c.optimizer.warmup_steps = 1
  return c


def make_batch(seed=0):
  """Image -> text with K hard-negative texts, duplicate ids and a padding negative."""
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, 20, B).astype(np.int32)
  negative_id = rng.integers(20, 60, (B, K)).astype(np.int32)
  negative_id[3, 1] = -1
  negative_id[5, 0] = ids[7]
  return {
      "query": {"layout": np.full((B, 1), IMAGE, np.int32),
                "image": rng.uniform(-1, 1, (B, 1, 8, 8, 3)).astype(np.float32)},
      "candidate": {"layout": np.full((B, 1), TEXT, np.int32),
                    "text": rng.integers(1, 64, (B, 1, 6)).astype(np.int32)},
      "negatives": {"layout": np.full((B, K, 1), TEXT, np.int32),
                    "text": rng.integers(1, 64, (B, K, 1, 6)).astype(np.int32)},
      "query_id": ids, "candidate_id": ids, "negative_id": negative_id,
  }


def mesh_of(shape):
  if shape is None:
    return parallel.make_mesh(dict(data=1, fsdp=1, tensor=1), devices=jax.devices()[:1])
  return parallel.make_mesh(dict(zip(parallel.MESH_AXES, shape)))


def setup(config, shape, seed=0):
  mesh = mesh_of(shape)
  graphdef, params = parallel.create_sharded(
      lambda: MultimodalEmbedder(config.model, rngs=nnx.Rngs(config.seed)), mesh)
  batch = parallel.host_to_global(make_batch(seed), mesh)
  return mesh, graphdef, params, batch


def compiled(mesh, fn, *args):
  """fn compiled for args (its memory analysis is read from the result)."""
  with jax.set_mesh(mesh):
    return jax.jit(fn).lower(*args).compile()


def cached_fn(graphdef, config, mesh, chunk):
  """(params, batch, key) -> GradCache ((loss, metrics), grads)."""
  def fn(params, batch, key):
    return gradcache.cached_value_and_grad(
        lambda p, sides, k: embed_batch(nnx.merge(graphdef, p), sides, k),
        lambda p, emb: embeddings_loss(nnx.merge(graphdef, p), emb, batch, config.loss, mesh),
        params, {s: batch[s] for s in SIDES}, chunk_size=chunk, mesh=mesh, key=key)
  return fn


def uncached_fn(graphdef, config, mesh):
  """(params, batch) -> plain autodiff ((loss, metrics), grads) of the batch loss."""
  return jax.value_and_grad(
      lambda p, b: batch_loss(nnx.merge(graphdef, p), b, config.loss, mesh), has_aux=True)


def assert_same(result, reference):
  (loss, metrics), grads = result
  (ref_loss, ref_metrics), ref_grads = reference
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for name in ref_metrics:
    np.testing.assert_allclose(float(metrics[name]), float(ref_metrics[name]), rtol=1e-5,
                               err_msg=name)
  flat, _ = jax.tree_util.tree_flatten_with_path(grads)
  ref_flat = jax.tree.leaves(ref_grads)
  checked = 0
  for (path, g), r in zip(flat, ref_flat):
    g, r = np.asarray(g), np.asarray(r)
    scale = np.abs(r).max()
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * scale,
                               err_msg=jax.tree_util.keystr(path))
    checked += scale > 0
  assert checked >= len(ref_flat) - 1  # every gradient is live (at most the bias is not)


@pytest.mark.parametrize("kind,shape,chunk", [
    ("infonce", None, 8),
    ("sigmoid", (4, 2, 1), 8),
], ids=["infonce-1dev", "sigmoid-4x2x1"])
def test_gradcache_equals_uncached(kind, shape, chunk):
  """Hard negatives (one of them padding), duplicate ids, Matryoshka dims (8, 16); the
  8-device case also checks the chunked cross-device layout. And the point of it all: on one
  device, XLA's compiled temp memory of the cached gradient is a fraction of the uncached one."""
  config = small_config(kind)
  mesh, graphdef, params, batch = setup(config, shape)
  cached = compiled(mesh, cached_fn(graphdef, config, mesh, chunk), params, batch, None)
  plain = compiled(mesh, uncached_fn(graphdef, config, mesh), params, batch)
  with jax.set_mesh(mesh):
    result = cached(params, batch, None)
    assert_same(result, plain(params, batch))
  if kind == "sigmoid":  # the bias gradient comes from the loss alone, and flows
    assert abs(float(result[1]["logit_bias"])) > 1e-4
  if shape is None:  # (8 devices hold 4 examples each: activations too small to matter)
    temp = [c.memory_analysis().temp_size_in_bytes for c in (cached, plain)]
    assert temp[0] < 0.6 * temp[1], temp


@pytest.mark.slow  # CI time: the default suite checks GradCache / bench without it
def test_gradcache_with_dropout_uses_each_chunks_key_in_both_passes():
  """With dropout, chunk j embeds with key j in the forward-only pass and in the VJP pass;
  the reference differentiates straight through the same chunked, keyed embedding."""
  config = small_config(dropout=0.2)
  mesh, graphdef, params, batch = setup(config, None)
  chunk = 16
  chunks = gradcache.num_chunks(B, chunk, mesh)

  def reference(p, b, key):
    model = nnx.merge(graphdef, p)
    chunked = jax.tree.map(lambda x: gradcache.to_chunks(x, chunks, mesh),
                           {s: b[s] for s in SIDES})
    keys = gradcache.chunk_keys(key, chunks)
    parts = [embed_batch(model, jax.tree.map(lambda x, j=j: x[j], chunked), keys[j])
             for j in range(chunks)]
    emb = jax.tree.map(lambda *xs: gradcache.from_chunks(jnp.stack(xs), mesh), *parts)
    return embeddings_loss(model, emb, b, config.loss, mesh)

  key = jax.random.key(7)
  ref = compiled(mesh, jax.value_and_grad(reference, has_aux=True), params, batch, key)
  cached = compiled(mesh, cached_fn(graphdef, config, mesh, chunk), params, batch, key)
  with jax.set_mesh(mesh):
    result = cached(params, batch, key)
    assert_same(result, ref(params, batch, key))
    # Dropout is really on: another key gives another loss.
    other = cached(params, batch, jax.random.key(8))
  assert abs(float(result[0][0]) - float(other[0][0])) > 1e-4


def test_chunks_take_an_equal_share_of_every_device():
  """Chunk j holds rows [s*b + j*b/C, s*b + (j+1)*b/C) of every device s, each on the device
  that already held it (no example moves), and from_chunks restores the batch order."""
  mesh = mesh_of((4, 2, 1))
  x = jax.device_put(np.arange(B * 3).reshape(B, 3), parallel.batch_sharding(mesh, 2))
  chunks, shards = 2, 8
  b = B // shards
  with jax.set_mesh(mesh):
    chunked = jax.jit(lambda v: gradcache.to_chunks(v, chunks, mesh))(x)
    back = jax.jit(lambda v: gradcache.from_chunks(v, mesh))(chunked)
  expect = np.stack([np.concatenate([np.arange(s * b + j * b // chunks,
                                               s * b + (j + 1) * b // chunks)
                                     for s in range(shards)]) for j in range(chunks)])
  np.testing.assert_array_equal(np.asarray(chunked)[..., 0] // 3, expect)
  np.testing.assert_array_equal(np.asarray(back), np.asarray(x))
  owner = {int(r): shard.device for shard in x.addressable_shards
           for r in np.asarray(shard.data)[:, 0] // 3}
  for shard in chunked.addressable_shards:
    assert all(owner[int(r)] == shard.device for r in np.asarray(shard.data)[..., 0].ravel() // 3)


def test_train_step_with_cache_chunk_equals_plain_step():
  mesh = mesh_of((2, 2, 2))
  data = [parallel.host_to_global(make_batch(seed), mesh) for seed in range(2)]

  def run(config):
    graphdef, state, shardings, tx, schedule = create_train_state(config, mesh)
    step = make_train_step(graphdef, tx, schedule, config, mesh, shardings)
    out = []
    with jax.set_mesh(mesh):
      for batch in data:
        state, metrics = step(state, batch)
        out.append({k: float(v) for k, v in metrics.compute().items()})
    return state, out, step

  plain_state, plain_metrics, _ = run(small_config())
  config = small_config()
  config.loss.cache_chunk = 8
  config.loss.score_block = 24  # and the chunked loss: 32 + 64 columns in blocks of 24
  state, metrics, step = run(config)
  for m, r in zip(metrics, plain_metrics):
    for name in ("loss", "accuracy", "grad_norm", "temperature"):
      np.testing.assert_allclose(m[name], r[name], rtol=1e-5, err_msg=name)
  assert plain_metrics[0]["loss"] != plain_metrics[1]["loss"]
  jax.tree.map(lambda a, r: np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-5,
                                                       atol=1e-6),
               state["params"], plain_state["params"])
  assert step._cache_size() == 1


@pytest.mark.parametrize("chunk,match", [(5, "divide the global batch"), (0, "> 0"),
                                         (4, "multiple of the 8 batch shards")])
def test_bad_chunk_raises(chunk, match):
  mesh = mesh_of((4, 2, 1))
  with pytest.raises(ValueError, match=f"cache_chunk={chunk}.*{match}"):
    gradcache.num_chunks(B, chunk, mesh)
