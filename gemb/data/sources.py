"""Random-access record sources: the built-in TFDS datasets, built on first use.

Owns the registry of built-in datasets (name -> TFDS builder class in gemb/data/builtin/) and
the build-once-then-read logic. Each builder documents its own source assets and licenses.
Records are read with `tfds.data_source` semantics (ArrayRecord, random access, no
TensorFlow): text arrives as bytes, scalars as Python ints, images as uint8 arrays (or PNG
bytes when the caller skips decoding).
"""
import contextlib
import fcntl
import functools
import os

import tensorflow_datasets as tfds

from gemb.data import external
from gemb.data.builtin import clipart, code, composed, emoji, speech, video, wiki, wordnet
from gemb.data.builtin.base import BUILDER_CONFIGS
from gemb.data.tasks import is_zero_shot

# Name used in configs (data_config.dataset) -> builder class. New builders plug in here.
BUILDERS = {
    "emoji": emoji.GembEmoji,
    "clipart": clipart.GembClipart,
    "composed": composed.GembComposed,
    "speech": speech.GembSpeech,
    "video": video.GembVideo,
    "wordnet": wordnet.GembWordnet,
    "code": code.GembCode,
    "wiki": wiki.GembWiki,
}
# Task name -> TaskSpec of every built-in dataset (each builder module declares its TASKS).
BUILTIN_TASKS = {t.name: t for module in (emoji, clipart, composed, speech, video, wordnet, code,
                                          wiki)
                 for t in module.TASKS}
# Built-in tasks that only evaluate: zero-shot classification (no train_split) has no
# training pairs.
EVAL_ONLY_TASKS = frozenset(n for n, t in BUILTIN_TASKS.items() if is_zero_shot(t))
# What a recipe trains on when it trains on "every built-in task".
TRAIN_TASKS = tuple(sorted(set(BUILTIN_TASKS) - EVAL_ONLY_TASKS))
DEFAULT_DATA_DIR = "~/.cache/gemb/tfds"


def resolve_data_dir(data_dir: str) -> str:
  """Absolute data dir; "" means DEFAULT_DATA_DIR.

  Absolute because every process (and every grain worker, whatever its cwd) must agree on
  where the one shared copy of the dataset lives.
  """
  return os.path.abspath(os.path.expanduser(data_dir or DEFAULT_DATA_DIR))


@contextlib.contextmanager
def _file_lock(path: str):
  with open(path, "a") as f:
    fcntl.flock(f, fcntl.LOCK_EX)  # Released when the file closes, also if we crash.
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def prepared_builder(name: str, data_dir: str = "", config: str = "full"
                     ) -> tfds.core.DatasetBuilder:
  """The builder of a built-in dataset, built into data_dir first if needed."""
  if name not in BUILDERS:
    raise ValueError(f"Unknown built-in dataset {name!r}; known: {sorted(BUILDERS)}")
  if config not in BUILDER_CONFIGS:
    raise ValueError(f"data.builtin_config={config!r}; choose one of {BUILDER_CONFIGS}")
  cls = functools.partial(BUILDERS[name], config=config)
  data_dir = resolve_data_dir(data_dir)
  builder = cls(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  os.makedirs(data_dir, exist_ok=True)
  # Concurrent processes (one per host, or tests in parallel) wait here while the first one
  # builds; the others then find the finished dataset and reuse it.
  with _file_lock(os.path.join(data_dir, f"{BUILDERS[name].name}_{config}.lock")):
    builder = cls(data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
  # A fresh builder reads the split sizes that the build wrote to disk.
  return cls(data_dir=data_dir)


class _KeepEncodedSequence(tfds.decode.SkipDecoding):
  """SkipDecoding for a Sequence of images: without TF, TFDS calls the batch variant,
  which SkipDecoding lacks; the encoded frames come back as an object array of bytes."""

  def decode_batch_example_np(self, serialized):
    return serialized


def _skip_image_decoding(features):
  """Decoders that keep every image (also inside sequences) as its encoded bytes."""
  decoders = {}
  for key, feature in features.items():
    if isinstance(feature, tfds.features.Image):
      decoders[key] = tfds.decode.SkipDecoding()
    elif (isinstance(feature, tfds.features.Sequence)
          and isinstance(feature.feature, tfds.features.Image)):
      decoders[key] = _KeepEncodedSequence()
  return decoders


def open_source(task, split: str, data_dir: str = "", builtin_config: str = "full"):
  """The random-access records of one split of a task's dataset.

  Built-in datasets keep images as encoded bytes (decoded later, in grain workers when
  there are any); "tfds:<name>" and "manifest:<path>" datasets go through
  gemb/data/external.py.
  """
  if task.dataset.startswith(("tfds:", "manifest:")):
    return external.open_source(task.dataset, split, data_dir=data_dir,
                                fields=dict(task.fields) if task.fields else None)
  builder = prepared_builder(task.dataset, data_dir, builtin_config)
  return builtin_source(task.dataset, split, data_dir, config=builtin_config,
                        decoders=_skip_image_decoding(builder.info.features))


def builtin_source(name: str, split: str, data_dir: str = "", *, config: str = "full",
                   decoders=None):
  """Random-access source (len, [i]) of one split of a built-in dataset.

  decoders: per-feature TFDS decoders, e.g. {"image": tfds.decode.SkipDecoding()} to get
  the stored PNG bytes and decode later (in grain workers).
  """
  builder = prepared_builder(name, data_dir, config)
  if split not in builder.info.splits:
    raise ValueError(f"Dataset {name!r} has no split {split!r}; "
                     f"splits: {sorted(builder.info.splits)}")
  return builder.as_data_source(split, decoders=decoders)
