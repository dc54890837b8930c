"""Hostile bytes into the media decoders: seeded random mutations of valid files of every
format the decoders read must either decode or raise MediaError (the bad-record error the
pipeline skips and the server answers with a 400), never another exception type."""

import io

import av
import numpy as np
import pytest
import soundfile
from PIL import Image

from gemb.data.media import MediaError
from gemb.data.media.audio import load_audio
from gemb.data.media.image import load_image
from gemb.data.media.video import load_video

MUTATIONS = 300


def _image(fmt):
  rng = np.random.default_rng(1)
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (12, 10, 3), np.uint8)).save(out, fmt)
  return out.getvalue()


def _audio(fmt, subtype):
  t = np.arange(1600) / 8000
  out = io.BytesIO()
  soundfile.write(out, (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 8000,
                  format=fmt, subtype=subtype)
  return out.getvalue()


def _video(fmt, codec):
  out = io.BytesIO()
  with av.open(out, "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=10)
    stream.height = stream.width = 16
    stream.pix_fmt = "yuv420p"
    for k in range(4):
      frame = np.full((16, 16, 3), 50 * k, np.uint8)
      container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
    container.mux(stream.encode())
  return out.getvalue()


FORMATS = {
    "png": (lambda: _image("PNG"), lambda v: load_image(v, 8)),
    "jpeg": (lambda: _image("JPEG"), lambda v: load_image(v, 8)),
    "ppm": (lambda: _image("PPM"), lambda v: load_image(v, 8)),
    "gif": (lambda: _image("GIF"), lambda v: load_image(v, 8)),
    "bmp": (lambda: _image("BMP"), lambda v: load_image(v, 8)),
    "webp": (lambda: _image("WEBP"), lambda v: load_image(v, 8)),
    "tiff": (lambda: _image("TIFF"), lambda v: load_image(v, 8)),
    "wav": (lambda: _audio("WAV", "PCM_16"), lambda v: load_audio(v, sample_rate=8000,
                                                                   num_samples=800)),
    "ogg": (lambda: _audio("OGG", "VORBIS"), lambda v: load_audio(v, sample_rate=8000,
                                                                   num_samples=800)),
    "flac": (lambda: _audio("FLAC", "PCM_16"), lambda v: load_audio(v, sample_rate=8000,
                                                                     num_samples=800)),
    "mp4": (lambda: _video("mp4", "libx264"), lambda v: load_video(v, frames=2, size=8)),
    "webm": (lambda: _video("webm", "libvpx"), lambda v: load_video(v, frames=2, size=8)),
}


def mutate(data, rng):
  """One of: flipped bytes, a truncation, inserted / overwritten / duplicated spans, or
  header bytes set to extremes (sizes and counts live there)."""
  b = bytearray(data)
  kind = rng.integers(6)
  if kind == 0:
    for i in rng.integers(0, len(b), rng.integers(1, 9)):
      b[i] ^= 1 << int(rng.integers(8))
  elif kind == 1:
    del b[rng.integers(0, len(b)):]
  elif kind == 2:
    i = rng.integers(0, len(b))
    b[i:i] = rng.integers(0, 256, rng.integers(1, 64), np.uint8).tobytes()
  elif kind == 3:
    i = rng.integers(0, len(b))
    span = rng.integers(0, 256, rng.integers(1, 32), np.uint8).tobytes()
    b[i:i + len(span)] = span
  elif kind == 4:
    i, j = sorted(rng.integers(0, len(b), 2))
    b[j:j] = b[i:j]
  else:
    for i in rng.integers(0, min(len(b), 64), rng.integers(1, 5)):
      b[i] = int(rng.choice([0x00, 0x7f, 0x80, 0xff]))
  return bytes(b)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_only_media_errors_escape(fmt):
  make, decode = FORMATS[fmt]
  data = make()
  decode(data)  # the unmutated file decodes
  rng = np.random.default_rng(sum(map(ord, fmt)))
  escaped, refused = [], 0
  for k in range(MUTATIONS):
    mutated = mutate(data, rng)
    try:
      decode(mutated)
    except MediaError as e:
      refused += 1
      if "object at 0x" in str(e):  # no reprs of server objects
        escaped.append(f"mutation {k}: a message with a repr: {e}")
    except Exception as e:  # noqa: BLE001 - what the test looks for
      escaped.append(f"mutation {k}: {type(e).__name__}: {e}")
  assert not escaped, f"{len(escaped)} of {MUTATIONS} escaped: " + "; ".join(escaped[:5])
  assert refused > 0  # the mutations do break files


def test_formats_outside_the_allow_list_are_refused():
  out = io.BytesIO()
  Image.new("RGB", (8, 8)).save(out, "TGA")  # Pillow reads TGA, gemb does not
  with pytest.raises(MediaError, match="cannot decode image: not one of PNG, JPEG"):
    load_image(out.getvalue(), 8)
  with pytest.raises(MediaError, match="cannot decode audio: not a WAV, FLAC"):
    load_audio(b"MThd" + bytes(100), sample_rate=8000, num_samples=80)


@pytest.mark.parametrize("decode,value", [
    (lambda v: load_image(v, 8), np.zeros((0, 5, 3), np.uint8)),
    (lambda v: load_image(v, 8), np.zeros((4, 4, 3), np.float32)),
    (lambda v: load_video(v, frames=2, size=8), {"a": 1}),
    (lambda v: load_video(v, frames=2, size=8), [None, 3]),
    (lambda v: load_video(v, frames=2, size=8), np.zeros((2, 0, 4, 3), np.uint8)),
    (lambda v: load_audio(v, sample_rate=8000, num_samples=8, source_rate="8000"),
     np.zeros(10, np.float32)),
    (lambda v: load_audio(v, sample_rate=8000, num_samples=8, source_rate=10 ** 30),
     np.zeros(10, np.float32)),
    (lambda v: load_audio(v, sample_rate=8000, num_samples=8, source_rate=8000),
     np.zeros((2, 2, 2), np.float32)),
])
def test_odd_python_values_are_media_errors(decode, value):
  with pytest.raises(MediaError):
    decode(value)
