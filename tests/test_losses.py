"""Tests of gemb/losses.py against an independent float64 numpy reference.

The reference below never calls gemb.losses (nor jax): it lays out the B + B*K columns one
by one, builds every mask with explicit loops over (query, column) pairs, computes the loss
over the whole global batch in float64 numpy, and derives its gradients by hand (checked
here by central finite differences). The sharded loss (shard_map on 8 simulated devices,
under jit) must match it, value and gradients, to 1e-5 relative.
"""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from gemb import losses

B, K, D = 16, 3, 32
SCALE, BIAS = 10.0, -4.0
AXES = ("data", "fsdp", "tensor")


def _config(kind="infonce", symmetric=False, mask=True, margin=None, dims=(), weights=()):
  return types.SimpleNamespace(kind=kind, symmetric=symmetric, mask_false_negatives=mask,
                               margin=margin, matryoshka_dims=dims, matryoshka_weights=weights)


def _batch(seed=0, with_negatives=True):
  """Raw embeddings with correlated positives, hard negatives near the positive, varied
  norms, and ids with duplicates (in candidates, queries and hard negatives)."""
  rng = np.random.default_rng(seed)
  q = rng.normal(size=(B, D))
  c = q + 0.8 * rng.normal(size=(B, D))
  n = c[:, None, :] + rng.normal(size=(B, K, D))
  q *= rng.uniform(0.5, 2.0, size=(B, 1))
  c *= rng.uniform(0.5, 2.0, size=(B, 1))
  n *= rng.uniform(0.5, 2.0, size=(B, K, 1))
  qid = np.arange(B, dtype=np.int32)
  qid[9] = qid[3]
  qid[14] = qid[3]
  cid = 100 + np.arange(B, dtype=np.int32)
  cid[5] = cid[2]
  cid[11] = cid[2]
  cid[15] = cid[8]
  nid = 1000 + np.arange(B * K, dtype=np.int32).reshape(B, K)
  nid[0, 1] = cid[0]   # a query's own positive listed among its hard negatives
  nid[4, 2] = cid[7]   # another query's positive among this query's hard negatives
  nid[13, 0] = cid[2]  # a member of the duplicate group {2, 5, 11}
  nid[6, 1] = cid[12]
  nid[12, 2] = cid[6]
  out = dict(query=q.astype(np.float32), candidate=c.astype(np.float32),
             query_id=qid, candidate_id=cid)
  if with_negatives:
    out.update(negatives=n.astype(np.float32), negative_id=nid)
  return out


# ----------------------------------------------------------------------------- reference


def _np_normalize(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _ref_columns(batch, negative_id=None):
  """(kind, index, id) per column: candidate j is column j, hard negative (m, k) is
  column B + m*K + k."""
  nid = batch.get("negative_id") if negative_id is None else negative_id
  cols = [("cand", (j,), batch["candidate_id"][j]) for j in range(B)]
  if "negatives" in batch:
    cols += [("neg", (m, k), nid[m, k]) for m in range(B) for k in range(K)]
  return cols


def _ref_dims(cfg):
  if cfg.matryoshka_dims:
    return tuple(cfg.matryoshka_dims), tuple(cfg.matryoshka_weights)
  return (D,), (1.0,)


def _ref_masks(q, c, colv, cols, batch, cfg):
  """Masks by explicit loops on normalized float64 vectors: (forward [B, N], backward [B, B])."""
  fwd = np.zeros((B, len(cols)), bool)
  bwd = np.zeros((B, B), bool)
  for i in range(B):
    pos = float(q[i] @ c[i])
    for j, (_, _, col_id) in enumerate(cols):
      if j == i:
        continue
      if cfg.mask_false_negatives and col_id == batch["candidate_id"][i]:
        fwd[i, j] = True
      if cfg.margin is not None and float(q[i] @ colv[j]) > pos - cfg.margin:
        fwd[i, j] = True
    for j in range(B):
      if j == i:
        continue
      if cfg.mask_false_negatives and batch["query_id"][j] == batch["query_id"][i]:
        bwd[i, j] = True
      if cfg.margin is not None and float(c[i] @ q[j]) > float(c[i] @ q[i]) - cfg.margin:
        bwd[i, j] = True
  return fwd, bwd


def _normalize_vjp(x):
  """x / |x| per row and the map from its cotangent to the cotangent of x."""
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  n = x / norm
  return n, lambda g: (g - n * np.sum(n * g, axis=-1, keepdims=True)) / norm


def _ref_infonce(s, drop, scale):
  """Mean cross entropy of rows of scale*s (target: the diagonal), masked columns removed.
  Returns (loss, d loss / d s, d loss / d scale)."""
  logits = np.where(drop, -np.inf, scale * s)
  p = np.exp(logits - logits.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  lse = np.log(np.sum(np.exp(logits - logits.max(1, keepdims=True)), 1)) + logits.max(1)
  eye = np.eye(*s.shape)
  loss = np.mean(lse - scale * np.diagonal(s))
  dlogits = (p - eye) / B
  return loss, scale * dlogits, np.sum(dlogits * s)


def _ref_sigmoid(s, drop, scale, bias):
  """SigLIP loss of scale*s + bias with +1 on the diagonal, -1 elsewhere, masked removed.
  Returns (loss, d/ds, d/dscale, d/dbias)."""
  z = scale * s + bias
  y = np.where(np.eye(*s.shape, dtype=bool), 1.0, -1.0)
  keep = ~drop
  loss = np.sum(np.logaddexp(0.0, -y * z) * keep) / B  # -log_sigmoid(t) = log(1 + e^-t)
  dz = -y / (1.0 + np.exp(y * z)) * keep / B
  return loss, scale * dz, np.sum(dz * s), np.sum(dz)


def _reference(batch, cfg, negative_id=None, scale=SCALE, bias=BIAS):
  """Whole-batch float64 loss. Returns (loss, {d: loss@d}, accuracy at the largest dim,
  grads [query, candidate, negatives or None, scale, bias])."""
  q64 = batch["query"].astype(np.float64)
  c64 = batch["candidate"].astype(np.float64)
  has_neg = "negatives" in batch
  n64 = batch["negatives"].astype(np.float64) if has_neg else None
  cols = _ref_columns(batch, negative_id)
  gq, gc = np.zeros_like(q64), np.zeros_like(c64)
  gn = np.zeros_like(n64) if has_neg else None
  g_scale = g_bias = 0.0
  total, per_dim = 0.0, {}
  dims, weights = _ref_dims(cfg)
  for d, w in zip(dims, weights):
    q, q_back = _normalize_vjp(q64[:, :d])
    c, c_back = _normalize_vjp(c64[:, :d])
    raw = np.stack([c64[idx[0], :d] if kind == "cand" else n64[idx[0], idx[1], :d]
                    for kind, idx, _ in cols])
    colv, col_back = _normalize_vjp(raw)
    fwd, bwd = _ref_masks(q, c, colv, cols, batch, cfg)
    s = q @ colv.T
    d_back = np.zeros((B, B))  # d loss / d (c @ q.T) of the symmetric term
    if cfg.kind == "infonce":
      loss, ds, dsc = _ref_infonce(s, fwd, scale)
      if cfg.symmetric:
        loss_b, d_back, dsc_b = _ref_infonce(c @ q.T, bwd, scale)
        loss, ds, d_back, dsc = 0.5 * (loss + loss_b), 0.5 * ds, 0.5 * d_back, 0.5 * (dsc + dsc_b)
      dbias = 0.0
    else:
      loss, ds, dsc, dbias = _ref_sigmoid(s, fwd, scale, bias)
    per_dim[d] = loss
    total += w * loss
    g_scale += w * dsc
    g_bias += w * dbias
    gq[:, :d] += w * q_back(ds @ colv + d_back.T @ c)
    gc[:, :d] += w * c_back(d_back @ q)
    gcol = w * col_back(ds.T @ q)
    for j, (kind, idx, _) in enumerate(cols):
      if kind == "cand":
        gc[idx[0], :d] += gcol[j]
      else:
        gn[idx[0], idx[1], :d] += gcol[j]
    if d == max(dims):
      accuracy = float(np.mean(np.argmax(np.where(fwd, -np.inf, s), axis=1) == np.arange(B)))
  return total, per_dim, accuracy, [gq, gc, gn, g_scale, g_bias]


@pytest.mark.parametrize("cfg", [
    _config(symmetric=True, margin=0.1, dims=(8, 32), weights=(0.5, 1.0)),
    _config(kind="sigmoid", margin=0.1, dims=(8, 32), weights=(0.5, 1.0)),
], ids=["infonce", "sigmoid"])
def test_reference_gradients_match_finite_differences(cfg):
  """Check of the reference itself: its hand-derived gradients against central differences."""
  batch = {k: v.astype(np.float64) if v.dtype == np.float32 else v
           for k, v in _batch().items()}
  _, _, _, grads = _reference(batch, cfg)
  eps = 1e-6
  rng = np.random.default_rng(3)
  for name, g in zip(("query", "candidate", "negatives"), grads):
    for _ in range(6):
      idx = tuple(rng.integers(s) for s in batch[name].shape)
      plus = dict(batch, **{name: batch[name].copy()})
      minus = dict(batch, **{name: batch[name].copy()})
      plus[name][idx] += eps
      minus[name][idx] -= eps
      fd = (_reference(plus, cfg)[0] - _reference(minus, cfg)[0]) / (2 * eps)
      assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-9), (name, idx)
  fd_scale = (_reference(batch, cfg, scale=SCALE + eps)[0]
              - _reference(batch, cfg, scale=SCALE - eps)[0]) / (2 * eps)
  fd_bias = (_reference(batch, cfg, bias=BIAS + eps)[0]
             - _reference(batch, cfg, bias=BIAS - eps)[0]) / (2 * eps)
  assert grads[3] == pytest.approx(fd_scale, rel=1e-5)
  assert grads[4] == pytest.approx(fd_bias, rel=1e-5, abs=1e-9)


def test_reference_matches_a_naive_python_loop():
  """Check of the reference itself: a symmetric infonce loss by scalar math per (i, j)."""
  batch, cfg = _batch(), _config(symmetric=True, margin=0.1)
  cols = _ref_columns(batch)

  def cos(a, b):
    a, b = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))

  def vec(col):
    kind, idx, _ = col
    return batch["candidate"][idx[0]] if kind == "cand" else batch["negatives"][idx]

  total = 0.0
  for i in range(B):
    q, c = batch["query"][i], batch["candidate"][i]
    pos = cos(q, c)
    den = back = 0.0
    for j, col in enumerate(cols):
      cij = cos(q, vec(col))
      if j == i or (col[2] != batch["candidate_id"][i] and cij <= pos - cfg.margin):
        den += math.exp(SCALE * cij)
    for j in range(B):
      cji = cos(c, batch["query"][j])
      if j == i or (batch["query_id"][j] != batch["query_id"][i] and cji <= pos - cfg.margin):
        back += math.exp(SCALE * cji)
    total += 0.5 * (math.log(den) - SCALE * pos) + 0.5 * (math.log(back) - SCALE * pos)
  np.testing.assert_allclose(_reference(batch, cfg)[0], total / B, rtol=1e-12)


# ----------------------------------------------------------------------------- sharded runs


def _mesh(shape, names=AXES):
  return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(names))


def _run(batch, cfg, mesh, batch_axes=("data", "fsdp")):
  """Loss, metrics and grads (query, candidate, negatives, scale, bias) of gemb's loss."""
  if mesh is not None:
    axes = tuple(a for a in batch_axes if a in mesh.shape)
    batch = {k: jax.device_put(v, NamedSharding(mesh, P(axes))) for k, v in batch.items()}

  def f(q, c, n, scale, bias, ids):
    return losses.contrastive_loss(q, c, n, **ids, logit_scale=scale, logit_bias=bias,
                                   config=cfg, mesh=mesh, batch_axes=batch_axes)
  ids = {k: batch[k] for k in ("query_id", "candidate_id", "negative_id") if k in batch}
  step = jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2, 3, 4), has_aux=True))
  (loss, metrics), grads = step(batch["query"], batch["candidate"], batch.get("negatives"),
                                jnp.float32(SCALE), jnp.float32(BIAS), ids)
  return float(loss), {k: float(v) for k, v in metrics.items()}, grads


def _assert_close_to_reference(batch, cfg, result):
  loss, metrics, grads = result
  ref_loss, ref_per_dim, ref_accuracy, ref_grads = _reference(batch, cfg)
  np.testing.assert_allclose(loss, ref_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["loss"], ref_loss, rtol=1e-5)
  for d, v in ref_per_dim.items():
    np.testing.assert_allclose(metrics[f"loss@{d}"], v, rtol=1e-5, err_msg=f"loss@{d}")
  assert metrics["accuracy"] == pytest.approx(ref_accuracy, abs=1e-6)
  assert metrics["logit_scale"] == pytest.approx(SCALE)
  names = ("query", "candidate", "negatives", "logit_scale", "logit_bias")
  for name, g, r in zip(names, grads, ref_grads):
    if name == "logit_bias" and cfg.kind == "infonce":
      assert float(g) == 0.0  # a shared bias cancels in the softmax
      continue
    if r is None:
      assert g is None, name
      continue
    g, r = np.asarray(g, np.float64), np.asarray(r)
    assert np.abs(r).max() > 1e-4, f"{name}: reference gradient too small to test"
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * np.abs(r).max(), err_msg=name)


CASES = {
    "infonce_hardneg_idmask_mrl3": _config(dims=(8, 16, 32), weights=(0.25, 0.5, 1.0)),
    "infonce_sym_margin_mrl2": _config(symmetric=True, margin=0.1, dims=(16, 32),
                                       weights=(0.5, 1.0)),
    "sigmoid_hardneg_margin_mrl2": _config(kind="sigmoid", margin=0.05, dims=(8, 32),
                                           weights=(1.0, 1.0)),
}
MESHES = [(8, 1, 1), (4, 2, 1), (2, 2, 2)]
_RUNS = {}


def _run_case(case, shape):
  """gemb's loss of CASES[case] on the test batch and a mesh of `shape` (None: no mesh);
  cached, as each compile costs seconds and several tests inspect the same run."""
  if (case, shape) not in _RUNS:
    mesh = None if shape is None else _mesh(shape)
    _RUNS[case, shape] = _run(_batch(), CASES[case], mesh)
  return _RUNS[case, shape]


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("case", sorted(CASES))
def test_sharded_matches_reference(case, shape):
  _assert_close_to_reference(_batch(), CASES[case], _run_case(case, shape))


@pytest.mark.parametrize("case", ["infonce_hardneg_idmask_mrl3", "sigmoid_hardneg_margin_mrl2"])
def test_single_device_matches_reference(case):
  _assert_close_to_reference(_batch(), CASES[case], _run_case(case, None))


@pytest.mark.parametrize("cfg", [
    _config(symmetric=True),
    _config(kind="sigmoid", mask=False, dims=(8, 16, 32), weights=(1.0, 0.5, 0.25)),
], ids=["infonce_sym", "sigmoid_nomask_mrl3"])
def test_without_hard_negatives(cfg):
  batch = _batch(with_negatives=False)
  _assert_close_to_reference(batch, cfg, _run(batch, cfg, _mesh((2, 2, 2))))


def test_mesh_without_fsdp_axis():
  """Batch axes the mesh lacks are skipped; the batch is split over "data" only."""
  batch, cfg = _batch(), CASES["infonce_sym_margin_mrl2"]
  _assert_close_to_reference(batch, cfg, _run(batch, cfg, _mesh((4, 2), ("data", "tensor"))))


@pytest.mark.parametrize("kind", ["infonce", "sigmoid"])
def test_padding_negatives_are_ignored(kind):
  """Hard negatives with id < 0 (padding from the data pipeline) act as if absent."""
  cfg = _config(kind=kind, mask=False, dims=(32,), weights=(1.0,))
  with_pad = _batch()
  with_pad["negative_id"] = np.full_like(with_pad["negative_id"], -1)
  without = {k: v for k, v in with_pad.items() if k not in ("negatives", "negative_id")}
  mesh = _mesh((4, 2, 1))
  np.testing.assert_allclose(_run(with_pad, cfg, mesh)[0], _run(without, cfg, mesh)[0],
                             rtol=1e-5)
  # One real negative per query among padding still counts.
  some = dict(with_pad, negative_id=with_pad["negative_id"].copy())
  some["negative_id"][:, 0] = 1000 + np.arange(len(some["negative_id"]))
  assert abs(_run(some, cfg, mesh)[0] - _run(without, cfg, mesh)[0]) > 1e-4


# ----------------------------------------------------------------------------- blocked scoring


@pytest.mark.parametrize("block", [5, 16, 40])
@pytest.mark.parametrize("case", sorted(CASES))
def test_blocked_scores_match_reference_and_full_loss(case, block):
  """score_block over the 64 columns (16 candidates + 48 hard negatives): 5 leaves a ragged
  last block, 16 splits exactly (candidates alone in the first block), 40 gives two blocks
  with 16 padding columns (and one block for the 16 columns of the symmetric term). Forward
  and backward equal the reference and the unblocked loss on a 2x2x2 mesh."""
  cfg = types.SimpleNamespace(**dict(vars(CASES[case]), score_block=block))
  blocked = _run(_batch(), cfg, _mesh((2, 2, 2)))
  _assert_close_to_reference(_batch(), CASES[case], blocked)
  full_loss, full_metrics, full_grads = _run_case(case, (2, 2, 2))
  np.testing.assert_allclose(blocked[0], full_loss, rtol=1e-6)
  assert blocked[1]["accuracy"] == full_metrics["accuracy"]
  for g, r in zip(blocked[2], full_grads):
    if r is not None:
      np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5,
                                 atol=1e-6 * np.abs(np.asarray(r)).max())


def test_blocked_scores_single_device_without_negatives():
  cfg = _config(kind="sigmoid", mask=False, dims=(8, 16, 32), weights=(1.0, 0.5, 0.25))
  batch = _batch(with_negatives=False)
  _assert_close_to_reference(
      batch, cfg, _run(batch, types.SimpleNamespace(**dict(vars(cfg), score_block=3)), None))


def test_blocked_scores_keep_one_block_per_device():
  """With score_block=s, per device, forward and backward: no array of b_local rows and >= N
  columns (the score matrix, or per-block residuals stacked by the scan), only b_local x s
  blocks. Without blocking the same check finds the score matrix, so it can fail."""
  mesh = _mesh((8, 1, 1))
  batch = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp"))))
           for k, v in _batch().items()}
  b_local, n = B // 8, B * (1 + K)

  def per_device_shapes(cfg):
    def f(q, c, neg):
      return losses.contrastive_loss(
          q, c, neg, query_id=batch["query_id"], candidate_id=batch["candidate_id"],
          negative_id=batch["negative_id"], logit_scale=SCALE, config=cfg, mesh=mesh)[0]
    jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(
        batch["query"], batch["candidate"], batch["negatives"]).jaxpr
    return {tuple(a.shape) for a in _per_device_avals(jaxpr) if hasattr(a, "shape")}

  dims = (8, 32)

  def score_sized(shapes):  # embeddings ([b, K, d] negatives...) end in an embedding dim
    return [s for s in shapes
            if b_local in s and s[-1] not in dims and math.prod(s) // b_local >= n]

  cfg = _config(dims=dims, weights=(0.5, 1.0))
  assert score_sized(per_device_shapes(cfg))
  shapes = per_device_shapes(types.SimpleNamespace(**dict(vars(cfg), score_block=7)))
  assert (b_local, 7) in shapes
  assert not score_sized(shapes), score_sized(shapes)


def test_bad_score_block_raises():
  for bad in (-1, 2.5, True):
    with pytest.raises(ValueError, match="score_block"):
      _run(_batch(), types.SimpleNamespace(**dict(vars(_config()), score_block=bad)), None)


# ----------------------------------------------------------------------------- masking


def _ref_mask_counts(batch, cfg, d):
  q = _np_normalize(batch["query"][:, :d].astype(np.float64))
  c = _np_normalize(batch["candidate"][:, :d].astype(np.float64))
  cols = _ref_columns(batch)
  raw = [batch["candidate"][idx[0], :d] if kind == "cand" else batch["negatives"][idx][:d]
         for kind, idx, _ in cols]
  colv = _np_normalize(np.stack(raw).astype(np.float64))
  return _ref_masks(q, c, colv, cols, batch, cfg)


def test_masks_are_exercised_and_change_the_loss():
  """The test data triggers every mask, far from any knife edge, and every mask moves the
  reference loss by far more than the 1e-5 parity tolerance, so a library that ignored a
  mask (or applied it to the wrong columns) fails the parity tests."""
  batch = _batch()
  fwd, bwd = _ref_mask_counts(batch, _config(), D)
  assert fwd[:, :B].sum() >= 4 and fwd[:, B:].sum() >= 5 and bwd.sum() >= 4  # ids
  fwd, bwd = _ref_mask_counts(batch, _config(mask=False, margin=0.1), 8)
  assert fwd.sum() >= 5 and bwd.sum() >= 1  # margins at the smallest dim
  for d in (8, 16, 32):
    q = _np_normalize(batch["query"][:, :d].astype(np.float64))
    c = _np_normalize(batch["candidate"][:, :d].astype(np.float64))
    n = _np_normalize(batch["negatives"][:, :, :d].astype(np.float64)).reshape(-1, d)
    for rows, cols in ((q, np.concatenate([c, n])), (c, q)):
      cos = rows @ cols.T
      edge = np.diagonal(cos)[:, None]
      for margin in (0.05, 0.1):
        # float32 cosines err by ~1e-7, so no margin decision can flip between precisions.
        assert np.abs(cos - (edge - margin)).min() > 1e-5

  for case in CASES:
    cfg = CASES[case]
    masked = _reference(batch, cfg)[0]
    unmasked = _reference(batch, types.SimpleNamespace(**dict(
        vars(cfg), mask_false_negatives=False, margin=None)))[0]
    assert abs(masked - unmasked) > 1e-3 * abs(masked), case
    if cfg.margin is not None:
      id_only = _reference(batch, types.SimpleNamespace(**dict(vars(cfg), margin=None)))[0]
      assert abs(masked - id_only) > 1e-3 * abs(masked), case
    # And gemb's loss is the masked one.
    np.testing.assert_allclose(_run_case(case, (8, 1, 1))[0], masked, rtol=1e-5)


def test_wrong_negative_layout_would_be_caught():
  """Hard-negative ids read in [K, B] order instead of the embeddings' [B, K] order mask
  different columns and give a loss far from gemb's, which matches the right layout."""
  batch, case = _batch(), "infonce_hardneg_idmask_mrl3"
  right = _reference(batch, CASES[case])[0]
  swapped = batch["negative_id"].T.reshape(B, K)
  wrong = _reference(batch, CASES[case], negative_id=swapped)[0]
  assert abs(right - wrong) > 1e-3 * abs(right)
  loss = _run_case(case, (8, 1, 1))[0]
  np.testing.assert_allclose(loss, right, rtol=1e-5)



# ----------------------------------------------------------------------------- structure


def _subjaxprs(eqn):
  for p in eqn.params.values():
    for sub in (p if isinstance(p, (tuple, list)) else (p,)):
      sub = getattr(sub, "jaxpr", sub)
      if hasattr(sub, "eqns"):
        yield sub


def _avals(jaxpr):
  """Every abstract value in a jaxpr and the jaxprs nested in it."""
  for eqn in jaxpr.eqns:
    yield from (v.aval for v in list(eqn.invars) + list(eqn.outvars) if hasattr(v, "aval"))
    for sub in _subjaxprs(eqn):
      yield from _avals(sub)


def _per_device_avals(jaxpr):
  """Abstract values inside shard_map bodies, where shapes are per device. (Outside, the
  residuals the backward pass keeps show up with global shapes, e.g. [8 * b_local, N].)"""
  for eqn in jaxpr.eqns:
    for sub in _subjaxprs(eqn):
      yield from (_avals(sub) if eqn.primitive.name == "shard_map" else _per_device_avals(sub))


def test_no_device_builds_a_global_score_matrix():
  """Forward and backward, per device: no [B, B] or [B, B*(1+K)] array, only b_local rows."""
  mesh = _mesh((8, 1, 1))
  batch = {k: jax.device_put(v, NamedSharding(mesh, P(("data", "fsdp"))))
           for k, v in _batch().items()}
  # Matryoshka dims that differ from B, B*K and B*(1+K), so shapes cannot be confused.
  cfg = _config(symmetric=True, margin=0.1, dims=(8, 32), weights=(0.5, 1.0))

  def f(q, c, n):
    return losses.contrastive_loss(
        q, c, n, query_id=batch["query_id"], candidate_id=batch["candidate_id"],
        negative_id=batch["negative_id"], logit_scale=SCALE, config=cfg, mesh=mesh)[0]
  jaxpr = jax.make_jaxpr(jax.grad(f, argnums=(0, 1, 2)))(
      batch["query"], batch["candidate"], batch["negatives"]).jaxpr
  big = {B, B * K, B * (1 + K)}
  shapes = {tuple(a.shape) for a in _per_device_avals(jaxpr) if hasattr(a, "shape")}
  assert (2, B * (1 + K)) in shapes  # the local score matrix exists
  offending = [s for s in shapes if sum(x in big for x in s) >= 2]
  assert not offending, offending


# ----------------------------------------------------------------------------- helpers, errors


def test_matryoshka_prefixes():
  x = np.random.default_rng(1).normal(size=(3, 5, 12)).astype(np.float32)
  outs = losses.matryoshka_prefixes(jnp.asarray(x), (4, 12))
  for d, o in zip((4, 12), outs):
    assert o.shape == (3, 5, d)
    np.testing.assert_allclose(o, _np_normalize(x[..., :d].astype(np.float64)), rtol=1e-6)
  # An all-zero prefix stays finite, with finite gradients.
  g = jax.grad(lambda v: jnp.sum(losses.matryoshka_prefixes(v, (4,))[0]))(jnp.zeros((2, 8)))
  assert np.isfinite(np.asarray(g)).all()
  with pytest.raises(ValueError, match="13"):
    losses.matryoshka_prefixes(jnp.asarray(x), (4, 13))


def test_logit_scale_from_param():
  np.testing.assert_allclose(losses.logit_scale_from_param(jnp.log(10.0), 100.0), 10.0,
                             rtol=1e-5)
  np.testing.assert_allclose(losses.logit_scale_from_param(jnp.float32(7.0), 100.0), 100.0,
                             rtol=1e-5)
  grad = jax.grad(losses.logit_scale_from_param)
  np.testing.assert_allclose(grad(jnp.log(10.0), 100.0), 10.0, rtol=1e-6)  # d exp = exp
  assert float(grad(jnp.float32(7.0), 100.0)) == 0.0  # clipped: no gradient


@pytest.mark.parametrize("dims,weights,match", [
    ((8, 64), (1.0, 1.0), "dim 64"),
    ((0, 32), (1.0, 1.0), "dim 0"),
    ((8.0, 32), (1.0, 1.0), "8.0"),
    ((8, 16, 32), (1.0, 1.0), "matryoshka_weights"),
    ((16, 16), (1.0, 1.0), "repeated"),
])
def test_bad_matryoshka_config_raises(dims, weights, match):
  batch = _batch()
  with pytest.raises(ValueError, match=match):
    _run(batch, _config(dims=dims, weights=weights), None)


def test_other_errors():
  batch = _batch()
  with pytest.raises(ValueError, match="kind"):
    _run(batch, _config(kind="triplet"), None)
  odd = {k: v[:12] for k, v in batch.items()}
  with pytest.raises(ValueError, match="not divisible"):
    losses.contrastive_loss(
        odd["query"], odd["candidate"], query_id=odd["query_id"],
        candidate_id=odd["candidate_id"], logit_scale=SCALE, config=_config(),
        mesh=_mesh((8, 1, 1)))
  with pytest.raises(ValueError, match="negative_id"):
    losses.contrastive_loss(
        batch["query"], batch["candidate"], batch["negatives"], query_id=batch["query_id"],
        candidate_id=batch["candidate_id"], logit_scale=SCALE, config=_config())
  with pytest.raises(ValueError, match="logit_bias"):
    losses.contrastive_loss(
        batch["query"], batch["candidate"], query_id=batch["query_id"],
        candidate_id=batch["candidate_id"], logit_scale=SCALE, config=_config(kind="sigmoid"))
  with pytest.raises(ValueError, match="candidate shape"):
    losses.contrastive_loss(
        batch["query"], batch["candidate"][:, :8], query_id=batch["query_id"],
        candidate_id=batch["candidate_id"], logit_scale=SCALE, config=_config())
