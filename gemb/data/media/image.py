"""Images: encoded bytes, PIL images or uint8 arrays -> float32 [size, size, 3] in [-1, 1]."""

import io

import numpy as np
from PIL import Image

from gemb.data.media import MediaError

# Pillow refuses images above ~179 Mpixel as decompression bombs; we refuse far earlier:
# anything this large is not a picture a retrieval model should resize on a CPU worker.
MAX_PIXELS = 64_000_000


def to_pil(value):
  """PNG / JPEG / ... bytes, a PIL image or a uint8 [H, W, 3|4] array -> RGB PIL image.

  A PIL image (what Hugging Face datasets decode image columns to) is treated exactly as
  the bytes it was decoded from, so both give the same pixels.
  """
  if isinstance(value, (bytes, bytearray, memoryview)):
    if not len(value):
      raise MediaError("empty image bytes")
    try:
      image = Image.open(io.BytesIO(value))
      _check_pixels(image)
      image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
      raise MediaError(f"cannot decode image: {e}") from e
    return _flatten(image)
  if isinstance(value, Image.Image):
    _check_pixels(value)
    return _flatten(value)
  array = np.asarray(value)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4):
    raise MediaError(f"expected image bytes, a PIL image or a uint8 [H, W, 3] array, got "
                     f"{array.dtype} {array.shape}")
  return Image.fromarray(array).convert("RGB")


def _check_pixels(image):
  if image.width * image.height > MAX_PIXELS:
    raise MediaError(f"image of {image.width}x{image.height} pixels exceeds {MAX_PIXELS}")


def _flatten(image):
  """A decoded image -> RGB; transparent areas become white, as clip art and icons are drawn
  to be seen on."""
  if image.mode in ("RGBA", "LA", "P"):
    rgba = image.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  return image.convert("RGB")


def resize_center_crop(image, size):
  """Scale the short side to ``size`` (antialiased), then crop the center square."""
  w, h = image.size
  scale = size / min(w, h)
  new = (max(size, round(w * scale)), max(size, round(h * scale)))
  if new != (w, h):
    image = image.resize(new, Image.Resampling.BILINEAR, reducing_gap=None)
  left, top = (new[0] - size) // 2, (new[1] - size) // 2
  return image.crop((left, top, left + size, top + size))


def load_image(value, size):
  """Raw image value -> float32 [size, size, 3] scaled to [-1, 1]."""
  image = resize_center_crop(to_pil(value), size)
  return np.asarray(image, np.float32) / 127.5 - 1.0
