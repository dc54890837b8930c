"""Videos: frame sequences or encoded video bytes -> float32 [frames, size, size, 3] in [-1, 1].

A clip is sampled to a fixed number of frames, uniformly over its length: frame i of the
output is input frame floor((i + 0.5) * n / frames), the middle of the i-th of `frames` equal
stretches of the clip, so a clip shorter than `frames` repeats frames and a longer one
skips them. Each sampled frame goes through gemb.data.media.image.load_image (short side
resized to `size`, center crop), so a frame is treated exactly like a still image.

Accepted values:
  * a sequence of frames, each PNG / JPEG bytes or a uint8 [H, W, 3|4] array (a list, a
    numpy object array of bytes as tfds returns undecoded Sequence(Image) fields, or one
    uint8 [n, H, W, 3] array). Only the sampled frames are decoded.
  * encoded video bytes (mp4, webm, ... anything FFmpeg demuxes), decoded with PyAV; the
    first video stream is used.
"""

import io

import av
import numpy as np

from gemb.data.media import MediaError
from gemb.data.media.image import load_image

# A clip longer than this is not a short retrieval clip: decoding it would stall a CPU
# worker (and an mp4 of this many frames is usually a whole film handed in by mistake).
MAX_FRAMES = 2000


def sample_indices(n, frames):
  """Indices of the `frames` input frames sampled from a clip of n frames (see module doc)."""
  if n <= 0 or frames <= 0:
    raise ValueError(f"need n > 0 and frames > 0, got n={n}, frames={frames}")
  return [(2 * i + 1) * n // (2 * frames) for i in range(frames)]


def _frame_array(value, index, size):
  try:
    return load_image(value, size)
  except MediaError as e:
    raise MediaError(f"video frame {index}: {e}") from e


def _load_frames(frames_in, frames, size, max_frames):
  n = len(frames_in)
  if n == 0:
    raise MediaError("video has no frames")
  if n > max_frames:
    raise MediaError(f"video of {n} frames exceeds max_frames={max_frames}")
  decoded = {}  # A short clip repeats frames: decode each one once.
  out = []
  for i in sample_indices(n, frames):
    if i not in decoded:
      decoded[i] = _frame_array(frames_in[i], i, size)
    out.append(decoded[i])
  return np.stack(out)


def _decode_stream(data, frames, max_frames, indices=None):
  """Decodes the first video stream of data; returns (frame count, {index: uint8 [H, W, 3]}).

  Keeps only the frames in `indices` (default: the sampling implied by the stream's declared
  frame count), so memory stays at a few frames whatever the clip's length and resolution.
  """
  picked, count = {}, 0
  with av.open(io.BytesIO(data)) as container:
    if not container.streams.video:
      raise MediaError("encoded video has no video stream")
    stream = container.streams.video[0]
    if stream.frames > max_frames:  # Refuse before decoding anything.
      raise MediaError(f"video of {stream.frames} frames exceeds max_frames={max_frames}")
    if indices is None:
      indices = sample_indices(stream.frames, frames) if stream.frames > 0 else ()
    wanted = set(indices)
    for frame in container.decode(stream):
      if count == max_frames:
        raise MediaError(f"video of more than {max_frames} frames exceeds max_frames")
      if count in wanted:
        picked[count] = frame.to_ndarray(format="rgb24")
      count += 1
  return count, picked


def _load_encoded(data, frames, size, max_frames):
  if not len(data):
    raise MediaError("empty video bytes")
  data = bytes(data)
  try:
    # The declared frame count is usually right, so one pass suffices; when it is unknown or
    # wrong, the first pass has counted the frames and a second keeps the right ones.
    n, picked = _decode_stream(data, frames, max_frames)
    if n == 0:
      raise MediaError("encoded video decodes to no frames")
    indices = sample_indices(n, frames)
    if not picked.keys() >= set(indices):
      _, picked = _decode_stream(data, frames, max_frames, indices)
  except av.FFmpegError as e:
    raise MediaError(f"cannot decode video: {e}") from e
  decoded = {i: _frame_array(picked[i], i, size) for i in set(indices)}
  return np.stack([decoded[i] for i in indices])


def load_video(value, *, frames, size, max_frames=MAX_FRAMES):
  """Raw video value -> float32 [frames, size, size, 3] scaled to [-1, 1].

  Raises MediaError for an empty clip, an undecodable frame or video, or a clip of more than
  max_frames frames.
  """
  if isinstance(value, (bytes, bytearray, memoryview)):
    return _load_encoded(value, frames, size, max_frames)
  if isinstance(value, str):
    raise MediaError("expected encoded video bytes or a sequence of frames, got a str")
  if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim != 4:
    raise MediaError(f"expected a uint8 [n, H, W, 3] array of frames, got shape {value.shape}")
  try:
    len(value)
  except TypeError:
    raise MediaError("expected encoded video bytes or a sequence of frames, got "
                     f"{type(value).__name__}") from None
  return _load_frames(value, frames, size, max_frames)
