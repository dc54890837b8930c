"""Pretrained backbones: a local Hugging Face-format directory as gemb's shared transformer.

``model.backbone.checkpoint=/path`` names a directory as Hugging Face and
sentence-transformers write them (what ``huggingface-cli download`` or
``python -m gemb.pretrained fetch`` leave on disk):

    config.json                     the architecture: model_type picks the family module
                                    (bert -> gemb/model/bert.py, gemma3_text ->
                                    gemb/model/gemma3.py), every size comes from it
    *.safetensors                   the weights (read with the safetensors numpy API)
    tokenizer.json                  the text tokenizer (gemb.data.tokenizer.PretrainedTokenizer)
    modules.json                    (optional) the sentence-transformers pipeline:
      1_Pooling/config.json           mean or [CLS] pooling
      2_Dense/config.json + weights   Dense layers after pooling (EmbeddingGemma: 768->3072->768)
      Normalize                       L2 normalization
    sentence_bert_config.json       (optional) max_seq_length, where sentence-transformers truncates
    config_sentence_transformers.json  (optional) prompts: {name: prefix}, default_prompt_name

``read_checkpoint`` reads and checks everything but the weights (small files, cached per
path); ``checkpoint_params`` reads the weights into the layout of the model's parameters.
Every error names the file, tensor or field that is wrong.
"""

import dataclasses
import functools
import importlib
import json
import os

import numpy as np

# config.json model_type -> gemb family; a family -> (module, class).
MODEL_TYPES = {"bert": "bert", "gemma3_text": "gemma3"}
FAMILY_MODULES = {"bert": ("gemb.model.bert", "BertBackbone"),
                  "gemma3": ("gemb.model.gemma3", "Gemma3Backbone")}
FAMILIES = ("gemb", "auto") + tuple(FAMILY_MODULES)
POOLINGS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "first"}
DENSE_ACTIVATIONS = {"torch.nn.modules.linear.Identity": "identity",
                     "torch.nn.modules.activation.Tanh": "tanh"}


class CheckpointError(ValueError):
  """A checkpoint directory that gemb cannot use; the message names the file and field."""


@dataclasses.dataclass(frozen=True)
class Dense:
  """One sentence-transformers Dense module: y = activation(x @ W.T + b)."""
  path: str            # its directory, e.g. .../2_Dense
  in_features: int
  out_features: int
  bias: bool
  activation: str      # "identity" | "tanh"


@dataclasses.dataclass(frozen=True)
class Checkpoint:
  """What a checkpoint directory holds, except the weights."""
  path: str
  family: str
  hf_config: dict
  tokenizer_file: str
  max_seq_length: int
  pooling: str                  # "mean" | "first" (the [CLS] token)
  dense: tuple = ()             # Dense modules in order
  normalize: bool = False
  prompts: dict = dataclasses.field(default_factory=dict)
  default_prompt_name: str | None = None

  @property
  def width(self):
    return int(self.hf_config["hidden_size"])

  @property
  def output_dim(self):
    return self.dense[-1].out_features if self.dense else self.width


def _read_json(path, required=True):
  if not os.path.exists(path):
    if required:
      raise CheckpointError(f"{path}: missing")
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not readable JSON: {e}") from e


def family_of(hf_config, where):
  """config.json -> gemb family name, or a CheckpointError naming model_type."""
  model_type = hf_config.get("model_type")
  if model_type not in MODEL_TYPES:
    arch = hf_config.get("architectures")
    raise CheckpointError(f"{where}: model_type={model_type!r} (architectures={arch}) is not a "
                          f"supported architecture; supported model_type: {sorted(MODEL_TYPES)}")
  return MODEL_TYPES[model_type]


def family_class(family):
  """The backbone class of ``family``; a clear error when its module is not installed."""
  if family not in FAMILY_MODULES:
    raise ValueError(f"model.backbone.family={family!r}; choose one of {FAMILIES}")
  module, name = FAMILY_MODULES[family]
  try:
    return getattr(importlib.import_module(module), name)
  except ModuleNotFoundError as e:
    if e.name != module:
      raise
    raise CheckpointError(f"{family} family not installed: this gemb has no {module}") from e


@functools.lru_cache(maxsize=16)
def read_checkpoint(path):
  """The checkpoint directory ``path`` (absolute or relative), checked; cached per path."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isdir(path):
    raise CheckpointError(f"model.backbone.checkpoint={path}: not a directory")
  config_path = os.path.join(path, "config.json")
  if not os.path.exists(config_path):
    raise CheckpointError(f"{path}: no config.json (not a Hugging Face model directory?)")
  hf_config = _read_json(config_path)
  family = family_of(hf_config, config_path)
  if not any(n.endswith(".safetensors") for n in os.listdir(path)):
    raise CheckpointError(f"{path}: no *.safetensors weights (other formats are not read)")
  tokenizer_file = os.path.join(path, "tokenizer.json")
  if not os.path.exists(tokenizer_file):
    raise CheckpointError(f"{path}: no tokenizer.json; the backbone's text tokenizer is "
                          "needed (copy it from the model's repository)")

  modules = _read_json(os.path.join(path, "modules.json"), required=False)
  pooling, dense, normalize = "mean", [], False
  for i, module in enumerate(modules or ()):
    kind = str(module.get("type", "")).rsplit(".", 1)[-1]
    where = f"{os.path.join(path, 'modules.json')}[{i}] ({module.get('type')!r})"
    sub = os.path.join(path, module.get("path", ""))
    if kind == "Transformer":
      if i != 0:
        raise CheckpointError(f"{where}: the Transformer must be the first module")
    elif kind == "Pooling":
      pooling = _pooling(os.path.join(sub, "config.json"))
    elif kind == "Dense":
      dense.append(_dense(sub))
    elif kind == "Normalize":
      normalize = True
    else:
      raise CheckpointError(f"{where}: module type {kind!r} is not supported (Transformer, "
                            "Pooling, Dense, Normalize are)")
  width = int(hf_config.get("hidden_size", 0))
  for d in dense:
    if d.in_features != width:
      raise CheckpointError(f"{d.path}/config.json: in_features={d.in_features} but the "
                            f"previous output has {width} features")
    width = d.out_features

  st = _read_json(os.path.join(path, "sentence_bert_config.json"), required=False) or {}
  max_positions = int(hf_config.get("max_position_embeddings", 0)) or None
  max_seq_length = st.get("max_seq_length") or max_positions
  if not isinstance(max_seq_length, int) or max_seq_length <= 0:
    raise CheckpointError(f"{path}: sentence_bert_config.json max_seq_length (or config.json "
                          f"max_position_embeddings) must be a positive int, got "
                          f"{max_seq_length!r}")
  prompts_cfg = _read_json(os.path.join(path, "config_sentence_transformers.json"),
                           required=False) or {}
  prompts = {str(k): str(v) for k, v in (prompts_cfg.get("prompts") or {}).items()}
  default = prompts_cfg.get("default_prompt_name")
  if default is not None and default not in prompts:
    raise CheckpointError(f"{path}/config_sentence_transformers.json: default_prompt_name="
                          f"{default!r} is not among prompts {sorted(prompts)}")
  return Checkpoint(path=path, family=family, hf_config=hf_config,
                    tokenizer_file=tokenizer_file, max_seq_length=max_seq_length,
                    pooling=pooling, dense=tuple(dense), normalize=normalize,
                    prompts=prompts, default_prompt_name=default)


def _pooling(config_path):
  cfg = _read_json(config_path)
  on = [k for k, v in cfg.items() if k.startswith("pooling_mode") and v]
  if len(on) != 1 or on[0] not in POOLINGS:
    raise CheckpointError(f"{config_path}: pooling modes {on}; gemb supports exactly one of "
                          f"{sorted(POOLINGS)}")
  if cfg.get("include_prompt", True) is False:
    raise CheckpointError(f"{config_path}: include_prompt=false (pooling without the prompt's "
                          "tokens) is not supported")
  return POOLINGS[on[0]]


def _dense(directory):
  config_path = os.path.join(directory, "config.json")
  cfg = _read_json(config_path)
  activation = cfg.get("activation_function", "torch.nn.modules.linear.Identity")
  if activation not in DENSE_ACTIVATIONS:
    raise CheckpointError(f"{config_path}: activation_function={activation!r} is not supported; "
                          f"supported: {sorted(DENSE_ACTIVATIONS)}")
  for key in ("in_features", "out_features"):
    if not isinstance(cfg.get(key), int) or cfg[key] <= 0:
      raise CheckpointError(f"{config_path}: {key} must be a positive int, got {cfg.get(key)!r}")
  return Dense(path=directory, in_features=cfg["in_features"], out_features=cfg["out_features"],
               bias=bool(cfg.get("bias", True)), activation=DENSE_ACTIVATIONS[activation])


def read_safetensors(directory):
  """{tensor name: numpy array} of every *.safetensors file in ``directory`` (not nested)."""
  from safetensors import SafetensorError
  from safetensors.numpy import load_file

  files = sorted(n for n in os.listdir(directory) if n.endswith(".safetensors"))
  if not files:
    raise CheckpointError(f"{directory}: no *.safetensors file")
  tensors = {}
  for name in files:
    path = os.path.join(directory, name)
    try:
      loaded = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
      raise CheckpointError(f"{path}: cannot read the safetensors file (truncated or "
                            f"corrupt?): {e}") from e
    twice = sorted(set(loaded) & set(tensors))
    if twice:
      raise CheckpointError(f"{path}: tensors {twice[:5]} also appear in another file")
    tensors.update(loaded)
  return tensors


def dense_params(dense):
  """{"kernel": [in, out], "bias": [out]} of one Dense module (safetensors weights)."""
  tensors = read_safetensors(dense.path)
  expected = {"linear.weight": (dense.out_features, dense.in_features)}
  if dense.bias:
    expected["linear.bias"] = (dense.out_features,)
  where = os.path.join(dense.path, "*.safetensors")
  missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
  if missing or unexpected:
    raise CheckpointError(f"{where}: missing tensors {missing}, unexpected tensors {unexpected}")
  for name, shape in expected.items():
    if tuple(tensors[name].shape) != shape:
      raise CheckpointError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, "
                            f"expected {shape} (config.json in/out_features)")
  out = {"kernel": np.asarray(tensors["linear.weight"], np.float32).T}
  if dense.bias:
    out["bias"] = np.asarray(tensors["linear.bias"], np.float32)
  return out


def backbone_params(checkpoint):
  """The family module's parameter tree (pure dict, float32 numpy) from the weights."""
  module = importlib.import_module(FAMILY_MODULES[checkpoint.family][0])
  tensors = read_safetensors(checkpoint.path)
  try:
    return module.params_from_hf(tensors, checkpoint.hf_config)
  except ValueError as e:
    raise CheckpointError(f"{checkpoint.path}: {e}") from e


def resolve(model_cfg):
  """config.model -> the Checkpoint its ``backbone`` names, or None for gemb's own
  transformer (also for the configs of runs written before model.backbone existed)."""
  if "backbone" not in model_cfg:
    return None
  family, path = model_cfg.backbone.family, model_cfg.backbone.checkpoint
  if family not in FAMILIES:
    raise ValueError(f"model.backbone.family={family!r}; choose one of {FAMILIES}")
  if family == "gemb":
    if path:
      raise ValueError(f"model.backbone.checkpoint={path!r} is set but model.backbone.family="
                       "'gemb' (gemb's own transformer, trained from scratch); set family to "
                       "'auto' (from the checkpoint's config.json) or to its family")
    return None
  if not path:
    raise ValueError(f"model.backbone.family={family!r} needs model.backbone.checkpoint (a "
                     "Hugging Face model directory)")
  checkpoint = read_checkpoint(path)
  if family != "auto" and family != checkpoint.family:
    raise CheckpointError(f"model.backbone.family={family!r} but {checkpoint.path}/config.json "
                          f"is a {checkpoint.family!r} model")
  family_class(checkpoint.family)  # fails early when the family module is missing
  return checkpoint


def pretrained_params(model_cfg):
  """{'path/of/param': float32 numpy} of the backbone that ``model_cfg`` names (its
  transformer under "encoder", its sentence-transformers Dense layers under "dense" when
  model.backbone.head="st"); {} for gemb's own transformer. Paths are the model's
  (gemb.run.curriculum.param_path of MultimodalEmbedder's parameters)."""
  checkpoint = resolve(model_cfg)
  if checkpoint is None:
    return {}
  tree = {"encoder": backbone_params(checkpoint)}
  if model_cfg.backbone.head == "st":
    tree["dense"] = {i: dense_params(d) for i, d in enumerate(checkpoint.dense)}
  flat = {}

  def walk(prefix, node):
    if isinstance(node, dict):
      for k, v in node.items():
        walk(f"{prefix}/{k}" if prefix else str(k), v)
    else:
      flat[prefix] = node
  walk("", tree)
  return flat


def text_tokenizer(checkpoint):
  """The checkpoint's own tokenizer (tokenizer.json), truncating at its max_seq_length."""
  from gemb.data.tokenizer import PretrainedTokenizer

  tok = PretrainedTokenizer.from_checkpoint(checkpoint.tokenizer_file, checkpoint.max_seq_length)
  vocab = int(checkpoint.hf_config.get("vocab_size", 0))
  if tok.vocab_size > vocab:
    raise CheckpointError(f"{checkpoint.tokenizer_file}: {tok.vocab_size} tokens, but "
                          f"{checkpoint.path}/config.json has vocab_size={vocab}")
  return tok
