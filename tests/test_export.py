"""Checkpoint soups and the bundle that python -m gemb.export writes."""

import json
import os
import shutil

import jax
import ml_dtypes
import numpy as np
import pytest
from absl import app

import export_fixtures as fx
from export_fixtures import bundle_dir, run_dir  # noqa: F401 (pytest fixtures)
from configs import default
from gemb.data import sources
from gemb.run import soup
from gemb.export import writer
from gemb.export.__main__ import parse_slots, restore_target, run
from gemb.serving import bundle




def test_uniform_soup_equals_numpy_mean():
  rng = np.random.default_rng(0)
  trees = [{"a": rng.standard_normal((3, 4)).astype(np.float32),
            "b": {"c": rng.standard_normal(5).astype(ml_dtypes.bfloat16)}} for _ in range(4)]
  out = soup.uniform_soup(iter(trees))  # a generator: one checkpoint at a time
  np.testing.assert_allclose(out["a"], np.mean([t["a"] for t in trees], axis=0), atol=1e-6)
  assert out["b"]["c"].dtype == ml_dtypes.bfloat16
  np.testing.assert_allclose(
      out["b"]["c"].astype(np.float32),
      np.mean([t["b"]["c"].astype(np.float64) for t in trees], axis=0), rtol=1e-2)
  # Sharded global arrays stay sharded (the trainer's end-of-run soup).
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  sharded = [{"w": jax.device_put(rng.standard_normal(16).astype(np.float32), sharding)}
             for _ in range(3)]
  averaged = soup.uniform_soup(sharded)["w"]
  assert averaged.sharding == sharding
  np.testing.assert_allclose(averaged, np.mean([np.asarray(t["w"]) for t in sharded], 0),
                             atol=1e-6)
  with pytest.raises(ValueError, match="at least one"):
    soup.uniform_soup([])
  with pytest.raises(ValueError, match="another parameter structure"):
    soup.uniform_soup([{"a": np.zeros(2, np.float32)}, {"b": np.zeros(2, np.float32)}])


def test_soup_of_checkpoints_equals_mean_of_saved_params(run_dir):
  from gemb.run.workdir import load_config
  from gemb.run.checkpoint import Checkpointer
  workdir, saved = run_dir
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    target = restore_target(load_config(workdir))
    out = soup.soup_of_checkpoints(ckpt, [1, 3], target)
    with pytest.raises(ValueError, match=r"no checkpoint for step\(s\) \[7\]"):
      soup.soup_of_checkpoints(ckpt, [1, 7], target)
  finally:
    ckpt.close()
  expected = jax.tree.map(lambda a, b: (a.astype(np.float64) + b) / 2, saved[1], saved[3])
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=1e-6), out, expected)


def test_bundle_files_manifest_and_checksums(bundle_dir, run_dir):
  manifest = bundle.read_manifest(bundle_dir)  # verifies every sha256
  assert manifest["source"] == {"workdir": run_dir[0], "steps": [3], "soup": False}
  assert set(manifest["entry_points"]) == {"text", "image", "audio", "video", "interleaved"}
  assert manifest["entry_points"]["interleaved"]["slots"] == {"text": 4, "image": 2, "audio": 2,
                                                              "video": 1}
  assert manifest["entry_points"]["image"]["inputs"]["image"]["shape"] == ["b", "1", "16", "16",
                                                                           "3"]
  assert manifest["model"]["embed_dim"] == 32 and manifest["params"]["dtype"] == "float32"
  for name in ("jax", "jaxlib", "flax", "gemb"):
    assert manifest["versions"][name]
  for rel in (bundle.CONFIG, bundle.PREPROCESS, bundle.TOKENIZER, bundle.PARAMS,
              "stablehlo/interleaved.bin"):
    assert rel in manifest["files"]
  spec = bundle.read_json(os.path.join(bundle_dir, bundle.PREPROCESS))
  assert spec["instructions"] and spec["tasks"]["k_mixed"]["instruction"] == fx.INSTRUCTION
  assert spec["shapes"]["audio_samples"] == 4000 and spec["shapes"]["video_frames"] == 4
  # The stored params are those of the latest checkpoint.
  names, arrays = bundle.load_params(bundle_dir)
  flat = dict(zip(names, arrays))
  np.testing.assert_array_equal(flat["head/kernel"], fx.make_workdir(run_dir[0])[1][3]["head"]
                                ["kernel"])


def test_default_recipes_tasks_describe_themselves():
  """Every task of configs/default.py (retrieval and zero-shot classification) goes into a
  bundle's task table."""
  tasks = writer.task_instructions(default.get_config())
  assert tasks["emoji_group_zero_shot"] == {
      "instruction": sources.BUILTIN_TASKS["emoji_group_zero_shot"].instruction,
      "description": sources.BUILTIN_TASKS["emoji_group_zero_shot"].description,
      "query": ["image"], "candidate": ["text"]}
  assert tasks["video_narrated_to_text"]["query"] == ["video", "audio"]
  assert set(tasks) == set(default.EVAL_TASKS) == set(sources.BUILTIN_TASKS)


def test_corrupt_bundle_is_refused(bundle_dir, tmp_path):
  copy = str(tmp_path / "copy")
  shutil.copytree(bundle_dir, copy)
  with open(os.path.join(copy, bundle.PARAMS), "r+b") as f:
    f.seek(-8, os.SEEK_END)
    f.write(b"corrupt!")
  with pytest.raises(bundle.BundleError, match="params.npz does not match its sha256"):
    bundle.read_manifest(copy)
  os.remove(os.path.join(copy, bundle.MANIFEST))
  with pytest.raises(bundle.BundleError, match="not a gemb serving bundle"):
    bundle.read_manifest(copy)


def test_soup_export_and_cli_errors(run_dir, tmp_path):
  workdir, saved = run_dir
  out = str(tmp_path / "soup")
  manifest = run(workdir, out, soup_steps=["2", "3"], saved_model="no",
                 slots={"image": 1, "video": 0}, platforms=("cpu", "cuda"))
  assert manifest["source"]["steps"] == [2, 3] and manifest["source"]["soup"]
  with open(os.path.join(out, "stablehlo", "text.bin"), "rb") as f:
    assert jax.export.deserialize(bytearray(f.read())).platforms == ("cpu", "cuda")
  assert manifest["entry_points"]["interleaved"]["slots"] == {"text": 4, "image": 1, "audio": 2}
  names, arrays = bundle.load_params(out)
  expected = (saved[2]["head"]["kernel"] + saved[3]["head"]["kernel"]) / 2
  np.testing.assert_allclose(dict(zip(names, arrays))["head/kernel"], expected, atol=1e-6)
  with pytest.raises(app.UsageError, match="exists"):
    run(workdir, out)
  with pytest.raises(app.UsageError, match=r"no checkpoint for step\(s\) \[9\]; available "
                                           r"steps: \[1, 2, 3\]"):
    run(workdir, str(tmp_path / "x"), step=9)
  with pytest.raises(app.UsageError, match="at most one of"):
    run(workdir, str(tmp_path / "x"), step=1, soup=True)
  with pytest.raises(app.UsageError, match="modality=count"):
    parse_slots(["image:2"])
  assert not os.path.exists(tmp_path / "x")
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["embed_dim"] == 32
