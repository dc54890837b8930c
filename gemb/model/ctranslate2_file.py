"""Reader of CTranslate2 model files (``model.bin``), for pretrained weights in that format.

The layout (CTranslate2's ``ModelSpec`` serialization, binary version 6; little-endian):
  uint32 binary version; [version >= 2] string spec name, uint32 spec revision;
  uint32 variable count, then per variable: string name, uint8 rank, uint32 dims[rank],
  [version >= 4] uint8 dtype id, uint32 byte count, the bytes (C order);
  [version >= 3] uint32 alias count, then per alias: string alias, string target name.
A string is a uint16 byte length (with the trailing NUL) followed by those bytes.
"""

import ml_dtypes
import numpy as np

# CTranslate2's DataType enum -> numpy.
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16,
           5: ml_dtypes.bfloat16}
SUPPORTED_VERSIONS = range(4, 7)


class _Cursor:
  def __init__(self, data, path):
    self.data, self.path, self.at = data, path, 0

  def take(self, n):
    if self.at + n > len(self.data):
      raise ValueError(f"{self.path}: truncated at byte {self.at} (wanted {n} more bytes)")
    chunk = self.data[self.at:self.at + n]
    self.at += n
    return chunk

  def uint(self, size):
    return int.from_bytes(self.take(size), "little")

  def string(self):
    return bytes(self.take(self.uint(2))).rstrip(b"\0").decode("utf-8")


def read_model(path):
  """name -> numpy array of every variable (and alias) in a CTranslate2 ``model.bin``."""
  with open(path, "rb") as f:
    data = memoryview(f.read())
  c = _Cursor(data, path)
  version = c.uint(4)
  if version not in SUPPORTED_VERSIONS:
    raise ValueError(f"{path}: CTranslate2 binary version {version} is not supported "
                     f"(supported: {list(SUPPORTED_VERSIONS)})")
  c.string(), c.uint(4)  # spec name and revision
  variables = {}
  for _ in range(c.uint(4)):
    name = c.string()
    shape = tuple(c.uint(4) for _ in range(c.uint(1)))
    dtype_id = c.uint(1)
    if dtype_id not in _DTYPES:
      raise ValueError(f"{path}: variable {name!r} has unknown dtype id {dtype_id}")
    raw = c.take(c.uint(4))
    array = np.frombuffer(raw, _DTYPES[dtype_id])
    if array.size != int(np.prod(shape)):
      raise ValueError(f"{path}: variable {name!r} holds {array.size} values, shape {shape}")
    variables[name] = array.reshape(shape)
  for _ in range(c.uint(4)):
    alias, target = c.string(), c.string()
    variables[alias] = variables[target]
  return variables
