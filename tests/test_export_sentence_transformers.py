"""python -m gemb.export --format=sentence-transformers: stock sentence-transformers (torch, CPU)
loads the directory and embeds texts as gemb's own model does, prompts included.

The reference is gemb in-framework: the run's restored params in MultimodalEmbedder (flax),
fed by gemb's serving preprocessing (the run's tokenizer, its truncation, the task
instruction joined to the text), L2-normalized Matryoshka prefixes. Runs: all-MiniLM-L6-v2
trained for a few steps by gemb's trainer (BERT, text + image: the export drops the image
path with a warning); a small random Gemma 3 saved as a Hugging Face directory (untrained,
gemb's own head: LayerNorm + Dense); the real EmbeddingGemma-300M, untrained (slow).
"""

import functools
import json
import os
import subprocess
import sys

import grain
import jax
import numpy as np
import pytest
from flax import nnx

from backbone_fixtures import minilm_dir, minilm_reference, tiny_tokenizer_json
from test_gemma3 import CONFIG as TINY_GEMMA, hf_tensors as gemma_tensors
from configs import backbone_smoke, tiny
from configs.common import stage
from gemb.data.tokenizer import backbone_tokenizer
from gemb.model import backbone, bert, gemma3

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK = "emoji_name_to_image"  # text queries, with an instruction
TEXT_TASK = "wordnet_word_to_definition"


def texts64():
  """64 texts: 8 languages, code, emoji, 3..256 MiniLM tokens (the backbone fixture's but
  its empty text, which gemb refuses to embed)."""
  texts = [t for t in minilm_reference()["texts"] if t.strip()][:64]
  assert len(texts) == 64
  return texts


@functools.lru_cache(maxsize=2)
def gemb_model(workdir):
  """(jitted forward of the run's latest params, preprocess spec, tokenizer, slots)."""
  import dataclasses

  from gemb.data import tokenizer as tokenizers
  from gemb.data.examples import InputShapes
  from gemb.export.__main__ import restore_params, select_steps
  from gemb.export.writer import entry_point_slots, task_instructions
  from gemb.model.embedder_model import MultimodalEmbedder
  from gemb.run.workdir import load_config, tokenizer_path

  config = load_config(workdir)
  params = restore_params(workdir, config, select_steps(workdir))
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MultimodalEmbedder(config.model,
                                                                    rngs=nnx.Rngs(0))))
  model = nnx.merge(graphdef, params)
  spec = {"shapes": dataclasses.asdict(InputShapes.from_config(config)),
          "tasks": task_instructions(config), "instructions": bool(config.data.instructions)}
  return (jax.jit(lambda side: model(side)), spec, tokenizers.load(tokenizer_path(workdir)),
          entry_point_slots(tuple(config.model.modalities)))


def gemb_embeddings(workdir, texts, task=None, dim=None):
  """gemb's embeddings of ``texts`` (with ``task``'s instruction) by the run's flax model.

  Texts are batched by length, each bucket's text slots no longer than its longest text
  needs (at most the run's): padding is masked, so only the compute changes.
  """
  from gemb.model.embedder_model import matryoshka
  from gemb.serving.preprocess import Preprocessor, stack_sides

  forward, spec, tokenizer, slots = gemb_model(workdir)
  shapes = spec["shapes"]
  full = Preprocessor(spec, tokenizer, slots)
  lengths = [int((full(t, task)[1]["text"] != 0).sum()) for t in texts]
  buckets = {}
  for i, n in enumerate(lengths):
    buckets.setdefault(min(shapes["text_len"], 1 << max(4, (n - 1).bit_length())), []).append(i)
  raw = [None] * len(texts)
  for text_len, rows in sorted(buckets.items()):
    prep = Preprocessor(dict(spec, shapes=dict(shapes, text_len=text_len)), tokenizer, slots)
    size = max(1, min(16, 4096 // text_len))  # bounded attention memory for long texts
    for start in range(0, len(rows), size):
      chunk = rows[start:start + size]
      out = np.asarray(forward(stack_sides([prep(texts[i], task)[1] for i in chunk], size)))
      for i, row in zip(chunk, out):
        raw[i] = row
  raw = np.stack(raw)
  return np.asarray(matryoshka(raw, dim or raw.shape[-1]))


def cosines(a, b):
  return np.sum(a * b, -1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def assert_same(ours, theirs):
  assert ours.shape == theirs.shape
  cos = cosines(ours, theirs)
  print(f"sentence-transformers reload vs gemb: min cosine {cos.min():.8f} over {len(cos)} texts")
  assert cos.min() >= 0.9999, (cos.min(), np.argmin(cos))


def export(workdir, out, *flags):
  """The CLI as a user runs it -> CompletedProcess (stderr: its log and messages)."""
  return subprocess.run([sys.executable, "-m", "gemb.export", "--format=sentence-transformers",
                         f"--workdir={workdir}", f"--out={out}", *flags], cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def write_run(workdir, config, rng_seed=0):
  """An untrained run's workdir as the trainer starts it: config.json, the backbone's
  tokenizer.json, and checkpoint 0 holding the pretrained weights (the rest random)."""
  from gemb.model.embedder_model import MultimodalEmbedder
  from gemb.run.checkpoint import Checkpointer
  from gemb.trees import param_path

  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  backbone_tokenizer(backbone.resolve(config.model)).save(
      os.path.join(workdir, "tokenizer.json"))
  pretrained = backbone.pretrained_params(config.model)
  rng = np.random.default_rng(rng_seed)
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(
      lambda: MultimodalEmbedder(config.model, rngs=nnx.Rngs(0)))))
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: pretrained.get(param_path(p), (float(str(p[-1]) == "['scale']") + 0.3 * rng.standard_normal(x.shape)).astype(np.float32)),
      abstract)
  ckpt = Checkpointer(workdir, async_save=False)
  ckpt.save(0, {"step": np.zeros((), np.int32), "params": params},
            iter(grain.MapDataset.range(1).to_iter_dataset()), {"stage_index": 0}, force=True)
  ckpt.wait()
  ckpt.close()
  return params


# ---- all-MiniLM-L6-v2 trained by gemb.

@pytest.fixture(scope="module")
def minilm_run(tmp_path_factory):
  """backbone_smoke's model (MiniLM + an image embedder) trained 3 steps on name -> image
  with task instructions; text slots of 64 tokens, so the 64 texts are cut where gemb cuts."""
  from gemb.train.loop import train_and_evaluate

  c = backbone_smoke.get_config()
  c.model.text.max_len = 64
  c.stages = [stage("finetune", 3, data=dict(tasks=(TASK,), weights=(1.0,)))]
  c.eval.tasks, c.soup.kind = (), "none"
  c.train.checkpoint_every = 3
  c.optimizer.update(learning_rate=3e-4, warmup_steps=1)
  workdir = str(tmp_path_factory.mktemp("minilm_run"))
  train_and_evaluate(c, workdir)
  return workdir


def test_trained_minilm_run_loads_in_sentence_transformers(minilm_run, tmp_path):
  from safetensors.numpy import load_file
  from sentence_transformers import SentenceTransformer

  from gemb.export.__main__ import restore_params
  from gemb.run.workdir import load_config

  out = str(tmp_path / "st")
  done = export(minilm_run, out)
  assert done.returncode == 0, done.stderr[-3000:]
  # The image path is left out, loudly.
  assert "exports the text path only: the run's image modality" in done.stderr
  with open(os.path.join(out, "gemb_export.json")) as f:
    record = json.load(f)
  assert record["dropped_modalities"] == ["image"] and record["source"]["steps"] == [3]
  with open(os.path.join(out, "sentence_bert_config.json")) as f:
    assert json.load(f)["max_seq_length"] == 64
  with open(os.path.join(out, "modules.json")) as f:
    assert [m["type"].rsplit(".", 1)[1] for m in json.load(f)] == ["Transformer", "Pooling",
                                                                    "Normalize"]

  # The weights are the trained ones, in BertModel's names (the inverse of the import).
  config = load_config(minilm_run)
  params = jax.device_get(restore_params(minilm_run, config, [3]))
  ck = backbone.resolve(config.model)
  written = load_file(os.path.join(out, "model.safetensors"))
  jax.tree.map(np.testing.assert_array_equal, bert.params_from_hf(written, ck.hf_config),
               params["encoder"])
  original = backbone.read_safetensors(ck.path)
  assert set(written) == set(original) - {"embeddings.position_ids"}  # the pooler kept too

  st = SentenceTransformer(out, device="cpu")
  texts = texts64()
  with open(os.path.join(out, "config_sentence_transformers.json")) as f:
    prompts = json.load(f)["prompts"]
  assert prompts == {TASK: "task: image retrieval | query: "}
  for task in (None, TASK):
    theirs = st.encode(texts, prompt_name=task, batch_size=16)
    assert_same(gemb_embeddings(minilm_run, texts, task), theirs)
  # Matryoshka: truncate and renormalize in sentence-transformers = gemb's dim 64.
  assert_same(gemb_embeddings(minilm_run, texts, TASK, dim=64),
              st.encode(texts, prompt_name=TASK, truncate_dim=64, normalize_embeddings=True))
  # The run moved the model: the untrained checkpoint embeds differently (this test would
  # see an export of the wrong weights).
  untrained = SentenceTransformer(minilm_dir(), device="cpu").encode(texts)
  assert cosines(untrained, st.encode(texts)).min() < 0.999


# ---- Refusals: one line, exit 1, naming the family and the supported ones.

def test_gemb_own_transformer_is_refused_in_one_line(tmp_path):
  import export_fixtures as fx

  workdir, _ = fx.make_workdir(str(tmp_path / "run"))
  done = export(workdir, str(tmp_path / "st"))
  assert done.returncode == 1
  lines = [line for line in done.stderr.splitlines() if line.startswith("gemb.export: ")]
  assert len(lines) == 1, done.stderr[-2000:]
  assert "model.backbone.family='gemb'" in lines[0] and "family bert, gemma3" in lines[0]
  assert "Traceback" not in done.stderr and not os.path.exists(tmp_path / "st")
  # Bundle-only flags are named rather than ignored.
  done = export(workdir, str(tmp_path / "st"), "--dtype=bfloat16")
  assert done.returncode == 1 and "--dtype: bundle flags" in done.stderr


def test_what_sentence_transformers_cannot_compute_is_refused():
  from gemb.export.sentence_transformers_dir import Refusal, check

  c = backbone_smoke.get_config()
  assert check(c)[1] == ["image"]
  c.model.backbone.pooling = "attention"
  with pytest.raises(Refusal, match="pooling='attention'.*supports pooling mean, first"):
    check(c)
  c.model.backbone.pooling, c.model.modalities = "", ("image",)
  with pytest.raises(Refusal, match=r"has no text"):
    check(c)


# ---- Gemma 3: a small random one (fast), and EmbeddingGemma-300M (slow).

GEMMA_PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def write_tiny_gemma(directory):
  """A small random Gemma 3 (test_gemma3's config: GQA, a 6-wide sliding window, linear
  RoPE scaling) as a Hugging Face / sentence-transformers directory with prompts."""
  from safetensors.numpy import save_file

  os.makedirs(directory)
  cfg = dict(TINY_GEMMA, architectures=["Gemma3TextModel"], pad_token_id=0,
             max_position_embeddings=128)
  with open(os.path.join(directory, "config.json"), "w") as f:
    json.dump(cfg, f)
  save_file(gemma_tensors(), os.path.join(directory, "model.safetensors"),
            metadata={"format": "pt"})
  with open(os.path.join(directory, "tokenizer.json"), "w") as f:
    f.write(tiny_tokenizer_json(TINY_GEMMA["vocab_size"]))
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "pad_token": "[PAD]",
               "unk_token": "[UNK]", "model_max_length": 512}, f)
  with open(os.path.join(directory, "config_sentence_transformers.json"), "w") as f:
    json.dump({"prompts": GEMMA_PROMPTS, "default_prompt_name": None}, f)
  return directory


def gemma_run_config(checkpoint, *, head, embed_dim, text_len):
  c = tiny.get_config()
  c.model.modalities = ("text",)
  c.model.backbone.update(dict(family="auto", checkpoint=checkpoint, pooling="", head=head))
  c.model.update(embed_dim=embed_dim, scan_layers=True)
  c.model.text.max_len = text_len
  c.data.update(tasks=(TEXT_TASK,), weights=(1.0,), instructions=True)
  c.eval.tasks = (TEXT_TASK,)
  c.loss.matryoshka_dims, c.loss.matryoshka_weights = (embed_dim,), (1.0,)
  c.stages = [stage("only", 1)]
  return c


def test_small_random_gemma3_with_gemb_head(tmp_path):
  from sentence_transformers import SentenceTransformer

  from gemb.export.__main__ import run

  source = write_tiny_gemma(str(tmp_path / "tiny_gemma"))
  workdir = str(tmp_path / "run")
  params = write_run(workdir, gemma_run_config(source, head="gemb", embed_dim=24, text_len=40))
  out = str(tmp_path / "st")
  record = run(workdir, out, format="sentence-transformers")
  assert record["dropped_modalities"] == [] and record["max_seq_length"] == 40
  with open(os.path.join(out, "modules.json")) as f:
    assert [m["type"].rsplit(".", 1)[1] for m in json.load(f)] == [
        "Transformer", "Pooling", "LayerNorm", "Dense", "Normalize"]
  with open(os.path.join(out, "config.json")) as f:
    assert json.load(f)["use_bidirectional_attention"] is True
  from safetensors.numpy import load_file
  # Exact inverse: the written tensors are the source's (the run is untrained).
  written, original = load_file(os.path.join(out, "model.safetensors")), gemma_tensors()
  assert set(written) == set(original)
  for name in original:
    np.testing.assert_array_equal(written[name], original[name], err_msg=name)
  jax.tree.map(np.testing.assert_array_equal, gemma3.params_from_hf(written, TINY_GEMMA),
               params["encoder"])

  st = SentenceTransformer(out, device="cpu")
  texts = texts64()
  lengths = st.preprocess(texts)["attention_mask"].sum(1).tolist()
  assert max(lengths) == 40 and min(lengths) < 6  # truncated ones and ones inside the window
  with open(os.path.join(out, "config_sentence_transformers.json")) as f:
    prompts = json.load(f)["prompts"]
  assert prompts == dict(GEMMA_PROMPTS, **{TEXT_TASK: "task: dictionary lookup | query: "})
  for task in (None, "query", TEXT_TASK):
    assert_same(gemb_embeddings(workdir, texts, task), st.encode(texts, prompt_name=task))


@pytest.mark.slow  # 11 min, >10 GB on 2 CPU cores: 300M params through gemb and through torch
def test_embeddinggemma_300m_through_the_export(tmp_path):
  from safetensors.numpy import load_file
  from sentence_transformers import SentenceTransformer

  from gemb.export.__main__ import run
  from gemb.pretrained import safetensors_file
  from gemb.pretrained.fetch import default_dir

  path = os.environ.get("GEMB_GEMMA_DIR") or default_dir("embeddinggemma-300m")
  if not os.path.exists(os.path.join(path, "model.safetensors")):
    pytest.fail(f"EmbeddingGemma-300M not in {path}: python -m gemb.pretrained fetch "
                "embeddinggemma-300m (.ci/run does)")
  workdir = str(tmp_path / "run")
  write_run(workdir, gemma_run_config(path, head="st", embed_dim=768, text_len=1024))
  out = str(tmp_path / "st")
  run(workdir, out, format="sentence-transformers")
  written = load_file(os.path.join(out, "model.safetensors"))
  original = safetensors_file.load(os.path.join(path, "model.safetensors"))
  assert set(written) == set(original)
  for name in original:
    np.testing.assert_array_equal(written[name], original[name], err_msg=name)
  del written, original

  st = SentenceTransformer(out, device="cpu")
  with np.load(os.path.join(ROOT, "tests", "fixtures", "backbones", "embeddinggemma-300m.npz")) as z:
    # 8 to 1574 tokens (cut at 1024 by both), 6 past the 512-token sliding window.
    texts = [str(t) for t in z["texts"]][-64:]
  for task in ("query", None):
    assert_same(gemb_embeddings(workdir, texts, task), st.encode(texts, prompt_name=task,
                                                                 batch_size=8))
