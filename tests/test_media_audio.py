"""Tests of gemb/data/media/audio.py against known signals written with soundfile."""
import io

import numpy as np
import pytest
import soundfile

from gemb.data.media import MediaError
from gemb.data.media.audio import decode_audio, load_audio, resample


def sine(freq, rate, seconds, amplitude=0.5):
  t = np.arange(round(rate * seconds)) / rate
  return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def encode(samples, rate, format="WAV", subtype="PCM_16"):
  buf = io.BytesIO()
  soundfile.write(buf, samples, rate, format=format, subtype=subtype)
  return buf.getvalue()


def peak_hz(samples, rate):
  spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
  return np.fft.rfftfreq(len(samples), 1 / rate)[np.argmax(spectrum)]


@pytest.mark.parametrize("freq", [220.0, 440.0, 3000.0, 6000.0])
def test_resampling_22050_to_16000_keeps_the_frequency(freq):
  wav = encode(sine(freq, 22050, 1.0), 22050)
  out, length = load_audio(wav, sample_rate=16000, num_samples=16000)
  assert out.dtype == np.float32 and out.shape == (16000,) and length == 16000
  # FFT bins are 1 Hz wide for one second of audio.
  assert abs(peak_hz(out, 16000) - freq) <= 1.0
  # Amplitude survives too (away from the filter's edge transients).
  assert np.max(np.abs(out[1000:-1000])) == pytest.approx(0.5, abs=0.01)


def test_resampling_removes_content_above_the_new_nyquist():
  # 10 kHz fits 22,050 Hz but not 16 kHz; without the low-pass it would alias to 6 kHz.
  out, _ = load_audio(encode(sine(10000, 22050, 1.0), 22050), sample_rate=16000,
                      num_samples=16000)
  assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 0.01


def test_int16_wav_at_the_target_rate_is_exact():
  ints = np.random.default_rng(0).integers(-32768, 32768, 800).astype(np.int16)
  out, length = load_audio(encode(ints, 16000), sample_rate=16000, num_samples=800)
  assert length == 800
  np.testing.assert_array_equal(out, ints.astype(np.float32) / 32768)


def test_float_wav_round_trips_exactly():
  samples = np.random.default_rng(1).uniform(-1, 1, 1234).astype(np.float32)
  out, length = load_audio(encode(samples, 22050, subtype="FLOAT"), sample_rate=22050,
                           num_samples=1234)
  assert length == 1234
  np.testing.assert_array_equal(out, samples)


def test_ogg_vorbis_decodes_and_resamples():
  ogg = encode(sine(440, 44100, 1.0), 44100, format="OGG", subtype="VORBIS")
  assert ogg[:4] == b"OggS"
  out, length = load_audio(ogg, sample_rate=16000, num_samples=20000)
  assert length == 16000 and not out[16000:].any()
  assert abs(peak_hz(out[:16000], 16000) - 440) <= 1.0
  reference = resample(sine(440, 44100, 1.0), 44100, 16000)
  # Vorbis is lossy: close to the clean resampled sine, not equal.
  assert np.corrcoef(out[2000:14000], reference[2000:14000])[0, 1] > 0.99


def test_stereo_is_mixed_to_mono():
  left, right = sine(300, 16000, 0.5), sine(1200, 16000, 0.5, amplitude=0.25)
  wav = encode(np.stack([left, right], axis=1), 16000, subtype="FLOAT")
  out, length = load_audio(wav, sample_rate=16000, num_samples=8000)
  assert length == 8000
  np.testing.assert_allclose(out, (left + right) / 2, atol=1e-7)
  # Arrays use the same [N, channels] layout.
  out2, _ = load_audio(np.stack([left, right], axis=1), sample_rate=16000, num_samples=8000,
                       source_rate=16000)
  np.testing.assert_array_equal(out, out2)


def test_short_clips_are_padded_and_long_ones_keep_their_start():
  wav = encode(sine(440, 22050, 0.5), 22050)  # 11,025 samples -> 8,000 at 16 kHz
  full, n = load_audio(wav, sample_rate=16000, num_samples=8000)
  assert n == 8000
  padded, n = load_audio(wav, sample_rate=16000, num_samples=12000)
  assert n == 8000
  np.testing.assert_array_equal(padded[:8000], full)
  assert not padded[8000:].any()
  cropped, n = load_audio(wav, sample_rate=16000, num_samples=3000)
  assert n == 3000
  np.testing.assert_array_equal(cropped, full[:3000])


def test_valid_length_rounds_up_like_resample_poly():
  # 1,001 samples at 22,050 Hz -> ceil(1001 * 320 / 441) = 727 samples at 16 kHz.
  _, n = load_audio(np.ones(1001, np.float32), sample_rate=16000, num_samples=1000,
                    source_rate=22050)
  assert n == 727


@pytest.mark.parametrize("rates", [(22050, 16000), (48000, 16000), (8000, 16000)])
def test_resample_of_a_cut_input_equals_the_full_resample(rates):
  source, target = rates
  samples = np.random.default_rng(2).standard_normal(source * 2).astype(np.float32)
  full = resample(samples, source, target)
  assert len(full) == 2 * target
  for n in (1, 777, target, 2 * target, 3 * target):
    np.testing.assert_array_equal(resample(samples, source, target, n), full[:n])


def test_decode_audio_returns_the_native_rate():
  mono, rate = decode_audio(encode(sine(440, 22050, 0.1), 22050))
  assert rate == 22050 and mono.shape == (2205,) and mono.dtype == np.float32


@pytest.mark.parametrize("value, reason", [
    (b"", "empty audio bytes"),
    (b"RIFF\x00\x00\x00\x00WAVEjunk" * 4, "cannot decode audio"),
    (b"definitely not audio", "cannot decode audio"),
])
def test_bad_bytes_raise(value, reason):
  with pytest.raises(MediaError, match=reason):
    load_audio(value, sample_rate=16000, num_samples=100)


def test_zero_length_audio_raises():
  with pytest.raises(MediaError, match="no samples"):
    load_audio(encode(np.zeros(0, np.float32), 16000), sample_rate=16000, num_samples=100)
  with pytest.raises(MediaError, match="no samples"):
    load_audio(np.zeros(0, np.float32), sample_rate=16000, num_samples=100, source_rate=16000)


def test_over_long_audio_raises_before_decoding():
  wav = encode(np.zeros(16000 * 3, np.float32), 16000)
  with pytest.raises(MediaError, match=r"3\.00 s exceeds max_seconds=2"):
    load_audio(wav, sample_rate=16000, num_samples=100, max_seconds=2)
  with pytest.raises(MediaError, match="exceeds max_seconds"):
    load_audio(np.zeros(16000 * 3, np.float32), sample_rate=16000, num_samples=100,
               max_seconds=2, source_rate=16000)
  # Exactly at the bound is fine.
  _, n = load_audio(wav, sample_rate=16000, num_samples=100, max_seconds=3)
  assert n == 100


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_raise(bad):
  samples = sine(440, 16000, 0.1)
  samples[17] = bad
  with pytest.raises(MediaError, match="1 non-finite"):
    load_audio(encode(samples, 16000, subtype="FLOAT"), sample_rate=16000, num_samples=100)
  with pytest.raises(MediaError, match="1 non-finite"):
    load_audio(samples, sample_rate=16000, num_samples=100, source_rate=16000)


def test_bad_arrays_raise():
  with pytest.raises(MediaError, match="needs its source_rate"):
    load_audio(np.zeros(10, np.float32), sample_rate=16000, num_samples=100)
  with pytest.raises(MediaError, match="float array"):
    load_audio(np.zeros(10, np.int16), sample_rate=16000, num_samples=100, source_rate=16000)
  with pytest.raises(MediaError, match=r"\[N\] or \[N, channels\]"):
    load_audio(np.zeros((2, 2, 2), np.float32), sample_rate=16000, num_samples=100,
               source_rate=16000)


def test_bad_target_shape_is_a_programming_error():
  with pytest.raises(ValueError, match="must be positive"):
    load_audio(np.zeros(10, np.float32), sample_rate=16000, num_samples=0, source_rate=16000)
