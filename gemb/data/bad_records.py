"""Bad records: the error a record that cannot become an example raises, its kinds, and the
per-task tally of skipped ones.

Every per-record failure (a manifest line that is not JSON, a media reference that cannot be
resolved, a missing field, an undecodable image, an empty text, ...) is a ``BadRecord``
with one of ``KINDS``, wherever it arises: reading the record (gemb/data/external.py),
turning it into an example (gemb/data/examples.py), collecting the tokenizer's texts or an
eval corpus (gemb/data/pipeline.py). With ``data.on_bad_record="error"`` it stops the run
naming the dataset, split, task, record, line and field; with "skip" the record is left out
and counted per task and kind, here.
"""

import numpy as np

KINDS = (
    "not_json",       # a manifest line / record that is not one JSON object
    "bad_media_ref",  # a media object without exactly one of path / bytes_b64, bad base64
    "missing_file",   # a media path that cannot be read
    "missing_field",  # a field the task reads is absent
    "bad_value",      # an id that is not an integer, negatives without their ids, ...
    "bad_text",       # empty, over-long, not UTF-8, not a text (a number, null), no tokens
    "bad_media",      # an image / audio / video that does not decode or is out of bounds
    "unreadable",     # the source itself failed to read the record
)


class BadRecord(ValueError):
  """A record that cannot become an example; the message names where it is."""

  def __init__(self, message, kind="unreadable"):
    if kind not in KINDS:
      raise ValueError(f"unknown bad-record kind {kind!r}; known: {KINDS}")
    super().__init__(message)
    self.kind = kind

  def __reduce__(self):  # keeps the kind across grain worker processes (pickling)
    return type(self), (str(self), self.kind)


def kind_of(error):
  """The kind of a record-reading error: its own for a BadRecord, else "unreadable"."""
  return getattr(error, "kind", "unreadable")


def kind_vector(kinds):
  """int32 [len(KINDS)]: how many of ``kinds`` (names, repeats allowed) are of each kind."""
  out = np.zeros(len(KINDS), np.int32)
  for kind in kinds:
    out[KINDS.index(kind)] += 1
  return out


def describe(counts):
  """{kind: n} or a kind vector -> "2 missing_file, 1 not_json" (largest first)."""
  if not isinstance(counts, dict):
    counts = dict(zip(KINDS, np.asarray(counts).tolist()))
  items = sorted(((n, k) for k, n in counts.items() if n), key=lambda x: (-x[0], x[1]))
  return ", ".join(f"{n} {k}" for n, k in items)


class Tally:
  """Skipped records per task and kind, summed over batches (the training loop's counter)."""

  def __init__(self, task_names):
    self.task_names = tuple(task_names)
    self.counts = np.zeros((len(self.task_names), len(KINDS)), np.int64)

  def add(self, skipped, task_index):
    """skipped: int [b, len(KINDS)] of one batch; task_index: int [b] (which task)."""
    np.add.at(self.counts, np.asarray(task_index), np.asarray(skipped))

  @property
  def total(self):
    return int(self.counts.sum())

  def scalars(self, prefix="train/skipped_records"):
    """{prefix: total, prefix/<task>/<kind>: n for every non-zero count}."""
    out = {prefix: self.total}
    for t, k in zip(*np.nonzero(self.counts)):
      out[f"{prefix}/{self.task_names[t]}/{KINDS[k]}"] = int(self.counts[t, k])
    return out

  def summary(self):
    """"task 'a': 2 missing_file; task 'b': 1 bad_media" ("" when nothing was skipped)."""
    return "; ".join(f"task {name!r}: {describe(row)}"
                     for name, row in zip(self.task_names, self.counts) if row.any())
