"""Log-mel spectrograms computed in JAX, so audio preprocessing runs on the accelerator.

Framing -> Hann window -> |rfft|^2 -> mel filterbank -> log, in two variants: gemb's own
(``log_mel``: HTK mel, natural log; for the patch audio embedder) and Whisper's
(``whisper_log_mel``: Slaney mel, log10, clamped; what a pretrained Whisper encoder expects).
The filterbanks are constants built with numpy; tests compare the transforms with a numpy
reference and with faster-whisper's.
"""

import jax.numpy as jnp
import numpy as np


def hz_to_mel(hz):
  return 2595.0 * np.log10(1.0 + np.asarray(hz, np.float64) / 700.0)


def mel_to_hz(mel):
  return 700.0 * (10.0 ** (np.asarray(mel, np.float64) / 2595.0) - 1.0)


def mel_filterbank(n_fft, n_mels, sample_rate, f_min=0.0, f_max=None):
  """Triangular HTK-mel filters, [n_fft // 2 + 1, n_mels] float32."""
  f_max = sample_rate / 2 if f_max is None else f_max
  fft_freqs = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)
  mel_points = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
  return _triangles(fft_freqs, mel_to_hz(mel_points)).astype(np.float32)


def _triangles(fft_freqs, hz_points):
  """[len(fft_freqs), len(hz_points) - 2] triangular filters, peak 1 at each inner point."""
  lower, center, upper = hz_points[:-2], hz_points[1:-1], hz_points[2:]
  up = (fft_freqs[:, None] - lower) / (center - lower)
  down = (upper - fft_freqs[:, None]) / (upper - center)
  return np.maximum(0.0, np.minimum(up, down))


def num_frames(num_samples, n_fft, hop):
  """Frames of a waveform padded by n_fft // 2 on both sides (centered frames)."""
  return 1 + num_samples // hop


def power_spectrum(waveform, *, n_fft, hop, frames, pad_mode="constant"):
  """[..., N] -> [..., frames, n_fft // 2 + 1]: |rfft|^2 of periodic-Hann frames of n_fft
  samples every hop, centered (the waveform padded by n_fft // 2 on both sides)."""
  pad = n_fft // 2
  padded = jnp.pad(waveform, [(0, 0)] * (waveform.ndim - 1) + [(pad, pad)], mode=pad_mode)
  # Gather frames with a static index grid: fixed shapes, no dynamic slicing.
  index = np.arange(frames)[:, None] * hop + np.arange(n_fft)[None, :]
  window = np.hanning(n_fft + 1)[:-1].astype(np.float32)  # periodic Hann
  return jnp.abs(jnp.fft.rfft(padded[..., index] * window, axis=-1)) ** 2


def log_mel(waveform, *, sample_rate, n_fft, hop, n_mels):
  """[..., N] float waveform -> [..., num_frames(N), n_mels] log-mel features."""
  power = power_spectrum(waveform, n_fft=n_fft, hop=hop,
                         frames=num_frames(waveform.shape[-1], n_fft, hop))
  mel = power @ mel_filterbank(n_fft, n_mels, sample_rate)
  return jnp.log(mel + 1e-6)


def slaney_mel_filterbank(n_fft, n_mels, sample_rate):
  """Slaney-scale, area-normalized mel filters, [n_fft // 2 + 1, n_mels] float32: librosa's
  ``filters.mel`` defaults, the filterbank Whisper was trained with."""
  log_step = np.log(6.4) / 27.0  # mels are linear below 1 kHz (15 mels), logarithmic above

  def to_hz(mel):
    return np.where(mel < 15.0, mel * 200.0 / 3, 1000.0 * np.exp(log_step * (mel - 15.0)))

  def to_mel(hz):
    return np.where(hz < 1000.0, hz * 3 / 200.0, 15.0 + np.log(hz / 1000.0) / log_step)

  fft_freqs = np.fft.rfftfreq(n_fft, 1.0 / sample_rate)
  hz_points = to_hz(np.linspace(0.0, to_mel(sample_rate / 2), n_mels + 2))
  area = 2.0 / (hz_points[2:] - hz_points[:-2])  # each filter's area normalized to 1
  return (_triangles(fft_freqs, hz_points) * area).astype(np.float32)


def whisper_log_mel(waveform, *, n_mels=80):
  """[..., N] float waveform at 16 kHz -> Whisper's log-mel features [..., N // 160, n_mels].

  Whisper's transform: 25 ms Hann frames every 10 ms (reflect-padded, centered; the last
  frame dropped), power spectrum, Slaney mel, log10, floored 8 below each clip's maximum,
  then (x + 4) / 4.
  """
  n_fft, hop = 400, 160  # 25 ms, 10 ms
  power = power_spectrum(waveform, n_fft=n_fft, hop=hop, frames=waveform.shape[-1] // hop,
                         pad_mode="reflect")
  mel = power @ slaney_mel_filterbank(n_fft, n_mels, 16000)
  log_spec = jnp.log10(jnp.maximum(mel, 1e-10))
  log_spec = jnp.maximum(log_spec, jnp.max(log_spec, axis=(-2, -1), keepdims=True) - 8.0)
  return (log_spec + 4.0) / 4.0
