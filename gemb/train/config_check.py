"""Config checks that run before any work: a typo or a wrong value fails in a second, naming
the key, instead of after the tokenizer was trained or hours into a run.

Unknown keys and wrong types given on the command line are already refused by
ml-collections (locked config, typed fields); this covers what it cannot see: values out of
their allowed set, model shapes the model cannot be built with (checked by building it
abstractly: no memory, no compilation), a missing or unusable pretrained checkpoint (towers,
backbones), LoRA targets that match no kernel, stage overrides (gemb/run/curriculum.py), task
names, Matryoshka dims that the model cannot produce, and batches that the mesh cannot split.
"""

import os
import re

from flax import nnx

from gemb import losses, parallel
from gemb.data import examples, pipeline
from gemb.data.builtin import base as builtin_base
from gemb.data.pipeline import check_trainable, get_tasks
from gemb.eval import retrieval
from gemb.eval.tasks import check_batch_size
from gemb.model import backbone, efficientnet, embedder_model, embedders, lora, whisper
from gemb.run import curriculum
from gemb.train import soup

# Each allowed set comes from the code that acts on the value.
CHOICES = {
    ("data", "mixing"): pipeline.MIXINGS,
    ("data", "on_bad_record"): examples.ON_BAD_RECORD,
    ("data", "builtin_config"): builtin_base.BUILDER_CONFIGS,
    ("loss", "kind"): losses.KINDS,
    ("model", "pooling"): embedder_model.POOLINGS,
    ("model", "audio", "encoder"): tuple(embedders.AUDIO_ENCODERS),
    ("model", "image", "encoder"): tuple(embedders.IMAGE_ENCODERS),
    ("soup", "kind"): soup.KINDS,
}
# train.best_metric ranks checkpoints: it must be a metric that a retrieval eval reports.
BEST_METRICS = retrieval.METRICS
POSITIVE_INTS = (("train", "log_every"), ("train", "checkpoint_every"),
                 ("train", "keep_checkpoints"), ("train", "max_nonfinite_streak"),
                 ("data", "batch_size"), ("eval", "batch_size"))


def _fail(where, key, message):
  return ValueError(f"config{where}.{key}: {message}")


def _positive_int(value):
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_section_values(config, where):
  for path, allowed in CHOICES.items():
    if path[0] not in config:
      continue
    value = config
    for key in path:
      value = value[key]
    if value not in allowed:
      raise _fail(where, ".".join(path), f"{value!r} is not one of {allowed}")
  for section, key in POSITIVE_INTS:
    value = config[section][key]
    if not _positive_int(value):
      raise _fail(where, f"{section}.{key}", f"must be a positive int, got {value!r}")
  if config.train.keep_best < 0:
    raise _fail(where, "train.keep_best", f"must be >= 0, got {config.train.keep_best}")
  embed_dim = config.model.embed_dim
  loss = config.loss
  if len(loss.matryoshka_dims) != len(loss.matryoshka_weights):
    raise _fail(where, "loss.matryoshka_weights", f"{tuple(loss.matryoshka_weights)} needs one "
                f"weight per dim of loss.matryoshka_dims={tuple(loss.matryoshka_dims)}")
  for key, dims in (("loss.matryoshka_dims", loss.matryoshka_dims),
                    ("eval.dims", config.eval.dims)):
    bad = [d for d in dims if not 0 < d <= embed_dim]
    if bad or not dims:
      raise _fail(where, key, f"dims {list(bad or dims)} are impossible: each must be in "
                  f"[1, model.embed_dim={embed_dim}]")
  if config.eval.every < 0:
    raise _fail(where, "eval.every", f"must be >= 0, got {config.eval.every}")
  fast = config.optimizer.get("fast_params", "")
  try:
    re.compile(fast)
  except re.error as e:
    raise _fail(where, "optimizer.fast_params", f"{fast!r} is not a regex: {e}") from None
  if config.optimizer.get("fast_lr_multiplier", 1.0) <= 0:
    raise _fail(where, "optimizer.fast_lr_multiplier",
                f"must be > 0, got {config.optimizer.fast_lr_multiplier}")
  if config.eval.get("max_records", 0) < 0:
    raise _fail(where, "eval.max_records", f"must be >= 0 (0 = every record), got "
                f"{config.eval.max_records}")
  try:
    train_tasks = get_tasks(config, tuple(config.data.tasks))
    get_tasks(config, tuple(config.eval.tasks))
  except ValueError as e:
    raise _fail(where, "data.tasks / eval.tasks", str(e)) from None
  try:
    check_trainable(train_tasks)
  except ValueError as e:
    raise _fail(where, "data.tasks", str(e)) from None
  text_lens = config.data.get("text_len_by_task", {})
  if text_lens and config.data.mixing != "task":
    raise _fail(where, "data.text_len_by_task", "needs data.mixing='task' (a batch mixing "
                "tasks has one text length)")
  for name, length in text_lens.items():  # (validate checks its names against the run's)
    if not _positive_int(length):
      raise _fail(where, f"data.text_len_by_task.{name}",
                  f"must be a positive int, got {length!r}")
  if config.eval.tasks and config.train.best_metric not in BEST_METRICS:
    raise _fail(where, "train.best_metric", f"{config.train.best_metric!r} is not a "
                f"retrieval metric that the evaluator reports ({', '.join(BEST_METRICS)})")


MODEL_POSITIVE_INTS = ("width", "depth", "heads", "mlp_dim", "embed_dim", "max_positions")


def _check_model(model):
  for key in MODEL_POSITIVE_INTS:
    value = model[key]
    if not _positive_int(value):
      raise _fail("", f"model.{key}", f"must be a positive int, got {value!r}")
  if model.width % model.heads:
    raise _fail("", "model.heads", f"{model.heads} does not divide model.width={model.width} "
                "(each head attends over width / heads dims)")
  # Every other shape rule (patch sizes, frames, encoders) is the model's own: build it
  # abstractly, as the trainer will for real after the tokenizer is trained.
  try:
    nnx.eval_shape(lambda: embedder_model.MultimodalEmbedder(model, rngs=nnx.Rngs(0)))
  except (ValueError, TypeError, ZeroDivisionError) as e:
    raise _fail("", "model", f"the model cannot be built: {e}") from None


def _where(stages, stage):
  """How an error names the stage: nothing in a one-stage run."""
  return "" if len(stages) == 1 else f".stages[{stage.index}] ({stage.name!r})"


def validate(config):
  """Checks the whole config and every stage's resolved config; -> [Stage]."""
  stages = curriculum.resolve_stages(config)
  for stage in stages:
    _check_section_values(stage.config, _where(stages, stage))
  # data.text_len_by_task may name a later stage's task (one setting for the whole run).
  run_tasks = {t for s in stages for t in (*s.config.data.tasks, *s.config.eval.tasks)}
  for stage in stages:
    for name in stage.config.data.get("text_len_by_task", {}):
      if name not in run_tasks:
        raise _fail(_where(stages, stage), "data.text_len_by_task", f"{name!r} is not one "
                    "of the run's tasks (any stage's data.tasks / eval.tasks)")
  audio = config.model.audio
  if "audio" in config.model.modalities and audio.encoder == "whisper":
    try:
      path = whisper.checkpoint_path(audio.whisper_checkpoint)
    except ImportError as e:
      raise _fail("", "model.audio.whisper_checkpoint", str(e)) from None
    if not os.path.isfile(path):
      raise _fail("", "model.audio.whisper_checkpoint", f"no CTranslate2 model.bin at {path}")
  image = config.model.image
  if "image" in config.model.modalities and image.encoder == "efficientnet_lite0":
    try:
      efficientnet.feature_shape(image.efficientnet_blocks, image.size)
      path = efficientnet.checkpoint_path(image.efficientnet_checkpoint)
    except (ImportError, ValueError) as e:
      key = "checkpoint" if isinstance(e, ImportError) else "blocks"
      raise _fail("", f"model.image.efficientnet_{key}", str(e)) from None
    if not os.path.isfile(path):
      raise _fail("", "model.image.efficientnet_checkpoint",
                  f"no EfficientNet-Lite0 state dict at {path}")
  adapters = config.model.get("lora")
  if adapters is not None:
    rank = adapters.rank
    if isinstance(rank, bool) or not isinstance(rank, int) or rank < 0:
      raise _fail("", "model.lora.rank", f"must be an int >= 0 (0 = off), got {rank!r}")
    if rank:
      try:
        lora.LoRA(config.model)  # its targets must match kernels, its regexes compile
      except ValueError as e:
        raise ValueError(f"config.{e}") from None
  try:  # a pretrained backbone's directory, family and head, before any work
    checkpoint = backbone.resolve(config.model)
  except ValueError as e:
    raise _fail("", "model.backbone", str(e)) from None
  if checkpoint is not None:
    if config.model.backbone.head not in ("st", "gemb"):
      raise _fail("", "model.backbone.head", f"{config.model.backbone.head!r} is not one of "
                  "('st', 'gemb')")
    if config.model.backbone.head == "st" and config.model.embed_dim != checkpoint.output_dim:
      raise _fail("", "model.embed_dim", f"{config.model.embed_dim}, but the sentence-"
                  f"transformers head of {checkpoint.path} outputs {checkpoint.output_dim} dims "
                  "(set it to that, or model.backbone.head='gemb')")
  # After the pretrained parts' own checks, which name their keys more precisely.
  _check_model(config.model)
  soup = config.soup
  if soup.kind == "last" and not 0 < soup.num <= config.train.keep_checkpoints:
    raise _fail("", "soup.num", f"{soup.num} must be in [1, train.keep_checkpoints="
                f"{config.train.keep_checkpoints}] (the soup averages kept checkpoints)")
  return stages


def check_mesh(stages, mesh):
  """Every stage's global train and eval batches must split evenly over the batch axes."""
  _, shards = parallel.batch_shards(mesh)
  for stage in stages:
    check_batch_size(stage.config.eval.batch_size, mesh)
    batch = stage.config.data.batch_size
    if batch % shards:
      raise ValueError(f"config.stages[{stage.index}] ({stage.name!r}): data.batch_size="
                       f"{batch} is not divisible by the mesh's batch axes data*fsdp={shards}")
