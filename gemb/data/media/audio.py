"""Audio: WAV / OGG bytes or float arrays -> mono float32 [num_samples] at one sample rate.

Decoding goes through soundfile (libsndfile: WAV, FLAC, OGG/Vorbis, ...), resampling through
scipy's polyphase filter with the exact rational factor of the two rates, so 22,050 Hz
speech and 48 kHz recordings reach the model's rate without drift.
"""

import io
import math

import numpy as np
import scipy.signal
import soundfile

from gemb.data.media import MediaError


# Containers accepted in encoded audio, by their leading bytes: the formats the datasets and
# users send. Everything else libsndfile could parse (20-odd rare formats) is refused
# before any parser sees the bytes: less hostile-input surface on a server.
_CONTAINERS = {"WAV", "WAVEX", "RF64", "FLAC", "OGG", "MP3", "AIFF"}
_BLOCK_FRAMES = 1 << 16
# The highest sample rate recorders use; a header (or a caller) claiming more is corrupt.
MAX_RATE = 768_000


def audio_container(data):
  """The container of encoded audio bytes from their magic, or None if not accepted."""
  head = bytes(data[:12])
  if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
    return "WAV"
  if head[:4] == b"RF64":
    return "RF64"
  if head[:4] == b"fLaC":
    return "FLAC"
  if head[:4] == b"OggS":
    return "OGG"
  if head[:4] == b"FORM" and head[8:12] in (b"AIFF", b"AIFC"):
    return "AIFF"
  if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
    return "MP3"
  return None


def _decode_bytes(data, max_seconds):
  if audio_container(data) is None:
    raise MediaError("cannot decode audio: not a WAV, FLAC, OGG, MP3 or AIFF file")
  try:
    with soundfile.SoundFile(io.BytesIO(data)) as f:
      if f.format not in _CONTAINERS:
        raise MediaError(f"cannot decode audio: a {f.format} file (accepted: "
                         f"{sorted(_CONTAINERS)})")
      rate, frames = f.samplerate, f.frames
      if not 0 < rate <= MAX_RATE or f.channels <= 0:
        raise MediaError(f"cannot decode audio: {rate} Hz, {f.channels} channels")
      _check_duration(frames, rate, max_seconds)
      # Block by block to mono: memory stays at the mono clip whatever the channel count.
      blocks, read = [], 0
      while (chunk := f.read(_BLOCK_FRAMES, dtype="float32", always_2d=True)).size:
        blocks.append(chunk.mean(axis=1, dtype=np.float32))
        read += len(chunk)
        _check_duration(read, rate, max_seconds)  # a header may under-declare its frames
  except MediaError:
    raise
  except soundfile.LibsndfileError as e:
    # str(e) names our in-memory buffer; libsndfile's own reason is the useful part.
    raise MediaError(f"cannot decode audio: {e.error_string}") from None
  # soundfile raises TypeError, ValueError, ... on hostile headers: all are bad records.
  except Exception as e:  # noqa: BLE001
    raise MediaError(f"cannot decode audio: {type(e).__name__}: {e}") from None
  mono = np.concatenate(blocks) if blocks else np.zeros(0, np.float32)
  return mono, rate


def decode_audio(value, *, source_rate=None, max_seconds=None):
  """Raw audio value -> (mono float32 [N], its sample rate), N > 0, all samples finite.

  value: encoded bytes (WAV, FLAC, OGG/Vorbis, MP3, AIFF by their leading bytes, read by
  libsndfile from memory; the header gives the rate and source_rate is ignored), or a float
  array [N] or [N, channels] (soundfile's frames-by-channels layout) sampled at source_rate.
  Channels are averaged to mono. max_seconds: longer clips raise MediaError, checked
  before decoding the samples so an over-long file costs no decoding work.
  """
  if isinstance(value, (bytes, bytearray, memoryview)):
    if not len(value):
      raise MediaError("empty audio bytes")
    mono, rate = _decode_bytes(bytes(value), max_seconds)
  else:
    if source_rate is None:
      raise MediaError("an audio array needs its source_rate")
    samples = np.asarray(value)
    if not np.issubdtype(samples.dtype, np.floating):
      raise MediaError(f"expected audio bytes or a float array, got {samples.dtype} "
                       f"{samples.shape}")
    if samples.ndim == 1:
      samples = samples[:, None]
    if samples.ndim != 2:
      raise MediaError(f"expected an audio array [N] or [N, channels], got {samples.shape}")
    if isinstance(source_rate, bool) or not isinstance(source_rate, (int, np.integer)) \
        or not 0 < source_rate <= MAX_RATE:
      raise MediaError(f"source_rate must be an integer in [1, {MAX_RATE}], got "
                       f"{source_rate!r}")
    rate = int(source_rate)
    _check_duration(len(samples), rate, max_seconds)
    if samples.shape[1] == 0:
      raise MediaError("audio has no samples")
    mono = samples.astype(np.float32).mean(axis=1, dtype=np.float32)
  if mono.shape[0] == 0:
    raise MediaError("audio has no samples")
  if not np.isfinite(mono).all():
    raise MediaError(f"audio has {np.count_nonzero(~np.isfinite(mono))} non-finite samples")
  return mono, rate


def _check_duration(frames, rate, max_seconds):
  if max_seconds is not None and frames > max_seconds * rate:
    raise MediaError(f"audio of {frames / rate:.2f} s exceeds max_seconds={max_seconds}")


def resample(samples, source_rate, target_rate, num_samples=None):
  """Resamples mono float samples; returns float32 [ceil(N * target / source)].

  The factor target/source is reduced by their gcd (22,050 -> 16,000 is 320/441) and applied
  with scipy.signal.resample_poly's default Kaiser-windowed low-pass, which also removes
  content above the new Nyquist frequency. num_samples: only the first num_samples outputs are
  needed, so the input is cut to what they depend on first (outputs are unchanged, a long
  clip costs only what is kept).
  """
  source_rate, target_rate = int(source_rate), int(target_rate)
  g = math.gcd(source_rate, target_rate)
  up, down = target_rate // g, source_rate // g
  samples = np.asarray(samples, np.float32)
  full_length = -(-len(samples) * up // down)
  if up == down:
    out = samples
  else:
    if num_samples is not None:
      # resample_poly's filter has 10 * max(up, down) taps on each side at the upsampled
      # rate, i.e. it reads at most 10 * max(up, down) / up + 1 inputs past an output.
      reach = 10 * max(up, down) // up + 2
      samples = samples[:-(-num_samples * down // up) + reach]
    out = scipy.signal.resample_poly(samples, up, down).astype(np.float32)
  return out[:full_length if num_samples is None else min(num_samples, full_length)]


def load_audio(value, *, sample_rate, num_samples, max_seconds=60.0, source_rate=None):
  """Raw audio value -> (float32 [num_samples] mono waveform at sample_rate, valid_length).

  The clip keeps its start: longer clips are cut to num_samples, shorter ones zero-padded;
  valid_length (<= num_samples) counts the real samples, so the model can mask the padding.
  Raises MediaError for empty or undecodable bytes, zero-length or non-finite audio, and
  clips longer than max_seconds (before resampling).
  """
  if sample_rate <= 0 or num_samples <= 0:
    raise ValueError(f"sample_rate and num_samples must be positive, got {sample_rate}, "
                     f"{num_samples}")
  mono, rate = decode_audio(value, source_rate=source_rate, max_seconds=max_seconds)
  samples = resample(mono, rate, sample_rate, num_samples)
  out = np.zeros(num_samples, np.float32)
  out[:len(samples)] = samples
  return out, len(samples)
