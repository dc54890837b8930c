"""Record -> contrastive example: decode every segment of a task and pack fixed-shape sides.

``ExampleLoader`` is the grain transform between a random-access source and batching. For
a task (gemb/data/tasks.py) it reads a record, decodes each segment with its modality's
loader (gemb/data/media/), tokenizes text (with the task instruction as a leading text
segment of the query), and packs each side in the batch format of gemb/batch.py
with the task's static slot counts, so every example of a task has identical shapes.

Bad records (unreadable manifest lines, corrupt media, empty or over-long text, missing
field or file; gemb/data/bad_records.py) raise ``BadRecord`` naming the dataset, split,
record index and field. With ``on_bad_record="skip"`` the loader instead takes the next
record of its own shard and counts what it skipped, per kind, in the example's ``skipped``
field (int32 [len(KINDS)]; summed per task by the training loop), logging the first
record of each kind it skips.
"""

import dataclasses

from absl import logging
import numpy as np

from gemb.data.bad_records import BadRecord, describe, kind_of, kind_vector
from gemb.data.media import MediaError
from gemb.data.media.audio import load_audio
from gemb.data.media.image import load_image
from gemb.data.media.video import load_video
from gemb.batch import MODALITIES, PAD_ID, pack_side

ON_BAD_RECORD = ("error", "skip")  # config.data.on_bad_record (module docstring)
# Examples carrying fewer hard negatives than K are padded with this id; the loss masks
# every column whose id is negative, so padding never acts as a negative.
PAD_NEGATIVE_ID = -1


@dataclasses.dataclass(frozen=True)
class InputShapes:
  """Static per-segment shapes, read from the model config."""
  text_len: int
  image_size: int
  audio_rate: int
  audio_samples: int
  video_frames: int
  video_size: int
  max_text_chars: int = 100_000
  max_audio_seconds: float = 60.0
  max_video_frames: int = 2000

  @classmethod
  def from_config(cls, config):
    m, d = config.model, config.data
    return cls(text_len=m.text.max_len, image_size=m.image.size, audio_rate=m.audio.sample_rate,
               audio_samples=m.audio.num_samples, video_frames=m.video.frames,
               video_size=m.video.size, max_text_chars=d.max_text_chars,
               max_audio_seconds=d.max_audio_seconds, max_video_frames=d.max_video_frames)

  def slot_shapes(self):
    """Shape of one slot of each modality in the batch format (gemb/batch.py)."""
    return {"text": (self.text_len,), "image": (self.image_size, self.image_size, 3),
            "audio": (self.audio_samples,),
            "video": (self.video_frames, self.video_size, self.video_size, 3)}


def check_text(value, max_chars):
  """Raw text (str or UTF-8 bytes) -> str; MediaError for a non-text value (a list, a
  number, null), text that is not UTF-8, an empty text or one over ``max_chars``."""
  if isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, str):
    raise MediaError(f"expected one text, got a list of {len(value)}")
  if not isinstance(value, (str, bytes)):
    raise MediaError(f"expected a text (str or bytes), got {type(value).__name__}")
  try:
    text = value.decode("utf-8") if isinstance(value, bytes) else value
  except UnicodeDecodeError as e:
    raise MediaError(f"text is not UTF-8: {e}") from e
  if not text.strip():
    raise MediaError("empty text")
  if len(text) > max_chars:
    raise MediaError(f"text of {len(text)} characters exceeds data.max_text_chars="
                     f"{max_chars}")
  return text


def load_text(value, tokenizer, shapes):
  """Raw text (str or UTF-8 bytes) -> int32 [shapes.text_len] ids (truncated, padded).

  Raises MediaError as check_text does, and for a text without tokens.
  """
  text = check_text(value, shapes.max_text_chars)
  ids = tokenizer.encode([text], shapes.text_len)[0]
  if not np.any(ids != PAD_ID):
    raise MediaError(f"text {text[:40]!r} has no tokens")
  return ids


def decode_segment(modality, value, shapes, tokenizer, *, source_rate=None):
  """One raw segment value -> the model input of its slot (audio: (waveform, valid length)).

  The one decoding path of training, evaluation and serving (gemb.serving), so an exported
  model sees exactly the inputs it was trained on. source_rate: the rate of a raw audio
  array (encoded audio carries its own). Raises MediaError naming what is wrong.
  """
  if modality == "text":
    return load_text(value, tokenizer, shapes)
  if modality == "image":
    return load_image(value, shapes.image_size)
  if modality == "audio":
    return load_audio(value, sample_rate=shapes.audio_rate, num_samples=shapes.audio_samples,
                      max_seconds=shapes.max_audio_seconds, source_rate=source_rate)
  if modality == "video":
    return load_video(value, frames=shapes.video_frames, size=shapes.video_size,
                      max_frames=shapes.max_video_frames)
  raise MediaError(f"unknown modality {modality!r}; known: {MODALITIES}")


def record_where(task, split, index=None):
  """How errors name a task's record: dataset, split, task and record index."""
  where = f"dataset {task.dataset!r} split {split!r} (task {task.name!r})"
  return where if index is None else f"{where} record {index}"


def read_record(task, split, source, index):
  """Record ``index`` of a task's split; what the source raises becomes a BadRecord (of the
  source's kind, e.g. a manifest line that is not JSON) naming the task's record."""
  try:
    return source[index]
  except (OSError, ValueError, KeyError) as e:
    raise BadRecord(f"{record_where(task, split, index)}: cannot read the record: {e}",
                    kind_of(e)) from e


def join_instruction(instruction, value):
  """A text segment with the task instruction in front, as one string: how
  sentence-transformers applies a pretrained model's prompts (prompt + text, tokenized
  together), and so how a backbone's tokenizer (``joins_instructions``) gets them."""
  if isinstance(value, bytes):
    try:
      value = value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise MediaError(f"text is not UTF-8: {e}") from e
  return instruction + value if isinstance(value, str) else value


def instructed(segments, instruction, instruction_ids, tokenizer):
  """[(modality, raw value)] of a side -> (instruction slot ids, segments to decode).

  The instruction is a leading text segment of its own, except for a tokenizer that
  ``joins_instructions`` when the side starts with text: that text then carries the
  instruction and the instruction slot stays (the side's slots do not depend on its
  content) with no token in it.
  """
  if instruction_ids is None:
    return None, segments
  if getattr(tokenizer, "joins_instructions", False) and segments and segments[0][0] == "text":
    first = (segments[0][0], join_instruction(instruction, segments[0][1]))
    return np.full_like(instruction_ids, PAD_ID), [first] + list(segments[1:])
  return instruction_ids, segments


def side_slots(segments, with_instruction):
  """Slots per modality of one side: its segments (+1 text for an instruction)."""
  slots = {m: sum(s.modality == m for s in segments) for m in MODALITIES}
  slots["text"] += bool(with_instruction)
  return slots


class ExampleLoader:
  """Shard position -> one example of ``task`` (a grain MapTransform-compatible callable)."""

  def __init__(self, task, source, records, tokenizer, shapes, *, split, num_negatives=0,
               on_bad_record="error", task_index=0, instructions=True):
    if on_bad_record not in ON_BAD_RECORD:
      raise ValueError(f"data.on_bad_record={on_bad_record!r}; choose 'error' or 'skip'")
    self.task, self.source, self.records = task, source, np.asarray(records)
    self.tokenizer, self.shapes, self.split = tokenizer, shapes, split
    self.num_negatives = num_negatives if task.negatives else 0
    self.skip, self.task_index = on_bad_record == "skip", task_index
    self.instruction = task.instruction if task.instruction and instructions else None
    self.instruction_ids = (tokenizer.encode([task.instruction], shapes.text_len)[0]
                            if self.instruction else None)
    # Skip mode, per process: record index -> kind of the records found bad (a bad record
    # met again, e.g. in the next epoch, is counted without being read again), and the
    # first message of each kind (logged once, and quoted if every record is bad).
    self._bad, self._first = {}, {}

  # ---- grain interface: MapDataset.map(loader) calls this with one shard position.
  def __call__(self, position):
    position = int(position)
    skipped = []
    for attempt in range(len(self.records)):
      index = int(self.records[(position + attempt) % len(self.records)])
      if index in self._bad:
        skipped.append(self._bad[index])
        continue
      try:
        example = self.load(index)
      except BadRecord as e:
        if not self.skip:
          raise
        self._note_bad(index, e)
        skipped.append(e.kind)
        continue
      example["skipped"] = kind_vector(skipped)
      return example
    # Every record is bad: stop, whatever the mode (nothing could ever be trained on).
    first = "; ".join(f"{kind}: {message}" for kind, message in self._first.items())
    raise BadRecord(f"{self._where()}: all {len(self.records)} records are bad "
                    f"({describe(kind_vector(skipped))}), so data.on_bad_record=skip has "
                    f"nothing to replace them with. First of each kind: {first}",
                    skipped[0])

  def _note_bad(self, index, error):
    self._bad[index] = error.kind
    if error.kind not in self._first:
      self._first[error.kind] = str(error)
      logging.warning("data.on_bad_record=skip: skipping %s (further %s records of this task "
                      "are counted in train/skipped_records, not logged)", error, error.kind)

  def load(self, index):
    """Record ``index`` of the source -> example dict (raises BadRecord)."""
    record = self.read(index)
    t = self.task
    example = {
        "query": self.side(record, index, t.query, self.instruction_ids),
        "candidate": self.side(record, index, t.candidate, None),
        "query_id": np.int32(self.record_id(record, index, t.query_id)),
        "candidate_id": np.int32(self.record_id(record, index, t.candidate_id)),
        "task_index": np.int32(self.task_index),
    }
    if self.num_negatives:
      example["negatives"], example["negative_id"] = self.negatives(record, index)
    return example

  def read(self, index):
    return read_record(self.task, self.split, self.source, index)

  def side(self, record, index, segments, instruction_ids):
    """Packs the segments of one side (after the instruction, if any) into slot arrays."""
    raw = [(seg.modality, self.field(record, index, seg.field)) for seg in segments]
    try:
      instruction_ids, raw = instructed(raw, self.instruction, instruction_ids, self.tokenizer)
    except MediaError as e:
      raise BadRecord(f"{self._where(index)}, field {segments[0].field!r} (text): {e}") from e
    decoded = [] if instruction_ids is None else [("text", instruction_ids)]
    for seg, (modality, value) in zip(segments, raw):
      decoded.append((modality, self.decode(modality, value, index, seg.field)))
    return pack_side(decoded)

  def negatives(self, record, index):
    """K hard negatives as a side [K, ...] plus ids [K]; missing ones are padding."""
    t, k = self.task, self.num_negatives
    values = self.field(record, index, t.negatives.field)
    ids = self.field(record, index, t.negative_ids)
    if not isinstance(values, (list, tuple, np.ndarray)) or \
        not isinstance(ids, (list, tuple, np.ndarray)):
      raise BadRecord(f"{self._where(index)}: fields {t.negatives.field!r} and "
                      f"{t.negative_ids!r} must be lists, got {type(values).__name__} and "
                      f"{type(ids).__name__}", "bad_value")
    values, ids = list(values), [self.as_id(i, index, t.negative_ids) for i in ids]
    if len(values) != len(ids):
      raise BadRecord(f"{self._where(index)}: {len(values)} negatives in {t.negatives.field!r} "
                      f"but {len(ids)} ids in {t.negative_ids!r}", "bad_value")
    values, ids = values[:k], ids[:k]
    sides = [self.side({t.negatives.field: v}, index, (t.negatives,), None) for v in values]
    if not sides:  # no negative at all: a placeholder of the right shape, fully masked
      sides = [self.side(record, index, t.candidate, None)]
      ids = []
    sides += [sides[0]] * (k - len(sides))
    ids = ids + [PAD_NEGATIVE_ID] * (k - len(ids))
    stacked = {key: np.stack([s[key] for s in sides]) for key in sides[0]}
    return stacked, np.asarray(ids, np.int32)

  def decode(self, modality, value, index, field):
    try:
      return decode_segment(modality, value, self.shapes, self.tokenizer)
    except MediaError as e:
      raise BadRecord(f"{self._where(index)}, field {field!r} ({modality}): {e}",
                      "bad_text" if modality == "text" else "bad_media") from e

  def field(self, record, index, name):
    if name not in record:
      raise BadRecord(f"{self._where(index)}: no field {name!r}; fields: {sorted(record)}",
                      "missing_field")
    return record[name]

  def record_id(self, record, index, name):
    """An id field's value; ``None`` as the field name means the record index."""
    return index if name is None else self.as_id(self.field(record, index, name), index, name)

  def as_id(self, value, index, name):
    """``int(value)``, or a bad_value BadRecord (null, a list, a word, ...)."""
    try:
      return int(value)
    except (TypeError, ValueError):
      raise BadRecord(f"{self._where(index)}, field {name!r}: an id must be an integer, got "
                      f"{value!r:.40}", "bad_value") from None

  def _where(self, index=None):
    return record_where(self.task, self.split, index)


def label_text(value):
  """A label field's value (UTF-8 bytes from TFDS, or str / int) as a class name."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class PromptExampleLoader(ExampleLoader):
  """Train examples of a classification task (a ClassificationSpec with a train_split): a
  record's query paired with one prompt of its class, template ``index % num_templates``,
  so a class's records spread over all its prompts. Both ids are the class index: examples
  of one class in a batch are not each other's negatives in either direction."""

  def __init__(self, spec, source, records, tokenizer, shapes, *, classes, **kwargs):
    super().__init__(spec.query_task(), source, records, tokenizer, shapes, **kwargs)
    self.spec, self.class_index = spec, {c: i for i, c in enumerate(classes)}

  def load(self, index):
    record = self.read(index)
    label = label_text(self.field(record, index, self.spec.label))
    if label not in self.class_index:
      raise BadRecord(f"{self._where(index)}: label {label!r} in field {self.spec.label!r} "
                      f"is not among the task's classes {tuple(self.class_index)}", "bad_value")
    prompts = self.spec.prompts(label)
    prompt = prompts[index % len(prompts)]
    class_id = np.int32(self.class_index[label])
    return {
        "query": self.side(record, index, self.task.query, self.instruction_ids),
        "candidate": pack_side([("text", self.decode("text", prompt, index, "prompt"))]),
        "query_id": class_id,
        "candidate_id": class_id,
        "task_index": np.int32(self.task_index),
    }
