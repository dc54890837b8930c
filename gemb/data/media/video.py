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
  * encoded video bytes in one of the containers of ``video_container`` (MP4/MOV, WebM/MKV,
    AVI, MPEG-TS, GIF), decoded with PyAV; the first video stream is used.

Encoded bytes are untrusted (gemb.serve hands them in from any client), and FFmpeg's
probing picks demuxers that read other files: a concat playlist ("ffconcat version 1.0\nfile
secret.mp4") decodes a file of the server, HLS playlists and image2 patterns name files too.
So the container is chosen here from the leading bytes among an allow-list and FFmpeg is
told to use that demuxer only (no probing), with a protocol whitelist that permits no
protocol at all (no file, no network): nothing but the given bytes is ever read, and a
refusal reads the same whatever the file system holds.
"""

import contextlib
import io

import av
import numpy as np

from gemb.data.media import MediaError
from gemb.data.media.image import MAX_PIXELS, load_image

# A clip longer than this is not a short retrieval clip: decoding it would stall a CPU
# worker (and an mp4 of this many frames is usually a whole film handed in by mistake).
MAX_FRAMES = 2000


def sample_indices(n, frames):
  """Indices of the `frames` input frames sampled from a clip of n frames (see module doc)."""
  if n <= 0 or frames <= 0:
    raise ValueError(f"need n > 0 and frames > 0, got n={n}, frames={frames}")
  return [(2 * i + 1) * n // (2 * frames) for i in range(frames)]


def _frame_array(value, index, size, max_pixels):
  try:
    return load_image(value, size, max_pixels)
  except MediaError as e:
    raise MediaError(f"video frame {index}: {e}") from e


def _load_frames(frames_in, frames, size, max_frames, max_pixels):
  n = len(frames_in)
  if n == 0:
    raise MediaError("video has no frames")
  if n > max_frames:
    raise MediaError(f"video of {n} frames exceeds max_frames={max_frames}")
  decoded = {}  # A short clip repeats frames: decode each one once.
  out = []
  for i in sample_indices(n, frames):
    if i not in decoded:
      decoded[i] = _frame_array(frames_in[i], i, size, max_pixels)
    out.append(decoded[i])
  return np.stack(out)


# FFmpeg opens nested inputs (playlist entries, segments, references) through protocols
# checked against this list; no protocol has this name, so every nested open is refused.
_NO_PROTOCOLS = {"protocol_whitelist": "none"}


def video_container(data):
  """The FFmpeg demuxer for encoded video bytes from their magic, or None if not accepted."""
  head = bytes(data[:12])
  if head[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"):
    return "mov"  # the ISO base media demuxer: mp4, mov, m4v, 3gp
  if head[:4] == b"\x1a\x45\xdf\xa3":
    return "matroska"  # matroska and webm
  if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
    return "avi"
  if head[:6] in (b"GIF87a", b"GIF89a"):
    return "gif"
  if len(data) > 188 and data[0] == 0x47 and data[188] == 0x47:
    return "mpegts"
  return None


def _open(data):
  container = video_container(data)
  if container is None:
    raise MediaError("cannot decode video: not an MP4/MOV, WebM/MKV, AVI, MPEG-TS or GIF file")
  # metadata_errors: a container's tags are arbitrary bytes, not always UTF-8.
  return av.open(io.BytesIO(data), format=container, options=_NO_PROTOCOLS,
                 metadata_errors="replace")


def _decode_stream(data, frames, max_frames, max_pixels, indices=None):
  """Decodes the first video stream of data; returns (frame count, {index: uint8 [H, W, 3]}).

  Keeps only the frames in `indices` (default: the sampling implied by the stream's declared
  frame count), so memory stays at a few frames whatever the clip's length and resolution.
  """
  picked, count = {}, 0
  with _open(data) as container:
    if not container.streams.video:
      raise MediaError("encoded video has no video stream")
    stream = container.streams.video[0]
    if stream.frames > max_frames:  # Refuse before decoding anything.
      raise MediaError(f"video of {stream.frames} frames exceeds max_frames={max_frames}")
    width, height = stream.codec_context.width, stream.codec_context.height
    if width * height > max_pixels:
      raise MediaError(f"video frames of {width}x{height} pixels exceed {max_pixels} pixels")
    if indices is None:
      indices = sample_indices(stream.frames, frames) if stream.frames > 0 else ()
    wanted = set(indices)
    for frame in container.decode(stream):
      if count == max_frames:
        raise MediaError(f"video of more than {max_frames} frames exceeds max_frames")
      if frame.width * frame.height > max_pixels:  # the header may understate the size
        raise MediaError(f"video frames of {frame.width}x{frame.height} pixels exceed "
                         f"{max_pixels} pixels")
      if count in wanted:
        picked[count] = frame.to_ndarray(format="rgb24")
      count += 1
  return count, picked


@contextlib.contextmanager
def _as_media_errors():
  """Any failure of PyAV / FFmpeg on the bytes -> MediaError with the reason alone."""
  try:
    yield
  except MediaError:
    raise
  except av.FFmpegError as e:
    # str(e) names our in-memory buffer; the reason alone says what is wrong.
    raise MediaError(f"cannot decode video: {e.strerror}") from None
  # PyAV raises ValueError, UnicodeDecodeError, ... on hostile containers: all bad records.
  except Exception as e:  # noqa: BLE001
    raise MediaError(f"cannot decode video: {type(e).__name__}: {e}") from None


def video_frame_pixels(data):
  """Pixels of one frame of encoded video bytes, from the container header alone."""
  if not len(data):
    raise MediaError("empty video bytes")
  with _as_media_errors(), _open(bytes(data)) as container:
    if not container.streams.video:
      raise MediaError("encoded video has no video stream")
    context = container.streams.video[0].codec_context
    return context.width * context.height


def _load_encoded(data, frames, size, max_frames, max_pixels):
  if not len(data):
    raise MediaError("empty video bytes")
  data = bytes(data)
  with _as_media_errors():
    # The declared frame count is usually right, so one pass suffices; when it is unknown or
    # wrong, the first pass has counted the frames and a second keeps the right ones.
    n, picked = _decode_stream(data, frames, max_frames, max_pixels)
    if n == 0:
      raise MediaError("encoded video decodes to no frames")
    indices = sample_indices(n, frames)
    if not picked.keys() >= set(indices):
      _, picked = _decode_stream(data, frames, max_frames, max_pixels, indices)
  decoded = {i: _frame_array(picked[i], i, size, max_pixels) for i in set(indices)}
  return np.stack([decoded[i] for i in indices])


def load_video(value, *, frames, size, max_frames=MAX_FRAMES, max_pixels=MAX_PIXELS):
  """Raw video value -> float32 [frames, size, size, 3] scaled to [-1, 1].

  Raises MediaError for an empty clip, an undecodable frame or video, a container outside
  the allow-list, a clip of more than max_frames frames or frames of more than max_pixels
  pixels (checked before decoding them).
  """
  if isinstance(value, (bytes, bytearray, memoryview)):
    return _load_encoded(value, frames, size, max_frames, max_pixels)
  if isinstance(value, str):
    raise MediaError("expected encoded video bytes or a sequence of frames, got a str")
  if isinstance(value, np.ndarray) and value.dtype == np.uint8 and value.ndim != 4:
    raise MediaError(f"expected a uint8 [n, H, W, 3] array of frames, got shape {value.shape}")
  if not isinstance(value, (list, tuple, np.ndarray)):
    raise MediaError("expected encoded video bytes or a sequence of frames, got "
                     f"{type(value).__name__}")
  return _load_frames(value, frames, size, max_frames, max_pixels)
