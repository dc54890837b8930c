"""Items -> packed sides of a bundle's entry points, exactly as the run's data pipeline packs them.

Decoding is gemb.data.examples.decode_segment (the training code path: same tokenizer,
truncation, padding, image resize, audio resampling, video frame sampling); the task
instruction is a leading text segment, as ExampleLoader puts it on training queries;
packing is gemb.batch.pack_side padded to the entry point's fixed slots.

A ``PixelBudget`` (gemb.serve makes one per request) bounds the pixels decoded: each image
and video frame is measured from its header before a pixel of it is decoded.
"""

import numpy as np

from gemb.batch import MODALITIES, pack_side
from gemb.data.examples import InputShapes, decode_segment, instructed
from gemb.data.media import MediaError
from gemb.data.media.image import MAX_PIXELS, image_pixels
from gemb.data.media.video import sample_indices, video_frame_pixels
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

  def frame_pixels(self, modality, value):
    """Pixels of each image / video frame that decoding ``value`` materializes, read from
    headers only; [] where there are none (text, audio) or the value is not measurable (its
    decoding then reports what is wrong)."""
    if modality == "image":
      return [image_pixels(value)]
    if modality != "video":
      return []
    if isinstance(value, (bytes, bytearray, memoryview)):
      return [video_frame_pixels(value)] * self.shapes.video_frames
    if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim == 4:
      return [value.shape[1] * value.shape[2]] * self.shapes.video_frames
    if not isinstance(value, (list, tuple, np.ndarray)) or not len(value):
      return []
    # Frame lists: only the sampled frames are decoded, each once.
    return [image_pixels(value[k]) for k in sorted(set(sample_indices(
        len(value), self.shapes.video_frames)))]

  def __call__(self, item, task=None, where="input", budget=None):
    """-> (entry point, side); raises InputError naming ``where`` and the bad field
    (LimitError when ``budget``, a PixelBudget, is exceeded)."""
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
        if budget is not None:
          budget.spend(self.frame_pixels(modality, value), field)
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


class PixelBudget:
  """The decoded pixels one request may use: ``per_image`` for each image or video frame,
  ``per_request`` in all (CPU time and memory grow with pixels, not with encoded bytes: a
  356 KB PNG can hold 64 Mpixel)."""

  def __init__(self, per_image, per_request):
    self.per_image, self.per_request, self.left = per_image, per_request, per_request

  @classmethod
  def for_shapes(cls, shapes, per_image=None, per_request=None):
    """Defaults sized to the model: an image of up to 64x its input side (4096 x 4096 for
    the default run's 64-pixel images; media.image.MAX_PIXELS at most) is worth resizing,
    and a request may decode 16 of those."""
    per_image = per_image or min(MAX_PIXELS, (64 * max(shapes.image_size, shapes.video_size))
                                 ** 2)
    return cls(per_image, per_request or 16 * per_image)

  def spend(self, pixels, where):
    """Charges the frames of one segment; LimitError before any is decoded if over."""
    for n in pixels:
      if n > self.per_image:
        raise inputs.LimitError(f"{where}: an image of {n} pixels exceeds the limit of "
                                f"{self.per_image} pixels per image (--max_image_pixels)")
    if sum(pixels) > self.left:
      raise inputs.LimitError(f"{where}: the request's images exceed the limit of "
                              f"{self.per_request} decoded pixels per request "
                              "(--max_request_pixels)")
    self.left -= sum(pixels)


def stack_sides(sides, size=None):
  """Sides of one entry point -> a batch; ``size`` pads it by repeating the first side
  (a bounded set of batch sizes keeps the number of compilations small)."""
  size = size or len(sides)
  rows = list(sides) + [sides[0]] * (size - len(sides))
  return {k: np.stack([s[k] for s in rows]) for k in sides[0]}
