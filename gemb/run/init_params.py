"""A fresh run's parameters from elsewhere: ``init_from`` another run, pretrained towers
(a Whisper audio encoder, an EfficientNet-Lite0 image encoder) and a pretrained backbone
copied into a fresh model; together, the params a run starts from (``starting_params``).
"""

import re

import jax
from absl import logging

from gemb.model import backbone, efficientnet, whisper
from gemb.model.embedders import encoder_name
from gemb.run.checkpoint import Checkpointer
from gemb.trees import param_path


def load_init_params(path, pattern, params):
  """``params`` with the leaves whose path matches ``pattern`` replaced by those of the
  latest checkpoint under ``path`` (another run's workdir or checkpoints directory); its
  optimizer state is not read. Restored onto ``params``' shardings, whatever mesh saved it."""
  source = Checkpointer(path, read_only=True, async_save=False)
  step = source.latest_step()
  if step is None:
    raise ValueError(f"init_from={path!r}: no checkpoint there")
  regex = re.compile(pattern)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  chosen = {param_path(p): x for p, x in flat if regex.search(param_path(p))}
  if not chosen:
    raise ValueError(f"init_params={pattern!r} matches no parameter")
  restored = source.restore_params(step, _nest(chosen))
  source.close()
  restored = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
  logging.info("init_from %s step %d: %d of %d parameter arrays", path, step, len(restored),
               len(flat))
  return jax.tree_util.tree_map_with_path(
      lambda p, x: restored.get(param_path(p), x), params)


def pretrained_params(model_cfg):
  """'path/of/param' -> numpy array of every pretrained part that ``model_cfg`` asks for."""
  parts = {}  # the model's path of a pretrained part -> its parameter tree
  if "audio" in model_cfg.modalities and encoder_name(model_cfg.audio) == "whisper":
    parts["audio/whisper"] = whisper.load_pretrained(model_cfg.audio.whisper_checkpoint)
  image = model_cfg.image
  if "image" in model_cfg.modalities and encoder_name(image) == "efficientnet_lite0":
    parts["image/efficientnet"] = efficientnet.load_pretrained(
        image.efficientnet_checkpoint, image.efficientnet_blocks)
  flat = {f"{prefix}/{param_path(p)}": x for prefix, tree in parts.items()
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}
  # A pretrained backbone: the shared transformer ("encoder/...") and its sentence-
  # transformers Dense head ("dense/...").
  return flat | backbone.pretrained_params(model_cfg)


def load_pretrained_params(model_cfg, params):
  """``params`` (a fresh model's) with the pretrained parts of ``model_cfg`` copied in, each
  laid out on its parameter's sharding."""
  pretrained = pretrained_params(model_cfg)
  if not pretrained:
    return params
  flat = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, value in pretrained.items():
    if path not in flat:
      raise ValueError(f"pretrained parameter {path} has no place in the model")
    if value.shape != flat[path].shape:
      raise ValueError(f"pretrained parameter {path} has shape {value.shape}, the model "
                       f"{flat[path].shape}")
  logging.info("pretrained: %d parameter arrays (%s)", len(pretrained),
               ", ".join(sorted({"/".join(p.split("/")[:2]) for p in pretrained})))

  def place(path, x):
    value = pretrained.get(param_path(path))
    if value is None:
      return x
    value = value.astype(x.dtype)
    return jax.make_array_from_callback(x.shape, x.sharding, lambda index: value[index])
  return jax.tree_util.tree_map_with_path(place, params)


def _nest(flat):
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (numeric keys back to ints, as nnx uses them)."""
  tree = {}
  for path, x in flat.items():
    node, keys = tree, [int(k) if k.isdigit() else k for k in path.split("/")]
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = x
  return tree


def starting_params(config, params):
  """What a fresh run of ``config`` starts from: ``params`` (a fresh model's) with the
  pretrained parts, then ``init_from``'s params on top."""
  params = load_pretrained_params(config.model, params)
  if config.init_from:
    params = load_init_params(config.init_from, config.init_params, params)
  return params


def describe_start(config):
  """A name for ``starting_params(config, ...)``: "random_init" when nothing is pretrained,
  else what is ("backbone /path/of/all-minilm-l6-v2 + pretrained efficientnet_lite0,
  whisper, the rest random")."""
  m, parts = config.model, []
  checkpoint = backbone.resolve(m)
  if checkpoint is not None:
    parts.append(f"backbone {checkpoint.path}")
  towers = [name for modality, name in (("image", "efficientnet_lite0"), ("audio", "whisper"))
            if modality in m.modalities and encoder_name(m[modality]) == name]
  if towers:
    parts.append("pretrained " + ", ".join(towers))
  if config.init_from:
    parts.append(f"init_from {config.init_from} ({config.init_params})")
  return " + ".join(parts) + ", the rest random" if parts else "random_init"


def starts_pretrained(config):
  """Whether the shared transformer starts from trained weights (a backbone or init_from):
  then the start is a baseline worth evaluating (config.eval.baseline)."""
  return backbone.resolve(config.model) is not None or bool(config.init_from)
