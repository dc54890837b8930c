"""Writes a run on a pretrained backbone as a sentence-transformers model directory, for
text (``python -m gemb.export --format=sentence-transformers``):

    config.json, model.safetensors     the trained backbone in the Hugging Face names of its
                                       family (BertModel, Gemma3TextModel), float32
    tokenizer.json (+ the checkpoint's other tokenizer files)
    sentence_bert_config.json          max_seq_length: where gemb truncated the run's text
    1_Pooling/config.json              the run's pooling (mean, or the first token)
    2_Dense/ ...                       the checkpoint's Dense head as trained (head "st"), or
                                       gemb's head as LayerNorm + Dense (head "gemb")
    modules.json                       Transformer, Pooling, [LayerNorm,] Dense..., Normalize
    config_sentence_transformers.json  prompts: the checkpoint's own and the run's task
                                       instructions (by task name), cosine similarity
    gemb_export.json                   where it came from, what it left out

``SentenceTransformer(DIR)`` with stock sentence-transformers (no gemb, no trust_remote_code)
then embeds a text as gemb embeds it: ``encode(texts, prompt_name=TASK)`` equals gemb's
embedding with task TASK's instruction, ``encode(texts)`` gemb's without one. The module
types are the classic ``sentence_transformers.models.*`` names and configs, which every
release since 2.x reads.

What cannot be written is refused (``Refusal``, a one-line reason) before any weight is read:
gemb's own transformer (no Hugging Face counterpart), a model without text, attention
pooling (a learned head no sentence-transformers module computes). A multimodal run exports
its text path with a warning naming the modalities left out: text embeds exactly as in the
full model (nothing gemb adds touches a backbone's text), so its text side stays usable, e.g.
as the query encoder of a text-to-image index built with the gemb bundle.
"""

import importlib
import json
import os
import shutil
import tempfile

import jax
import numpy as np
from absl import logging

import gemb
from gemb.export.writer import task_instructions
from gemb.model import backbone

FORMAT = "sentence-transformers"
# The Hugging Face model class each family's params_to_hf writes the names of.
ARCHITECTURES = {"bert": "BertModel", "gemma3": "Gemma3TextModel"}
# config.json keys the export sets: gemb runs every backbone bidirectionally (a causal Gemma
# 3 checkpoint too), and the weights are written in float32.
CONFIG_OVERRIDES = {"bert": {}, "gemma3": {"use_bidirectional_attention": True}}
# Tokenizer files a checkpoint directory may hold; every one present is copied (transformers
# reads tokenizer.json; the others serve older releases and the slow tokenizers).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                   "added_tokens.json", "vocab.txt", "vocab.json", "merges.txt",
                   "tokenizer.model", "spiece.model", "sentencepiece.bpe.model")
ACTIVATIONS = {"identity": "torch.nn.modules.linear.Identity",
               "tanh": "torch.nn.modules.activation.Tanh"}
POOLINGS = {"mean": "pooling_mode_mean_tokens", "first": "pooling_mode_cls_token"}
MODULE_TYPES = {k: f"sentence_transformers.models.{k}"
                for k in ("Transformer", "Pooling", "Dense", "LayerNorm", "Normalize")}
RECORD = "gemb_export.json"


class Refusal(ValueError):
  """A run this format cannot represent; the message is one line naming why."""


def check(config):
  """-> (checkpoint, dropped modalities) of an exportable run; Refusal otherwise."""
  m = config.model
  family = m.backbone.family if "backbone" in m else "gemb"
  supported = ", ".join(sorted(ARCHITECTURES))
  if family == "gemb":
    raise Refusal(f"model.backbone.family='gemb' (gemb's own transformer, trained from "
                  f"scratch) has no Hugging Face counterpart: --format={FORMAT} exports runs on "
                  f"a pretrained backbone of family {supported}; export a serving bundle "
                  "instead (--format=bundle)")
  checkpoint = backbone.resolve(m)
  if checkpoint.family not in ARCHITECTURES:
    raise Refusal(f"backbone family {checkpoint.family!r} has no Hugging Face export in gemb; "
                  f"--format={FORMAT} supports {supported}")
  if "text" not in m.modalities:
    raise Refusal(f"model.modalities={tuple(m.modalities)} has no text: --format={FORMAT} "
                  "exports the text path only; export a serving bundle instead")
  pooling = m.backbone.pooling or checkpoint.pooling
  if pooling not in POOLINGS:
    raise Refusal(f"model.backbone.pooling={pooling!r} (a learned attention head) has no "
                  f"sentence-transformers module; --format={FORMAT} supports pooling "
                  f"{', '.join(POOLINGS)}")
  return checkpoint, [x for x in m.modalities if x != "text"]


def prompts(config):
  """{name: prefix} as gemb applies them to text: the checkpoint's own prompts (always, as
  gemb serving applies them) and, for a run trained with data.instructions, the instruction
  of every task whose query starts with text (gemb joins it to that text)."""
  out = {}
  for name, task in task_instructions(config).items():
    if task["instruction"] and (task.get("prompt") or (
        config.data.instructions and task["query"][:1] == ["text"])):
      out[name] = task["instruction"]
  return out


def max_seq_length(config, checkpoint):
  """Where gemb cut the run's text: its text slots, at most the checkpoint's own limit."""
  return min(int(config.model.text.max_len), checkpoint.max_seq_length)


def hf_config(checkpoint):
  c = dict(checkpoint.hf_config, architectures=[ARCHITECTURES[checkpoint.family]],
           dtype="float32", **CONFIG_OVERRIDES[checkpoint.family])
  c.pop("torch_dtype", None)  # the old name of "dtype"; a stale one would override it
  return c


def head_modules(config, checkpoint, params):
  """[(module type, directory name, config, {tensor: array})] after the pooling."""
  numpy = lambda x: np.ascontiguousarray(np.asarray(jax.device_get(x), np.float32))  # noqa: E731
  if config.model.backbone.head == "st":
    out = []
    for i, dense in enumerate(checkpoint.dense):
      p = params["dense"][i]
      tensors = {"linear.weight": numpy(p["kernel"]).T.copy()}
      if dense.bias:
        tensors["linear.bias"] = numpy(p["bias"])
      out.append(("Dense", "Dense", {"in_features": dense.in_features,
                                     "out_features": dense.out_features, "bias": dense.bias,
                                     "activation_function": ACTIVATIONS[dense.activation]},
                  tensors))
    return out
  # gemb's head: a bias-free LayerNorm then a bias-free linear map. sentence-transformers'
  # LayerNorm has torch's eps (1e-5, gemb's is 1e-6): that only scales each pooled vector
  # by a positive number, which the linear map keeps and the final Normalize removes.
  width, kernel = checkpoint.width, numpy(params["head"]["kernel"])
  return [("LayerNorm", "LayerNorm", {"dimension": width},
           {"norm.weight": numpy(params["head_norm"]["scale"]),
            "norm.bias": np.zeros((width,), np.float32)}),
          ("Dense", "Dense", {"in_features": width, "out_features": int(kernel.shape[1]),
                              "bias": False, "activation_function": ACTIVATIONS["identity"]},
           {"linear.weight": kernel.T.copy()})]


def pooler_tensors(checkpoint):
  """BERT's [CLS] pooler (pooler.dense.*) from the checkpoint, unchanged: no part of gemb's
  backbone (sentence embeddings pool the hidden states) but of transformers' BertModel, so
  with it loading the export initializes nothing at random (and warns about nothing)."""
  from gemb.pretrained import safetensors_file

  out = {}
  if checkpoint.family != "bert":
    return out
  for name in sorted(os.listdir(checkpoint.path)):
    if name.endswith(".safetensors"):
      for tensor, value in safetensors_file.load(os.path.join(checkpoint.path, name)).items():
        short = tensor.removeprefix("bert.")
        if short.startswith("pooler."):
          out[short] = np.array(value, np.float32)
  return out


def check_tokenizer(run_tokenizer, checkpoint):
  """The checkpoint's tokenizer.json must be the one the run trained with (the run keeps a
  copy with its own truncation); a replaced checkpoint directory is named."""
  import tokenizers

  def canonical(text):
    tok = tokenizers.Tokenizer.from_str(text)
    tok.no_padding()
    tok.no_truncation()
    return tok.to_str()
  with open(run_tokenizer, encoding="utf-8") as f:
    ours = canonical(f.read())
  with open(checkpoint.tokenizer_file, encoding="utf-8") as f:
    theirs = canonical(f.read())
  if ours != theirs:
    raise Refusal(f"{checkpoint.tokenizer_file} is not the tokenizer the run trained with "
                  f"({run_tokenizer}); model.backbone.checkpoint={checkpoint.path} has changed")


def _write_json(path, value):
  with open(path, "w") as f:
    json.dump(value, f, indent=2)
    f.write("\n")


def write(out, config, params, run_tokenizer, *, source):
  """Writes ``params`` (the run's pure dict) as a sentence-transformers directory ``out``
  (must not exist; written to a temporary sibling, then renamed). Returns the record
  written to gemb_export.json."""
  from safetensors.numpy import save_file

  out = os.path.abspath(out)
  if os.path.exists(out):
    raise FileExistsError(f"--out={out} exists; remove it or choose another directory")
  checkpoint, dropped = check(config)
  check_tokenizer(run_tokenizer, checkpoint)
  if dropped:
    logging.warning("--format=%s exports the text path only: the run's %s modalit%s "
                    "(embedders and all) %s left out; text embeds exactly as in the full model",
                    FORMAT, ", ".join(dropped), "ies" if len(dropped) > 1 else "y",
                    "are" if len(dropped) > 1 else "is")
  family = importlib.import_module(backbone.FAMILY_MODULES[checkpoint.family][0])
  seq_len = max_seq_length(config, checkpoint)
  pooling = config.model.backbone.pooling or checkpoint.pooling
  run_prompts = prompts(config)

  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=os.path.dirname(out))
  try:
    # ---- The transformer: module 0, at the directory's root.
    _write_json(os.path.join(tmp, "config.json"), hf_config(checkpoint))
    tensors = family.params_to_hf(jax.device_get(params["encoder"]), checkpoint.hf_config)
    tensors.update(pooler_tensors(checkpoint))
    save_file(tensors, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    del tensors
    for name in TOKENIZER_FILES:
      src = os.path.join(checkpoint.path, name)
      if os.path.exists(src):
        shutil.copyfile(src, os.path.join(tmp, name))
    tok_config = os.path.join(tmp, "tokenizer_config.json")
    if os.path.exists(tok_config):  # what AutoTokenizer alone truncates at, too
      with open(tok_config) as f:
        _write_json(tok_config, dict(json.load(f), model_max_length=seq_len))
    _write_json(os.path.join(tmp, "sentence_bert_config.json"),
                {"max_seq_length": seq_len, "do_lower_case": False})
    modules = [{"idx": 0, "name": "0", "path": "", "type": MODULE_TYPES["Transformer"]}]

    # ---- Pooling, the head, Normalize (gemb's embeddings are unit vectors).
    def add(kind, directory, cfg=None, weights=None):
      idx = len(modules)
      path = f"{idx}_{directory}"
      if cfg is not None:
        os.makedirs(os.path.join(tmp, path))
        _write_json(os.path.join(tmp, path, "config.json"), cfg)
      if weights is not None:
        save_file(weights, os.path.join(tmp, path, "model.safetensors"),
                  metadata={"format": "pt"})
      modules.append({"idx": idx, "name": str(idx), "path": path, "type": MODULE_TYPES[kind]})

    add("Pooling", "Pooling", {
        "word_embedding_dimension": checkpoint.width,
        **{flag: mode == pooling for mode, flag in POOLINGS.items()},
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": False,
        "include_prompt": True})  # gemb pools over the instruction's tokens too
    for kind, directory, cfg, weights in head_modules(config, checkpoint, params):
      add(kind, directory, cfg, weights)
    add("Normalize", "Normalize")  # no files: sentence-transformers' Normalize has no state
    _write_json(os.path.join(tmp, "modules.json"), modules)
    if checkpoint.default_prompt_name:
      logging.info("the checkpoint's default_prompt_name %r is not set: gemb applies a prompt "
                   "only when asked (encode(..., prompt_name=...))",
                   checkpoint.default_prompt_name)
    _write_json(os.path.join(tmp, "config_sentence_transformers.json"), {
        "model_type": "SentenceTransformer", "prompts": run_prompts,
        "default_prompt_name": None, "similarity_fn_name": "cosine"})
    record = {"format": FORMAT, "gemb_version": gemb.__version__, "source": source,
              "backbone": {"family": checkpoint.family, "checkpoint": checkpoint.path},
              "max_seq_length": seq_len, "pooling": pooling, "head": config.model.backbone.head,
              "embed_dim": int(config.model.embed_dim),
              "matryoshka_dims": [int(d) for d in config.loss.matryoshka_dims],
              "prompts": sorted(run_prompts), "dropped_modalities": dropped}
    _write_json(os.path.join(tmp, RECORD), record)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return record
