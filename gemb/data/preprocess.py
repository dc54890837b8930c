"""Per-record transforms: TFDS record -> model-ready numpy arrays in the batch format.

Owns image decoding/resizing/scaling, tokenization of a text field, and packing a record into
single-segment sides (gemb/model/batch.py). Records come from gemb/data/sources.py
(`tfds.data_source`, no TensorFlow): images arrive as uint8 [H, W, 3] arrays, or as PNG/JPEG
bytes when the source skips decoding (so decoding runs in grain workers); text arrives as
bytes, ids as Python ints. All transforms are grain `MapTransform`s, picklable for worker
processes, and return new dicts (grain may hand the same record object to several stages).
"""
import io

import grain
import numpy as np
from PIL import Image

from gemb.model import batch


def _field(record, key):
  if key not in record:
    raise KeyError(f"record has no field {key!r}; fields: {sorted(record)}")
  return record[key]


def decode_image(value, size: int) -> np.ndarray:
  """Encoded bytes or uint8 [H, W, 3] array -> float32 [size, size, 3] in [-1, 1]."""
  if isinstance(value, bytes):
    image = Image.open(io.BytesIO(value)).convert("RGB")
  else:
    array = np.asarray(value)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
      raise ValueError(f"expected PNG/JPEG bytes or a uint8 [H, W, 3] image, got "
                       f"{array.dtype} {array.shape}")
    image = Image.fromarray(array)
  if image.size != (size, size):
    # Pillow's bilinear filter widens with the scale factor when shrinking (antialiased).
    image = image.resize((size, size), Image.Resampling.BILINEAR)
  return np.asarray(image, np.float32) / 127.5 - 1.0


def image_side(image: np.ndarray) -> dict:
  """One example made of a single image segment: layout [1], image [1, H, W, 3]."""
  return {"layout": np.array([batch.IMAGE], np.int32), "image": image[None]}


def text_side(tokens: np.ndarray) -> dict:
  """One example made of a single text segment: layout [1], text [1, L]."""
  return {"layout": np.array([batch.TEXT], np.int32), "text": tokens[None]}


class DecodeImage(grain.transforms.Map):
  """record[key] (bytes or uint8 array) -> float32 [size, size, 3] in [-1, 1]."""

  def __init__(self, size: int, key: str = "image"):
    self.size, self.key = size, key

  def map(self, record):
    try:
      image = decode_image(_field(record, self.key), self.size)
    except (OSError, ValueError) as e:
      raise ValueError(f"field {self.key!r} of record {_describe(record)}: {e}") from e
    return {**record, self.key: image}


class Tokenize(grain.transforms.Map):
  """record[key] (bytes or str) -> record[out_key] = int32 [max_len] token ids."""

  def __init__(self, tokenizer, max_len: int, key: str = "name", out_key: str = "tokens"):
    self.tokenizer, self.max_len, self.key, self.out_key = tokenizer, max_len, key, out_key

  def map(self, record):
    text = _field(record, self.key)
    if isinstance(text, bytes):
      text = text.decode("utf-8")
    return {**record, self.out_key: self.tokenizer.encode(text, self.max_len)[0]}


class ImageTextPair(grain.transforms.Map):
  """Decoded, tokenized record -> one contrastive example: image query, text candidate.

  Both ids are the record's item id: renderings of one item share the same text, so equal ids
  mark the false negatives the loss must not push apart.
  """

  def __init__(self, image_key: str = "image", tokens_key: str = "tokens",
               id_key: str = "item_id"):
    self.image_key, self.tokens_key, self.id_key = image_key, tokens_key, id_key

  def map(self, record):
    item_id = np.int32(_field(record, self.id_key))
    return {
        "query": image_side(_field(record, self.image_key)),
        "candidate": text_side(_field(record, self.tokens_key)),
        "query_id": item_id,
        "candidate_id": item_id,
    }


def _describe(record) -> str:
  """A short handle of a record for error messages (its ids and name, not its pixels)."""
  parts = [f"{k}={record[k]!r}" for k in ("item_id", "name") if k in record]
  return "{" + ", ".join(parts) + "}" if parts else "(no id fields)"
