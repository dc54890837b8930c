"""The pretrained EfficientNet-Lite0 image encoder: its PyTorch-file reader, its layers against
XLA's own convolution, and the whole pretrained network against ImageNet labels of real
photographs."""

import pickle

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx
from sklearn.datasets import load_sample_images

from gemb.batch import IMAGE, TEXT
from gemb.model import efficientnet, embedders, torch_file
from gemb.model.embedder_model import MultimodalEmbedder
from gemb.train import config_check

from configs import tiny
from pretrained_checks import check_pretrained_params_land

# ImageNet-1k class indices.
DAISY, PALACE = 985, 698


@pytest.fixture(scope="module")
def state_dict():
  return torch_file.read_state_dict(efficientnet.checkpoint_path())


@pytest.fixture(scope="module")
def photos():
  """scikit-learn's two sample photographs (a temple in China, a flower), 224 x 224 in
  [-1, 1]: real photos, the kind of image ImageNet labels describe."""
  images = [jax.image.resize(i / 127.5 - 1.0, (224, 224, 3), "bilinear")
            for i in load_sample_images().images]
  return np.stack(images).astype(np.float32)


def test_state_dict_reader_reads_every_tensor(state_dict):
  # 16 blocks, BN as 5 tensors (with num_batches_tracked), no SE: the Lite architecture.
  assert len(state_dict) == 296
  assert state_dict["_conv_stem.weight"].shape == (32, 3, 3, 3)
  assert state_dict["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
  assert state_dict["_fc.weight"].shape == (1000, 1280)
  assert state_dict["_bn0.num_batches_tracked"].dtype == np.int64
  # Some kernels are stored with non-contiguous strides (the stem's out-channel is fastest):
  # test_pretrained_network_labels_real_photos fails if those were read in storage order.


def test_state_dict_reader_names_a_bad_file(tmp_path):
  zipped = tmp_path / "new.pth"
  zipped.write_bytes(b"PK\x03\x04" + b"\0" * 64)
  with pytest.raises(ValueError, match=r"new.pth: not a legacy-format PyTorch file"):
    torch_file.read_state_dict(str(zipped))
  sneaky = tmp_path / "code.pth"
  with open(sneaky, "wb") as f:
    for header in (torch_file.LEGACY_MAGIC, 1001, {}):
      pickle.dump(header, f)
    pickle.dump(print, f)  # anything but tensors is refused, not constructed
  with pytest.raises(pickle.UnpicklingError, match=r"unexpected object builtins.print"):
    torch_file.read_state_dict(str(sneaky))


@pytest.mark.parametrize("size,kernel,stride", [(9, 3, 1), (9, 3, 2), (8, 5, 2), (7, 5, 1)])
def test_depthwise_conv_matches_xla_grouped_convolution(size, kernel, stride):
  rng = np.random.default_rng(0)
  layer = efficientnet._DepthwiseConv(6, kernel, stride, rngs=nnx.Rngs(0))
  layer.bias[...] = rng.normal(size=6).astype(np.float32)
  x = rng.normal(size=(2, size, size, 6)).astype(np.float32)
  ours = layer(x)
  reference = jax.lax.conv_general_dilated(
      x, layer.kernel[...][:, :, None, :], (stride, stride), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=6) + layer.bias[...]
  np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-5)


def test_pretrained_network_labels_real_photos(photos):
  model = efficientnet.EfficientNetLite0(classifier=True, rngs=nnx.Rngs(0))
  nnx.update(model, efficientnet.load_pretrained(classifier=True))
  top5 = np.argsort(-np.asarray(model(photos)), axis=1)[:, :5]
  assert PALACE in top5[0]  # the temple: bell cote, boathouse, lakeside, palace, castle
  assert top5[1, 0] == DAISY  # the flower


@pytest.mark.parametrize("num_blocks,size", [(11, 64), (16, 64), (5, 37), (1, 20)])
def test_feature_shape_is_the_networks(num_blocks, size):
  model = efficientnet.EfficientNetLite0(num_blocks, rngs=nnx.Rngs(0))
  grid, channels = efficientnet.feature_shape(num_blocks, size)
  assert model(np.zeros((1, size, size, 3), np.float32)).shape == (1, grid, grid, channels)
  with pytest.raises(ValueError, match=r"1-16 blocks, got 17"):
    efficientnet.feature_shape(17, size)


def efficientnet_train_config():
  c = tiny.get_config()
  c.model.modalities = ("text", "image")  # tiny's tasks are emoji image <-> name
  c.model.image.encoder = "efficientnet_lite0"
  c.model.image.size = 32
  c.model.image.efficientnet_blocks = 5  # stride 8: 4 x 4 tokens
  return c


def test_embedder_tokens_come_from_the_pretrained_features(state_dict):
  c = efficientnet_train_config()
  model = MultimodalEmbedder(c.model, rngs=nnx.Rngs(0))
  nnx.update(model.image.efficientnet, efficientnet.params_from_torch(state_dict, 5))
  rng = np.random.default_rng(0)
  images = rng.uniform(-1, 1, (2, 1, 32, 32, 3)).astype(np.float32)
  tokens, mask = model.image(images)
  assert tokens.shape == (2, 1, 16, c.model.width) and np.asarray(mask).all()
  features = model.image.efficientnet(images[:, 0])  # [2, 4, 4, 40]
  expected = (model.image.proj(features.reshape(2, 16, 40))
              + (model.image.row[...][:, None] + model.image.col[...][None]).reshape(16, -1))
  np.testing.assert_allclose(tokens[:, 0], expected, rtol=1e-5, atol=1e-5)
  side = {"layout": np.asarray([[IMAGE, TEXT]] * 2, np.int32), "image": images,
          "text": rng.integers(4, 50, (2, 1, 6)).astype(np.int32)}
  assert np.isfinite(np.asarray(model(side))).all()


def test_pretrained_weights_land_in_a_sharded_train_state(state_dict):
  _, expected = check_pretrained_params_land(
      efficientnet_train_config(), "image/efficientnet/",
      efficientnet.params_from_torch(state_dict, 5))
  assert len(expected) == 2 + 2 * (2 + 3 * 4)  # stem; block 0 without expansion, blocks 1-4


def test_bad_efficientnet_settings_fail_before_any_work(tmp_path):
  c = efficientnet_train_config()
  config_check.validate(c)  # the installed checkpoint
  c.model.image.efficientnet_checkpoint = str(tmp_path / "missing.pth")
  with pytest.raises(ValueError, match=r"model.image.efficientnet_checkpoint: no "
                                       r"EfficientNet-Lite0 state dict at .*missing.pth"):
    config_check.validate(c)
  c.model.image.efficientnet_checkpoint = ""
  c.model.image.efficientnet_blocks = 17
  with pytest.raises(ValueError, match=r"model.image.efficientnet_blocks: .*got 17"):
    config_check.validate(c)
  c.model.image.encoder = "resnet"
  with pytest.raises(ValueError, match=r"model.image.encoder: 'resnet' is not one of"):
    config_check.validate(c)


def test_a_config_from_before_the_encoder_key_builds_patches():
  """config.json of runs made before model.image.encoder existed still evaluates/exports."""
  c = tiny.get_config()
  model_cfg = dict(c.model.to_dict(), modalities=("text", "image", "audio"))
  del model_cfg["image"]["encoder"], model_cfg["audio"]["encoder"]
  model = MultimodalEmbedder(ml_collections.ConfigDict(model_cfg), rngs=nnx.Rngs(0))
  assert isinstance(model.image, embedders.ImageEmbedder)
  assert isinstance(model.audio, embedders.AudioEmbedder)
