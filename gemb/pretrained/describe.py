"""What a Hugging Face-format model directory holds, read from its small files only.

config.json, the sentence-transformers JSON files and the 8-byte length + JSON header of
each *.safetensors file: no tensor data is read, so inspecting a 1.2 GB checkpoint is instant.
"""

import json
import math
import os

from gemb.pretrained.safetensors_file import read_header

FAMILIES = {"gemma3_text": "gemma3", "bert": "bert"}  # config.json model_type -> gemb family


def _json(directory, name, required=False):
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    if required:
      raise FileNotFoundError(f"{path} not found: not a Hugging Face model directory")
    return None
  with open(path) as f:
    try:
      return json.load(f)
    except ValueError as e:
      raise ValueError(f"{path} is not valid JSON: {e}") from None


def inspect(directory):
  """-> a dict describing the model in ``directory`` (see ``format_report``)."""
  config = _json(directory, "config.json", required=True)
  model_type = config.get("model_type")
  report = {
      "directory": os.path.abspath(directory),
      "model_type": model_type,
      "architectures": config.get("architectures"),
      "family": FAMILIES.get(model_type, f"unsupported ({model_type})"),
      "sizes": {k: config[k] for k in (
          "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
          "head_dim", "intermediate_size", "vocab_size", "max_position_embeddings",
          "sliding_window", "hidden_act", "hidden_activation", "rope_theta",
          "rope_local_base_freq", "query_pre_attn_scalar", "use_bidirectional_attention")
                if k in config},
  }
  if "layer_types" in config:
    kinds = config["layer_types"]
    report["sizes"]["layer_types"] = {k: kinds.count(k) for k in dict.fromkeys(kinds)}
  weights = {}
  for root, _, names in sorted(os.walk(directory)):
    for name in sorted(names):
      if name.endswith(".safetensors"):
        path = os.path.join(root, name)
        header, _ = read_header(path)
        weights[os.path.relpath(path, directory)] = {
            "tensors": len(header),
            # Floating tensors only: BERT checkpoints also store int64 position_ids buffers.
            "parameters": sum(math.prod(t["shape"]) for t in header.values()
                              if t["dtype"] in ("F64", "F32", "F16", "BF16")),
            "dtypes": sorted({t["dtype"] for t in header.values()})}
  report["weights"] = weights
  report["parameters"] = sum(w["parameters"] for w in weights.values())
  report["tokenizer"] = [f for f, kind in (("tokenizer.model", "sentencepiece"),
                                           ("tokenizer.json", "tokenizers"),
                                           ("vocab.txt", "WordPiece vocabulary"))
                         if os.path.isfile(os.path.join(directory, f))]
  modules = _json(directory, "modules.json") or []
  report["sentence_transformers"] = []
  for m in modules:
    entry = {"type": m.get("type", "?").rsplit(".", 1)[-1], "path": m.get("path", "")}
    cfg = _json(os.path.join(directory, entry["path"]), "config.json") if entry["path"] else None
    if entry["type"] == "Dense" and cfg:
      entry.update({k: cfg.get(k) for k in ("in_features", "out_features", "bias",
                                            "activation_function")})
    if entry["type"] == "Pooling" and cfg:
      entry["modes"] = [k[len("pooling_mode_"):] for k, v in cfg.items()
                        if k.startswith("pooling_mode_") and v]
    report["sentence_transformers"].append(entry)
  st = _json(directory, "sentence_bert_config.json") or {}
  report["max_seq_length"] = st.get("max_seq_length")
  prompts = _json(directory, "config_sentence_transformers.json") or {}
  report["prompts"] = prompts.get("prompts") or {}
  report["default_prompt_name"] = prompts.get("default_prompt_name")
  return report


def format_report(r):
  lines = [f"{r['directory']}",
           f"  family: {r['family']} (model_type {r['model_type']}, {r['architectures']})",
           "  sizes: " + ", ".join(f"{k}={v}" for k, v in r["sizes"].items()),
           f"  parameters: {r['parameters']:,}"]
  for path, w in r["weights"].items():
    lines.append(f"    {path}: {w['tensors']} tensors, {w['parameters']:,} parameters "
                 f"({'/'.join(w['dtypes'])})")
  lines.append(f"  tokenizer: {', '.join(r['tokenizer']) or 'none found'}")
  if r["sentence_transformers"]:
    lines.append(f"  sentence-transformers modules (max_seq_length {r['max_seq_length']}):")
    for m in r["sentence_transformers"]:
      extra = {k: v for k, v in m.items() if k not in ("type", "path")}
      lines.append(f"    {m['type']} {m['path'] or '.'} {extra if extra else ''}".rstrip())
  if r["prompts"]:
    lines.append(f"  prompts (default {r['default_prompt_name']}):")
    lines.extend(f"    {k}: {v!r}" for k, v in r["prompts"].items())
  return "\n".join(lines)
