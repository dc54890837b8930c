"""The BERT family module: a numpy BERT as the reference, layer modes, sharding, checkpoint names.

The parity of the real all-MiniLM-L6-v2 weights with sentence-transformers is in
tests/test_backbone_parity.py; here a small random config keeps every check fast.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from backbone_fixtures import TINY_BERT, hf_tensors
from gemb import parallel
from gemb.model.bert import BertBackbone, params_from_hf

CONFIG = TINY_BERT


def numpy_bert(t, c, ids, mask):
  """BertModel's forward pass in float64 numpy, written from the paper / HF's modeling code."""
  d, h = c["hidden_size"], c["num_attention_heads"]
  hd = d // h

  def ln(x, name):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + c["layer_norm_eps"]) * t[name + ".weight"] + t[name + ".bias"]

  def lin(x, name):
    return x @ t[name + ".weight"].T.astype(np.float64) + t[name + ".bias"]

  gelu = np.vectorize(lambda v: 0.5 * v * (1 + math.erf(v / math.sqrt(2))))
  n = ids.shape[1]
  x = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.position_embeddings.weight"][:n]
       + t["embeddings.token_type_embeddings.weight"][0]).astype(np.float64)
  x = ln(x, "embeddings.LayerNorm")
  for i in range(c["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    q, k, v = (lin(x, f"{p}attention.self.{m}").reshape(*x.shape[:2], h, hd)
               for m in ("query", "key", "value"))
    s = np.einsum("bqhk,bnhk->bhqn", q, k) / np.sqrt(hd) + np.where(mask, 0, -1e30)[:, None, None]
    s = np.exp(s - s.max(-1, keepdims=True))
    a = np.einsum("bhqn,bnhk->bqhk", s / s.sum(-1, keepdims=True), v).reshape(x.shape)
    x = ln(x + lin(a, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
    y = lin(gelu(lin(x, f"{p}intermediate.dense")), f"{p}output.dense")
    x = ln(x + y, f"{p}output.LayerNorm")
  return x


def loaded(tensors=None, **kwargs):
  model = BertBackbone(CONFIG, rngs=nnx.Rngs(0), **kwargs)
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, params_from_hf(tensors or hf_tensors(), CONFIG))
  return nnx.merge(graphdef, state)


def inputs(b=4, n=10, seed=1):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, CONFIG["vocab_size"], (b, n)).astype(np.int32)
  lengths = rng.integers(1, n + 1, b)
  mask = np.arange(n)[None] < lengths[:, None]
  return np.where(mask, ids, 0), mask, np.broadcast_to(np.arange(n), (b, n)).astype(np.int32)


def run(model, ids, mask, pos, **kwargs):
  return np.asarray(model(model.embed_ids(ids), mask, pos, **kwargs))


def test_matches_numpy_reference_on_valid_tokens():
  t = hf_tensors()
  ids, mask, pos = inputs()
  got = run(loaded(t), ids, mask, pos)
  ref = numpy_bert(t, CONFIG, ids, mask)
  np.testing.assert_allclose(got[mask], ref[mask], atol=2e-5)


def test_prefixed_names_and_unused_tensors_are_accepted():
  t = hf_tensors(prefix="bert.")
  t["bert.pooler.dense.weight"] = np.zeros((32, 32), np.float32)
  t["cls.predictions.bias"] = np.zeros((97,), np.float32)
  a, b = params_from_hf(t, CONFIG), params_from_hf(hf_tensors(), CONFIG)
  jax.tree.map(np.testing.assert_array_equal, a, b)


def test_checkpoint_mismatches_are_named():
  t = hf_tensors()
  del t["encoder.layer.1.output.dense.bias"]
  t["encoder.layer.0.extra.weight"] = np.zeros(3, np.float32)
  t["encoder.layer.0.intermediate.dense.weight"] = np.zeros((64, 31), np.float32)
  with pytest.raises(ValueError) as e:
    params_from_hf(t, CONFIG)
  msg = str(e.value)
  assert "missing tensors: encoder.layer.1.output.dense.bias" in msg
  assert "unexpected tensors: encoder.layer.0.extra.weight" in msg
  assert "encoder.layer.0.intermediate.dense.weight: got (64, 31), expected (64, 32)" in msg
  with pytest.raises(ValueError, match="hidden_act='swish'"):
    BertBackbone(dict(CONFIG, hidden_act="swish"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="num_hidden_layers"):
    params_from_hf(t, dict(CONFIG, num_hidden_layers=None))


def test_padding_does_not_change_valid_tokens():
  model = loaded()
  ids, mask, pos = inputs(n=8)
  longer = np.pad(ids, ((0, 0), (0, 5)))
  longer_mask = np.pad(mask, ((0, 0), (0, 5)))
  longer_pos = np.broadcast_to(np.arange(13), longer.shape).astype(np.int32)
  a = run(model, ids, mask, pos)
  b = run(model, longer, longer_mask, longer_pos)[:, :8]
  np.testing.assert_allclose(a[mask], b[mask], atol=1e-5)


def test_scan_unrolled_and_remat_agree_forward_and_backward():
  t = hf_tensors()
  ids, mask, pos = inputs()
  outs = []
  modes = [(False, ""), (True, ""), (True, "nothing_saveable"), (False, "dots_saveable")]
  for scan, remat in modes:
    graphdef, params = nnx.split(loaded(t, scan_layers=scan, remat_policy=remat))

    def loss(p, graphdef=graphdef):
      m = nnx.merge(graphdef, p)
      return jnp.sum(jnp.where(mask[..., None], m(m.embed_ids(ids), mask, pos), 0) ** 2)
    outs.append(jax.jit(jax.value_and_grad(loss))(params))
  for val, grad in outs[1:]:
    np.testing.assert_allclose(val, outs[0][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5), grad,
                 outs[0][1])


def test_dropout_key_changes_output_and_none_is_deterministic():
  model = loaded()
  ids, mask, pos = inputs()
  a = run(model, ids, mask, pos)
  np.testing.assert_array_equal(a, run(model, ids, mask, pos))
  b = run(model, ids, mask, pos, dropout_key=jax.random.key(0))
  assert np.abs(a - b)[mask].max() > 1e-3


def test_bfloat16_compute_is_close_to_float32():
  ids, mask, pos = inputs()
  ref = run(loaded(), ids, mask, pos)
  out = loaded(dtype=jnp.bfloat16)(loaded().embed_ids(ids), mask, pos)
  assert out.dtype == jnp.bfloat16
  cos = np.sum(ref * np.asarray(out, np.float32), -1) / (
      np.linalg.norm(ref, axis=-1) * np.linalg.norm(np.asarray(out, np.float32), axis=-1))
  assert cos[mask].min() > 0.99


def test_sharded_equals_single_device(devices):
  t = hf_tensors()
  ids, mask, pos = inputs(b=8)
  single = run(loaded(t), ids, mask, pos)
  params = params_from_hf(t, CONFIG)
  for shape in (dict(data=2, fsdp=2, tensor=2),):
    mesh = parallel.make_mesh(shape)
    graphdef, sharded = parallel.create_sharded(
        lambda: BertBackbone(CONFIG, scan_layers=True, rngs=nnx.Rngs(0)), mesh)
    assert sharded["layers"]["qkv"].sharding.spec == \
        jax.sharding.PartitionSpec(None, "fsdp", "tensor", None, None)
    assert sharded["layers"]["up"].sharding.spec == \
        jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    sharded = jax.tree.map(lambda s, v: jax.device_put(v, s.sharding), sharded, params)
    with jax.set_mesh(mesh):
      def forward(p, ids, mask, pos):
        m = nnx.merge(graphdef, p)
        return m(m.embed_ids(ids), mask, pos)
      out = jax.jit(forward)(sharded, *parallel.host_to_global((ids, mask, pos), mesh))
    np.testing.assert_allclose(np.asarray(out), single, atol=2e-5, rtol=1e-5)


def test_params_to_hf_inverts_params_from_hf():
  from gemb.model.bert import params_to_hf
  t = hf_tensors()
  back = params_to_hf(params_from_hf(t, CONFIG), CONFIG)
  assert set(back) == set(t) - {"embeddings.position_ids"}
  for name, value in back.items():
    np.testing.assert_array_equal(value, t[name], err_msg=name)
