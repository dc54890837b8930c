"""The multimodal model: interleaving semantics, padding invariance, Matryoshka, sharding."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.common import model_config
from gemb import parallel
from gemb.model import audio_features
from gemb.batch import AUDIO, IMAGE, MODALITIES, NO_SEGMENT, TEXT, VIDEO
from gemb.model.embedder_model import MultimodalEmbedder, matryoshka

B = 4


def small_config(**overrides):
  cfg = model_config(width=32, depth=2, heads=4, mlp_dim=64, embed_dim=16, vocab_size=50,
                     text_len=6, image_size=8, patch=4)
  cfg.audio.num_samples = 1600
  cfg.audio.patch_time = 5
  cfg.video.frames = 4
  for k, v in overrides.items():
    cfg[k] = v
  return cfg


@pytest.fixture(scope="module")
def model():
  return MultimodalEmbedder(small_config(), rngs=nnx.Rngs(0))


def make_side(layout, seed=0, text_len=6):
  """A side with one slot per modality occurrence in ``layout`` ([B, S] modality ids)."""
  rng = np.random.default_rng(seed)
  layout = np.asarray(layout, np.int32)
  B = layout.shape[0]  # noqa: N806
  side = {"layout": layout}
  slots = {m: int(np.max(np.sum(layout == m, axis=1))) for m in range(4)}
  if slots[TEXT]:
    ids = rng.integers(4, 50, (B, slots[TEXT], text_len)).astype(np.int32)
    ids[:, :, 4:] = 0  # 4 real tokens + padding
    side["text"] = ids
  if slots[IMAGE]:
    side["image"] = rng.uniform(-1, 1, (B, slots[IMAGE], 8, 8, 3)).astype(np.float32)
  if slots[AUDIO]:
    side["audio"] = rng.normal(size=(B, slots[AUDIO], 1600)).astype(np.float32)
  if slots[VIDEO]:
    side["video"] = rng.uniform(-1, 1, (B, slots[VIDEO], 4, 8, 8, 3)).astype(np.float32)
  return side


def embed(model, side):
  return np.asarray(jax.jit(lambda s: model(s))(side))


def test_each_modality_and_every_pair_run(model):
  for r in (1, 2):
    for combo in itertools.combinations(range(4), r):
      out = embed(model, make_side([list(combo)] * B))
      assert out.shape == (B, 16), combo
      assert np.all(np.isfinite(out)), combo


def test_segment_order_changes_embedding(model):
  side = make_side([[IMAGE, TEXT]] * B)
  swapped = dict(side, layout=np.array([[TEXT, IMAGE]] * B, np.int32))
  diff = np.abs(embed(model, side) - embed(model, swapped)).max()
  assert diff > 1e-3


def test_order_of_same_modality_segments_matters(model):
  side = make_side([[TEXT, IMAGE, TEXT]] * B)
  swapped = dict(side, text=side["text"][:, ::-1])
  assert np.abs(embed(model, side) - embed(model, swapped)).max() > 1e-3


def test_padding_does_not_change_embedding(model):
  side = make_side([[TEXT, IMAGE, AUDIO]] * B)
  base = embed(model, side)
  # More text padding, an unused extra slot of every modality, an empty layout position.
  padded = dict(side)
  padded["text"] = np.concatenate([side["text"], np.zeros((B, 1, 6), np.int32)], axis=1)
  padded["image"] = np.concatenate([side["image"], np.ones_like(side["image"])], axis=1)
  padded["audio"] = np.concatenate([side["audio"], side["audio"]], axis=1)
  padded["layout"] = np.concatenate([side["layout"], np.full((B, 2), NO_SEGMENT, np.int32)], 1)
  np.testing.assert_allclose(embed(model, padded), base, atol=1e-5, rtol=1e-5)
  # Longer text padding needs a model whose max_len allows it.
  long_model = MultimodalEmbedder(small_config(text=dict(vocab_size=50, max_len=9)),
                                  rngs=nnx.Rngs(0))
  short_side = make_side([[TEXT, IMAGE]] * B)
  long_side = dict(short_side, text=np.pad(short_side["text"], [(0, 0), (0, 0), (0, 3)]))
  np.testing.assert_allclose(embed(long_model, long_side), embed(long_model, short_side),
                             atol=1e-5, rtol=1e-5)


def test_audio_length_masks_trailing_samples(model):
  side = make_side([[AUDIO, TEXT]] * B)
  side["audio"][:, :, 800:] = 0.0
  side["audio_length"] = np.full((B, 1), 800, np.int32)
  noisy = dict(side, audio=side["audio"].copy())
  noisy["audio"][:, :, 1000:] = 5.0  # beyond the last valid time patch
  np.testing.assert_allclose(embed(model, noisy), embed(model, side), atol=1e-5, rtol=1e-5)


def test_examples_are_independent(model):
  """An example's embedding does not depend on the other examples of the batch."""
  side = make_side([[IMAGE, TEXT]] * B)
  other = make_side([[IMAGE, TEXT]] * B, seed=1)
  mixed = {k: np.concatenate([side[k][:2], other[k][2:]]) for k in side}
  np.testing.assert_allclose(embed(model, mixed)[:2], embed(model, side)[:2], atol=1e-5)


def test_matryoshka_prefixes_are_unit_norm(model):
  raw = embed(model, make_side([[IMAGE]] * B))
  for d in (4, 8, 16):
    e = np.asarray(matryoshka(jnp.asarray(raw), d))
    np.testing.assert_allclose(np.linalg.norm(e, axis=-1), 1.0, atol=1e-5)
    np.testing.assert_allclose(e, raw[:, :d] / np.linalg.norm(raw[:, :d], axis=-1, keepdims=True),
                               atol=1e-6)
  with pytest.raises(ValueError, match="Matryoshka dim 32"):
    matryoshka(jnp.asarray(raw), 32)


@pytest.mark.parametrize("pooling", ["first", "attention"])
def test_other_poolings(pooling):
  m = MultimodalEmbedder(small_config(pooling=pooling), rngs=nnx.Rngs(0))
  side = make_side([[TEXT, IMAGE]] * B)
  out = embed(m, side)
  assert out.shape == (B, 16) and np.all(np.isfinite(out))
  swapped = dict(side, layout=np.array([[IMAGE, TEXT]] * B, np.int32))
  assert np.abs(out - embed(m, swapped)).max() > 1e-3


def test_scan_unrolled_and_remat_agree():
  side = make_side([[TEXT, IMAGE]] * B)
  outs = []
  for scan, remat in [(False, ""), (True, ""), (True, "nothing_saveable")]:
    m = MultimodalEmbedder(small_config(scan_layers=scan, remat_policy=remat), rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(m)
    loss = lambda p: jnp.sum(nnx.merge(graphdef, p)(side) ** 2)  # noqa: E731
    outs.append(jax.jit(jax.value_and_grad(loss))(params))
  for val, grad in outs[1:]:
    np.testing.assert_allclose(val, outs[0][0], rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grad,
                 outs[0][1])


def test_bad_inputs_are_named():
  m = MultimodalEmbedder(small_config(modalities=("text",)), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="image"):
    m(make_side([[IMAGE]] * B))
  with pytest.raises(ValueError, match="remat_policy"):
    MultimodalEmbedder(small_config(remat_policy="everything"), rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match="pooling"):
    MultimodalEmbedder(small_config(pooling="max"), rngs=nnx.Rngs(0))


def test_log_mel_matches_numpy_reference():
  rng = np.random.default_rng(0)
  wave = rng.normal(size=(2, 1600)).astype(np.float32)
  n_fft, hop, n_mels, sr = 400, 160, 64, 16000
  got = np.asarray(audio_features.log_mel(jnp.asarray(wave), sample_rate=sr, n_fft=n_fft,
                                          hop=hop, n_mels=n_mels))
  # Reference: explicit loop over frames with numpy's FFT and an independently built filterbank.
  padded = np.pad(wave.astype(np.float64), [(0, 0), (n_fft // 2, n_fft // 2)])
  window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
  mel = lambda f: 2595 * np.log10(1 + f / 700)  # noqa: E731
  edges = 700 * (10 ** (np.linspace(mel(0), mel(sr / 2), n_mels + 2) / 2595) - 1)
  freqs = np.arange(n_fft // 2 + 1) * sr / n_fft
  fb = np.zeros((n_fft // 2 + 1, n_mels))
  for j in range(n_mels):
    lo, c, hi = edges[j:j + 3]
    for i, f in enumerate(freqs):
      if lo < f <= c:
        fb[i, j] = (f - lo) / (c - lo)
      elif c < f < hi:
        fb[i, j] = (hi - f) / (hi - c)
  frames = 1 + 1600 // hop
  ref = np.stack([[np.log(np.abs(np.fft.rfft(padded[b, t * hop:t * hop + n_fft] * window)) ** 2
                          @ fb + 1e-6) for t in range(frames)] for b in range(2)])
  assert got.shape == ref.shape == (2, frames, n_mels)
  np.testing.assert_allclose(got, ref, atol=2e-3, rtol=1e-3)


def test_sharded_forward_equals_single_device():
  cfg = small_config()
  make = lambda: MultimodalEmbedder(cfg, rngs=nnx.Rngs(0))  # noqa: E731
  side = make_side([[IMAGE, TEXT]] * 8)
  single = embed(make(), side)
  mesh = parallel.make_mesh(dict(data=2, fsdp=2, tensor=2))
  graphdef, params = parallel.create_sharded(make, mesh)
  assert params["encoder"]["blocks"]["mlp"]["up"]["kernel"].sharding.spec == \
      jax.sharding.PartitionSpec(None, "fsdp", "tensor")
  with jax.set_mesh(mesh):
    forward = jax.jit(lambda p, s: nnx.merge(graphdef, p)(s))
    out = forward(params, parallel.host_to_global(side, mesh))
  np.testing.assert_allclose(np.asarray(out), single, atol=1e-5, rtol=1e-5)


def test_modalities_constant():
  assert MODALITIES[TEXT] == "text" and MODALITIES[VIDEO] == "video"
