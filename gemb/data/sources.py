"""Random-access record sources: the built-in TFDS datasets, built on first use.

Owns the registry of built-in datasets (name -> TFDS builder class in gemb/data/builtin/) and
the build-once-then-read logic. Each builder documents its own source assets and licenses.
Records are read with `tfds.data_source` semantics (ArrayRecord, random access, no
TensorFlow): text arrives as bytes, scalars as Python ints, images as uint8 arrays (or PNG
bytes when the caller skips decoding).
"""
import contextlib
import fcntl
import os

import tensorflow_datasets as tfds

from gemb.data.builtin import emoji

# Name used in configs (data_config.dataset) -> builder class. New builders plug in here.
BUILDERS = {
    "emoji": emoji.GembEmoji,
}
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


def prepared_builder(name: str, data_dir: str = "") -> tfds.core.DatasetBuilder:
  """The builder of a built-in dataset, built into data_dir first if needed."""
  if name not in BUILDERS:
    raise ValueError(f"Unknown built-in dataset {name!r}; known: {sorted(BUILDERS)}")
  cls = BUILDERS[name]
  data_dir = resolve_data_dir(data_dir)
  builder = cls(data_dir=data_dir)
  if builder.is_prepared():
    return builder
  os.makedirs(data_dir, exist_ok=True)
  # Concurrent processes (one per host, or tests in parallel) wait here while the first one
  # builds; the others then find the finished dataset and reuse it.
  with _file_lock(os.path.join(data_dir, f"{cls.name}.lock")):
    builder = cls(data_dir=data_dir)
    if not builder.is_prepared():
      builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
  # A fresh builder reads the split sizes that the build wrote to disk.
  return cls(data_dir=data_dir)


def builtin_source(name: str, split: str, data_dir: str = "", *, decoders=None):
  """Random-access source (len, [i]) of one split of a built-in dataset.

  decoders: per-feature TFDS decoders, e.g. {"image": tfds.decode.SkipDecoding()} to get
  the stored PNG bytes and decode later (in grain workers).
  """
  builder = prepared_builder(name, data_dir)
  if split not in builder.info.splits:
    raise ValueError(f"Dataset {name!r} has no split {split!r}; "
                     f"splits: {sorted(builder.info.splits)}")
  return builder.as_data_source(split, decoders=decoders)
