"""Images: encoded bytes, PIL images or uint8 arrays -> float32 [size, size, 3] in [-1, 1]."""

import io

import numpy as np
from PIL import Image

from gemb.data.media import MediaError

# Pillow refuses images above ~179 Mpixel as decompression bombs; we refuse far earlier:
# anything this large is not a picture a retrieval model should resize on a CPU worker.
# Callers facing untrusted bytes (gemb.serve) pass a much smaller max_pixels.
MAX_PIXELS = 64_000_000
# The formats decoded: what datasets and users send. Pillow would otherwise try every plugin
# it has on untrusted bytes, some rarely exercised, and EPS runs Ghostscript.
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "PPM", "WEBP", "TIFF")


def open_image(value):
  """Encoded image bytes -> a lazy PIL image: only the header is parsed (size and mode are
  known, no pixel is decoded), so a pixel limit can be checked before paying for them."""
  if not len(value):
    raise MediaError("empty image bytes")
  try:
    return Image.open(io.BytesIO(value), formats=FORMATS)
  except Image.UnidentifiedImageError:
    # Pillow's own message holds the repr of our buffer: say what the bytes are not.
    raise MediaError(f"cannot decode image: not one of {', '.join(FORMATS)}") from None
  except Exception as e:  # noqa: BLE001 - header parsers raise many types on hostile bytes
    raise MediaError(f"cannot decode image: {type(e).__name__}: {e}") from None


def image_pixels(value):
  """Pixel count of an image value (bytes: from the header alone; PIL images, arrays: H * W)."""
  if isinstance(value, (bytes, bytearray, memoryview)):
    image = open_image(value)
    return image.width * image.height
  if isinstance(value, Image.Image):
    return value.width * value.height
  shape = np.shape(value)
  return int(shape[0]) * int(shape[1]) if len(shape) >= 2 else 0


def to_pil(value, max_pixels=None):
  """PNG / JPEG / ... bytes, a PIL image or a uint8 [H, W, 3|4] array -> RGB PIL image.

  Bytes of more than max_pixels pixels raise MediaError before any pixel is decoded. A PIL
  image (what Hugging Face datasets decode image columns to) is treated exactly as the bytes
  it was decoded from, so both give the same pixels. max_pixels: None = MAX_PIXELS.
  """
  max_pixels = MAX_PIXELS if max_pixels is None else max_pixels
  if isinstance(value, (bytes, bytearray, memoryview)):
    image = open_image(value)
    _check_pixels(image, max_pixels)
    try:
      image.load()
    # Pillow's decoders raise OSError, ValueError, SyntaxError, struct.error, ... on corrupt
    # data (the fuzz test finds them): all are bad records.
    except Exception as e:  # noqa: BLE001
      raise MediaError(f"cannot decode image: {type(e).__name__}: {e}") from None
    return _flatten(image)
  if isinstance(value, Image.Image):
    _check_pixels(value, max_pixels)
    return _flatten(value)
  array = np.asarray(value)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] not in (3, 4) \
      or not array.shape[0] or not array.shape[1]:
    raise MediaError(f"expected image bytes, a PIL image or a non-empty uint8 [H, W, 3] "
                     f"array, got {array.dtype} {array.shape}")
  return Image.fromarray(array).convert("RGB")


def _check_pixels(image, max_pixels):
  if not image.width or not image.height:
    raise MediaError(f"image of {image.width}x{image.height} pixels is empty")
  if image.width * image.height > max_pixels:
    raise MediaError(f"image of {image.width}x{image.height} pixels exceeds {max_pixels} "
                     "pixels")


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


def load_image(value, size, max_pixels=None):
  """Raw image value -> float32 [size, size, 3] scaled to [-1, 1]."""
  image = resize_center_crop(to_pil(value, max_pixels), size)
  return np.asarray(image, np.float32) / 127.5 - 1.0
