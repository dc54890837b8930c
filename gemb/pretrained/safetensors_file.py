"""Reads .safetensors files with numpy alone (no torch, no safetensors package).

Layout: an 8-byte little-endian header length, a JSON header {name: {dtype, shape,
data_offsets}} (offsets relative to the end of the header), then the raw little-endian data.
Tensors are memory-mapped views, so reading a 1.2 GB checkpoint costs no copy until used.
"""

import json
import math
import os
import struct

import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _dtype(name, path, tensor):
  if name == "BF16":
    import ml_dtypes  # a jax dependency
    return np.dtype(ml_dtypes.bfloat16)
  if name not in DTYPES:
    raise ValueError(f"{path}: tensor {tensor} has dtype {name}, which gemb cannot read")
  return np.dtype(DTYPES[name])


def read_header(path):
  """-> ({tensor name: {"dtype", "shape", "data_offsets"}}, data start offset); checks that
  every tensor lies inside the file (a truncated download fails here, naming the file)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(8)
    if len(head) < 8:
      raise ValueError(f"{path}: {size} bytes, too short for a safetensors header")
    (n,) = struct.unpack("<Q", head)
    if n > size - 8:
      raise ValueError(f"{path}: header of {n} bytes does not fit in the file's {size} bytes "
                       "(truncated, or not a safetensors file)")
    try:
      header = json.loads(f.read(n))
    except ValueError as e:
      raise ValueError(f"{path}: the safetensors header is not valid JSON: {e}") from None
  header.pop("__metadata__", None)
  end = max((t["data_offsets"][1] for t in header.values()), default=0)
  if 8 + n + end > size:
    raise ValueError(f"{path}: tensors end at byte {8 + n + end}, the file has {size} "
                     "(truncated)")
  return header, 8 + n


def load(path):
  """-> {name: numpy array} (read-only memory-mapped views)."""
  header, start = read_header(path)
  data = np.memmap(path, dtype=np.uint8, mode="r")
  out = {}
  for name, t in header.items():
    dtype = _dtype(t["dtype"], path, name)
    lo, hi = t["data_offsets"]
    if hi - lo != math.prod(t["shape"]) * dtype.itemsize:
      raise ValueError(f"{path}: tensor {name} has {hi - lo} bytes for shape {t['shape']} "
                       f"{t['dtype']}")
    out[name] = data[start + lo:start + hi].view(dtype).reshape(t["shape"])
  return out
