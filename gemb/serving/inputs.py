"""The input items users hand to gemb.serving, in Python and in JSON, as ordered segments.

An *item* is what becomes one embedding:
  "a string"                           a text
  {"text": ...} / {"image": ...} / {"audio": ..., "sample_rate": r} / {"video": ...}
                                       one segment of that modality
  [segment, segment, ...]              an interleaved example, each segment a string or a
                                       one-modality dict as above, in order

Python values (``Embedder.embed``): text is str or bytes; image, audio and video are
encoded bytes, a file path (str or os.PathLike), or decoded values as gemb/data/media
accepts them (PIL or uint8 [H, W, 3] images, float [N] audio with its "sample_rate",
frame sequences).

JSON values (``python -m gemb.serve``, ``python -m gemb.embed``): media are base64
strings of the encoded file ({"image": "iVBOR..."}) or {"bytes_b64": "..."}; a video may
also be a list of such frames. {"path": "img.png"} (relative to the JSONL file) is accepted
only where files may be read (gemb.embed, never the server).
"""

import base64
import binascii
import os

from gemb.batch import MODALITIES

_MEDIA = ("image", "audio", "video")


class InputError(ValueError):
  """An input item of the wrong shape or type; the message names the item and field."""


class LimitError(InputError):
  """An input over a size limit of the server (gemb.serve answers 413)."""


def segments(item, where="input"):
  """Python item -> [(modality, value, sample_rate or None)] in order."""
  if isinstance(item, (list, tuple)):
    if not item:
      raise InputError(f"{where}: an interleaved item needs at least one segment")
    return [_segment(s, f"{where}[{i}]") for i, s in enumerate(item)]
  return [_segment(item, where)]


def _segment(seg, where):
  if isinstance(seg, (str, bytes)):
    return ("text", seg, None)
  if not isinstance(seg, dict):
    raise InputError(f"{where}: expected a text, a {{modality: value}} object or a list of "
                     f"segments, got {type(seg).__name__}")
  keys = [k for k in seg if k in MODALITIES]
  extra = sorted(set(seg) - set(MODALITIES) - {"sample_rate"})
  if len(keys) != 1 or extra:
    raise InputError(f"{where}: a segment has exactly one key of {MODALITIES} (and "
                     f"'sample_rate' for audio arrays), got {sorted(seg)}")
  modality = keys[0]
  rate = seg.get("sample_rate")
  if rate is not None and (modality != "audio" or isinstance(rate, bool)
                           or not isinstance(rate, int) or rate <= 0):
    raise InputError(f"{where}.sample_rate: a positive int for an audio segment, got {rate!r}")
  value = seg[modality]
  if modality == "text" and not isinstance(value, (str, bytes)):
    raise InputError(f"{where}.text: expected a string, got {type(value).__name__}")
  if modality in _MEDIA and isinstance(value, (str, os.PathLike)):
    value = _read_file(value, f"{where}.{modality}")
  return (modality, value, rate)


def _read_file(path, where):
  try:
    with open(path, "rb") as f:
      return f.read()
  except OSError as e:
    raise InputError(f"{where}: cannot read {path}: {e.strerror or e}") from e


def from_json(item, where="input", *, base_dir=None):
  """JSON item -> Python item: base64 media decoded; {"path": ...} read from ``base_dir``
  (refused when base_dir is None)."""
  if isinstance(item, list):
    if not item:
      raise InputError(f"{where}: an interleaved item needs at least one segment")
    return [_json_segment(s, f"{where}[{i}]", base_dir) for i, s in enumerate(item)]
  return _json_segment(item, where, base_dir)


def _json_segment(seg, where, base_dir):
  if isinstance(seg, str):
    return seg
  if not isinstance(seg, dict):
    raise InputError(f"{where}: expected a string, a {{modality: value}} object or a list of "
                     f"segments, got {_json_type(seg)}")
  out = dict(seg)
  for modality in _MEDIA:
    if modality in seg:
      field = f"{where}.{modality}"
      value = seg[modality]
      if modality == "video" and isinstance(value, list):
        out[modality] = [_json_media(v, f"{field}[{i}]", base_dir) for i, v in enumerate(value)]
      else:
        out[modality] = _json_media(value, field, base_dir)
  return out


def _json_media(value, where, base_dir):
  if isinstance(value, dict) and len(value) == 1 and "bytes_b64" in value:
    value = value["bytes_b64"]
  if isinstance(value, str):
    try:
      return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:
      raise InputError(f"{where}: not valid base64: {e}") from e
  if isinstance(value, dict) and len(value) == 1 and "path" in value:
    if base_dir is None:
      raise InputError(f"{where}: file paths are not accepted here; send the file's bytes "
                       "as base64")
    if not isinstance(value["path"], str) or not value["path"]:
      raise InputError(f"{where}.path: expected a non-empty string, got {value['path']!r}")
    return _read_file(os.path.join(base_dir, os.path.expanduser(value["path"])), where)
  raise InputError(f"{where}: expected a base64 string, {{\"bytes_b64\": ...}} or "
                   f"{{\"path\": ...}}, got {_json_type(value)}")


def _json_type(value):
  names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number",
           float: "number", type(None): "null"}
  return names.get(type(value), type(value).__name__)
