"""Workdir paths that may be local directories or object-store URLs (gs://bucket/run).

orbax/tensorstore and TensorBoard write URLs themselves; the few small files gemb writes
directly (config.json, tokenizer.model, eval JSON) go through etils.epath, which reads and
writes gs:// with gcsfs installed (the `gcp` extra). Local paths are made absolute, because
orbax needs absolute paths; URLs must pass through untouched (os.path.abspath would turn
gs://b/run into $PWD/gs:/b/run).
"""

import os

from etils import epath


def is_url(path):
  return "://" in str(path)


def absolute(path):
  """``path`` made absolute if local; URLs unchanged."""
  path = os.fspath(path)
  return path if is_url(path) else os.path.abspath(os.path.expanduser(path))


def Path(path):  # noqa: N802 (a constructor, like epath.Path)
  """An epath.Path for local paths and URLs alike."""
  return epath.Path(absolute(path))
