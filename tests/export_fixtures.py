"""Shared by the export / serving / serve tests: a small all-modality run and its bundle.

The run is a random-init model saved through the trainer's Checkpointer at three steps
(params scaled differently per step, so soups and --step are distinguishable), with a
config.json and a tokenizer.model, like any run's workdir. Records of five custom tasks
(one per modality plus an interleaved one) feed both the training ExampleLoader (the
in-framework reference) and gemb.serving (raw items).
"""

import functools
import io
import os
import wave

import grain
import jax
import numpy as np
import optax
import pytest
from PIL import Image

from configs import tiny
from configs.common import model_config

STEPS = (1, 2, 3)
INSTRUCTION = "task: test retrieval | query: "
WORDS = ("red heart", "grinning face", "a cat with a hat", "blue square", "spoken word",
         "moving dot", "smiling sun", "the quick brown fox jumps over the lazy dog")
TASKS = {
    "k_text": (("text:t",), ("text:t",)),
    "k_image": (("image:i",), ("image:i",)),
    "k_audio": (("audio:a",), ("audio:a",)),
    "k_video": (("video:v",), ("video:v",)),
    "k_mixed": (("image:i", "text:t", "audio:a", "video:v", "text:t2"), ("text:t2", "image:i")),
}


def small_config():
  c = tiny.get_config()
  c.model = model_config(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32, vocab_size=256,
                         text_len=12, image_size=16, patch=8)
  c.model.audio.update(num_samples=4000, n_mels=16, patch_mel=8, patch_time=5)
  c.model.video.update(frames=4, size=16, patch=8, tubelet_time=2)
  c.data.vocab_size = 256
  c.data.instructions = True
  c.data.custom_tasks = {
      name: dict(dataset="manifest:/unused.jsonl", query=q, candidate=cand, query_id=None,
                 candidate_id=None, instruction=INSTRUCTION)
      for name, (q, cand) in TASKS.items()}
  c.data.tasks, c.data.weights = ("k_text",), (1.0,)
  c.eval.tasks = tuple(TASKS)
  c.loss.matryoshka_dims, c.loss.matryoshka_weights = (8, 16, 32), (1.0, 1.0, 1.0)
  return c


def png(rng, height, width):
  out = io.BytesIO()
  Image.fromarray(rng.integers(0, 256, (height, width, 3), np.uint8)).save(out, "PNG")
  return out.getvalue()


def wav(rng, seconds, rate):
  samples = (rng.standard_normal(int(seconds * rate)) * 3000).astype(np.int16)
  out = io.BytesIO()
  with wave.open(out, "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(samples.tobytes())
  return out.getvalue()


def records(n=4, seed=0):
  """Records of every custom task: text, PNG, WAV (22.05 kHz: resampled) and PNG frames."""
  rng = np.random.default_rng(seed)
  return [{"t": WORDS[i % len(WORDS)], "t2": WORDS[(i + 3) % len(WORDS)],
           "i": png(rng, 20 + i, 24), "a": wav(rng, 0.1 + 0.1 * i, 22050),
           "v": [png(rng, 18, 18) for _ in range(3 + i)]} for i in range(n)]


def item(record, segments):
  """The raw serving item of a side: one segment as a dict, several as a list."""
  parts = [{s.split(":")[0]: record[s.split(":")[1]]} for s in segments]
  return parts[0] if len(parts) == 1 else parts


@functools.lru_cache(maxsize=None)
def make_workdir(path):
  """Writes the small run to ``path``; returns (path, {step: params as numpy})."""
  from flax import nnx

  from gemb.data.tokenizer import Tokenizer
  from gemb.model.embedder_model import MultimodalEmbedder
  from gemb.run.checkpoint import Checkpointer
  from gemb.run.optimizer import make_optimizer

  config = small_config()
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  Tokenizer.train(list(WORDS) + [INSTRUCTION], 256).save(os.path.join(path, "tokenizer.model"))
  # The trainer's state structure with random numpy values: compiling the model's jax
  # init would cost far more than this whole fixture (random-init params, zero Adam state).
  rng = np.random.default_rng(0)
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: MultimodalEmbedder(config.model, rngs=nnx.Rngs(0)))))
  params = jax.tree_util.tree_map_with_path(
      lambda path, x: (float(str(path[-1]) == "['scale']") + 0.2 * rng.standard_normal(x.shape)
                       ).astype(np.float32), abstract)
  tx = make_optimizer(config.optimizer, optax.constant_schedule(0.0))
  state = {"step": np.zeros((), np.int32), "params": params,
           "opt_state": jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                                     jax.eval_shape(tx.init, abstract)),
           "nonfinite_steps": np.zeros((), np.int32), "nonfinite_streak": np.zeros((), np.int32)}
  ckpt = Checkpointer(path, keep=len(STEPS), async_save=False)
  data = iter(grain.MapDataset.range(4).to_iter_dataset())
  saved = {}
  for k, step in enumerate(STEPS):
    saved[step] = jax.tree.map(lambda x, k=k: x * np.float32(1.0 + 0.25 * k), params)
    ckpt.save(step, dict(state, step=np.int32(step), params=saved[step]), data,
              {"stage_index": 0, "stage": "align"}, force=True)
  ckpt.wait()
  ckpt.close()
  return path, saved


@functools.lru_cache(maxsize=None)
def make_bundle(workdir, out, **kwargs):
  """Exports ``workdir`` (made by make_workdir) to ``out`` with gemb.export's run()."""
  from gemb.export.__main__ import run
  run(workdir, out, **kwargs)
  return out


# ---- pytest fixtures, imported by the test files that need them. The builders above are
# cached, so every file of a session shares one run, one bundle and one loaded Embedder
# (whose compiled entry points are then reused).

@pytest.fixture(scope="session")
def run_dir(tmp_path_factory):
  return make_workdir(str(tmp_path_factory.getbasetemp() / "export_run"))


@pytest.fixture(scope="session")
def bundle_dir(run_dir, tmp_path_factory):
  return make_bundle(run_dir[0], str(tmp_path_factory.getbasetemp() / "export_bundle"))


@pytest.fixture(scope="session")
def embedder(bundle_dir):
  return load_embedder(bundle_dir)


@functools.lru_cache(maxsize=None)
def load_embedder(directory):
  from gemb.serving import Embedder
  return Embedder.load(directory)
