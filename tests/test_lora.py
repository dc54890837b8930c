"""gemb.model.lora: the adapters, their [in, out] views of stacked kernels, and the merge."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs import tiny
from configs.common import model_config
from gemb.model import lora
from gemb.trees import param_path


def small_model(rank=2, alpha=4.0, targets=lora.DEFAULT_TARGETS):
  m = model_config(width=16, depth=2, heads=2, mlp_dim=32, embed_dim=16, vocab_size=64,
                   text_len=8, image_size=8, patch=4, modalities=("text", "image"))
  m.lora.update(rank=rank, alpha=alpha, targets=targets)
  return m


def random_params(model_cfg, seed=0):
  from gemb.model.embedder_model import MultimodalEmbedder
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: MultimodalEmbedder(model_cfg, rngs=nnx.Rngs(0)))))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(np.float32), abstract)


def flat(tree):
  return {param_path(p): np.asarray(x) for p, x in
          jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_default_targets_are_the_attention_and_mlp_projections_of_every_family():
  m = small_model()
  adapters = lora.LoRA(m)
  assert sorted(adapters.views) == ["encoder/blocks/attn/out", "encoder/blocks/attn/qkv",
                                    "encoder/blocks/mlp/down/kernel",
                                    "encoder/blocks/mlp/up/kernel"]
  # The parameter paths of the BERT and Gemma 3 backbones (gemb/model/bert.py, gemma3.py).
  regex = re.compile(lora.DEFAULT_TARGETS)
  for path in ("encoder/layers/qkv", "encoder/layers/out", "encoder/layers/up",
               "encoder/layers/down", "encoder/layers/attn/q", "encoder/layers/attn/k",
               "encoder/layers/attn/v", "encoder/layers/attn/o", "encoder/layers/mlp/gate",
               "encoder/layers/mlp/up", "encoder/layers/mlp/down"):
    assert regex.search(path), path
  for path in ("encoder/embedding", "encoder/word_embeddings", "encoder/layers/attn/q_norm/scale",
               "encoder/layers/qkv_bias", "audio/whisper/blocks/attn/q", "head/kernel",
               "image/proj/kernel"):
    assert not regex.search(path), path


def test_matrix_views_follow_the_logical_axes():
  # [layers, embed, heads, qkv, head_dim]: one adapter per layer, embed -> the rest.
  assert lora.matrix_view((2, 16, 2, 3, 8), ("layers", "embed", "heads", "qkv", "head_dim")) \
      == (1, 1)
  # [layers, heads, head_dim, embed]: heads x head_dim -> embed (a projection back).
  assert lora.matrix_view((2, 2, 8, 16), ("layers", "heads", "head_dim", "embed")) == (1, 2)
  assert lora.matrix_view((16, 32), ("embed", "mlp")) == (0, 1)
  assert lora.matrix_view((32, 16), ("mlp", "embed")) == (0, 1)
  assert lora.matrix_view((4, 5, 6), None) == (0, 1)


def test_merge_is_the_low_rank_update_of_each_kernels_matrix():
  m = small_model(rank=2, alpha=4.0)
  params = random_params(m)
  adapters = lora.LoRA(m)
  pairs = adapters.init(jax.random.key(0))
  rng = np.random.default_rng(1)
  pairs = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), jnp.float32), pairs)
  merged, base, ab = flat(adapters.merge(params, pairs)), flat(params), flat(pairs)
  for name, (_, shape, batch, n_in) in adapters.views.items():
    lead = shape[:batch]
    fan_in = int(np.prod(shape[batch:batch + n_in]))
    w = base[name].reshape(*lead, fan_in, -1).astype(np.float64)
    w_merged = merged[name].reshape(w.shape).astype(np.float64)
    a, b = ab[name + "/a"].astype(np.float64), ab[name + "/b"].astype(np.float64)
    x = rng.standard_normal((*lead, 3, fan_in))
    # Unmerged LoRA, as the paper writes it: x W + alpha / r * (x A) B.
    unmerged = x @ w + 2.0 * ((x @ a) @ b)
    np.testing.assert_allclose(x @ w_merged, unmerged, rtol=1e-5, atol=1e-4, err_msg=name)
    for layer in np.ndindex(*lead):  # rank r, up to float32 rounding of the merged kernel
      delta = w_merged[layer] - w[layer]
      assert np.linalg.matrix_rank(delta, tol=1e-4 * np.abs(delta).max()) == 2, name
  for name in set(base) - set(adapters.views):
    np.testing.assert_array_equal(merged[name], base[name])  # untouched


def test_fresh_adapters_leave_the_model_exactly_the_base():
  from gemb.model.embedder_model import MultimodalEmbedder

  m = small_model(rank=3)
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MultimodalEmbedder(m, rngs=nnx.Rngs(0))))
  params = jax.tree.map(jnp.asarray, random_params(m))
  adapters = lora.LoRA(m)
  pairs = adapters.init(jax.random.key(0))
  assert all(np.abs(np.asarray(p["a"])).max() > 0 and not np.asarray(p["b"]).any()
             for p in jax.tree.leaves(pairs, is_leaf=lambda t: isinstance(t, dict) and "a" in t))
  rng = np.random.default_rng(0)
  side = {"layout": np.array([[0, 1]] * 4, np.int32),
          "text": rng.integers(1, 64, (4, 1, 8)).astype(np.int32),
          "image": rng.uniform(-1, 1, (4, 1, 8, 8, 3)).astype(np.float32)}
  embed = jax.jit(lambda p, s: nnx.merge(graphdef, p)(s))
  np.testing.assert_array_equal(embed(adapters.merge(params, pairs), side), embed(params, side))


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match=r"targets='\(' is not a regex"):
    lora.LoRA(small_model(targets="("))
  with pytest.raises(ValueError, match=r"targets='\^nothing' matches no parameter.*encoder/"):
    lora.LoRA(small_model(targets="^nothing"))
  with pytest.raises(ValueError, match=r"targets='norm' matches no parameter of 2"):
    lora.LoRA(small_model(targets="norm"))  # norm scales are vectors
  with pytest.raises(ValueError, match=r"rank=20 exceeds the smaller side"):
    lora.LoRA(small_model(rank=20))
  with pytest.raises(ValueError, match=r"alpha=0.0 must be > 0"):
    lora.LoRA(small_model(alpha=0.0))
  bad = small_model()
  bad.lora.trainable = "[x"
  with pytest.raises(ValueError, match=r"model.lora.trainable='\[x' is not a regex"):
    lora.LoRA(bad)
  some = small_model()
  some.lora.trainable = "^(image|head)/|qkv"
  adapters = lora.LoRA(some)
  assert adapters.trains("image/proj/kernel") and adapters.trains("head/kernel")
  assert not adapters.trains("encoder/blocks/attn/qkv")  # adapted: its adapters train
  assert not adapters.trains("encoder/norm/scale") and not lora.LoRA(small_model()).trains(
      "head/kernel")
  assert not lora.enabled(small_model(rank=0)) and lora.enabled(small_model(rank=1))
  assert not lora.enabled(tiny.get_config().model)  # configs default to off
