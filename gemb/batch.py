"""The batch format: how interleaved multimodal examples travel as fixed-shape arrays.

An *example* (a query, a candidate document or a hard negative) is an ordered list of
*segments*, each of one modality: ``[image, text]``, ``[text, image, text, audio]``, ...
A batch of examples of one kind is a *side*: a dict of arrays with a leading batch dim B.

    side = {
      "layout": int32 [B, S]            modality id of each segment in example order
                                        (TEXT=0, IMAGE=1, AUDIO=2, VIDEO=3; -1 = no segment),
      "text":   int32 [B, St, Lt]       sentencepiece ids, 0 = padding (pad_id of the tokenizer),
      "image":  float32 [B, Si, H, W, 3]        pixels scaled to [-1, 1],
      "audio":  float32 [B, Sa, N]              mono waveform at the model's sample rate,
      "audio_length": int32 [B, Sa]             (optional) valid samples per audio slot,
      "video":  float32 [B, Sv, T, H, W, 3]     frames scaled to [-1, 1],
    }

Only the modalities a task uses are present. Each modality has ``S_m`` *slots*; the j-th
segment of modality m in an example's layout (counting from the left) is slot j of that
modality's array. Slots an example does not reference are ignored, as are text pad ids and
audio samples past ``audio_length``, so extra padding of any kind never changes an
embedding. The model gives every valid token a sequence position that follows the layout
(segment by segment, counting only valid tokens) and reorders tokens into that order, so
swapping two segments changes the embedding.

A training batch joins the sides of one contrastive task:

    batch = {
      "query": side [B, ...], "candidate": side [B, ...],
      "negatives": side [B, K, ...]   (optional) K hard negatives per query,
      "query_id": int32 [B], "candidate_id": int32 [B], "negative_id": int32 [B, K]:
          ids of the underlying items; equal ids mean identical targets (false negatives).
    }

Shapes are static per task, so each task compiles once (padding happens in the data
pipeline, never under jit).
"""

import numpy as np

TEXT, IMAGE, AUDIO, VIDEO = 0, 1, 2, 3
MODALITIES = ("text", "image", "audio", "video")
NO_SEGMENT = -1
PAD_ID = 0

SIDES = ("query", "candidate", "negatives")


def flatten_negatives(side):
  """[B, K, ...] hard-negative side -> [B*K, ...] side the model can embed."""
  return {k: v.reshape((-1,) + v.shape[2:]) for k, v in side.items()}


def pack_side(segments, slots=None, slot_shapes=None):
  """One example's ordered, decoded segments -> its side arrays (no batch dim).

  segments: [(modality, value)] in example order; value is the slot array of its modality
  (text ids [Lt], image [H, W, 3], ...), audio a (waveform [N], valid length) pair.
  slots: None packs exactly these segments (a training example of a task: modalities without
  segments are absent). A {modality: count} dict pads to fixed slot counts instead (a
  serving entry point): unused slots are zeros (length 0 for audio), ``layout`` has
  sum(counts) entries, NO_SEGMENT after the segments; slot_shapes {modality: shape} gives
  the shape of a slot no segment fills.
  """
  values, lengths = {m: [] for m in MODALITIES}, []
  layout = []
  for modality, value in segments:
    if modality == "audio":
      value, length = value
      lengths.append(length)
    values[modality].append(value)
    layout.append(MODALITIES.index(modality))
  if slots is None:
    slots, size = {m: len(v) for m, v in values.items()}, len(layout)
  else:
    over = {m: len(v) for m, v in values.items() if len(v) > slots.get(m, 0)}
    if over:
      raise ValueError(f"an example with {over} segments does not fit slots {slots}")
    size = sum(slots.values())
  side = {"layout": np.full(size, NO_SEGMENT, np.int32)}
  side["layout"][:len(layout)] = layout
  for m in MODALITIES:
    if slots.get(m, 0):
      dtype = np.int32 if m == "text" else np.float32
      missing = slots[m] - len(values[m])
      padding = [np.zeros(slot_shapes[m], dtype)] * missing if missing else []
      side[m] = np.stack([np.asarray(v, dtype) for v in values[m]] + padding)
  if slots.get("audio", 0):
    side["audio_length"] = np.asarray(lengths + [0] * (slots["audio"] - len(lengths)), np.int32)
  return side
