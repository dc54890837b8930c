"""Per-modality embedders: raw inputs -> tokens of the shared width D plus a validity mask.

Every embedder maps its slot array ``[B, S, ...]`` (see gemb/batch.py) to tokens
``[B, S, N, D]`` and a mask ``[B, S, N]``. Modality-specific code ends here: after this,
all tokens go through one shared transformer. Position embeddings inside a segment are
per modality (text index; image row/column; audio time/mel; video time/row/column);
the position of a segment in the interleaved sequence is added by the model.
"""

import jax.numpy as jnp
import ml_collections
from flax import nnx

from gemb.batch import PAD_ID
from gemb.model import audio_features, efficientnet, whisper
from gemb.model.layers import param

_EMBED_INIT = nnx.initializers.normal(0.02)


def patch_projection(rngs, in_dim, width):
  # No bias: the modality-type embedding is the per-modality offset (see transformer.py).
  return nnx.Linear(
      in_dim, width, rngs=rngs, use_bias=False,
      kernel_init=nnx.with_partitioning(nnx.initializers.lecun_normal(), ("patch", "embed")))


class TextEmbedder(nnx.Module):
  """Token ids [B, S, L] -> token table lookup + learned 1-D positions."""

  def __init__(self, cfg, width, *, rngs):
    self.vocab_size, self.max_len = cfg.vocab_size, cfg.max_len
    self.table = param(rngs, _EMBED_INIT, (cfg.vocab_size, width), ("vocab", "embed"))
    self.position = param(rngs, _EMBED_INIT, (cfg.max_len, width), ("positions", "embed"))

  def __call__(self, ids, length=None):
    del length
    if ids.shape[-1] > self.max_len:
      raise ValueError(f"text length {ids.shape[-1]} exceeds model.text.max_len={self.max_len}")
    tokens = jnp.take(self.table[...], ids, axis=0) + self.position[: ids.shape[-1]]
    return tokens, ids != PAD_ID


class _GridImages(nnx.Module):
  """What both image embedders share: images of model.image.size in, one token per cell of a
  square grid out, each with a learned row + column position."""

  def _init_positions(self, rngs, grid, width):
    self.row = param(rngs, _EMBED_INIT, (grid, width), ("positions", "embed"))
    self.col = param(rngs, _EMBED_INIT, (grid, width), ("positions", "embed"))

  def _check_size(self, images):
    h, w = images.shape[-3:-1]
    if (h, w) != (self.size, self.size):
      raise ValueError(f"image shape {(h, w)} != model.image.size {self.size}")

  def _positions(self):  # [grid * grid, width], row-major like the tokens
    return (self.row[...][:, None] + self.col[...][None, :]).reshape(-1, self.row.shape[-1])


class ImageEmbedder(_GridImages):
  """Images [B, S, H, W, 3] -> non-overlapping patches -> linear + row/column positions."""

  def __init__(self, cfg, width, *, rngs):
    self.patch, self.size = cfg.patch, cfg.size
    if cfg.size % cfg.patch:
      raise ValueError(f"model.image.size={cfg.size} is not a multiple of patch={cfg.patch}")
    self.proj = patch_projection(rngs, cfg.patch * cfg.patch * 3, width)
    self._init_positions(rngs, cfg.size // cfg.patch, width)

  def __call__(self, images, length=None):
    del length
    self._check_size(images)
    *lead, _, _, c = images.shape
    p, g = self.patch, self.size // self.patch
    x = images.reshape(*lead, g, p, g, p, c)
    x = jnp.moveaxis(x, -4, -3).reshape(*lead, g * g, p * p * c)
    tokens = self.proj(x) + self._positions()
    return tokens, jnp.ones(tokens.shape[:-1], bool)


class EfficientNetImageEmbedder(_GridImages):
  """Images [B, S, H, W, 3] -> the first ``efficientnet_blocks`` blocks of a pretrained
  EfficientNet-Lite0 (gemb/model/efficientnet.py) -> one token per feature-map cell ->
  linear + row/column positions."""

  def __init__(self, cfg, width, *, rngs):
    self.size = cfg.size
    grid, channels = efficientnet.feature_shape(cfg.efficientnet_blocks, cfg.size)
    self.efficientnet = efficientnet.EfficientNetLite0(cfg.efficientnet_blocks, rngs=rngs)
    self.proj = patch_projection(rngs, channels, width)
    self._init_positions(rngs, grid, width)

  def __call__(self, images, length=None):
    del length
    self._check_size(images)
    *lead, h, w, c = images.shape
    features = self.efficientnet(images.reshape(-1, h, w, c))
    tokens = self.proj(features.reshape(*lead, -1, features.shape[-1])) + self._positions()
    return tokens, jnp.ones(tokens.shape[:-1], bool)


def encoder_name(cfg):
  """``cfg.encoder`` of a modality's config; "patches" when the key is missing, so the runs
  (config.json) of gemb versions that only had patches still evaluate, export and resume."""
  return cfg.get("encoder", "patches")


def _by_encoder(modality, kinds):
  """The embedder factory of a modality whose ``cfg.encoder`` picks one of ``kinds``."""
  def make(cfg, width, *, rngs):
    encoder = encoder_name(cfg)
    if encoder not in kinds:
      raise ValueError(f"model.{modality}.encoder={encoder!r}; choose one of {sorted(kinds)}")
    return kinds[encoder](cfg, width, rngs=rngs)
  return make


# model.image.encoder: "patches" (linear patches, trained from scratch) or
# "efficientnet_lite0" (a pretrained ImageNet CNN).
IMAGE_ENCODERS = {"patches": ImageEmbedder, "efficientnet_lite0": EfficientNetImageEmbedder}
image_embedder = _by_encoder("image", IMAGE_ENCODERS)


def _check_num_samples(waveform, num_samples):
  if waveform.shape[-1] != num_samples:
    raise ValueError(f"audio has {waveform.shape[-1]} samples, model.audio.num_samples="
                     f"{num_samples} (pad or crop in the data pipeline)")


class AudioEmbedder(nnx.Module):
  """Waveforms [B, S, N] -> log-mel [F, M] -> (time x mel) patches -> linear + positions."""

  def __init__(self, cfg, width, *, rngs):
    self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: the graphdef is a jit key
    frames = audio_features.num_frames(cfg.num_samples, cfg.n_fft, cfg.hop)
    pt, pm = cfg.patch_time, cfg.patch_mel
    if cfg.n_mels % pm:
      raise ValueError(f"model.audio.n_mels={cfg.n_mels} is not a multiple of patch_mel={pm}")
    self.time_patches, self.mel_patches = frames // pt, cfg.n_mels // pm
    self.proj = patch_projection(rngs, pt * pm, width)
    self.time = param(rngs, _EMBED_INIT, (self.time_patches, width), ("positions", "embed"))
    self.mel = param(rngs, _EMBED_INIT, (self.mel_patches, width), ("positions", "embed"))

  def __call__(self, waveform, length=None):
    c = self.cfg
    _check_num_samples(waveform, c.num_samples)
    feats = audio_features.log_mel(waveform, sample_rate=c.sample_rate, n_fft=c.n_fft, hop=c.hop,
                                   n_mels=c.n_mels)
    # log(1e-6) ~ -13.8 for silence, ~0-5 for speech: map to roughly unit scale.
    feats = (feats + 5.0) / 5.0
    *lead, _, m = feats.shape
    pt, pm, nt, nm = c.patch_time, c.patch_mel, self.time_patches, self.mel_patches
    x = feats[..., : nt * pt, :].reshape(*lead, nt, pt, nm, pm)
    x = jnp.moveaxis(x, -3, -2).reshape(*lead, nt * nm, pt * pm)
    pos = (self.time[...][:, None] + self.mel[...][None, :]).reshape(nt * nm, -1)
    tokens = self.proj(x) + pos
    if length is None:
      mask = jnp.ones(tokens.shape[:-1], bool)
    else:  # a time patch is valid when its first frame starts before the audio ends
      first_sample = jnp.arange(nt) * pt * c.hop
      valid_t = first_sample < length[..., None]
      mask = jnp.repeat(valid_t, nm, axis=-1)
    return tokens, mask


class VideoEmbedder(nnx.Module):
  """Videos [B, S, T, H, W, 3] -> tubelets (t x p x p) -> linear + time/row/column positions."""

  def __init__(self, cfg, width, *, rngs):
    self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: the graphdef is a jit key
    if cfg.frames % cfg.tubelet_time or cfg.size % cfg.patch:
      raise ValueError(f"model.video: frames={cfg.frames} must be a multiple of tubelet_time="
                       f"{cfg.tubelet_time} and size={cfg.size} of patch={cfg.patch}")
    self.grid_t, self.grid = cfg.frames // cfg.tubelet_time, cfg.size // cfg.patch
    self.proj = patch_projection(rngs, cfg.tubelet_time * cfg.patch * cfg.patch * 3, width)
    self.time = param(rngs, _EMBED_INIT, (self.grid_t, width), ("positions", "embed"))
    self.row = param(rngs, _EMBED_INIT, (self.grid, width), ("positions", "embed"))
    self.col = param(rngs, _EMBED_INIT, (self.grid, width), ("positions", "embed"))

  def __call__(self, video, length=None):
    del length
    c = self.cfg
    *lead, t, h, w, ch = video.shape
    if (t, h, w) != (c.frames, c.size, c.size):
      raise ValueError(f"video shape {(t, h, w)} != model.video (frames, size, size) "
                       f"{(c.frames, c.size, c.size)}")
    gt, g, tt, p = self.grid_t, self.grid, c.tubelet_time, c.patch
    x = video.reshape(*lead, gt, tt, g, p, g, p, ch)
    n = len(lead)
    x = x.transpose(*range(n), n, n + 2, n + 4, n + 1, n + 3, n + 5, n + 6)
    x = x.reshape(*lead, gt * g * g, tt * p * p * ch)
    pos = (self.time[...][:, None, None] + self.row[...][None, :, None]
           + self.col[...][None, None, :]).reshape(gt * g * g, -1)
    tokens = self.proj(x) + pos
    return tokens, jnp.ones(tokens.shape[:-1], bool)


class WhisperAudioEmbedder(nnx.Module):
  """Waveforms [B, S, N] -> Whisper log-mel -> a Whisper encoder (gemb/model/whisper.py) ->
  ``whisper_pool`` frames averaged per token -> linear + positions.

  The encoder's 50 frames per second are more tokens than the shared transformer needs;
  averaging pairs (pool 2) gives 25 per second.
  """

  def __init__(self, cfg, width, *, rngs):
    self.cfg = ml_collections.FrozenConfigDict(cfg)  # hashable: the graphdef is a jit key
    if cfg.sample_rate != 16000:
      raise ValueError(f"model.audio.encoder='whisper' needs sample_rate=16000, got "
                       f"{cfg.sample_rate}")
    frames = cfg.num_samples // whisper.HOP // 2  # encoder frames (conv2 has stride 2)
    if frames < cfg.whisper_pool or frames > whisper.TINY["max_frames"]:
      raise ValueError(f"model.audio.num_samples={cfg.num_samples}: Whisper takes 0.04-30 s")
    self.tokens = frames // cfg.whisper_pool
    self.whisper = whisper.WhisperEncoder(**whisper.TINY, rngs=rngs)
    self.proj = patch_projection(rngs, whisper.TINY["width"], width)
    self.time = param(rngs, _EMBED_INIT, (self.tokens, width), ("positions", "embed"))

  def __call__(self, waveform, length=None):
    c = self.cfg
    _check_num_samples(waveform, c.num_samples)
    if length is not None:  # Whisper sees exact zeros after the clip, as in its training
      waveform = jnp.where(jnp.arange(c.num_samples) < length[..., None], waveform, 0.0)
    *lead, n = waveform.shape
    mel = audio_features.whisper_log_mel(waveform.reshape(-1, n).astype(jnp.float32))
    states = self.whisper(mel.astype(waveform.dtype))
    pool, t = c.whisper_pool, self.tokens
    states = states[:, :t * pool].reshape(-1, t, pool, states.shape[-1]).mean(axis=2)
    tokens = self.proj(states).reshape(*lead, t, -1) + self.time[...]
    if length is None:
      return tokens, jnp.ones(tokens.shape[:-1], bool)
    # A token is valid when its first sample is real audio (one encoder frame = 2 hops).
    first_sample = jnp.arange(t) * pool * 2 * whisper.HOP
    return tokens, first_sample < length[..., None]


# model.audio.encoder: "patches" (linear log-mel patches, trained from scratch) or "whisper"
# (a pretrained Whisper encoder).
AUDIO_ENCODERS = {"patches": AudioEmbedder, "whisper": WhisperAudioEmbedder}
audio_embedder = _by_encoder("audio", AUDIO_ENCODERS)


EMBEDDERS = {"text": TextEmbedder, "image": image_embedder, "audio": audio_embedder,
             "video": VideoEmbedder}

