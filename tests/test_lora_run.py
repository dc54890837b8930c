"""LoRA in a real run: the trainer trains only the adapters (the base is bitwise frozen;
a stage's ``freeze`` holds the adapters of the kernels it names),
checkpoints resume them bitwise, and the export merges them into the kernels (the bundle,
with no LoRA code path, embeds as the in-framework model with adapters does)."""

import os
import shutil

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import tiny
from configs.common import stage

TASK = "emoji_image_to_name"
STEPS = 4


def lora_config(data_dir):
  c = tiny.get_config()
  c.model.update(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32)
  c.model.lora.update(rank=4, alpha=8.0)
  c.data.update(batch_size=16, data_dir=data_dir, builtin_config="small", tokenizer_texts=2000)
  c.loss.update(matryoshka_dims=(16, 32), matryoshka_weights=(1.0, 1.0))
  # The first stage freezes the attention kernels, and with them their adapters.
  c.stages = [stage("align", STEPS // 2, freeze="^encoder/blocks/attn/"),
              stage("train", STEPS // 2)]
  c.train.update(checkpoint_every=2, log_every=2, keep_checkpoints=3)
  c.eval.update(dims=(32,), tasks=(TASK,))
  c.soup.kind = "none"
  return c


def saved_state(workdir, step):
  return ocp.PyTreeCheckpointer().restore(os.path.join(workdir, "checkpoints", str(step),
                                                       "state"))


def flat(tree):
  from gemb.trees import param_path
  return {param_path(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return str(tmp_path_factory.mktemp("tfds"))  # the small emoji dataset builds in seconds


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, data_dir):
  from gemb.train.loop import train_and_evaluate
  workdir = str(tmp_path_factory.mktemp("lora") / "run")
  train_and_evaluate(lora_config(data_dir), workdir)
  return workdir


def test_only_the_adapters_train_and_a_stages_freeze_holds_its_kernels_adapters(lora_run,
                                                                                data_dir):
  from gemb import parallel
  from gemb.run.state import LOSS_PARAMS, create_train_state

  c = lora_config(data_dir)
  _, init = create_train_state(c, parallel.make_mesh(c.mesh))
  final = saved_state(lora_run, STEPS)
  base0, base = flat(init["params"]), flat(final["params"])
  assert base.keys() == base0.keys()
  for name in base:
    if name not in LOSS_PARAMS:
      np.testing.assert_array_equal(base[name], base0[name], err_msg=name)  # bitwise frozen
  lora0, lora = flat(init["lora"]), flat(final["lora"])
  assert sorted(lora) == sorted(f"encoder/blocks/{k}/{ab}" for k in (
      "attn/out", "attn/qkv", "mlp/down/kernel", "mlp/up/kernel") for ab in ("a", "b"))
  for name in lora:
    assert not np.array_equal(lora[name], lora0[name]), name  # every adapter trained
    if name.endswith("/b"):
      assert not lora0[name].any()
  # Through the first stage the attention adapters stayed at their init, the MLP's trained.
  first = flat(saved_state(lora_run, STEPS // 2)["lora"])
  for name in lora:
    if "/attn/" in name:
      np.testing.assert_array_equal(first[name], lora0[name], err_msg=name)
    else:
      assert not np.array_equal(first[name], lora0[name]), name
  # Adam's moments exist for the adapters and the loss's scalars only.
  moments = {n.split("/mu/")[1] for n in flat(final["opt_state"]) if "/mu/" in n}
  assert moments == {f"lora/{n}" for n in lora} | {f"params/{n}" for n in LOSS_PARAMS}


def test_resume_restores_the_adapters_bitwise(lora_run, data_dir, tmp_path):
  from gemb.train.loop import train_and_evaluate
  workdir = str(tmp_path / "resumed")
  shutil.copytree(lora_run, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))  # killed after step 2
  train_and_evaluate(lora_config(data_dir), workdir)
  resumed, uninterrupted = flat(saved_state(workdir, STEPS)), flat(saved_state(lora_run, STEPS))
  assert resumed.keys() == uninterrupted.keys()
  assert any(k.startswith("lora/") for k in resumed)
  for name in resumed:
    np.testing.assert_array_equal(resumed[name], uninterrupted[name], err_msg=name)


def test_export_merges_the_adapters(lora_run, data_dir, tmp_path):
  from flax import nnx

  from gemb.data.pipeline import get_tasks, open_split, retrieval_corpus
  from gemb.data.tokenizer import Tokenizer
  from gemb.export.__main__ import run
  from gemb.model.embedder_model import MultimodalEmbedder
  from gemb.model.lora import LoRA
  from gemb.serving import Embedder, bundle

  c = lora_config(data_dir)
  run(lora_run, str(tmp_path / "bundle"), saved_model="no")
  model = Embedder.load(str(tmp_path / "bundle"))
  names, arrays = bundle.load_params(str(tmp_path / "bundle"))
  exported = dict(zip(names, arrays))

  # The bundle's kernels are W + alpha / r * A @ B, in numpy.
  state = saved_state(lora_run, STEPS)
  base, pairs = flat(state["params"]), flat(state["lora"])
  adapters = LoRA(c.model)
  for name, (_, shape, batch, n_in) in adapters.views.items():
    a, b = pairs[name + "/a"].astype(np.float64), pairs[name + "/b"].astype(np.float64)
    expected = base[name] + (8.0 / 4) * np.matmul(a, b).reshape(shape)
    np.testing.assert_allclose(exported[name], expected, rtol=1e-6, atol=1e-6, err_msg=name)
    assert np.abs(exported[name] - base[name]).max() > 1e-4, name  # the adapters did move it
  assert not any("lora" in n for n in names)

  # ... and it embeds as the in-framework model with the adapters (unmerged in the state).
  from gemb.run.state import Trainable
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MultimodalEmbedder(c.model, rngs=nnx.Rngs(0))))
  effective = Trainable(c.model).effective(jax.tree.map(jax.numpy.asarray, state))
  task = get_tasks(c, [TASK])[0]
  corpus = retrieval_corpus(c, task, Tokenizer.load(os.path.join(lora_run, "tokenizer.model")))
  source = open_split(c, task, task.eval_split)
  n = 16
  side = jax.tree.map(lambda x: x[:n], corpus["queries"])
  in_framework = np.asarray(nnx.merge(graphdef, effective)(side))
  items = [{"image": source[int(r)]["image"]} for r in corpus["query_records"][:n]]
  served = model.embed(items, task=TASK)
  np.testing.assert_allclose(served, in_framework / np.linalg.norm(in_framework, axis=1,
                                                                   keepdims=True), atol=1e-5)
