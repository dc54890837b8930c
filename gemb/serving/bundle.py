"""The serving bundle on disk: what ``python -m gemb.export`` writes and gemb.serving reads.

    OUT/
      manifest.json        format version, versions of the exporting libraries, the model
                           summary, the entry points (input shapes per slot, "b" = batch),
                           and the sha256 of every other file
      config.json          the run's resolved config (what trained these params)
      preprocess.json      input shapes and bounds (gemb.data.examples.InputShapes), task
                           instructions, whether the run used them (a backbone's own prompts
                           are tasks too, always applied), the tokenizer's file
      tokenizer.model      the run's sentencepiece model, or tokenizer.json: a pretrained
                           backbone's own tokenizer (preprocess.json "tokenizer" names it)
      params.npz           parameter arrays p0, p1, ... (bfloat16 stored as its uint16 bits)
      params.json          per array: name (its path in the model), npz key, shape, dtype
      stablehlo/<entry>.bin  jax.export artifacts: f(param list, side) -> raw embeddings [b, D]
      saved_model/         (optional) the entry points as a TensorFlow SavedModel

Only numpy and json here: the bundle is read without flax or gemb's model code.
"""

import hashlib
import json
import os

import ml_dtypes
import numpy as np

FORMAT = "gemb-serving-bundle"
FORMAT_VERSION = 1
MANIFEST, CONFIG, PREPROCESS = "manifest.json", "config.json", "preprocess.json"
TOKENIZER, PARAMS, PARAMS_INDEX = "tokenizer.model", "params.npz", "params.json"
STABLEHLO_DIR, SAVED_MODEL_DIR = "stablehlo", "saved_model"
# Entry points in the order gemb.serving tries them: the smallest one an example fits.
SINGLE_ENTRY_POINTS = ("text", "image", "audio", "video")
INTERLEAVED = "interleaved"

# npz holds numpy dtypes only; bfloat16 travels as its raw 16 bits.
_BITS = {"bfloat16": np.uint16}


class BundleError(ValueError):
  """A bundle that is missing, incomplete, corrupt or of another format version."""


def save_params(directory, names, arrays):
  """Writes params.npz + params.json; ``arrays`` in the order the artifacts take them."""
  index, stored = [], {}
  for i, (name, array) in enumerate(zip(names, arrays, strict=True)):
    array = np.asarray(array)
    dtype = str(array.dtype)
    stored[f"p{i}"] = array.view(_BITS[dtype]) if dtype in _BITS else array
    index.append({"name": name, "key": f"p{i}", "shape": list(array.shape), "dtype": dtype})
  np.savez(os.path.join(directory, PARAMS), **stored)
  write_json(os.path.join(directory, PARAMS_INDEX), index)


def load_params(directory):
  """-> (names, arrays) as saved by save_params (bfloat16 restored from its bits)."""
  index = read_json(os.path.join(directory, PARAMS_INDEX))
  arrays = []
  with np.load(os.path.join(directory, PARAMS)) as stored:
    for entry in index:
      array = stored[entry["key"]]
      if entry["dtype"] in _BITS:
        array = array.view(getattr(ml_dtypes, entry["dtype"]))
      if list(array.shape) != entry["shape"] or str(array.dtype) != entry["dtype"]:
        raise BundleError(f"{PARAMS}: {entry['name']} is {array.dtype}{list(array.shape)}, "
                          f"{PARAMS_INDEX} says {entry['dtype']}{entry['shape']}")
      arrays.append(array)
  return [e["name"] for e in index], arrays


def sha256(path):
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def file_checksums(directory):
  """{relative path: {"sha256", "bytes"}} of every file of the bundle except the manifest."""
  out = {}
  for root, _, files in os.walk(directory):
    for name in sorted(files):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, directory)
      if rel != MANIFEST:
        out[rel] = {"sha256": sha256(path), "bytes": os.path.getsize(path)}
  return dict(sorted(out.items()))


def read_manifest(directory, *, verify=True):
  """The manifest of bundle ``directory``; ``verify`` checks every file's sha256."""
  path = os.path.join(directory, MANIFEST)
  if not os.path.exists(path):
    raise BundleError(f"{directory}: no {MANIFEST} (not a gemb serving bundle?)")
  manifest = read_json(path)
  if manifest.get("format") != FORMAT or manifest.get("format_version") != FORMAT_VERSION:
    raise BundleError(f"{path}: format {manifest.get('format')!r} version "
                      f"{manifest.get('format_version')!r}; this gemb reads {FORMAT!r} "
                      f"version {FORMAT_VERSION}")
  if verify:
    for rel, expected in manifest["files"].items():
      file = os.path.join(directory, rel)
      if not os.path.exists(file):
        raise BundleError(f"{directory}: {rel} is missing")
      if sha256(file) != expected["sha256"]:
        raise BundleError(f"{directory}: {rel} does not match its sha256 in {MANIFEST} "
                          "(corrupt or modified)")
  return manifest


def read_json(path):
  with open(path) as f:
    return json.load(f)


def write_json(path, value):
  with open(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)
    f.write("\n")
