"""Writes a run on a pretrained text backbone as a sentence-transformers directory:

  python -m gemb.export --workdir=DIR --out=OUT --format=sentence-transformers

``SentenceTransformer(OUT)`` (stock sentence-transformers, no gemb) then embeds text as the
run's model does: the backbone's weights back under their Hugging Face names
(``params_to_hf`` of the family module), the checkpoint's own config and tokenizer files,
modules.json with Pooling, the Dense layers and Normalize (gemb's embeddings are always
unit-norm), max_seq_length = what gemb tokenized to, and as prompts the checkpoint's own
plus the run's task instructions (when the run used them), so ``encode(texts,
prompt_name=TASK)`` applies an instruction as gemb does. Text only: the other modalities'
parameters are left out.

Refused, naming why: gemb's own transformer (no Hugging Face counterpart), a family module
without ``params_to_hf``, attention pooling or gemb's own head (no stock module computes them).
"""

import importlib
import json
import os
import shutil
import tempfile

import numpy as np

from gemb.data.pipeline import get_tasks
from gemb.model import backbone

# Files of a checkpoint directory that describe the model or its tokenizer (not weights).
_COPIED = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
           "vocab.txt", "tokenizer.model", "added_tokens.json", "generation_config.json")
_ACTIVATIONS = {"identity": "torch.nn.modules.linear.Identity",
                "tanh": "torch.nn.modules.activation.Tanh"}
_POOLING = {"mean": "pooling_mode_mean_tokens", "first": "pooling_mode_cls_token"}


def _refuse(message):
  raise ValueError(f"--format=sentence-transformers: {message}")


def prompts(config, checkpoint):
  """The checkpoint's prompts plus the run's task instructions (a task wins a name clash)."""
  out = dict(checkpoint.prompts)
  if config.data.instructions:
    names = dict.fromkeys(tuple(config.data.tasks) + tuple(config.eval.tasks))
    out.update({t.name: t.instruction for t in get_tasks(config, names) if t.instruction})
  return out


def write_sentence_transformers(out, config, params):
  """Writes ``params`` (the run's pure dict) of ``config`` to directory ``out`` (must not
  exist); -> the list of files written."""
  from safetensors.numpy import save_file

  m = config.model
  checkpoint = backbone.resolve(m)
  if checkpoint is None:
    _refuse("model.backbone.family='gemb' (gemb's own transformer) has no Hugging Face "
            "counterpart; only runs on a pretrained backbone (bert, gemma3) export this way")
  module = importlib.import_module(backbone.FAMILY_MODULES[checkpoint.family][0])
  if not hasattr(module, "params_to_hf"):
    _refuse(f"the {checkpoint.family} family cannot write its weights back to the Hugging "
            "Face layout (no params_to_hf)")
  pooling = m.backbone.pooling or checkpoint.pooling
  if pooling not in _POOLING:
    _refuse(f"pooling {pooling!r} has no sentence-transformers module (mean or first)")
  if m.backbone.head != "st":
    _refuse("model.backbone.head='gemb' (LayerNorm + linear) has no stock "
            "sentence-transformers module; export with head='st' runs")
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise FileExistsError(f"--out={out} exists; remove it or choose another directory")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=os.path.dirname(out))
  try:
    for name in _COPIED:
      if os.path.exists(os.path.join(checkpoint.path, name)):
        shutil.copyfile(os.path.join(checkpoint.path, name), os.path.join(tmp, name))
    as_np = lambda tree: {k: np.asarray(v, np.float32) for k, v in tree.items()}  # noqa: E731
    encoder = _numpy_tree(params["encoder"])
    save_file(as_np(module.params_to_hf(encoder, checkpoint.hf_config)),
              os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
    modules = [{"idx": 0, "name": "0", "path": "",
                "type": "sentence_transformers.models.Transformer"}]
    _json(os.path.join(tmp, "1_Pooling", "config.json"), {
        "word_embedding_dimension": checkpoint.width, "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": False, "include_prompt": True} | {_POOLING[pooling]: True})
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling",
                    "type": "sentence_transformers.models.Pooling"})
    for i, dense in enumerate(checkpoint.dense):
      sub = f"{i + 2}_Dense"
      weights = _numpy_tree(params["dense"][i])
      _json(os.path.join(tmp, sub, "config.json"), {
          "in_features": dense.in_features, "out_features": dense.out_features,
          "bias": dense.bias, "activation_function": _ACTIVATIONS[dense.activation]})
      tensors = {"linear.weight": np.ascontiguousarray(weights["kernel"].T)}
      if dense.bias:
        tensors["linear.bias"] = weights["bias"]
      save_file(as_np(tensors), os.path.join(tmp, sub, "model.safetensors"))
      modules.append({"idx": i + 2, "name": str(i + 2), "path": sub,
                      "type": "sentence_transformers.models.Dense"})
    n = len(modules)
    modules.append({"idx": n, "name": str(n), "path": f"{n}_Normalize",
                    "type": "sentence_transformers.models.Normalize"})
    _json(os.path.join(tmp, "modules.json"), modules)
    _json(os.path.join(tmp, "sentence_bert_config.json"), {
        "max_seq_length": min(int(m.text.max_len), checkpoint.max_seq_length),
        "do_lower_case": False})
    _json(os.path.join(tmp, "config_sentence_transformers.json"), {
        "prompts": prompts(config, checkpoint), "default_prompt_name": None,
        "similarity_fn_name": "cosine"})
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return sorted(os.path.relpath(os.path.join(r, f), out)
                for r, _, files in os.walk(out) for f in files)


def _numpy_tree(tree):
  """A restored params subtree (jax or numpy leaves; nnx's int keys) as numpy dicts."""
  if isinstance(tree, dict):
    return {k: _numpy_tree(v) for k, v in tree.items()}
  return np.asarray(tree, np.float32)


def _json(path, value):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(value, f, indent=2)
    f.write("\n")
