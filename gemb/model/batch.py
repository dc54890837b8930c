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

TEXT, IMAGE, AUDIO, VIDEO = 0, 1, 2, 3
MODALITIES = ("text", "image", "audio", "video")
NO_SEGMENT = -1
PAD_ID = 0

SIDES = ("query", "candidate", "negatives")
ID_KEYS = {"query": "query_id", "candidate": "candidate_id", "negatives": "negative_id"}


def batch_size(side):
  """Number of examples in a side (the leading dim of its layout)."""
  return side["layout"].shape[0]


def flatten_negatives(side):
  """[B, K, ...] hard-negative side -> [B*K, ...] side the model can embed."""
  return {k: v.reshape((-1,) + v.shape[2:]) for k, v in side.items()}
