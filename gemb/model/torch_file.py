"""Reader of PyTorch state-dict files in the legacy format (``torch.save`` before 1.6, or
with ``_use_new_zipfile_serialization=False``), for pretrained weights shipped that way.

No PyTorch is imported. The layout: five pickles in a row (magic number, protocol version,
system info, the state dict, the list of storage keys), then per key in that order: a
little-endian int64 element count and the storage's raw bytes. In the state dict each tensor
is a ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`` call whose
storage is a persistent id ``("storage", <type>Storage, key, device, numel, view)``; the
unpickler below turns those into numpy views, so only these names are ever constructed.
"""

import collections
import pickle

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32}


class _Tensor:
  """A tensor's place in a storage, until the storages have been read."""

  def __init__(self, key, offset, size, stride):
    self.key, self.offset, self.size, self.stride = key, offset, tuple(size), tuple(stride)


class _StateDictUnpickler(pickle.Unpickler):
  def __init__(self, f, path, dtypes):
    super().__init__(f)
    self.path, self.dtypes = path, dtypes

  def find_class(self, module, name):
    if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
      return lambda storage, offset, size, stride, *_: _Tensor(storage, offset, size, stride)
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch" and name in _STORAGE_DTYPES:
      return name
    raise pickle.UnpicklingError(f"{self.path}: unexpected object {module}.{name} in a "
                                 "state dict (only tensors are read)")

  def persistent_load(self, pid):
    kind, storage_type, key = pid[:3]
    if kind != "storage" or storage_type not in _STORAGE_DTYPES:
      raise pickle.UnpicklingError(f"{self.path}: unsupported storage {pid[:2]}")
    self.dtypes[key] = _STORAGE_DTYPES[storage_type]
    return key


def read_state_dict(path):
  """name -> numpy array of every tensor in a legacy-format PyTorch state-dict file."""
  with open(path, "rb") as f:
    try:
      magic = pickle.load(f)
    except (pickle.UnpicklingError, EOFError, ValueError):
      magic = None
    if magic != LEGACY_MAGIC:
      raise ValueError(f"{path}: not a legacy-format PyTorch file (zip-format files, the "
                       "default since PyTorch 1.6, are not supported)")
    pickle.load(f), pickle.load(f)  # protocol version, system info
    dtypes = {}
    state = _StateDictUnpickler(f, path, dtypes).load()
    storages = {}
    for key in pickle.load(f):
      count = int.from_bytes(f.read(8), "little")
      dtype = np.dtype(dtypes[key])
      raw = f.read(count * dtype.itemsize)
      if len(raw) != count * dtype.itemsize:
        raise ValueError(f"{path}: truncated in storage {key}")
      storages[key] = np.frombuffer(raw, dtype)
  out = {}
  for name, t in state.items():
    data = storages[t.key]
    if t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride)) >= len(data):
      raise ValueError(f"{path}: tensor {name} reaches past its storage")
    out[name] = np.lib.stride_tricks.as_strided(
        data[t.offset:], t.size, [s * data.itemsize for s in t.stride]).copy()
  return out
