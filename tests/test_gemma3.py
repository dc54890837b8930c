"""The Gemma 3 family: a float64 numpy Gemma 3 on a small random config (layer modes, bf16,
sharding, checkpoint names), then EmbeddingGemma-300M's real weights against the
sentence-transformers fixture (tests/fixtures/backbones/embeddinggemma-300m.npz)."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from gemb import parallel
from gemb.model.gemma3 import Gemma3Backbone, params_from_hf, parse_config
from gemb.pretrained import safetensors_file
from gemb.pretrained.fetch import default_dir

# Small but with every Gemma 3 feature: 2 KV heads for 4 query heads, head_dim != width /
# heads, query_pre_attn_scalar != head_dim, a sliding window shorter than the sequence,
# sliding and global layers in an irregular order, linear RoPE scaling on the global ones.
CONFIG = dict(model_type="gemma3_text", vocab_size=101, hidden_size=32, num_hidden_layers=3,
              num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=48,
              query_pre_attn_scalar=24, rms_norm_eps=1e-6, sliding_window=6,
              layer_types=["sliding_attention", "full_attention", "sliding_attention"],
              rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
              rope_scaling={"rope_type": "linear", "factor": 2.0},
              hidden_activation="gelu_pytorch_tanh", use_bidirectional_attention=True)


def hf_tensors(c=CONFIG, seed=0, prefix=""):
  """Random tensors under Gemma3TextModel's safetensors names (torch Linear: [out, in])."""
  rng = np.random.default_rng(seed)
  d, f, hd = c["hidden_size"], c["intermediate_size"], c["head_dim"]
  h, kv = c["num_attention_heads"], c["num_key_value_heads"]
  r = lambda *s: rng.normal(0, 0.3, s).astype(np.float32)  # noqa: E731
  t = {"embed_tokens.weight": r(c["vocab_size"], d), "norm.weight": r(d)}
  for i in range(c["num_hidden_layers"]):
    p = f"layers.{i}."
    t |= {p + "self_attn.q_proj.weight": r(h * hd, d), p + "self_attn.k_proj.weight": r(kv * hd, d),
          p + "self_attn.v_proj.weight": r(kv * hd, d), p + "self_attn.o_proj.weight": r(d, h * hd),
          p + "self_attn.q_norm.weight": r(hd), p + "self_attn.k_norm.weight": r(hd),
          p + "mlp.gate_proj.weight": r(f, d), p + "mlp.up_proj.weight": r(f, d),
          p + "mlp.down_proj.weight": r(d, f)}
    for n in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
              "post_feedforward_layernorm"):
      t[p + n + ".weight"] = r(d)
  return {prefix + k: v for k, v in t.items()}


def numpy_gemma3(t, c, ids, mask):
  """Gemma3TextModel's forward in float64 numpy, written from transformers' modeling_gemma3 and
  masking_utils (bidirectional: the window becomes sliding_window // 2 + 1, exclusive)."""
  d, h, kv, hd = c["hidden_size"], c["num_attention_heads"], c["num_key_value_heads"], c["head_dim"]
  t = {k: v.astype(np.float64) for k, v in t.items()}
  n = ids.shape[1]
  pos = np.arange(n, dtype=np.float64)
  window = c["sliding_window"] // 2 + 1

  def norm(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + c["rms_norm_eps"]) * (1 + w)

  def rope(x, base, factor):
    inv = 1.0 / base ** (np.arange(0, hd, 2) / hd) / factor
    emb = np.concatenate([pos[:, None] * inv] * 2, -1)  # [n, hd]
    rot = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
    return x * np.cos(emb)[:, None] + rot * np.sin(emb)[:, None]

  def gelu_tanh(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))

  x = t["embed_tokens.weight"][ids] * np.float64(np.float32(math.sqrt(d)))
  for i, kind in enumerate(c["layer_types"]):
    p = f"layers.{i}."
    sliding = kind == "sliding_attention"
    base, factor = ((c["rope_local_base_freq"], 1.0) if sliding else
                    (c["rope_theta"], c["rope_scaling"]["factor"]))
    y = norm(x, t[p + "input_layernorm.weight"])
    q = (y @ t[p + "self_attn.q_proj.weight"].T).reshape(*ids.shape, h, hd)
    k = (y @ t[p + "self_attn.k_proj.weight"].T).reshape(*ids.shape, kv, hd)
    v = (y @ t[p + "self_attn.v_proj.weight"].T).reshape(*ids.shape, kv, hd)
    q = rope(norm(q, t[p + "self_attn.q_norm.weight"]), base, factor)
    k = rope(norm(k, t[p + "self_attn.k_norm.weight"]), base, factor)
    k, v = np.repeat(k, h // kv, axis=2), np.repeat(v, h // kv, axis=2)  # repeat_kv
    s = np.einsum("bqhd,bkhd->bhqk", q, k) * c["query_pre_attn_scalar"] ** -0.5
    allowed = mask[:, None, None, :].astype(bool)
    if sliding:
      allowed = allowed & (np.abs(pos[:, None] - pos[None, :]) < window)
    s = np.where(allowed, s, -1e30)  # finite: padded queries stay NaN-free
    w = np.exp(s - s.max(-1, keepdims=True))
    w = w / w.sum(-1, keepdims=True)
    o = np.einsum("bhqk,bkhd->bqhd", w, v).reshape(*ids.shape, h * hd)
    x = x + norm(o @ t[p + "self_attn.o_proj.weight"].T, t[p + "post_attention_layernorm.weight"])
    y = norm(x, t[p + "pre_feedforward_layernorm.weight"])
    y = (gelu_tanh(y @ t[p + "mlp.gate_proj.weight"].T) * (y @ t[p + "mlp.up_proj.weight"].T))
    y = y @ t[p + "mlp.down_proj.weight"].T
    x = x + norm(y, t[p + "post_feedforward_layernorm.weight"])
  return norm(x, t["norm.weight"])


def batch(seed=1, b=3, n=13):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, CONFIG["vocab_size"], (b, n))
  lengths = np.array([n, 9, 1, 5])[:b]
  mask = np.arange(n)[None] < lengths[:, None]
  return ids, mask


def build(c=CONFIG, tensors=None, **kw):
  model = Gemma3Backbone(c, rngs=nnx.Rngs(0), **kw)
  if tensors is not None:
    nnx.replace_by_pure_dict(state := nnx.state(model), params_from_hf(tensors, c))
    nnx.update(model, state)
  return model


def run(model, ids, mask):
  @nnx.jit
  def f(model, ids, mask):
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    return model(model.embed_ids(ids), mask, positions)
  return np.asarray(f(model, jnp.asarray(ids), jnp.asarray(mask)), np.float32)


def test_matches_numpy_reference():
  t = hf_tensors()
  ids, mask = batch()
  want = numpy_gemma3(t, CONFIG, ids, mask)
  got = run(build(tensors=t), ids, mask)
  valid = mask.astype(bool)
  np.testing.assert_allclose(got[valid], want[valid], rtol=2e-5, atol=2e-5)
  # Without the window mask (or with the causal 6-token one) the reference differs: the
  # window is exercised.
  c = dict(CONFIG, sliding_window=64)
  assert np.abs(numpy_gemma3(t, c, ids, mask)[valid] - want[valid]).max() > 1e-2


def test_scan_remat_and_bf16():
  t = hf_tensors()
  ids, mask = batch()
  valid = mask.astype(bool)
  plain = run(build(tensors=t), ids, mask)
  for kw in (dict(scan_layers=True), dict(scan_layers=True, remat_policy="nothing_saveable"),
             dict(remat_policy="dots_saveable")):
    np.testing.assert_allclose(run(build(tensors=t, **kw), ids, mask)[valid], plain[valid],
                               rtol=1e-5, atol=1e-5, err_msg=str(kw))
  bf16 = run(build(tensors=t, dtype=jnp.bfloat16), ids, mask)
  cos = (bf16 * plain).sum(-1) / np.linalg.norm(bf16, axis=-1) / np.linalg.norm(plain, axis=-1)
  assert cos[valid].min() > 0.99, cos[valid].min()


def test_gradients_scan_equal_unrolled():
  t = hf_tensors()
  ids, mask = batch()

  def grads(**kw):
    model = build(tensors=t, **kw)

    def loss(model):
      positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
      out = model(model.embed_ids(jnp.asarray(ids)), jnp.asarray(mask), positions)
      return jnp.sum(jnp.where(jnp.asarray(mask)[..., None], out, 0.0) ** 2)
    return nnx.to_pure_dict(nnx.grad(loss)(model))

  a, b = grads(), grads(scan_layers=True, remat_policy="nothing_saveable")
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-4), a, b)


def test_sharded_equals_single_device():
  t = hf_tensors()
  ids, mask = batch(b=4)
  single = run(build(tensors=t), ids, mask)
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  for scan in (False, True):
    graphdef, params = parallel.create_sharded(
        lambda scan=scan: Gemma3Backbone(CONFIG, scan_layers=scan, rngs=nnx.Rngs(0)), mesh)
    loaded = jax.tree.map(lambda x, w: jax.device_put(w, x.sharding), params,
                          params_from_hf(t, CONFIG))
    # kv_heads (2) and heads (4) split over the tensor axis, embed over fsdp.
    assert loaded["layers"]["attn"]["k"].sharding.spec == P(None, "fsdp", "tensor", None)
    assert loaded["layers"]["attn"]["q"].sharding.spec == P(None, "fsdp", "tensor", None)

    @jax.jit
    def f(params, ids, mask):
      model = nnx.merge(graphdef, params)
      positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
      return model(model.embed_ids(ids), mask, positions)

    with jax.set_mesh(mesh):
      ids_g, mask_g = parallel.host_to_global((ids, mask), mesh)
      got = np.asarray(f(loaded, ids_g, mask_g))
    np.testing.assert_allclose(got[mask], single[mask], rtol=1e-5, atol=1e-5)


def test_positions_drive_the_window_and_rope():
  """Shifting every position by a constant changes nothing (RoPE is relative, the window
  measures distances); positions spread twice as far apart change the sliding layers."""
  t = hf_tensors()
  ids, mask = batch()
  model = build(tensors=t)

  @nnx.jit
  def f(model, positions):
    return model(model.embed_ids(jnp.asarray(ids)), jnp.asarray(mask), positions)

  base = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  a, b, c = (np.asarray(f(model, p)) for p in (base, base + 100, base * 2))
  np.testing.assert_allclose(a[mask], b[mask], rtol=1e-4, atol=1e-4)
  assert np.abs(a[mask] - c[mask]).max() > 1e-2


def test_params_from_hf_layout_and_errors():
  t = hf_tensors()
  pure = params_from_hf(t, CONFIG)
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: build())))
  assert jax.tree.structure(pure) == jax.tree.structure(abstract)
  jax.tree.map(lambda x, a: (x.shape == a.shape and x.dtype == np.float32) or pytest.fail(
      f"{x.shape} {a.shape}"), pure, abstract)
  # The causal-LM prefix and its tied head are accepted.
  lm = hf_tensors(prefix="model.") | {"lm_head.weight": t["embed_tokens.weight"]}
  jax.tree.map(np.testing.assert_array_equal, params_from_hf(lm, CONFIG), pure)
  bad = dict(t)
  del bad["layers.1.mlp.up_proj.weight"]
  bad["layers.0.self_attn.k_proj.weight"] = np.zeros((5, 32), np.float32)
  bad["vision_tower.x"] = np.zeros(1)
  with pytest.raises(ValueError) as e:
    params_from_hf(bad, CONFIG)
  msg = str(e.value)
  assert "missing tensors: layers.1.mlp.up_proj.weight" in msg
  assert "unexpected tensors: vision_tower.x" in msg
  assert "layers.0.self_attn.k_proj.weight: got (5, 32), expected (32, 32)" in msg


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="model_type='bert'"):
    parse_config(dict(CONFIG, model_type="bert"))
  with pytest.raises(ValueError, match="hidden_activation='gelu'"):
    parse_config(dict(CONFIG, hidden_activation="gelu"))
  with pytest.raises(ValueError, match="'intermediate_size'"):
    parse_config({k: v for k, v in CONFIG.items() if k != "intermediate_size"})
  with pytest.raises(ValueError, match="rope_type 'yarn'"):
    parse_config(dict(CONFIG, rope_scaling={"rope_type": "yarn", "factor": 2.0}))
  with pytest.raises(ValueError, match="layer_types"):
    parse_config(dict(CONFIG, layer_types=["sliding_attention"]))
  # Configs from before layer_types: every 6th layer is global.
  old = parse_config(dict({k: v for k, v in CONFIG.items() if k != "layer_types"},
                          num_hidden_layers=12))
  assert old.sliding == (True,) * 5 + (False,) + (True,) * 5 + (False,)


# ---- the real EmbeddingGemma-300M against sentence-transformers --------------------------

GEMMA_DIR = default_dir("embeddinggemma-300m")
FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "backbones",
                       "embeddinggemma-300m.npz")
needs_weights = pytest.mark.skipif(
    not os.path.isfile(os.path.join(GEMMA_DIR, ".gemb-fetch.json")),
    reason=f"EmbeddingGemma weights not in {GEMMA_DIR}: run "
           "`python -m gemb.pretrained fetch embeddinggemma-300m` (.ci/run does)")


@pytest.fixture(scope="module")
def fixture():
  f = np.load(FIXTURE)
  return {k: f[k] for k in f.files} | {"meta": json.loads(str(f["metadata"]))}


@pytest.fixture(scope="module")
def gemma():
  with open(os.path.join(GEMMA_DIR, "config.json")) as f:
    config = json.load(f)
  tensors = safetensors_file.load(os.path.join(GEMMA_DIR, "model.safetensors"))
  model = Gemma3Backbone(config, scan_layers=True, rngs=nnx.Rngs(0))
  state = nnx.state(model)
  nnx.replace_by_pure_dict(state, params_from_hf(tensors, config))
  nnx.update(model, state)
  dense = [safetensors_file.load(os.path.join(GEMMA_DIR, d, "model.safetensors"))["linear.weight"]
           for d in ("2_Dense", "3_Dense")]
  for d in ("2_Dense", "3_Dense"):  # the head this test applies: no bias, identity activation
    with open(os.path.join(GEMMA_DIR, d, "config.json")) as f:
      assert json.load(f) | {"in_features": 0, "out_features": 0} == {
          "in_features": 0, "out_features": 0, "bias": False,
          "activation_function": "torch.nn.modules.linear.Identity"}
  return model, [np.asarray(w, np.float32) for w in dense]


def embed_fixture(model, dense, ids, mask, bucket_sizes=(32, 128, 512, 2048)):
  """Mean-pooled backbone outputs and the ST head's embeddings, batched by padded length."""
  @nnx.jit
  def pooled_fn(model, ids, mask):
    positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
    out = model(model.embed_ids(ids), mask, positions)
    m = mask[..., None].astype(out.dtype)
    return (out * m).sum(1) / jnp.maximum(m.sum(1), 1.0)

  lengths = mask.sum(1)
  pooled = np.zeros((len(ids), model.width), np.float32)
  for lo, hi in zip((0,) + bucket_sizes[:-1], bucket_sizes):
    rows_ = np.nonzero((lengths > lo) & (lengths <= hi))[0]
    for start in range(0, len(rows_), 8):
      r = rows_[start:start + 8]
      b_ids = np.zeros((8, hi), np.int32)
      b_mask = np.zeros((8, hi), bool)
      width = min(hi, ids.shape[1])
      b_ids[:len(r), :width], b_mask[:len(r), :width] = ids[r, :width], mask[r, :width]
      pooled[r] = np.asarray(pooled_fn(model, jnp.asarray(b_ids), jnp.asarray(b_mask)))[:len(r)]
  out = pooled.astype(np.float64) @ dense[0].T.astype(np.float64) @ dense[1].T.astype(np.float64)
  return pooled, (out / np.linalg.norm(out, axis=-1, keepdims=True)).astype(np.float32)


@needs_weights
def test_embeddinggemma_matches_sentence_transformers(gemma, fixture):
  model, dense = gemma
  ids, mask = fixture["input_ids"], fixture["attention_mask"].astype(bool)
  assert len(ids) >= 64 and mask.sum(1).max() > 1024  # crosses the 512-token window
  pooled, emb = embed_fixture(model, dense, ids, mask)
  for name, got, want in (("pooled", pooled, fixture["pooled"]),
                          ("embedding", emb, fixture["embedding"])):
    cos = (got * want).sum(-1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
    diff = np.abs(got - want).max(-1)
    worst = int(np.argmin(cos))
    print(f"{name}: min cosine {cos.min():.8f}, max abs diff {diff.max():.2e} over {len(cos)} texts")
    assert cos.min() >= 0.9999, (name, worst, cos[worst], fixture["texts"][worst][:80])
    if name == "embedding":
      assert diff.max() <= 1e-4, (name, int(np.argmax(diff)), diff.max())


@needs_weights
def test_embeddinggemma_tokenizer_ids(fixture):
  import sentencepiece as spm
  sp = spm.SentencePieceProcessor(model_file=os.path.join(GEMMA_DIR, "tokenizer.model"))
  max_len = fixture["meta"]["max_seq_length"]
  for text, ids, mask in zip(fixture["texts"], fixture["input_ids"], fixture["attention_mask"]):
    # The reference frames every text as <bos> text <eos>, truncating the text to fit.
    want = [sp.bos_id()] + sp.encode(str(text))[:max_len - 2] + [sp.eos_id()]
    assert ids[mask.astype(bool)].tolist() == want, text[:80]


@needs_weights
def test_embeddinggemma_scan_equals_unrolled_and_bf16(gemma, fixture):
  """Real weights, a few texts (one crossing the window): unrolled == scanned, and bf16
  compute stays close to float32."""
  model, dense = gemma
  ids, mask = fixture["input_ids"], fixture["attention_mask"].astype(bool)
  pick = [int(np.argmax(mask.sum(1) > 600)), 9, 30]
  ids, mask = ids[pick], mask[pick]
  n = int(mask.sum(1).max())
  ids, mask = ids[:, :n], mask[:, :n]
  scanned = run(model, ids, mask)
  state = nnx.state(model)
  for kw, tol in ((dict(), 2e-4), (dict(dtype=jnp.bfloat16), None)):
    other = Gemma3Backbone(model_config(), rngs=nnx.Rngs(0), **kw)
    nnx.update(other, state)
    got = run(other, ids, mask)
    if tol:
      np.testing.assert_allclose(got[mask], scanned[mask], rtol=tol, atol=tol)
    else:
      pooled = [(x * mask[..., None]).sum(1) / mask.sum(1, keepdims=True) for x in (got, scanned)]
      cos = (pooled[0] * pooled[1]).sum(-1) / np.linalg.norm(pooled[0], axis=-1) / (
          np.linalg.norm(pooled[1], axis=-1))
      assert cos.min() > 0.995, cos


def model_config():
  with open(os.path.join(GEMMA_DIR, "config.json")) as f:
    return json.load(f)
