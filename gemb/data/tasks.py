"""Tasks: what a contrastive task reads from its records, and the registry of built-in tasks.

A task turns records of one dataset into (query, candidate[, hard negatives]) examples in
the batch format of gemb/batch.py. It names, per side, the ordered segments of an
example as ``Segment(modality, field)``; the pipeline decodes each field with its
modality's loader (gemb/data/media/) and packs the segments in that order.

Record field types a task may point at (what ``tfds.data_source`` returns without TF):
  text   bytes or str; an empty text is a bad record.
  image  PNG / JPEG bytes (or uint8 [H, W, 3]).
  audio  WAV / OGG bytes (or float32 [N] at the builder's declared rate).
  video  a sequence of PNG / JPEG frame bytes, or encoded video bytes (mp4/webm).
Hard negatives: a field holding a *list* of values of the candidate's (single-segment)
modality, and a field with a list of their ids; the pipeline pads / samples them to K.

Ids: ``query_id`` / ``candidate_id`` name integer fields; examples whose candidates share
an id are false negatives of each other (masked by the loss), and evaluation treats every
candidate with the query's relevant id as relevant.

Classification by prompts (``ClassificationSpec``): each record's query is classified by the
nearest class embedding, the mean embedding of the class's prompts (prompt ensembling, as
in CLIP), e.g. "an emoji of {}" filled with the record's label. Zero-shot (evaluation
only) unless the spec names a ``train_split``: then its train records also train, each
paired with one prompt of its class (as FLYP fine-tunes CLIP on a classification set, and
as Gemini Embedding's fine-tuning mixture holds classification data), with the class as
both ids so that same-class examples of a batch are not each other's negatives.

Built-in datasets declare their tasks next to their builders (``TASKS`` in each
gemb/data/builtin/<name>.py); ``BUILTIN_TASKS`` collects them by name.
"""

import dataclasses

from gemb.batch import MODALITIES


@dataclasses.dataclass(frozen=True)
class Segment:
  modality: str  # one of gemb.batch.MODALITIES
  field: str     # record field holding the raw value

  def __post_init__(self):
    if self.modality not in MODALITIES:
      raise ValueError(f"segment {self.field!r}: unknown modality {self.modality!r}; "
                       f"known: {MODALITIES}")

  @classmethod
  def parse(cls, spec):
    """'image:base_image' -> Segment('image', 'base_image')."""
    if isinstance(spec, Segment):
      return spec
    modality, sep, field = str(spec).partition(":")
    if not sep or not field:
      raise ValueError(f"segment spec {spec!r} must look like 'modality:field'")
    return cls(modality, field)


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One contrastive task over one dataset."""
  name: str                       # unique, e.g. "emoji_image_to_name"
  dataset: str                    # sources.BUILDERS key, "tfds:<name>" or "manifest:<path>"
  query: tuple[Segment, ...]      # segments of a query, in order
  candidate: tuple[Segment, ...]  # segments of a candidate, in order
  query_id: str | None             # int field: id of the query item (None: the record index)
  candidate_id: str | None         # int field: id of the candidate item (None: record index)
  negatives: Segment | None = None  # field with a list of hard negatives (candidate modality)
  negative_ids: str | None = None   # field with the list of their ids
  instruction: str = ""           # prefixed to the query as a leading text segment
  train_split: str = "train"
  eval_split: str = "test"
  description: str = ""
  # External sources only ("tfds:..."): (task field, source path) pairs, e.g.
  # (("caption", "captions/text"), ("image", "image")).
  fields: tuple | None = None

  def __post_init__(self):
    object.__setattr__(self, "query", tuple(Segment.parse(s) for s in self.query))
    object.__setattr__(self, "candidate", tuple(Segment.parse(s) for s in self.candidate))
    if self.negatives is not None:
      object.__setattr__(self, "negatives", Segment.parse(self.negatives))
      if len(self.candidate) != 1 or self.negatives.modality != self.candidate[0].modality:
        raise ValueError(f"task {self.name!r}: hard negatives need a single-segment candidate "
                         "of the same modality")
      if not self.negative_ids:
        raise ValueError(f"task {self.name!r}: negatives need negative_ids")
    if not self.query or not self.candidate:
      raise ValueError(f"task {self.name!r}: query and candidate need at least one segment")

  def modalities(self):
    """Modalities used on any side (the model config must include them)."""
    segs = self.query + self.candidate + ((self.negatives,) if self.negatives else ())
    return sorted({s.modality for s in segs} | ({"text"} if self.instruction else set()))


@dataclasses.dataclass(frozen=True)
class ClassificationSpec:
  """Classification over one dataset by prompts: each record is a query, each class a prompt
  set."""
  name: str                       # unique, e.g. "emoji_group_zero_shot"
  dataset: str                    # as TaskSpec.dataset
  query: tuple[Segment, ...]      # segments of a query, in order
  label: str                      # text field holding the record's class name
  templates: tuple[str, ...]      # prompts, "{}" = the class name; a class's prompts are averaged
  # The classes, in order; empty = the distinct labels of the eval split, sorted. A record
  # whose label is not among explicit classes is a bad record.
  classes: tuple[str, ...] = ()
  lowercase: bool = False         # lower-case class names in prompts
  instruction: str = ""           # prefixed to the query as a leading text segment
  eval_split: str = "test"
  # None: zero-shot, evaluation only. A split name: its records also train (record -> one
  # prompt of its class); their labels must be among the classes.
  train_split: str | None = None
  description: str = ""
  fields: tuple | None = None     # as TaskSpec.fields

  def __post_init__(self):
    object.__setattr__(self, "query", tuple(Segment.parse(s) for s in self.query))
    object.__setattr__(self, "templates", tuple(self.templates))
    object.__setattr__(self, "classes", tuple(self.classes))
    if not self.query:
      raise ValueError(f"task {self.name!r}: the query needs at least one segment")
    if not self.templates:
      raise ValueError(f"task {self.name!r}: a classification task needs prompt templates")
    for template in self.templates:
      if not isinstance(template, str) or template.count("{}") != 1:
        raise ValueError(f"task {self.name!r}: template {template!r} must contain '{{}}' "
                         "(the class name) exactly once")
    if len(set(self.classes)) != len(self.classes):
      raise ValueError(f"task {self.name!r}: classes {self.classes} repeat a name")

  def prompts(self, class_name):
    """The prompts of one class, one per template."""
    name = class_name.lower() if self.lowercase else class_name
    # replace, not str.format: braces inside a class name must stay literal.
    return [t.replace("{}", name) for t in self.templates]

  def query_task(self):
    """The query side as a retrieval TaskSpec (candidate: the label text), so the example
    loader decodes queries and labels exactly as it does for retrieval tasks."""
    return TaskSpec(name=self.name, dataset=self.dataset, query=self.query,
                    candidate=(Segment("text", self.label),), query_id=None, candidate_id=None,
                    instruction=self.instruction, eval_split=self.eval_split,
                    fields=self.fields)

  def modalities(self):
    """Modalities used on any side (the prompts are text)."""
    return sorted({s.modality for s in self.query} | {"text"})


def is_zero_shot(task) -> bool:
  """A classification task without a train split: evaluation only."""
  return isinstance(task, ClassificationSpec) and not task.train_split
