"""gemb.integrations.mteb: mteb 2.x over a gemb serving bundle, offline.

The round trip: three built-in gemb tasks (text -> text, image -> text, audio -> text) become
local mteb retrieval tasks, ``mteb.evaluate`` scores a bundle on them through GembEncoder,
and its NDCG@10 must equal gemb's own metric code on the same bundle's embeddings of the
same raw records (read here straight from the dataset, as bytes: the mteb side goes
through datasets' PIL images and decoded audio arrays instead).
"""

import os

# No hub access: every dataset and model here is local (the machine has no network anyway;
# offline mode makes a stray hub call fail at once instead of retrying).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"

import io  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

mteb = pytest.importorskip("mteb", reason="the mteb extra is not installed (bash "
                           "launch/install.sh --serving installs it, as CI does)")

from gemb.integrations.mteb import GembEncoder, retrieval_task  # noqa: E402
from export_fixtures import (bundle_dir, embedder, make_bundle, records,  # noqa: E402,F401
                             run_dir, small_config, write_run)

TASKS = ("wordnet_word_to_definition", "emoji_image_to_name", "speech_audio_to_text")


@pytest.fixture(scope="module")
def builtin_bundle(tmp_path_factory):
  """A random-init bundle whose config evaluates TASKS on the small built-in datasets, with
  a tokenizer of their texts (so distinct texts get distinct tokens)."""
  from gemb.data.pipeline import get_tasks, open_split

  root = tmp_path_factory.mktemp("mteb")
  c = small_config()
  c.model.text.update(vocab_size=2000, max_len=32)
  c.data.update(vocab_size=2000, builtin_config="small", data_dir=str(root / "tfds"))
  c.eval.tasks = TASKS
  texts = []
  for task in get_tasks(c, TASKS):
    source = open_split(c, task, task.eval_split)
    texts += [source[i][s.field].decode() for i in range(len(source))
              for s in task.query + task.candidate if s.modality == "text"]
    texts.append(task.instruction)
  write_run(str(root / "run"), c, texts)
  return make_bundle(str(root / "run"), str(root / "bundle"), saved_model="no")


@pytest.fixture(scope="module")
def builtin_encoder(builtin_bundle):
  return GembEncoder(builtin_bundle)


@pytest.mark.parametrize("name", TASKS)
def test_mteb_evaluate_scores_gemb_tasks_as_gemb_eval(builtin_bundle, builtin_encoder, name):
  from gemb.data.pipeline import get_tasks, open_split, retrieval_corpus
  from gemb.data.tokenizer import Tokenizer
  from gemb.run.workdir import load_config
  from gemb.eval.retrieval import retrieval_metrics

  config = load_config(builtin_bundle)
  tokenizer = Tokenizer.load(os.path.join(builtin_bundle, "tokenizer.model"))
  model = builtin_encoder
  # Batches of the Embedder's max_batch: both sides below then run the same compiled calls.
  result = mteb.evaluate(model, retrieval_task(builtin_bundle, name), cache=None,
                         show_progress_bar=False, encode_kwargs={"batch_size": 64})
  (scores,) = result.task_results[0].scores["test"]

  # gemb's side: gemb.eval's corpus (ids, relevance) of the raw records, embedded by the
  # bundle (queries with the task's instruction), ranked and scored by gemb.eval.
  task = get_tasks(config, [name])[0]
  corpus = retrieval_corpus(config, task, tokenizer)
  source = open_split(config, task, task.eval_split)

  def raw(record, segments):
    (segment,) = segments
    value = source[int(record)][segment.field]
    return value.decode() if segment.modality == "text" else {segment.modality: value}
  queries = model.model.embed([raw(r, task.query) for r in corpus["query_records"]], task=name)
  candidates = model.model.embed([raw(r, task.candidate) for r in corpus["candidate_records"]])
  expected = retrieval_metrics(queries, candidates, corpus["qrels"])

  print(f"{name}: mteb NDCG@10 {scores['ndcg_at_10']:.5f} / gemb.eval {expected['NDCG@10']:.5f}, "
        f"R@1 {scores['recall_at_1']:.5f} / {expected['R@1']:.5f}")
  # mteb rounds its scores to 5 decimals.
  assert scores["ndcg_at_10"] == pytest.approx(expected["NDCG@10"], abs=1e-4)
  assert scores["recall_at_1"] == pytest.approx(expected["R@1"], abs=1e-4)
  assert scores["mrr_at_10"] == pytest.approx(expected["MRR@10"], abs=1e-4)
  assert len(corpus["qrels"]) > 10 and 0 < expected["NDCG@10"] < 1


def _png_to_pil(data):
  image = Image.open(io.BytesIO(data))
  image.load()
  return image


def test_encoder_turns_every_modality_column_into_gemb_items(bundle_dir, embedder):
  from gemb.data.media.audio import decode_audio

  import torch

  recs = records(4)
  meta = mteb.get_task("NFCorpus").metadata  # any task: its name is no bundle task
  model = GembEncoder(embedder, embed_dim=16)  # the loaded bundle: its compiled calls

  def encode(batches, prompt_type=None):
    return model.encode(batches, task_metadata=meta, hf_split="test", hf_subset="default",
                        prompt_type=prompt_type)

  def audio(r):
    array, rate = decode_audio(r["a"])
    return {"array": array.tolist(), "sampling_rate": rate}  # as datasets returns it

  def video(r):  # torch's [T, C, H, W] uint8 frames, as mteb's VideoInput
    frames = np.stack([np.asarray(_png_to_pil(f).convert("RGB")) for f in r["v"]])
    return torch.from_numpy(frames).permute(0, 3, 1, 2)

  columns = {
      "text": ([r["t"] for r in recs], [r["t"] for r in recs]),
      "image": ([_png_to_pil(r["i"]) for r in recs], [{"image": r["i"]} for r in recs]),
      "audio": ([audio(r) for r in recs], [{"audio": r["a"]} for r in recs]),
      "video": ([video(r) for r in recs], [{"video": r["v"]} for r in recs]),
  }
  for modality, (values, items) in columns.items():
    got = encode([{modality: values}])
    np.testing.assert_allclose(got, embedder.embed(items, dim=16), atol=1e-5, err_msg=modality)
  texts = columns["text"][0]
  two_batches = encode([{"text": texts[:2]}, {"text": texts[2:]}])
  np.testing.assert_allclose(two_batches, embedder.embed(texts, dim=16), atol=1e-5)

  # Several columns: one interleaved item per row, media before text.
  got = encode([{"text": columns["text"][0], "image": columns["image"][0]}])
  expected = embedder.embed([[{"image": r["i"]}, r["t"]] for r in recs], dim=16)
  np.testing.assert_allclose(got, expected, atol=1e-5)

  # Queries of a task mapped by ``prompts`` get the bundle task's instruction; documents never.
  mapped = GembEncoder(embedder, prompts={"Retrieval-query": "k_text"})
  for prompt_type, task in ((mteb.types.PromptType.query, "k_text"),
                            (mteb.types.PromptType.document, None)):
    got = mapped.encode([{"text": texts}], task_metadata=meta, hf_split="test",
                        hf_subset="default", prompt_type=prompt_type)
    np.testing.assert_allclose(got, embedder.embed(texts, task=task), atol=1e-5)
  assert not np.allclose(embedder.embed(texts, task="k_text"), embedder.embed(texts))

  assert model.mteb_model_meta.embed_dim == 16
  assert model.mteb_model_meta.name == f"gemb/{os.path.basename(bundle_dir)}"
  assert model.mteb_model_meta.modalities == ["text", "image", "audio", "video"]
  # What ModelMeta.load_model calls (after checking mteb's own image / audio / video extras,
  # which a gemb bundle does not need).
  meta = model.mteb_model_meta
  reloaded = meta.loader(meta.name, revision=meta.revision, **meta.loader_kwargs,
                         embed_dim=16)
  assert isinstance(reloaded, GembEncoder) and reloaded.dim == 16
  assert reloaded.mteb_model_meta.name == meta.name


def test_encoder_errors_name_the_bad_prompt_and_row(embedder):
  with pytest.raises(ValueError, match=r"no_such_task.*k_text"):
    GembEncoder(embedder, prompts={"query": "no_such_task"})
  with pytest.raises(ValueError, match=r"impossible"):
    GembEncoder(embedder, embed_dim=1000)
  model = GembEncoder(embedder)
  meta = mteb.get_task("NFCorpus").metadata
  png = {"bytes": records(1)[0]["i"]}
  with pytest.raises(ValueError, match=r"NFCorpus document\[2\]\.image: cannot decode"):
    model.encode([{"image": [png, png]}, {"image": [{"bytes": b"not a png"}]}],
                 task_metadata=meta, hf_split="test", hf_subset="default",
                 prompt_type=mteb.types.PromptType.document)


def test_retrieval_task_refuses_what_mteb_cannot_hold(bundle_dir):
  from gemb.run.workdir import load_config
  with pytest.raises(ValueError, match="classification"):
    retrieval_task(bundle_dir, "emoji_group_zero_shot")
  with pytest.raises(ValueError, match=r"k_video.*\['video'\]"):
    retrieval_task(bundle_dir, "k_video")
  with pytest.raises(ValueError, match=r"k_mixed.*\['image', 'text', 'audio', 'video', 'text'\]"):
    retrieval_task(bundle_dir, "k_mixed")
  with pytest.raises(ValueError, match="needs the run's tokenizer"):
    retrieval_task(load_config(bundle_dir), "k_text")
