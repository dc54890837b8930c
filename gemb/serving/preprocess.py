"""Items -> packed sides of a bundle's entry points, exactly as the run's data pipeline packs them.

Decoding is gemb.data.examples.decode_segment (the training code path: same tokenizer,
truncation, padding, image resize, audio resampling, video frame sampling); the task
instruction is a leading text segment, as ExampleLoader puts it on training queries;
packing is gemb.batch.pack_side padded to the entry point's fixed slots.
"""

import numpy as np

from gemb.batch import MODALITIES, pack_side
from gemb.data.examples import InputShapes, decode_segment, instructed
from gemb.data.media import MediaError
from gemb.serving import inputs
from gemb.serving.bundle import INTERLEAVED, SINGLE_ENTRY_POINTS


class Preprocessor:
  """Turns items into (entry point name, side without batch dim)."""

  def __init__(self, spec, tokenizer, slots_by_entry):
    """spec: the bundle's preprocess.json; slots_by_entry: {entry point: {modality: n}}."""
    self.shapes = InputShapes(**spec["shapes"])
    self.tokenizer, self.tasks = tokenizer, spec["tasks"]
    self.use_instructions = spec["instructions"]
    self.order = [e for e in SINGLE_ENTRY_POINTS + (INTERLEAVED,) if e in slots_by_entry]
    self.slots = slots_by_entry
    self.slot_shapes = self.shapes.slot_shapes()
    self._instruction_ids = {}

  def instruction(self, task):
    """Token ids of ``task``'s instruction, or None (no task, or a run without them)."""
    if task is None:
      return None
    if not isinstance(task, str) or task not in self.tasks:
      raise inputs.InputError(f"unknown task {task!r}; known: {sorted(self.tasks)}")
    text = self.tasks[task]["instruction"]
    # A pretrained backbone's own prompts apply whatever the run's data.instructions.
    if not ((self.use_instructions or self.tasks[task].get("prompt")) and text):
      return None
    if task not in self._instruction_ids:
      self._instruction_ids[task] = self.tokenizer.encode([text], self.shapes.text_len)[0]
    return self._instruction_ids[task]

  def __call__(self, item, task=None, where="input"):
    """-> (entry point, side); raises InputError naming ``where`` and the bad field."""
    instruction = self.instruction(task)
    segments = inputs.segments(item, where)
    text = self.tasks[task]["instruction"] if instruction is not None else None
    try:
      instruction, joined = instructed([(m, v) for m, v, _ in segments], text, instruction,
                                       self.tokenizer)
    except MediaError as e:
      raise inputs.InputError(f"{where}: {e}") from e
    segments = [(m, v, rate) for (m, v), (_, _, rate) in zip(joined, segments)]
    decoded = [] if instruction is None else [("text", instruction)]
    for i, (modality, value, rate) in enumerate(segments):
      field = f"{where}[{i}].{modality}" if isinstance(item, (list, tuple)) else \
          f"{where}.{modality}"
      try:
        decoded.append((modality, decode_segment(modality, value, self.shapes, self.tokenizer,
                                                 source_rate=rate)))
      except MediaError as e:
        raise inputs.InputError(f"{field}: {e}") from e
    counts = {m: sum(mod == m for mod, _ in decoded) for m in MODALITIES}
    for entry in self.order:
      if all(n <= self.slots[entry].get(m, 0) for m, n in counts.items()):
        return entry, pack_side(decoded, self.slots[entry], self.slot_shapes)
    used = {m: n for m, n in counts.items() if n}
    raise inputs.InputError(
        f"{where}: {used} segments (with the task instruction) do not fit the bundle's "
        f"entry points; the most are {self.slots[INTERLEAVED]} (re-export with --slots)")


def stack_sides(sides, size=None):
  """Sides of one entry point -> a batch; ``size`` pads it by repeating the first side
  (a bounded set of batch sizes keeps the number of compilations small)."""
  size = size or len(sides)
  rows = list(sides) + [sides[0]] * (size - len(sides))
  return {k: np.stack([s[k] for s in rows]) for k in sides[0]}
