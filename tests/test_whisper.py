"""The pretrained Whisper audio front end: the CTranslate2 reader, Whisper's log-mel features
and encoder against the published implementations (faster-whisper's feature extractor,
CTranslate2's own encoder), and the pretrained weights in a sharded train state."""

import importlib.util
import os
import struct

import ctranslate2
import jax
import numpy as np
import pytest
from flax import nnx

from configs.common import model_config
from gemb.batch import AUDIO, TEXT
from gemb.data.builtin import speech
from gemb.data.media import audio
from gemb.model import audio_features, ctranslate2_file, whisper
from gemb.model.embedder_model import MultimodalEmbedder
from gemb.train import config_check

from configs import tiny
from pretrained_checks import check_pretrained_params_land


def _faster_whisper_features():
  """faster-whisper's numpy FeatureExtractor, loaded from its file: the package's __init__
  would import CTranslate2, onnxruntime and PyAV for nothing."""
  root = os.path.dirname(importlib.util.find_spec("faster_whisper").origin)
  spec = importlib.util.spec_from_file_location(
      "fw_features", os.path.join(root, "feature_extractor.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.FeatureExtractor()


@pytest.fixture(scope="module")
def recording():
  """A real recording (a voice saying "front left"), 2 s at 16 kHz, zero-padded."""
  samples, _ = audio.decode_audio(speech.real_wav("/usr/share/sounds/alsa/Front_Left.wav"))
  return np.pad(samples, (0, 32000 - len(samples))).astype(np.float32)


@pytest.fixture(scope="module")
def pretrained():
  return whisper.load_pretrained()


# ------------------------------------------------------------------- CTranslate2 file reader

def _string(s):
  data = s.encode() + b"\0"
  return struct.pack("<H", len(data)) + data


def _ct2_file(path, variables, aliases=(), version=6):
  """A model.bin in CTranslate2's layout (see gemb/model/ctranslate2_file.py)."""
  ids = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.float16): 4}
  out = struct.pack("<I", version) + _string("TestSpec") + struct.pack("<I", 1)
  out += struct.pack("<I", len(variables))
  for name, x in variables.items():
    out += _string(name) + struct.pack("<B", x.ndim) + struct.pack(f"<{x.ndim}I", *x.shape)
    out += struct.pack("<BI", ids[x.dtype], x.nbytes) + x.tobytes()
  out += struct.pack("<I", len(aliases))
  for alias, target in aliases:
    out += _string(alias) + _string(target)
  with open(path, "wb") as f:
    f.write(out)


def test_ctranslate2_reader_reads_every_dtype_shape_and_alias(tmp_path):
  rng = np.random.default_rng(0)
  variables = {"a/weight": rng.normal(size=(3, 4)).astype(np.float16),
               "a/bias": rng.normal(size=(4,)).astype(np.float32),
               "q": rng.integers(-100, 100, (2, 3, 5)).astype(np.int8),
               "scalar": np.asarray(6, np.int8)}
  _ct2_file(tmp_path / "model.bin", variables, aliases=[("b/weight", "a/weight")])
  got = ctranslate2_file.read_model(tmp_path / "model.bin")
  assert set(got) == set(variables) | {"b/weight"}
  for name, x in variables.items():
    assert got[name].dtype == x.dtype and got[name].shape == x.shape
    np.testing.assert_array_equal(got[name], x)
  np.testing.assert_array_equal(got["b/weight"], variables["a/weight"])


def test_ctranslate2_reader_names_a_bad_file(tmp_path):
  _ct2_file(tmp_path / "old.bin", {}, version=1)
  with pytest.raises(ValueError, match=r"old.bin: CTranslate2 binary version 1"):
    ctranslate2_file.read_model(tmp_path / "old.bin")
  _ct2_file(tmp_path / "model.bin", {"w": np.ones((64,), np.float32)})
  data = (tmp_path / "model.bin").read_bytes()
  (tmp_path / "cut.bin").write_bytes(data[:len(data) // 2])
  with pytest.raises(ValueError, match=r"cut.bin: truncated"):
    ctranslate2_file.read_model(tmp_path / "cut.bin")


# ------------------------------------------------------------- features and encoder vs refs

def test_log_mel_matches_faster_whisper(recording):
  ref = _faster_whisper_features()(recording, padding=0).T  # [frames, 80]
  got = np.asarray(audio_features.whisper_log_mel(recording))
  assert got.shape == ref.shape == (200, 80)
  np.testing.assert_allclose(got, ref, atol=1e-4)
  # Batched: each clip is floored at its own maximum, as if transformed alone.
  quiet = 0.01 * recording
  both = np.asarray(audio_features.whisper_log_mel(np.stack([recording, quiet])))
  np.testing.assert_allclose(both[1], _faster_whisper_features()(quiet, padding=0).T, atol=1e-4)


def test_filterbank_is_librosas_slaney_mel():
  ref = _faster_whisper_features().mel_filters.T  # librosa.filters.mel(16000, 400, 80)
  np.testing.assert_allclose(audio_features.slaney_mel_filterbank(400, 80, 16000), ref,
                             rtol=1e-5, atol=1e-7)


def test_sinusoids_are_the_checkpoints_positions():
  stored = ctranslate2_file.read_model(whisper.checkpoint_path())
  np.testing.assert_allclose(whisper.sinusoids(1500, 384),
                             stored["encoder/position_encodings/encodings"], atol=1e-3)


def test_encoder_matches_ctranslate2(recording, pretrained):
  """Our JAX encoder with the pretrained weights vs CTranslate2's own Whisper encoder on the
  same features of a real recording (CTranslate2 computes in float32 from the float16
  weights that both read)."""
  mel = np.asarray(audio_features.whisper_log_mel(recording))[None]  # [1, 200, 80]
  model = ctranslate2.models.Whisper(os.path.dirname(whisper.checkpoint_path()), device="cpu",
                                     compute_type="float32", intra_threads=1)
  ref = np.asarray(model.encode(ctranslate2.StorageView.from_array(
      np.ascontiguousarray(mel.transpose(0, 2, 1)))))
  encoder = whisper.WhisperEncoder(**whisper.TINY, rngs=nnx.Rngs(0))
  nnx.update(encoder, pretrained)
  got = np.asarray(jax.jit(lambda m: encoder(m))(mel))
  assert got.shape == ref.shape == (1, 100, 384)
  scale = np.abs(ref).max()
  np.testing.assert_allclose(got, ref, atol=2e-3 * scale)
  assert np.abs(got - ref).mean() < 1e-4 * scale


# ---------------------------------------------------------------- in the model and trainer

def whisper_model_config():
  cfg = model_config(width=32, depth=1, heads=4, mlp_dim=64, embed_dim=16, vocab_size=50,
                     text_len=6, image_size=8, patch=4, modalities=("text", "audio"))
  cfg.audio.encoder = "whisper"
  cfg.audio.num_samples = 3200  # 0.2 s: 10 encoder frames -> 5 tokens
  return cfg


def test_whisper_embedder_masks_what_follows_the_clip(pretrained):
  model = MultimodalEmbedder(whisper_model_config(), rngs=nnx.Rngs(0))
  nnx.update(model.audio.whisper, pretrained)
  rng = np.random.default_rng(0)
  clean = rng.normal(size=(2, 1, 3200)).astype(np.float32) * 0.1
  clean[:, :, 1900:] = 0.0
  side = {"layout": np.asarray([[AUDIO, TEXT]] * 2, np.int32), "audio": clean,
          "audio_length": np.full((2, 1), 1900, np.int32),
          "text": rng.integers(4, 50, (2, 1, 6)).astype(np.int32)}
  noisy = dict(side, audio=np.where(np.arange(3200) < 1900, clean, 3.0).astype(np.float32))
  embed = jax.jit(lambda s: model(s))
  tokens, mask = model.audio(clean, side["audio_length"])
  assert tokens.shape == (2, 1, 5, 32)
  # 640 samples per token (pool 2 x 2 hops of 160): tokens 0-2 start before sample 1900.
  np.testing.assert_array_equal(np.asarray(mask)[0, 0], [1, 1, 1, 0, 0])
  np.testing.assert_allclose(embed(noisy), embed(side), atol=1e-5, rtol=1e-5)


def whisper_train_config():
  c = tiny.get_config()
  c.model = whisper_model_config()
  c.model.modalities = ("text", "image", "audio")  # tiny's tasks are emoji image <-> name
  c.loss.matryoshka_dims = c.eval.dims = (16,)
  c.loss.matryoshka_weights = (1.0,)
  return c


def test_pretrained_weights_land_in_a_sharded_train_state(pretrained):
  flat, expected = check_pretrained_params_land(whisper_train_config(), "audio/whisper/",
                                                pretrained)
  assert len(expected) == 2 * 2 + 2 + 4 * 12  # two convs, final norm, 4 blocks
  assert flat["audio/whisper/layers/0/fc1/kernel"].sharding.spec == \
      jax.sharding.PartitionSpec("fsdp", "tensor")


def test_missing_whisper_checkpoint_fails_before_any_work(tmp_path):
  c = whisper_train_config()
  config_check.validate(c)  # the installed tiny.en checkpoint
  c.model.audio.whisper_checkpoint = str(tmp_path)
  with pytest.raises(ValueError, match=r"model.audio.whisper_checkpoint: no CTranslate2 "
                                       r"model.bin at .*model.bin"):
    config_check.validate(c)
  c.model.audio.encoder = "wav2vec"
  with pytest.raises(ValueError, match=r"model.audio.encoder: 'wav2vec' is not one of"):
    config_check.validate(c)
