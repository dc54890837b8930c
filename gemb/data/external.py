"""Random-access sources beyond the built-ins: any prepared TFDS dataset, and user manifests.

``open_source(dataset, split, data_dir=..., fields=...)`` returns a picklable source
(``len(source)``, ``source[i] -> dict``) whose records look like ``tfds.data_source``
records (gemb/data/tasks.py lists the field types a task reads): text as UTF-8 bytes,
integers as Python ints, encoded media as bytes, images of TFDS datasets as uint8
arrays, lists as lists. Nested fields are flattened to "a/b" keys. ``fields`` maps the
names a task reads to source paths (``{"image": "image", "caption": "captions/text"}``);
with it a record has exactly the mapped names.

Dataset strings
---------------
``tfds:<name>[/<config>][:<version>]``
  A TFDS dataset prepared in the ArrayRecord format under ``data_dir`` ("" = TFDS's
  default, ``$TFDS_DATA_DIR`` or ~/tensorflow_datasets), read with random access and
  without TensorFlow. The dataset's info is read from its prepared files, so datasets
  whose builder code imports TensorFlow (e.g. coco_captions) are readable too. Preparing
  one needs TensorFlow and the dataset's downloads, once, e.g.::

    tfds build coco_captions --data_dir=DIR --file_format=array_record

  and a dataset prepared as tfrecord converts with
  ``tfds convert_format --dataset_dir=DIR/NAME/CONFIG/VERSION --out_file_format=array_record``.

``manifest:<path>``
  Your own data without writing a builder: a JSONL file (``.jsonl``, one JSON object per
  line; blank lines are skipped) or an ArrayRecord file (``.array_record``, each record
  one JSON object as UTF-8 bytes). ``{split}`` in the path is replaced by the split name
  (``manifest:/data/pairs_{split}.jsonl``); without it the same file serves every split.
  A relative manifest path is relative to the current directory. ``data_dir`` is unused.

Manifest records
----------------
Field values are plain JSON: strings are text (returned as UTF-8 bytes), numbers stay
numbers, lists stay lists (of resolved values), and a nested object is flattened into
"outer/inner" fields. Media are objects with exactly one key:

  {"path": "img/cat.png"}  a file read as bytes when the record is read; a relative path
                           is relative to the manifest's directory.
  {"bytes_b64": "iVBO..."}  the bytes themselves, base64-encoded.

A bare string is always text, also in a field a task reads as an image. A missing file,
bad base64, bad JSON or a missing mapped field raises ``ManifestError`` (a
gemb.data.bad_records.BadRecord of the matching kind) naming the manifest, the line (JSONL)
or record index (ArrayRecord), the field and the path. A mapped field that none of the
first records has is a typo in the mapping: ``SourceError`` when the manifest is opened.

Example (/data/pairs_train.jsonl; each line is one record, wrapped here for reading)::

  {"id": 0, "image": {"path": "img/cat.png"}, "caption": "a cat asleep on a sofa",
   "hard_negatives": ["a dog asleep on a sofa", "a cat on a roof"],
   "hard_negative_ids": [17, 23]}
  {"id": 1, "question": "what colour is the car?", "photo": {"path": "/abs/car.jpg"},
   "answer": "red", "meta": {"lang": "en"}}
  {"id": 2, "speech": {"path": "audio/0002.wav"}, "transcript": "turn left here"}
  {"id": 3, "clip": {"path": "video/0003.mp4"}, "caption": "a dog catches a frisbee",
   "frames": [{"path": "video/0003/f0.png"}, {"path": "video/0003/f1.png"}]}
  {"id": 4, "image": {"bytes_b64": "iVBORw0KGgoAAAANSUhEUg..."}, "caption": "a red square"}

The second record is an interleaved query (text then image: a task lists the segments
``("text:question", "image:photo")`` in that order) and its "meta/lang" field is
b"en". Record 0 read with ``fields={"image": "image", "caption": "caption"}`` is
``{"image": <PNG bytes>, "caption": b"a cat asleep on a sofa"}``. Records need not
share fields; a task fails (or skips, per data.on_bad_record) on records that lack one
of its fields.
"""

import base64
import binascii
import json
import mmap
import os
import weakref

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import read_only_builder
from tensorflow_datasets.core import registered

from gemb.data.bad_records import BadRecord

SCHEMES = ("tfds", "manifest")
MEDIA_KEYS = ("path", "bytes_b64")


class SourceError(ValueError):
  """A dataset string, split or field mapping that cannot be opened."""


class ManifestError(BadRecord):
  """A manifest record that cannot be read; the message names where it is, the kind what."""


# How many records the check of a field mapping looks at when a manifest is opened.
_MAPPING_CHECK_RECORDS = 20


def open_source(dataset: str, split: str, *, data_dir: str = "", fields: dict | None = None):
  """Random-access source of one split of a "tfds:..." or "manifest:..." dataset."""
  scheme, sep, rest = dataset.partition(":")
  if not sep or scheme not in SCHEMES or not rest:
    raise SourceError(f"dataset {dataset!r}: expected 'tfds:<name>[/<config>][:<version>]' "
                      "or 'manifest:<path>.jsonl|.array_record'")
  if fields is not None:
    if not fields or not all(isinstance(k, str) and isinstance(v, str) and v
                             for k, v in fields.items()):
      raise SourceError(f"dataset {dataset!r}: fields must map names to non-empty source "
                        f"paths, got {fields!r}")
    fields = dict(fields)
  if scheme == "tfds":
    return TfdsSource(rest, split, data_dir, fields)
  return open_manifest(rest, split, fields)


# ---------------------------------------------------------------------------------------
# Shared record helpers.

def flatten(record: dict, prefix: str = "", *, media_refs: bool = False) -> dict:
  """{"a": {"b": 1}} -> {"a/b": 1}. Dicts inside lists are left as they are.

  media_refs: manifest records, whose {"path": ...} / {"bytes_b64": ...} objects are
  values, not nested fields.
  """
  flat = {}
  for key, value in record.items():
    if isinstance(value, dict) and not (media_refs and _is_media(value)):
      flat.update(flatten(value, f"{prefix}{key}/", media_refs=media_refs))
    else:
      flat[f"{prefix}{key}"] = value
  return flat


def _is_media(value) -> bool:
  return isinstance(value, dict) and any(k in value for k in MEDIA_KEYS)


def _select(record: dict, fields: dict | None, missing):
  """The mapped fields of a flat record; ``missing(path)`` builds the error to raise."""
  if fields is None:
    return record
  out = {}
  for name, path in fields.items():
    if path not in record:
      raise missing(path)
    out[name] = record[path]
  return out


# ---------------------------------------------------------------------------------------
# TFDS.

def normalize_tfds(value, depth: int = 0):
  """A decoded TFDS value -> what a prepared dataset's data_source record holds.

  ``tfds.testing.mock_data`` (and possibly other readers) give str, numpy scalars and
  arrays where a prepared ArrayRecord dataset gives bytes, Python ints and, for a
  ``Sequence`` feature, a list; normalizing means the pipeline sees one type per kind
  whatever produced the record. depth: how many Sequence levels wrap the feature.
  Fixed-shape arrays (images, boxes, waveforms) stay arrays.
  """
  if depth and isinstance(value, (np.ndarray, list, tuple)):
    return [normalize_tfds(v, depth - 1) for v in value]
  if isinstance(value, str):  # also np.str_
    return value.encode("utf-8")
  if isinstance(value, np.generic):
    return normalize_tfds(value.item())
  if isinstance(value, np.ndarray) and (value.ndim == 0 or value.dtype.kind in "USO"):
    return normalize_tfds(value.tolist())
  if isinstance(value, list):  # from a string array's tolist()
    return [normalize_tfds(v) for v in value]
  return value


def feature_depths(features, prefix: str = "", depth: int = 0) -> dict[str, int]:
  """Flat "a/b" path of each feature of a FeaturesDict -> its number of Sequence levels.

  The paths are the keys of a flattened record (a Sequence of a dict yields one list-valued
  field per key of the dict, as data_source returns it).
  """
  if isinstance(features, tfds.features.Sequence):
    return feature_depths(features.feature, prefix, depth + 1)
  if isinstance(features, tfds.features.FeaturesDict):
    depths = {}
    for key, feature in features.items():
      depths.update(feature_depths(feature, f"{prefix}{key}/", depth))
    return depths
  return {prefix.rstrip("/"): depth}


class TfdsSource:
  """One split of a prepared TFDS dataset, records flattened, normalized and mapped."""

  def __init__(self, name: str, split: str, data_dir: str = "", fields: dict | None = None):
    self.name, self.split, self.fields = name, split, fields
    self.data_dir = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else None
    builder = self._builder()
    try:
      self._source = builder.as_data_source(split)
    except Exception as e:
      self._explain(builder, e)
      raise
    self._depths = feature_depths(builder.info.features)
    if fields is not None:
      for path in fields.values():
        if path not in self._depths:
          raise SourceError(f"{self._where()}: no field {path!r}; available: "
                            f"{list(self._depths)}")

  def _where(self):
    return f"TFDS dataset {self.name!r} split {self.split!r}"

  def _prepare_hint(self):
    data_dir = self.data_dir or "~/tensorflow_datasets"
    return (f"gemb reads TFDS datasets with random access and without TensorFlow, from the "
            f"ArrayRecord format. Prepare it once (needs TensorFlow and the dataset's "
            f"downloads): `pip install tensorflow && tfds build {self.name} "
            f"--data_dir={data_dir} --file_format=array_record`; a dataset prepared as "
            f"tfrecord converts with `tfds convert_format --dataset_dir=<its version dir> "
            f"--out_file_format=array_record`.")

  def _builder(self):
    # Prepared files first: they describe the dataset completely, so this needs neither
    # TensorFlow nor the dataset's code (coco_captions' code imports TF, for example).
    try:
      return read_only_builder.builder_from_files(self.name, data_dir=self.data_dir)
    except registered.DatasetNotFoundError:
      pass
    # Not on disk: a registered builder's code still knows the dataset (and is what
    # tfds.testing.mock_data fakes).
    try:
      return tfds.builder(self.name, data_dir=self.data_dir)
    except registered.DatasetNotFoundError as e:
      raise SourceError(f"{self._where()}: no registered TFDS dataset and no prepared files "
                        f"of that name in {self.data_dir or 'the TFDS data dir'}") from e
    except ImportError as e:
      raise SourceError(f"{self._where()}: not prepared in {self.data_dir or 'the TFDS data dir'}"
                        f", and its builder code cannot run here ({e}). "
                        f"{self._prepare_hint()}") from e

  def _explain(self, builder, error):
    """Turns tfds's errors for unprepared datasets and unknown splits into clear ones."""
    if not builder.is_prepared():
      raise SourceError(f"{self._where()}: not prepared in {builder.data_dir}. "
                        f"{self._prepare_hint()}") from error
    file_format = builder.info.file_format
    if file_format is not None and file_format.value not in ("array_record", "parquet"):
      raise SourceError(f"{self._where()}: prepared as {file_format.value}, which has no "
                        f"random access. {self._prepare_hint()}") from error
    if self.split not in builder.info.splits:
      raise SourceError(f"{self._where()}: no such split; splits: "
                        f"{sorted(builder.info.splits)}") from error

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    record = flatten(self._source[index])
    record = _select(record, self.fields, lambda path: BadRecord(
        f"{self._where()} record {index}: no field {path!r}; available: {sorted(record)}",
        "missing_field"))
    names = self.fields or {k: k for k in record}
    return {k: normalize_tfds(v, self._depths.get(names[k], 0)) for k, v in record.items()}

  def __repr__(self):
    return f"TfdsSource({self.name!r}, split={self.split!r}, {len(self)} records)"


# ---------------------------------------------------------------------------------------
# Manifests.

def open_manifest(path: str, split: str, fields: dict | None = None):
  """JsonlManifest or ArrayRecordManifest of ``path`` with "{split}" filled in."""
  path = os.path.abspath(os.path.expanduser(path.replace("{split}", split)))
  if path.endswith(".jsonl"):
    cls = JsonlManifest
  elif path.endswith(".array_record"):
    cls = ArrayRecordManifest
  else:
    raise SourceError(f"manifest {path}: expected a .jsonl or .array_record file")
  if not os.path.isfile(path):
    raise SourceError(f"manifest {path} (split {split!r}): no such file")
  return cls(path, fields)


class _Manifest:
  """Record parsing shared by both manifest formats: JSON object -> resolved record.

  Subclasses provide ``__len__``, ``_raw(index)`` (the record's JSON bytes) and
  ``_where(index)`` (where the record is, for error messages).
  """

  def __init__(self, path: str, fields: dict | None):
    self.path, self.fields = path, fields
    self.base_dir = os.path.dirname(path)

  def _check_mapping(self):
    # A mapped field that none of the first records has is almost surely a typo in the
    # mapping: fail when opening instead of on (or skipping) every record. A field only
    # some records lack, and lines that do not parse, are bad records, reported (or
    # skipped) where they are read.
    if self.fields is None:
      return
    missing, seen = set(self.fields.values()), set()
    count = min(len(self), _MAPPING_CHECK_RECORDS)
    for index in range(count):
      try:
        keys = self._parse(index).keys()
      except ManifestError:
        continue
      missing -= keys
      seen |= keys
      if not missing:
        return
    if seen:
      raise SourceError(f"manifest {self.path}: mapped field(s) {sorted(missing)} are in none "
                        f"of its first {count} records; their fields: {sorted(seen)}")

  def _parse(self, index: int) -> dict:
    """Record ``index`` (in range) parsed and flattened, not mapped."""
    try:
      obj = json.loads(self._raw(index))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise ManifestError(f"{self._where(index)}: not valid JSON: {e}", "not_json") from e
    if not isinstance(obj, dict):
      raise ManifestError(f"{self._where(index)}: expected a JSON object, got "
                          f"{type(obj).__name__}", "not_json")
    return flatten(obj, media_refs=True)

  def raw_record(self, index: int) -> dict:
    """Record ``index`` flattened and mapped, media references not yet read."""
    if not -len(self) <= index < len(self):
      raise IndexError(f"manifest {self.path}: index {index} out of range [0, {len(self)})")
    index %= len(self)
    record = self._parse(index)
    return _select(record, self.fields, lambda field: ManifestError(
        f"{self._where(index)}: no field {field!r}; fields: {sorted(record)}", "missing_field"))

  def __getitem__(self, index: int) -> dict:
    index = int(index)
    record = self.raw_record(index)
    index %= len(self)
    return {name: self._resolve(value, index, name) for name, value in record.items()}

  def _resolve(self, value, index, field):
    if isinstance(value, str):
      return value.encode("utf-8")
    if isinstance(value, list):
      return [self._resolve(v, index, f"{field}[{i}]") for i, v in enumerate(value)]
    if _is_media(value):
      return self._media(value, index, field)
    if isinstance(value, dict):  # an object inside a list: resolve its values in place
      return {k: self._resolve(v, index, f"{field}/{k}") for k, v in value.items()}
    return value

  def _media(self, ref, index, field):
    where = f"{self._where(index)}, field {field!r}"
    if len(ref) != 1:
      raise ManifestError(f"{where}: a media value has exactly one key of {MEDIA_KEYS}, "
                          f"got {sorted(ref)}", "bad_media_ref")
    if "bytes_b64" in ref:
      try:
        return base64.b64decode(ref["bytes_b64"], validate=True)
      except (binascii.Error, TypeError, ValueError) as e:
        raise ManifestError(f"{where}: bad base64: {e}", "bad_media_ref") from e
    rel = ref["path"]
    if not isinstance(rel, str) or not rel:
      raise ManifestError(f"{where}: path must be a non-empty string, got {rel!r}",
                          "bad_media_ref")
    path = os.path.join(self.base_dir, os.path.expanduser(rel))
    try:
      with open(path, "rb") as f:
        return f.read()
    except OSError as e:
      raise ManifestError(f"{where}: cannot read {path}: {e.strerror or e}",
                          "missing_file") from e

  def __repr__(self):
    return f"{type(self).__name__}({self.path!r}, {len(self)} records)"


_WHITESPACE = np.frombuffer(b" \t\r\n\f\v", np.uint8)
_CHUNK = 1 << 24  # bytes scanned per numpy pass while indexing


def index_lines(path: str) -> np.ndarray:
  """Byte offsets of the non-blank lines of a file, without holding it in memory.

  Newlines are found with numpy over a memory map, in about a third of the time of a
  Python loop over the lines (1M lines of ~100 bytes: ~0.2-0.4 s here); only lines that
  begin with whitespace are examined one by one, to skip the blank ones.
  """
  size = os.path.getsize(path)
  if size == 0:
    return np.zeros(0, np.int64)
  with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
    buf = np.frombuffer(mm, np.uint8)
    try:
      newlines = np.concatenate([np.flatnonzero(buf[i:i + _CHUNK] == 10) + i
                                 for i in range(0, size, _CHUNK)])
      starts = np.concatenate([[0], newlines + 1]).astype(np.int64)
      ends = np.concatenate([newlines, [size]]).astype(np.int64)
      keep = starts < ends
      starts, ends = starts[keep], ends[keep]
      suspect = np.flatnonzero(np.isin(buf[starts], _WHITESPACE))
      blank = [i for i in suspect if not mm[starts[i]:ends[i]].strip()]
    finally:
      del buf  # the memory map cannot close while a numpy view of it exists
  return np.delete(starts, blank)


class JsonlManifest(_Manifest):
  """A JSONL manifest, indexed by line offsets once; records are read with pread.

  Pickles with its index (8 bytes per record), not the file, so grain workers reopen the
  file themselves; a worker refuses to read a manifest that changed since indexing.
  """

  def __init__(self, path: str, fields: dict | None = None):
    super().__init__(path, fields)
    self._stamp = self._file_stamp()
    self._offsets = index_lines(path)
    self._fd = self._pid = None
    self._check_mapping()

  def _file_stamp(self):
    st = os.stat(self.path)
    return st.st_size, st.st_mtime_ns

  def __getstate__(self):
    state = dict(self.__dict__)
    state["_fd"] = state["_pid"] = None
    return state

  def __setstate__(self, state):
    self.__dict__.update(state)
    if self._file_stamp() != self._stamp:
      raise ManifestError(f"manifest {self.path} changed since it was indexed")

  def __len__(self):
    return len(self._offsets)

  def _where(self, index):
    return f"manifest {self.path} line {self.line_number(index)} (record {index})"

  def line_number(self, index: int) -> int:
    """1-based line of record ``index`` (counts newlines up to it; for error messages)."""
    start = int(self._offsets[index])
    with open(self.path, "rb") as f:
      newlines = 0
      while f.tell() < start:
        newlines += f.read(min(_CHUNK, start - f.tell())).count(b"\n")
    return newlines + 1

  def _raw(self, index):
    # pread (no shared file position) keeps concurrent reads from grain's threads safe;
    # the descriptor is per process, as forked or spawned workers must not share one.
    if self._pid != os.getpid():
      self._fd, self._pid = os.open(self.path, os.O_RDONLY), os.getpid()
      weakref.finalize(self, os.close, self._fd)
    start = int(self._offsets[index])
    parts, size = [], 1 << 16
    while True:
      chunk = os.pread(self._fd, size, start)
      end = chunk.find(b"\n")
      if end >= 0 or len(chunk) < size:
        parts.append(chunk if end < 0 else chunk[:end])
        return b"".join(parts)
      parts.append(chunk)
      start += size
      size *= 2


class ArrayRecordManifest(_Manifest):
  """An ArrayRecord manifest: record i is one JSON object as UTF-8 bytes."""

  def __init__(self, path: str, fields: dict | None = None):
    super().__init__(path, fields)
    # Imported here: the array_record wheel (a tfds/grain dependency) loads a C++ module.
    from array_record.python import array_record_data_source
    try:
      self._reader = array_record_data_source.ArrayRecordDataSource(path)
    except (RuntimeError, OSError) as e:
      raise SourceError(f"manifest {path}: cannot open as ArrayRecord: {e}") from e
    self._check_mapping()

  def __len__(self):
    return len(self._reader)

  def _where(self, index):
    return f"manifest {self.path} record {index}"

  def _raw(self, index):
    return self._reader[index]
