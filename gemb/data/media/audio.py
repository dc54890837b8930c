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


def decode_audio(value, *, source_rate=None, max_seconds=None):
  """Raw audio value -> (mono float32 [N], its sample rate), N > 0, all samples finite.

  value: encoded bytes (WAV, OGG/Vorbis, FLAC: whatever libsndfile reads; the header gives
  the rate and source_rate is ignored), or a float array [N] or [N, channels] (soundfile's
  frames-by-channels layout) sampled at source_rate. Channels are averaged to mono.
  max_seconds: longer clips raise MediaError, checked before decoding the samples so an
  over-long file costs no decoding work.
  """
  if isinstance(value, (bytes, bytearray, memoryview)):
    if not len(value):
      raise MediaError("empty audio bytes")
    try:
      with soundfile.SoundFile(io.BytesIO(bytes(value))) as f:
        rate, frames = f.samplerate, f.frames
        _check_duration(frames, rate, max_seconds)
        samples = f.read(dtype="float32", always_2d=True)
    except (RuntimeError, TypeError) as e:  # soundfile.LibsndfileError is a RuntimeError
      raise MediaError(f"cannot decode audio: {e}") from e
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
    rate = int(source_rate)
    if rate <= 0:
      raise MediaError(f"source_rate must be positive, got {source_rate}")
    _check_duration(len(samples), rate, max_seconds)
  if samples.shape[0] == 0 or samples.shape[1] == 0:
    raise MediaError("audio has no samples")
  mono = samples.astype(np.float32).mean(axis=1, dtype=np.float32)
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
