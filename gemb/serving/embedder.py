"""Embedder: a serving bundle loaded with jax + numpy only, embedding raw items at any dim.

    from gemb.serving import Embedder
    model = Embedder.load("bundle/")
    q = model.embed(["a red heart", {"image": "cat.png"}], task="emoji_name_to_image", dim=64)
    d = model.embed([[{"image": "cat.png"}, "with a hat"]])        # interleaved, full dim

``task`` prefixes each item with that task's instruction (queries); leave it None for the
documents a query retrieves. Outputs are float32 [n, dim], L2-normalized Matryoshka prefixes.
Nothing here imports flax or gemb.model: the model is the bundle's StableHLO.
"""

import os
import threading

import jax
import numpy as np

from gemb.data import tokenizer as tokenizers
from gemb.serving import bundle
from gemb.serving.inputs import InputError
from gemb.serving.preprocess import Preprocessor, stack_sides


def matryoshka(raw, dim):
  """Raw embeddings [n, D] -> unit-norm float32 first-``dim`` prefixes (as the trainer's
  gemb.model.embedder_model.matryoshka, in numpy)."""
  prefix = np.asarray(raw, np.float32)[:, :dim]
  return prefix / np.sqrt(np.maximum(np.sum(prefix * prefix, -1, keepdims=True), 1e-12))


def batch_bucket(n, max_batch):
  """Smallest power of two >= n (capped at max_batch): few distinct compiled batch sizes."""
  return min(max_batch, 1 << max(0, (n - 1).bit_length()))


class Embedder:
  """A loaded bundle. Thread-safe; ``model_calls`` counts calls of the exported model."""

  def __init__(self, directory, *, verify=True, max_batch=64):
    self.directory = os.path.abspath(directory)
    self.manifest = bundle.read_manifest(self.directory, verify=verify)
    _, arrays = bundle.load_params(self.directory)
    self.params = [jax.device_put(a) for a in arrays]
    self.entry_points, self._calls = {}, {}
    for name, entry in self.manifest["entry_points"].items():
      with open(os.path.join(self.directory, entry["file"]), "rb") as f:
        self.entry_points[name] = jax.export.deserialize(bytearray(f.read()))
      self._calls[name] = jax.jit(self.entry_points[name].call)
    spec = bundle.read_json(os.path.join(self.directory, bundle.PREPROCESS))
    # Bundles of pretrained backbones carry tokenizer.json (preprocess.json names it).
    tokenizer_file = spec.get("tokenizer", bundle.TOKENIZER)
    self.preprocessor = Preprocessor(
        spec, tokenizers.load(os.path.join(self.directory, tokenizer_file)),
        {name: e["slots"] for name, e in self.manifest["entry_points"].items()})
    self.embed_dim = self.manifest["model"]["embed_dim"]
    self.max_batch = max_batch
    self.model_calls = 0
    self._lock = threading.Lock()

  @classmethod
  def load(cls, directory, **kwargs):
    """The bundle at ``directory`` (verify=False skips the sha256 checks)."""
    return cls(directory, **kwargs)

  @property
  def tasks(self):
    return dict(self.preprocessor.tasks)

  def check_dim(self, dim, name="dim"):
    """The output dim to use (None = the full embed_dim); InputError naming the argument
    ``name`` if impossible."""
    if dim is None:
      return self.embed_dim
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) \
        or not 0 < dim <= self.embed_dim:
      raise InputError(f"{name}={dim!r} is impossible: an integer in [1, {self.embed_dim}] "
                       f"(trained Matryoshka dims: {self.manifest['model']['matryoshka_dims']})")
    return int(dim)

  def prepare(self, item, task=None, where="input", budget=None):
    """One item -> (entry point, side): CPU preprocessing, safe to run in many threads.
    budget: a gemb.serving.preprocess.PixelBudget the item's images are charged to."""
    return self.preprocessor(item, task, where, budget)

  def embed_prepared(self, prepared):
    """[(entry point, side)] -> raw float32 embeddings [n, D], in order.

    One model call per entry point and max_batch chunk, each padded to a power of two.
    """
    out = np.zeros((len(prepared), self.embed_dim), np.float32)
    by_entry = {}
    for i, (entry, side) in enumerate(prepared):
      by_entry.setdefault(entry, []).append((i, side))
    for entry, rows in by_entry.items():
      for start in range(0, len(rows), self.max_batch):
        chunk = rows[start:start + self.max_batch]
        side = stack_sides([s for _, s in chunk], batch_bucket(len(chunk), self.max_batch))
        with self._lock:
          self.model_calls += 1
        raw = self._calls[entry](self.params, side)
        out[[i for i, _ in chunk]] = np.asarray(raw, np.float32)[:len(chunk)]
    return out

  def embed(self, items, *, task=None, dim=None):
    """Items (see gemb/serving/inputs.py) -> float32 [n, dim] unit-norm embeddings."""
    if isinstance(items, (str, bytes, dict)):
      raise InputError("embed takes a list of items; wrap a single item in a list")
    dim = self.check_dim(dim)
    prepared = [self.prepare(item, task, f"inputs[{i}]") for i, item in enumerate(items)]
    return matryoshka(self.embed_prepared(prepared), dim)
