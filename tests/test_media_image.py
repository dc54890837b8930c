"""gemb.data.media.image: encoded bytes and the PIL images decoded from them load alike."""

import io

import numpy as np
import pytest
from PIL import Image

from gemb.data.media import MediaError
from gemb.data.media.image import load_image, to_pil


def _png(image):
  out = io.BytesIO()
  image.save(out, "PNG")
  return out.getvalue()


def _decoded(data):
  image = Image.open(io.BytesIO(data))
  image.load()
  return image


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "LA", "P", "L"])
def test_pil_image_loads_as_the_bytes_it_was_decoded_from(mode):
  rng = np.random.default_rng(0)
  rgba = Image.fromarray(rng.integers(0, 256, (20, 30, 4), np.uint8), "RGBA")
  data = _png(rgba.convert(mode) if mode != "P" else rgba.convert("P"))
  np.testing.assert_array_equal(load_image(_decoded(data), 16), load_image(data, 16))


def test_transparent_pixels_become_white():
  rng = np.random.default_rng(1)
  pixels = rng.integers(0, 256, (8, 8, 4), np.uint8)
  got = np.asarray(to_pil(_decoded(_png(Image.fromarray(pixels, "RGBA")))), np.float64)
  alpha = pixels[..., 3:] / 255.0
  expected = pixels[..., :3] * alpha + 255.0 * (1.0 - alpha)  # "over" a white background
  np.testing.assert_allclose(got, expected, atol=1.0)  # Pillow rounds in 8 bits


def test_oversized_pil_image_is_refused(monkeypatch):
  from gemb.data.media import image as image_module
  monkeypatch.setattr(image_module, "MAX_PIXELS", 100)
  with pytest.raises(MediaError, match="exceeds 100"):
    to_pil(Image.new("RGB", (20, 20)))
