"""Pretrained backbones: reading Hugging Face directories, the backbone's tokenizer, mixing
the backbone into the multimodal model, and parity of all-MiniLM-L6-v2 through gemb with
sentence-transformers (the reference: tests/fixtures/backbones/all-minilm-l6-v2.npz, written
by tests/make_backbone_references.py with torch on CPU in float32)."""

import json
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from backbone_fixtures import (hf_tensors, minilm_dir, minilm_reference, tiny_tokenizer_json,
                               write_tiny_bert)
from configs.common import model_config
from gemb import parallel
from gemb.batch import IMAGE, TEXT
from gemb.data.tokenizer import PretrainedTokenizer, backbone_tokenizer
from gemb.model import backbone
from gemb.model.embedder_model import MultimodalEmbedder, matryoshka
from gemb.trees import param_path


def backbone_config(path, *, embed_dim, text_len, modalities=("text", "image"), **backbone_cfg):
  cfg = model_config(width=16, depth=1, heads=2, mlp_dim=32, embed_dim=embed_dim, vocab_size=8,
                     text_len=text_len, image_size=16, patch=8, modalities=modalities)
  cfg.backbone.update(dict(family="auto", checkpoint=path, **backbone_cfg))
  return cfg


def loaded_model(cfg):
  """MultimodalEmbedder(cfg) with the checkpoint's weights copied in (what train-state init
  does on a mesh; here on one device)."""
  graphdef, state = nnx.split(MultimodalEmbedder(cfg, rngs=nnx.Rngs(0)))
  pure = nnx.to_pure_dict(state)
  pretrained = backbone.pretrained_params(cfg)
  paths = {param_path(p) for p, _ in jax.tree_util.tree_flatten_with_path(pure)[0]}
  assert set(pretrained) <= paths, set(pretrained) - paths
  pure = jax.tree_util.tree_map_with_path(
      lambda p, x: jnp.asarray(pretrained.get(param_path(p), x)), pure)
  nnx.replace_by_pure_dict(state, pure)
  return nnx.merge(graphdef, state)


def text_side(ids):
  return {"layout": np.full((len(ids), 1), TEXT, np.int32), "text": ids[:, None, :]}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
  return write_tiny_bert(str(tmp_path_factory.mktemp("tiny_bert")))


# ---- Reading checkpoint directories.

def test_reads_the_sentence_transformers_layout(tiny_dir):
  ck = backbone.read_checkpoint(tiny_dir)
  assert (ck.family, ck.width, ck.pooling, ck.normalize, ck.max_seq_length) == \
      ("bert", 32, "mean", True, 24)
  assert [(d.in_features, d.out_features, d.activation) for d in ck.dense] == [(32, 24, "tanh")]
  assert ck.output_dim == 24


def test_bad_checkpoints_are_named(tmp_path):
  with pytest.raises(backbone.CheckpointError, match="not a directory"):
    backbone.read_checkpoint(str(tmp_path / "nowhere"))
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(backbone.CheckpointError, match=f"{empty}: no config.json"):
    backbone.read_checkpoint(str(empty))

  llama = write_tiny_bert(str(tmp_path / "llama"))
  with open(os.path.join(llama, "config.json"), "w") as f:
    json.dump({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}, f)
  with pytest.raises(backbone.CheckpointError,
                     match=r"config.json: model_type='llama' \(architectures=\['LlamaForCausalLM"):
    backbone.read_checkpoint(llama)

  no_tok = write_tiny_bert(str(tmp_path / "no_tok"))
  os.remove(os.path.join(no_tok, "tokenizer.json"))
  with pytest.raises(backbone.CheckpointError, match=f"{no_tok}: no tokenizer.json"):
    backbone.read_checkpoint(no_tok)

  truncated = write_tiny_bert(str(tmp_path / "truncated"))
  weights = os.path.join(truncated, "model.safetensors")
  with open(weights, "r+b") as f:
    f.truncate(os.path.getsize(weights) // 2)
  with pytest.raises(backbone.CheckpointError, match=f"{weights}: cannot read the safetensors"):
    backbone.backbone_params(backbone.read_checkpoint(truncated))

  tensors = hf_tensors()
  del tensors["encoder.layer.1.attention.self.key.bias"]
  tensors["encoder.layer.0.attention.self.query.weight"] = np.zeros((32, 31), np.float32)
  tensors["lm_head.weight"] = np.zeros((3,), np.float32)
  mismatched = write_tiny_bert(str(tmp_path / "mismatched"), tensors=tensors)
  with pytest.raises(backbone.CheckpointError) as e:
    backbone.backbone_params(backbone.read_checkpoint(mismatched))
  for part in ("missing tensors: encoder.layer.1.attention.self.key.bias",
               "unexpected tensors: lm_head.weight",
               "encoder.layer.0.attention.self.query.weight: got (32, 31), expected (32, 32)"):
    assert part in str(e.value)

  bad_pool = write_tiny_bert(str(tmp_path / "bad_pool"))
  with open(os.path.join(bad_pool, "1_Pooling", "config.json"), "w") as f:
    json.dump({"pooling_mode_max_tokens": True}, f)
  with pytest.raises(backbone.CheckpointError, match="1_Pooling/config.json: pooling modes"):
    backbone.read_checkpoint(bad_pool)


def test_family_settings_are_checked(tiny_dir, monkeypatch):
  cfg = backbone_config(tiny_dir, embed_dim=24, text_len=8)
  cfg.backbone.family = "gemma3"
  with pytest.raises(backbone.CheckpointError, match="family='gemma3' but .* is a 'bert' model"):
    MultimodalEmbedder(cfg, rngs=nnx.Rngs(0))
  cfg.backbone.family = "gemb"
  with pytest.raises(ValueError, match="checkpoint=.* is set but model.backbone.family='gemb'"):
    MultimodalEmbedder(cfg, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="embed_dim=16 but .* outputs 24 dims"):
    MultimodalEmbedder(backbone_config(tiny_dir, embed_dim=16, text_len=8), rngs=nnx.Rngs(0))
  # A family whose module this gemb lacks fails naming it (no stand-in model).
  monkeypatch.setitem(backbone.FAMILY_MODULES, "bert", ("gemb.model.no_such_family", "X"))
  with pytest.raises(backbone.CheckpointError, match="bert family not installed"):
    MultimodalEmbedder(backbone_config(tiny_dir, embed_dim=24, text_len=8), rngs=nnx.Rngs(0))


# ---- The backbone's tokenizer.

def test_pretrained_tokenizer_frames_truncates_and_round_trips(tmp_path):
  tok = PretrainedTokenizer(tiny_tokenizer_json(), max_length=6)
  ids = tok.encode(["ab c", "abcdefgh", "x"], 8)
  cls, sep = 2, 3
  np.testing.assert_array_equal(ids[0], [cls, 5, 32, 7, sep, 0, 0, 0])  # a ##b c
  assert ids[1, 0] == cls and ids[1, 5] == sep and not ids[1, 6:].any()  # cut at 6, [SEP] kept
  np.testing.assert_array_equal(tok.encode(["abcdefgh"], 4)[0], [cls, 5, 32, sep])
  assert tok.decode(ids[0]) == "ab c"
  path = str(tmp_path / "tokenizer.json")
  tok.save(path)
  for again in (PretrainedTokenizer.load(path), pickle.loads(pickle.dumps(tok))):
    np.testing.assert_array_equal(again.encode(["ab c", "abcdefgh", "x"], 8), ids)
  from tokenizers import Tokenizer
  other_pad = Tokenizer.from_str(tiny_tokenizer_json())
  other_pad.enable_padding(pad_id=4, pad_token="[MASK]")
  with pytest.raises(ValueError, match="padding id is 4"):
    PretrainedTokenizer(other_pad.to_str())


# ---- The multimodal model on a backbone.

def test_text_skips_everything_gemb_adds_and_other_modalities_mix_in(tiny_dir):
  cfg = backbone_config(tiny_dir, embed_dim=24, text_len=8)
  model = loaded_model(cfg)
  tok = PretrainedTokenizer.from_checkpoint(os.path.join(tiny_dir, "tokenizer.json"), 24)
  ids = tok.encode(["ab c", "hello there", "x y z"], 8)
  raw = np.asarray(model(text_side(ids)))
  # The reference: the backbone alone, mean over valid tokens, Dense + tanh.
  enc = model.encoder
  mask = ids != 0
  hidden = np.asarray(enc(enc.embed_ids(ids), mask, np.broadcast_to(np.arange(8), ids.shape)))
  pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
  dense = model.dense[0]
  np.testing.assert_allclose(raw, np.tanh(pooled @ np.asarray(dense.kernel[...])
                                          + np.asarray(dense.bias[...])), atol=1e-5)
  # An image segment in front shifts the text's positions and changes the embedding.
  image = np.random.default_rng(0).uniform(-1, 1, (3, 1, 16, 16, 3)).astype(np.float32)
  mixed = {"layout": np.array([[IMAGE, TEXT]] * 3, np.int32), "text": ids[:, None],
           "image": image}
  out = np.asarray(model(mixed))
  assert out.shape == (3, 24) and np.all(np.isfinite(out)) and np.abs(out - raw).max() > 1e-3
  assert not hasattr(model, "text") and not hasattr(model, "sequence_position")


def test_gemb_head_and_pooling_overrides(tiny_dir):
  cfg = backbone_config(tiny_dir, embed_dim=16, text_len=8, head="gemb", pooling="first")
  model = MultimodalEmbedder(cfg, rngs=nnx.Rngs(0))
  assert model.pooling == "first" and hasattr(model, "head") and not hasattr(model, "dense")
  ids = PretrainedTokenizer(tiny_tokenizer_json()).encode(["ab"], 8)
  assert model(text_side(ids)).shape == (1, 16)


def test_sharded_multimodal_backbone_equals_single_device(tiny_dir, devices):
  cfg = backbone_config(tiny_dir, embed_dim=24, text_len=8)
  single_model = loaded_model(cfg)
  ids = PretrainedTokenizer(tiny_tokenizer_json()).encode(
      ["ab c", "hello", "x y z", "q", "lorem ipsum", "b", "c d", "e"], 8)
  image = np.random.default_rng(0).uniform(-1, 1, (8, 1, 16, 16, 3)).astype(np.float32)
  side = {"layout": np.array([[TEXT, IMAGE]] * 8, np.int32), "text": ids[:, None],
          "image": image}
  single = np.asarray(single_model(side))
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  graphdef, params = parallel.create_sharded(lambda: MultimodalEmbedder(cfg, rngs=nnx.Rngs(0)),
                                             mesh)
  values = nnx.to_pure_dict(nnx.state(single_model))
  params = jax.tree.map(lambda s, v: jax.device_put(v, s.sharding), params, values)
  with jax.set_mesh(mesh):
    forward = jax.jit(lambda p, s: nnx.merge(graphdef, p)(s))
    out = forward(params, parallel.host_to_global(side, mesh))
  np.testing.assert_allclose(np.asarray(out), single, atol=2e-5)


# ---- all-MiniLM-L6-v2 against sentence-transformers.

@pytest.fixture(scope="module")
def minilm():
  path = minilm_dir()
  ck = backbone.read_checkpoint(path)
  return path, ck, PretrainedTokenizer.from_checkpoint(ck.tokenizer_file, ck.max_seq_length)


def test_minilm_token_ids_equal_the_reference(minilm):
  _, ck, tok = minilm
  ref = minilm_reference()
  assert len(ref["texts"]) >= 64 and ck.max_seq_length == ref["metadata"]["max_seq_length"]
  ids = tok.encode(ref["texts"], 512)  # longer slots than max_seq_length: ST truncates at 256
  length = ref["input_ids"].shape[1]
  np.testing.assert_array_equal(ids[:, :length], np.where(ref["attention_mask"],
                                                          ref["input_ids"], 0))
  assert not ids[:, length:].any()
  assert ref["attention_mask"].sum(1).max() == ck.max_seq_length  # some texts were cut


def test_minilm_embeddings_equal_sentence_transformers(minilm):
  path, ck, tok = minilm
  ref = minilm_reference()
  cfg = backbone_config(path, embed_dim=384, text_len=ck.max_seq_length)
  model = loaded_model(cfg)
  ids = tok.encode(ref["texts"], ck.max_seq_length)
  raw = np.asarray(jax.jit(lambda s: model(s))(text_side(ids)))
  np.testing.assert_allclose(raw, ref["pooled"], atol=1e-4)  # no Dense: raw = pooled
  got = np.asarray(matryoshka(raw, 384))
  want = ref["embedding"]
  cos = np.sum(got * want, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
  print(f"MiniLM vs sentence-transformers: min cosine {cos.min():.8f}, max abs diff "
        f"{np.abs(got - want).max():.2e} over {len(cos)} texts")
  assert cos.min() >= 0.9999, cos.min()
  assert np.abs(got - want).max() <= 1e-4


# ---- EmbeddingGemma-300M through the whole multimodal model.

GEMMA_FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "backbones",
                             "embeddinggemma-300m.npz")


def gemma_dir():
  from gemb.pretrained.fetch import default_dir
  path = os.environ.get("GEMB_GEMMA_DIR") or default_dir("embeddinggemma-300m")
  if not os.path.exists(os.path.join(path, "model.safetensors")):
    pytest.fail(f"EmbeddingGemma-300M not in {path}: python -m gemb.pretrained fetch "
                "embeddinggemma-300m (.ci/run does)")
  return path


def test_embeddinggemma_tokenizer_and_prompts_equal_the_reference():
  """tokenizer.json through gemb's tokenizer gives the reference's ids, also when a prompt
  is joined to its text as gemb joins task instructions."""
  from gemb.data.examples import instructed
  ck = backbone.read_checkpoint(gemma_dir())
  tok = backbone_tokenizer(ck)
  with np.load(GEMMA_FIXTURE) as z:
    texts, ref = [str(t) for t in z["texts"]], np.where(z["attention_mask"], z["input_ids"], 0)
  np.testing.assert_array_equal(tok.encode(texts, ref.shape[1]), ref)
  prompt = ck.prompts["query"]
  prompted = [i for i, t in enumerate(texts) if t.startswith(prompt) and len(t) > len(prompt)]
  assert prompted
  for i in prompted:
    slot, ((_, joined),) = instructed([("text", texts[i][len(prompt):])], prompt,
                                      tok.encode([prompt], 8)[0], tok)
    assert not slot.any()
    np.testing.assert_array_equal(tok.encode([joined], ref.shape[1])[0], ref[i])


@pytest.mark.slow  # ~3 min; tests/test_gemma3.py checks the backbone's parity by default
def test_embeddinggemma_through_the_multimodal_model_equals_sentence_transformers():
  path = gemma_dir()
  ck = backbone.read_checkpoint(path)
  with np.load(GEMMA_FIXTURE) as z:
    ids, mask, want = z["input_ids"], z["attention_mask"].astype(bool), z["embedding"]
  cfg = backbone_config(path, embed_dim=768, text_len=ck.max_seq_length)
  cfg.scan_layers = True  # 24 layers: one compiled layer per bucket
  model = loaded_model(cfg)
  forward = jax.jit(lambda s: model(s))
  got = np.zeros(want.shape, np.float32)
  lengths = mask.sum(1)
  for lo, hi in ((0, 64), (64, 512), (512, 2048)):  # padded lengths: few compilations
    rows = np.nonzero((lengths > lo) & (lengths <= hi))[0]
    for start in range(0, len(rows), 8):
      r = rows[start:start + 8]
      batch = np.zeros((8, hi), np.int32)
      width = min(hi, ids.shape[1])
      batch[:len(r), :width] = np.where(mask[r, :width], ids[r, :width], 0)
      got[r] = np.asarray(matryoshka(forward(text_side(batch)), 768))[:len(r)]
  cos = np.sum(got * want, -1) / np.linalg.norm(want, axis=-1)
  assert cos.min() >= 0.9999 and np.abs(got - want).max() <= 1e-4, (cos.min(),
                                                                    np.abs(got - want).max())
