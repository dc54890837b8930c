"""--format=sentence-transformers: a run on all-MiniLM-L6-v2 (its weights changed, as training
would) written for stock sentence-transformers, which then embeds the 66 reference texts as
gemb's model does; prompts included. Runs where torch + sentence-transformers are installed
(the `reference` extra); the refusals run everywhere."""

import jax
import numpy as np
import pytest
from flax import nnx

from backbone_fixtures import minilm_dir, minilm_reference
from configs import backbone_smoke
from gemb.export.sentence_transformers import write_sentence_transformers
from gemb.data.tokenizer import backbone_tokenizer
from gemb.model import backbone
from gemb.model.embedder_model import MultimodalEmbedder, matryoshka
from gemb.run.curriculum import param_path


def changed_minilm(config):
  """MiniLM's params with every backbone array moved by 1% noise: the export must carry
  gemb's weights, not copy the checkpoint's."""
  params = nnx.to_pure_dict(nnx.state(MultimodalEmbedder(config.model, rngs=nnx.Rngs(0))))
  pretrained = backbone.pretrained_params(config.model)
  rng = np.random.default_rng(0)

  def value(path, x):
    v = pretrained.get(param_path(path))
    if v is None:
      return np.asarray(x)
    return (v * (1 + 0.01 * rng.standard_normal(v.shape))).astype(np.float32)
  return jax.tree_util.tree_map_with_path(value, params)


def test_exported_directory_loads_in_sentence_transformers_and_matches(tmp_path):
  st = pytest.importorskip("sentence_transformers",
                           reason="torch + sentence-transformers (the reference extra)")
  config = backbone_smoke.get_config()
  config.model.backbone.checkpoint = minilm_dir()
  config.model.text.max_len = 256
  params = changed_minilm(config)
  files = write_sentence_transformers(str(tmp_path / "st"), config, params)
  assert "model.safetensors" in files and "modules.json" in files
  ref = minilm_reference()
  texts = ref["texts"]
  loaded = st.SentenceTransformer(str(tmp_path / "st"), device="cpu")
  theirs = loaded.encode(texts, batch_size=16, convert_to_numpy=True)

  model = MultimodalEmbedder(config.model, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, jax.tree.map(np.asarray, params))
  model = nnx.merge(graphdef, state)
  tok = backbone_tokenizer(backbone.read_checkpoint(minilm_dir()))
  ids = tok.encode(texts, 256)
  ours = np.asarray(matryoshka(model({"layout": np.zeros((len(texts), 1), np.int32),
                                      "text": ids[:, None]}), 384))
  cos = np.sum(ours * theirs, -1) / np.linalg.norm(theirs, axis=-1)
  assert cos.min() >= 0.9999 and np.abs(ours - theirs).max() <= 1e-4
  # Not the original checkpoint's embeddings: the export carries the changed weights.
  assert np.abs(theirs - ref["embedding"]).max() > 1e-3
  # The run's task instructions are prompts, applied as gemb joins them.
  name = "emoji_name_to_image"
  prompt = loaded.prompts[name]
  with_prompt = loaded.encode(["red heart"], prompt_name=name, convert_to_numpy=True)
  joined = np.asarray(matryoshka(model({"layout": np.zeros((1, 1), np.int32),
                                        "text": tok.encode([prompt + "red heart"], 256)[:, None]}),
                                 384))
  np.testing.assert_allclose(with_prompt, joined, atol=1e-4)


def test_models_without_a_hugging_face_counterpart_are_refused(tmp_path):
  config = backbone_smoke.get_config()
  config.model.backbone.update(family="gemb", checkpoint="")
  with pytest.raises(ValueError, match="has no Hugging Face counterpart"):
    write_sentence_transformers(str(tmp_path / "a"), config, {})
  config = backbone_smoke.get_config()
  config.model.backbone.checkpoint = minilm_dir()
  config.model.backbone.update(head="gemb")
  with pytest.raises(ValueError, match="head='gemb'"):
    write_sentence_transformers(str(tmp_path / "b"), config, {})
  config.model.backbone.update(head="st", pooling="attention")
  with pytest.raises(ValueError, match="pooling 'attention'"):
    write_sentence_transformers(str(tmp_path / "c"), config, {})
