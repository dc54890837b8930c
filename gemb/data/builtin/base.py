"""What every built-in TFDS builder of gemb shares: ArrayRecord output, code path, its two
configs, the check of the Debian files it reads, the split rule."""

import hashlib
import os
import sys

from etils import epath
import tensorflow_datasets as tfds


class GembBuilder(tfds.core.GeneratorBasedBuilder):
  """Base of gemb's builders (abstract: TFDS does not register it as a dataset)."""

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    # TFDS's own lookup for builders inside a package touches `importlib_resources`, which
    # it only requires on Python < 3.9, so it fails here; the answer is the builder's file.
    return epath.Path(sys.modules[cls.__module__].__file__)

  def __init__(self, *, file_format="array_record", **kwargs):
    # array_record: the random-access format tfds.data_source and grain read without TF.
    super().__init__(file_format=file_format, **kwargs)


# Every built-in builder has a "full" config (the default) and a "small" deterministic
# subset that builds in seconds (CI, quick experiments): data.builtin_config picks one.
BUILDER_CONFIGS = ("full", "small")


def full_and_small(full: str, small: str, config_class=tfds.core.BuilderConfig, *,
                   full_args=None, small_args=None) -> list:
  """A builder's BUILDER_CONFIGS: "full" and "small" (in that order: full is the default),
  with these descriptions and ``config_class``'s own fields."""
  return [config_class(name="full", description=full, **(full_args or {})),
          config_class(name="small", description=small, **(small_args or {}))]


def require_files(files) -> None:
  """FileNotFoundError naming the Debian package of the first missing (path, package)."""
  for path, package in files:
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} is missing: install the Debian package {package}")


def stable_int(text: str) -> int:
  """A hash of text that is the same in every process and Python version."""
  return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


def hash_split(key: str, train_percent: int, validation_percent: int) -> str:
  """train / validation / test by a stable hash of ``key``: the builders' split rule."""
  bucket = stable_int(key) % 100
  if bucket < train_percent:
    return "train"
  if bucket < train_percent + validation_percent:
    return "validation"
  return "test"
