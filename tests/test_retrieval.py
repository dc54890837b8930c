"""Blocked / sharded top-k vs a brute-force argsort, encode batching, retrieval_metrics vs
metrics computed independently from the full score matrix."""
import math

import jax
import numpy as np
import pytest
from sklearn import metrics as skm

from gemb.eval import retrieval


def brute_top_k(queries, candidates, k):
  """Full score matrix, stable sort: equal scores keep index order (lower index first)."""
  scores = np.asarray(queries, np.float64) @ np.asarray(candidates, np.float64).T
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.take_along_axis(scores, order, axis=1), order


def int_embeddings(seed, n, d=4):
  """Small-integer vectors: dot products are exact in float32 and ties are frequent, so the
  comparison checks the tie-break as well as the ordering."""
  return np.random.default_rng(seed).integers(-2, 3, size=(n, d)).astype(np.float32)


def unit_embeddings(seed, n, d=16):
  x = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_mesh(shape, names):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


@pytest.mark.parametrize("block_size", [1, 3, 7, 16, 64])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_top_k_equals_brute_force_with_ties(block_size, k):
  q, c = int_embeddings(0, 9), int_embeddings(1, 37)  # 37: no block size divides it.
  scores, index = retrieval.top_k(q, c, k, block_size=block_size)
  ref_scores, ref_index = brute_top_k(q, c, k)
  assert index.dtype == np.int32 and scores.shape == (9, k)
  np.testing.assert_array_equal(np.asarray(index), ref_index)
  np.testing.assert_array_equal(np.asarray(scores), ref_scores)


def test_top_k_unit_vectors_k_equals_c():
  q, c = unit_embeddings(2, 13), unit_embeddings(3, 29)
  scores, index = retrieval.top_k(q, c, 29, block_size=8)
  ref_scores, ref_index = brute_top_k(q, c, 29)
  np.testing.assert_array_equal(np.asarray(index), ref_index)
  np.testing.assert_allclose(np.asarray(scores), ref_scores, atol=1e-6)


def test_all_equal_scores_give_lowest_indices():
  q = np.ones((2, 3), np.float32)
  c = np.ones((11, 3), np.float32)
  _, index = retrieval.top_k(q, c, 6, block_size=4)
  np.testing.assert_array_equal(np.asarray(index), [list(range(6))] * 2)


@pytest.mark.parametrize("shape, names", [
    ((4, 2), ("data", "fsdp")),          # candidates over all 8 devices
    ((8,), ("data",)),                   # 'fsdp' absent from the mesh: skipped
    ((2, 2, 2), ("data", "fsdp", "tensor")),  # 4 shards, replicated over 'tensor'
])
@pytest.mark.parametrize("block_size", [3, 100])
@pytest.mark.parametrize("num_c", [37, 5])
def test_top_k_sharded_equals_brute_force(shape, names, block_size, num_c):
  mesh = make_mesh(shape, names)
  q, c = int_embeddings(4, 6), int_embeddings(5, num_c)
  k = min(10, num_c)  # 37 over 8 devices is 5 per shard: k=10 spans shards.
  scores, index = retrieval.top_k(q, c, k, block_size=block_size, mesh=mesh)
  ref_scores, ref_index = brute_top_k(q, c, k)
  np.testing.assert_array_equal(np.asarray(index), ref_index)
  np.testing.assert_array_equal(np.asarray(scores), ref_scores)


@pytest.mark.parametrize("as_jax", [False, True])  # numpy is padded on the host, jax in jit
def test_top_k_sharded_unit_vectors(as_jax):
  mesh = make_mesh((4, 2), ("data", "fsdp"))
  q, c = unit_embeddings(6, 10), unit_embeddings(7, 203)
  if as_jax:
    q, c = jax.numpy.asarray(q), jax.numpy.asarray(c)
  scores, index = retrieval.top_k(q, c, 17, block_size=8, mesh=mesh)
  ref_scores, ref_index = brute_top_k(np.asarray(q), np.asarray(c), 17)
  np.testing.assert_array_equal(np.asarray(index), ref_index)
  np.testing.assert_allclose(np.asarray(scores), ref_scores, atol=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(k=0), r"k must be an int in \[1, 6\].*got 0"),
    (dict(k=7), r"k must be an int in \[1, 6\].*got 7"),
    (dict(k=2, block_size=0), "block_size must be a positive int, got 0"),
    (dict(k=2, mesh=make_mesh((8,), ("x",))), r"none of the axes \('data', 'fsdp'\)"),
])
def test_top_k_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    retrieval.top_k(np.zeros((2, 3)), np.zeros((6, 3)), **kwargs)
  with pytest.raises(ValueError, match="must share D"):
    retrieval.top_k(np.zeros((2, 3)), np.zeros((6, 4)), 1)


def test_encode_static_batches_and_padding():
  rng = np.random.default_rng(0)
  side = {"layout": np.arange(10, dtype=np.int32)[:, None],
          "text": rng.integers(0, 50, size=(10, 2, 5)).astype(np.int32)}
  traces = []

  @jax.jit
  def embed(batch):
    traces.append(batch["text"].shape)  # Runs once per compilation.
    return jax.numpy.stack([batch["text"].sum((1, 2)), batch["layout"][:, 0]], axis=1)

  out = retrieval.encode(embed, side, batch_size=4)
  assert out.shape == (10, 2) and isinstance(out, np.ndarray)
  np.testing.assert_array_equal(out[:, 0], side["text"].sum((1, 2)))
  np.testing.assert_array_equal(out[:, 1], np.arange(10))
  assert traces == [(4, 2, 5)]  # Three calls (4 + 4 + 2 padded to 4), one compilation.

  seen = []
  def record(batch):
    seen.append(batch["layout"][:, 0].copy())
    return np.zeros((len(batch["layout"]), 3))
  assert retrieval.encode(record, side, batch_size=4).shape == (10, 3)
  np.testing.assert_array_equal(seen[-1], [8, 9, 9, 9])  # Last example repeated.
  assert retrieval.encode(record, side, batch_size=32).shape == (10, 3)
  np.testing.assert_array_equal(seen[-1], [0, 1, 2, 3, 4, 5, 6, 7, 8] + [9] * 23)


def test_encode_errors():
  with pytest.raises(ValueError, match="leading dim"):
    retrieval.encode(lambda b: b, {"a": np.zeros((3, 1)), "b": np.zeros((4, 1))}, 2)
  with pytest.raises(ValueError, match="batch_size must be a positive int, got 0"):
    retrieval.encode(lambda b: b["a"], {"a": np.zeros((3, 1))}, 0)
  with pytest.raises(ValueError, match=r"must return \[batch_size=2, D\], got \(2,\)"):
    retrieval.encode(lambda b: b["a"][:, 0], {"a": np.zeros((3, 1))}, 2)


def reference_metrics(queries, candidates, qrels):
  """The eval metrics from the full score matrix, without gemb.eval.metrics."""
  scores = queries.astype(np.float64) @ candidates.astype(np.float64).T
  order = np.argsort(-scores, axis=1, kind="stable")
  grades = np.zeros(scores.shape)
  for q, rel in enumerate(qrels):
    for c, g in rel.items():
      grades[q, c] = g
  rank_of_first = np.array([min(np.nonzero(np.isin(row, list(rel)))[0]) + 1
                            for row, rel in zip(order, qrels)])
  num_c = candidates.shape[0]
  return {
      **{f"R@{k}": float(np.mean(rank_of_first <= k)) for k in (1, 5, 10)},
      "NDCG@10": skm.ndcg_score(grades, scores, k=10),
      "MRR@10": float(np.mean(np.where(rank_of_first <= 10, 1.0 / rank_of_first, 0.0))),
      "num_queries": queries.shape[0],
      "num_candidates": num_c,
      "chance_R@1": float(np.mean([len(rel) / num_c for rel in qrels])),
  }


@pytest.mark.parametrize("num_c", [57, 6])  # 6 < 10: cutoffs above C are evaluated at C.
@pytest.mark.parametrize("sharded", [False, True])
def test_retrieval_metrics_vs_reference(num_c, sharded):
  rng = np.random.default_rng(num_c)
  candidates = unit_embeddings(8, num_c)
  # Queries near their first relevant candidate, so the metrics are neither 0 nor 1.
  qrels = [{int(c): int(rng.integers(1, 3)) for c in rng.choice(num_c, 2, replace=False)}
           for _ in range(23)]
  queries = np.stack([candidates[min(rel)] for rel in qrels])
  queries = queries + 0.9 * rng.normal(size=queries.shape).astype(np.float32)
  queries /= np.linalg.norm(queries, axis=1, keepdims=True)
  mesh = make_mesh((4, 2), ("data", "fsdp")) if sharded else None
  result = retrieval.retrieval_metrics(queries, candidates, qrels, mesh=mesh, block_size=16)
  expected = reference_metrics(queries, candidates, qrels)
  assert list(result) == ["R@1", "R@5", "R@10", "NDCG@10", "MRR@10", "num_queries",
                          "num_candidates", "chance_R@1"]
  for key, value in expected.items():
    assert result[key] == pytest.approx(value, abs=1e-9), key
  assert all(0.0 <= result[k] <= 1.0 for k in ("R@1", "R@5", "R@10", "NDCG@10", "MRR@10"))
  if num_c > 10:
    assert 0 < result["R@1"] < result["R@10"] < 1  # The case discriminates.


def test_retrieval_metrics_errors():
  q, c = unit_embeddings(0, 3), unit_embeddings(1, 4)
  with pytest.raises(ValueError, match=r"candidate indices \[4\] out of range \[0, 4\)"):
    retrieval.retrieval_metrics(q, c, [{0: 1}, {1: 1}, {4: 1}])
  with pytest.raises(ValueError, match="qrels has 2 queries but query_emb has 3"):
    retrieval.retrieval_metrics(q, c, [{0: 1}, {1: 1}])
  assert math.isclose(
      retrieval.retrieval_metrics(q, c, [{0: 1}, {1: 1}, {2: 1}], ks=(2,))["chance_R@1"], 0.25)


def test_top_k_never_builds_the_full_score_matrix():
  q, c = unit_embeddings(9, 8, d=4), unit_embeddings(10, 1000, d=4)
  hlo = retrieval._top_k_single.lower(q, c, k=5, block=10).compile().as_text()
  assert "f32[8,10]" in hlo  # One block of scores...
  assert "f32[8,1000]" not in hlo and "f32[1000,8]" not in hlo  # ...never all of them.


def test_encode_cuts_text_padding_and_keeps_the_embeddings(devices):
  """Texts of 2..60 tokens in 64-token slots, before an image: batched shortest first with
  the text cut to 16 / 32 / 48 / 64 tokens, the model's embeddings equal those of the full
  padded batches (positions count valid tokens only) and come back in the side's order."""
  from configs import tiny
  from gemb import batch as batch_format
  from gemb import parallel
  from gemb.eval.tasks import make_embed_fn
  from gemb.run.state import create_train_state
  c = tiny.get_config()
  c.model.text.max_len = 64
  c.mesh = dict(data=1, fsdp=1, tensor=1)
  mesh = parallel.make_mesh(c.mesh, devices=devices[:1])
  setup, state = create_train_state(c, mesh)
  embed = make_embed_fn(setup.graphdef, state["params"], mesh, 8)
  rng = np.random.default_rng(0)
  n = 20
  lengths = rng.integers(2, 61, n)
  text = np.zeros((n, 1, 64), np.int32)
  for i, length in enumerate(lengths):
    text[i, 0, :length] = rng.integers(3, 1000, length)
  side = {"layout": np.tile(np.int32([batch_format.TEXT, batch_format.IMAGE]), (n, 1)),
          "text": text, "image": rng.uniform(-1, 1, (n, 1, 32, 32, 3)).astype(np.float32)}
  shapes = []

  def recording(batch):
    shapes.append(batch["text"].shape[-1])
    return embed(batch)

  cut = retrieval.encode(recording, side, batch_size=8)
  assert shapes == sorted(shapes) and shapes[0] < 64  # shortest first, padding cut
  rows = [np.arange(0, 8), np.arange(8, 16), np.int32([16, 17, 18, 19] * 2)]
  full = np.concatenate([np.asarray(embed(jax.tree.map(lambda x: x[r], side)))
                         for r in rows])[:n]
  np.testing.assert_allclose(cut, full, atol=2e-5, rtol=0)
