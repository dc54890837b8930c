"""gemb.serving against the in-framework model: every modality, interleaved items, several
dims, bfloat16 params, a fresh process without flax, and the TensorFlow SavedModel.

The reference packs records with the training ExampleLoader and runs MultimodalEmbedder +
matryoshka from gemb.model; the bundle side gets the same records as raw items (text,
PNG / WAV bytes, PNG frames) and does its own preprocessing.
"""

import io
import json
import os
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import export_fixtures as fx
from export_fixtures import bundle_dir, embedder, run_dir  # noqa: F401 (pytest fixtures)
from gemb.data.examples import ExampleLoader, InputShapes
from gemb.data.media.audio import decode_audio
from gemb.data.pipeline import task_registry
from gemb.data.tokenizer import Tokenizer
from gemb.model.embedder_model import MultimodalEmbedder, matryoshka
from gemb.serving import Embedder, InputError
from gemb.serving.preprocess import stack_sides

DIMS = (8, 16, 32)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="session")
def records():
  return fx.records()




def in_framework(params, workdir, task_name, side, recs, dims):
  """{dim: embeddings} of the training pipeline's packing and the flax model."""
  config = fx.small_config()
  task = task_registry(config)[task_name]
  tokenizer = Tokenizer.load(os.path.join(workdir, "tokenizer.model"))
  loader = ExampleLoader(task, recs, np.arange(len(recs)), tokenizer,
                         InputShapes.from_config(config), split="test", instructions=True)
  examples = [loader.load(i)[side] for i in range(len(recs))]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MultimodalEmbedder(config.model,
                                                                    rngs=nnx.Rngs(0))))
  raw = jax.jit(lambda p, s: nnx.merge(graphdef, p)(s))(params, batch)
  return {d: np.asarray(matryoshka(raw, d)) for d in dims}


@pytest.mark.parametrize("task", sorted(fx.TASKS))
def test_bundle_equals_in_framework_model(task, embedder, run_dir, records):
  """Queries (with the task instruction) and candidates (without), at every dim."""
  query_segments, candidate_segments = fx.TASKS[task]
  expected = {}
  for side, segments, task_arg in (("query", query_segments, task),
                                   ("candidate", candidate_segments, None)):
    expected[side] = in_framework(run_dir[1][3], run_dir[0], task, side, records, DIMS)
    items = [fx.item(r, segments) for r in records]
    for dim in DIMS:
      got = embedder.embed(items, task=task_arg, dim=dim)
      assert got.shape == (len(records), dim) and got.dtype == np.float32
      np.testing.assert_allclose(got, expected[side][dim], atol=1e-5,
                                 err_msg=f"{side} dim {dim}")
  # The instruction matters: the same query without it is another embedding.
  plain = embedder.embed([fx.item(r, query_segments) for r in records], dim=32)
  assert np.abs(plain - expected["query"][32]).max() > 1e-3


def test_python_values_equal_encoded_bytes(embedder, records, tmp_path):
  """Paths, decoded arrays and an audio array with its rate give the bytes' embeddings."""
  rec = records[1]
  path = tmp_path / "img.png"
  path.write_bytes(rec["i"])
  samples, rate = decode_audio(rec["a"])
  frames = [np.asarray(Image.open(io.BytesIO(f))) for f in rec["v"]]
  by_bytes = embedder.embed([{"image": rec["i"]}, {"audio": rec["a"]}, {"video": rec["v"]}])
  by_value = embedder.embed([{"image": str(path)}, {"audio": samples, "sample_rate": rate},
                             {"video": frames}])
  np.testing.assert_allclose(by_value, by_bytes, atol=1e-6)


def test_bfloat16_bundle(run_dir, embedder, records, tmp_path):
  """bf16 params: the bundle equals the flax model run with the same bf16 params."""
  out = fx.make_bundle(run_dir[0], str(tmp_path / "bf16"), dtype="bfloat16", saved_model="no")
  bf16 = Embedder.load(out)
  assert bf16.manifest["params"]["dtype"] == "bfloat16"
  assert all(p.dtype == ml_dtypes.bfloat16 for p in bf16.params)
  params = jax.tree.map(lambda x: x.astype(ml_dtypes.bfloat16), run_dir[1][3])
  segments = fx.TASKS["k_mixed"][0]
  expected = in_framework(params, run_dir[0], "k_mixed", "query", records, (16,))[16]
  got = bf16.embed([fx.item(r, segments) for r in records], task="k_mixed", dim=16)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  f32 = embedder.embed([fx.item(r, segments) for r in records], task="k_mixed", dim=16)
  assert 1e-4 < np.abs(got - f32).max() < 0.1  # bf16 rounding shows, but only a little


def test_bad_items_are_named(embedder, records):
  cases = [
      ([{"image": b"not an image"}], r"inputs\[0\]\.image: cannot decode image"),
      ([[records[0]["t"], {"audio": b"RIFF...."}]], r"inputs\[0\]\[1\].audio: cannot decode audio"),
      ([{"text": 3}], r"inputs\[0\].text: expected a string, got int"),
      ([{"image": records[0]["i"], "text": "x"}], "exactly one key"),
      ([[]], "at least one segment"),
      ([[{"image": records[0]["i"]}] * 3], "do not fit the bundle's entry points"),
      ([""], "empty text"),
  ]
  for items, message in cases:
    with pytest.raises(InputError, match=message):
      embedder.embed(items)
  with pytest.raises(InputError, match="unknown task 'nope'; known"):
    embedder.embed(["a"], task="nope")
  for dim in (0, 33, 2.5, True):
    with pytest.raises(InputError, match=r"impossible: an integer in \[1, 32\]"):
      embedder.embed(["a"], dim=dim)
  with pytest.raises(InputError, match="wrap a single item"):
    embedder.embed("a red heart")


_FRESH = """
import json, sys
import numpy as np
from gemb.serving import Embedder
model = Embedder.load(sys.argv[1])
items = json.loads(sys.argv[2])
out = model.embed(items, task="k_text", dim=16)
banned = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "orbax", "grain",
                                                              "tensorflow_datasets")
                or m.startswith(("gemb.model", "gemb.train")))
print(json.dumps({"banned": banned, "embeddings": out.tolist()}))
"""


def test_fresh_process_loads_bundle_without_flax_or_model_code(bundle_dir, embedder):
  items = ["red heart", ["a cat with a hat", "blue square"]]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", _FRESH, bundle_dir, json.dumps(items)],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["banned"] == []
  np.testing.assert_allclose(result["embeddings"], embedder.embed(items, task="k_text", dim=16),
                             atol=1e-6)


_SAVED_MODEL = """
import sys
import numpy as np
import tensorflow as tf
loaded = tf.saved_model.load(sys.argv[1])
inputs = np.load(sys.argv[2])
out = {}
for entry in sorted({k.split("/")[0] for k in inputs.files}):
  fn = loaded.signatures[entry]
  args = {k.split("/")[1]: tf.constant(inputs[k]) for k in inputs.files if k.startswith(entry + "/")}
  out[entry] = fn(**args)["embedding"].numpy()
np.savez(sys.argv[3], **out)
"""


def test_saved_model_reloads_in_fresh_process_and_matches(bundle_dir, embedder, records,
                                                          tmp_path):
  pytest.importorskip("tensorflow", reason="the serving extra (tensorflow-cpu) is not installed")
  assert embedder.manifest["saved_model"]["signatures"] == sorted(embedder.entry_points)
  inputs, expected = {}, {}
  for task, (query, _) in fx.TASKS.items():
    prepared = [embedder.prepare(fx.item(r, query), task) for r in records]
    entry = prepared[0][0]
    side = stack_sides([s for _, s in prepared])
    inputs.update({f"{entry}/{k}": v for k, v in side.items()})
    expected[entry] = embedder.embed_prepared(prepared)
  np.savez(tmp_path / "in.npz", **inputs)
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", _SAVED_MODEL,
                         os.path.join(bundle_dir, "saved_model"), str(tmp_path / "in.npz"),
                         str(tmp_path / "out.npz")], capture_output=True, text=True, cwd=REPO,
                        env=env, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")
  assert sorted(got.files) == sorted(expected) == sorted(fx.TASKS and expected)
  for entry, raw in expected.items():
    np.testing.assert_allclose(got[entry], raw, atol=1e-5, err_msg=entry)
