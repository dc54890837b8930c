"""The task pipeline: packing, bad records, hard negatives, mixtures, sharding, exact resume."""

import collections
import itertools
import io
import json

import jax
import numpy as np
import pytest
import soundfile
from PIL import Image

from configs import tiny
from gemb.data import pipeline
from gemb.data.bad_records import kind_vector
from gemb.data.examples import PAD_NEGATIVE_ID, BadRecord, ExampleLoader, InputShapes
from gemb.data.tasks import TaskSpec
from gemb.data.tokenizer import Tokenizer
from gemb import batch

WORDS = ["apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum", "kiwi", "lime"]


def png(color, size=20):
  buf = io.BytesIO()
  Image.new("RGB", (size, size), color).save(buf, format="PNG")
  return buf.getvalue()


def memory_records(n=40):
  """Records of an interleaved image+text -> text task with hard negatives."""
  rng = np.random.default_rng(0)
  out = []
  for i in range(n):
    k = i % 4  # 0..3 negatives per record: exercises padding
    out.append({"image": png(tuple(int(v) for v in rng.integers(0, 255, 3))),
                "caption": f"a {WORDS[i % 10]} number {i}", "label": WORDS[i % 10],
                "negatives": [WORDS[(i + j + 1) % 10] for j in range(k)],
                "negative_ids": [(i + j + 1) % 10 for j in range(k)],
                "item_id": i, "label_id": i % 10})
  return out


TASK = TaskSpec(name="mem_image_caption_to_label", dataset="memory",
                query=("image:image", "text:caption"), candidate=("text:label",),
                query_id="item_id", candidate_id="label_id", negatives="text:negatives",
                negative_ids="negative_ids", instruction="task: fruit | query: ")
TEXT_TASK = TaskSpec(name="mem_label_to_caption", dataset="memory", query=("text:label",),
                     candidate=("text:caption",), query_id="label_id", candidate_id="item_id")
CAPTION_TASK = TaskSpec(name="mem_caption_to_label", dataset="memory", query=("text:caption",),
                        candidate=("text:label",), query_id="item_id", candidate_id="label_id")


@pytest.fixture(scope="module")
def tokenizer():
  texts = [r["caption"] for r in memory_records()] + WORDS + [TASK.instruction]
  return Tokenizer.train(texts, 200)


def config(**data):
  c = tiny.get_config()
  c.model.modalities = ("text", "image")
  c.data.update(data)
  return c


def loader(records, tokenizer, **kw):
  kw.setdefault("num_negatives", 3)
  return ExampleLoader(TASK, records, np.arange(len(records)), tokenizer,
                       InputShapes.from_config(config()), split="train", **kw)


def test_example_packs_segments_in_order_with_instruction(tokenizer):
  records = memory_records()
  ex = loader(records, tokenizer)(5)
  q = ex["query"]
  np.testing.assert_array_equal(q["layout"], [batch.TEXT, batch.IMAGE, batch.TEXT])
  assert q["text"].shape == (2, 16) and q["image"].shape == (1, 32, 32, 3)
  np.testing.assert_array_equal(q["text"][0], tokenizer.encode(TASK.instruction, 16)[0])
  assert tokenizer.decode(q["text"][1]) == records[5]["caption"]
  assert tokenizer.decode(ex["candidate"]["text"][0]) == records[5]["label"]
  assert ex["query_id"] == 5 and ex["candidate_id"] == 5 and not ex["skipped"].any()
  # Record 5 has 1 real hard negative; the other 2 slots are padding (id -1).
  assert ex["negatives"]["text"].shape == (3, 1, 16)
  np.testing.assert_array_equal(ex["negative_id"], [6, PAD_NEGATIVE_ID, PAD_NEGATIVE_ID])
  assert tokenizer.decode(ex["negatives"]["text"][0, 0]) == WORDS[6]
  # A record without negatives still has the static shape, all padding.
  np.testing.assert_array_equal(loader(records, tokenizer)(4)["negative_id"], [-1, -1, -1])


@pytest.mark.parametrize("field,value,message,kind", [
    ("image", b"not a png", "cannot decode image", "bad_media"),
    ("image", b"", "empty image", "bad_media"),
    ("caption", "   ", "empty text", "bad_text"),
    ("caption", "x" * 100_001, "exceeds data.max_text_chars", "bad_text"),
])
def test_bad_records_are_named_or_skipped(tokenizer, field, value, message, kind):
  records = memory_records()
  records[7] = dict(records[7], **{field: value})
  with pytest.raises(BadRecord, match=rf"dataset 'memory' split 'train'.* record 7.*{message}"):
    loader(records, tokenizer)(7)
  skipping = loader(records, tokenizer, on_bad_record="skip")
  ex = skipping(7)
  assert ex["query_id"] == 8  # the next record of the shard
  np.testing.assert_array_equal(ex["skipped"], kind_vector([kind]))
  assert not skipping(6)["skipped"].any()


def test_missing_field_is_named(tokenizer):
  records = memory_records()
  del records[3]["label"]
  with pytest.raises(BadRecord, match=r"record 3: no field 'label'"):
    loader(records, tokenizer)(3)


@pytest.fixture()
def memory_sources(monkeypatch):
  """Routes the "memory" dataset to in-memory records (same records for every split)."""
  records = memory_records()
  monkeypatch.setattr(pipeline.sources, "open_source",
                      lambda task, split, data_dir="", builtin_config="full": records)
  monkeypatch.setattr(pipeline, "task_registry",
                      lambda c: {t.name: t for t in (TASK, TEXT_TASK, CAPTION_TASK)})
  return records


def test_mixture_one_task_per_batch_holds_weights(memory_sources, tokenizer):
  c = config(tasks=(CAPTION_TASK.name, TEXT_TASK.name), weights=(0.7, 0.3), batch_size=2)
  it = iter(pipeline.train_dataset(c, tokenizer, seed=0))
  counts = collections.Counter()
  for _ in range(10_000):
    b = next(it)
    assert len(set(b["task_index"].tolist())) == 1  # one task per batch
    counts[int(b["task_index"][0])] += 1
  assert abs(counts[0] / 10_000 - 0.7) < 0.02 and abs(counts[1] / 10_000 - 0.3) < 0.02


def test_hard_negatives_travel_with_their_task(memory_sources, tokenizer):
  c = config(tasks=(TASK.name, TEXT_TASK.name), weights=(0.5, 0.5), batch_size=2,
             num_negatives=2)
  it = iter(pipeline.train_dataset(c, tokenizer, seed=0))
  for _ in range(20):
    b = next(it)
    if b["task_index"][0] == 0:
      assert b["negatives"]["text"].shape == (2, 2, 1, 16)
      assert b["negative_id"].shape == (2, 2)
    else:
      assert "negatives" not in b


def test_a_tasks_text_length_sizes_its_batches_only(memory_sources, tokenizer):
  """data.text_len_by_task cuts one task's text slots (its texts truncated there, as
  model.text.max_len truncates every other task's)."""
  c = config(tasks=(TASK.name, TEXT_TASK.name), weights=(0.5, 0.5), batch_size=2,
             num_negatives=2, text_len_by_task={TASK.name: 3})
  full = config(tasks=(TASK.name,), weights=(1.0,), batch_size=2, num_negatives=2)
  reference = next(iter(pipeline.train_dataset(full, tokenizer, seed=0)))
  seen = set()
  for b in itertools.islice(pipeline.train_dataset(c, tokenizer, seed=0), 20):
    task = int(b["task_index"][0])
    seen.add(task)
    length = 3 if task == 0 else 16
    assert b["query"]["text"].shape[-1] == b["candidate"]["text"].shape[-1] == length
    if task == 0:
      assert b["negatives"]["text"].shape == (2, 2, 1, 3)
  assert seen == {0, 1}
  # The first batch of the task alone at full length, cut to 3 tokens: the same ids.
  first = next(iter(pipeline.train_dataset(
      config(tasks=(TASK.name,), weights=(1.0,), batch_size=2, num_negatives=2,
             text_len_by_task={TASK.name: 3}), tokenizer, seed=0)))
  for side in ("query", "candidate"):
    assert (reference[side]["text"][..., :3] == first[side]["text"]).all()
  assert (reference["query"]["text"][..., 3:] != 0).any()  # the captions were cut


def test_example_mixing_needs_one_structure(memory_sources, tokenizer):
  c = config(tasks=(TASK.name, TEXT_TASK.name), weights=(1.0, 1.0), mixing="example",
             batch_size=4)
  with pytest.raises(ValueError, match="one batch structure"):
    pipeline.train_dataset(c, tokenizer, seed=0)
  same = config(tasks=(TEXT_TASK.name, TEXT_TASK.name), weights=(1.0, 1.0), mixing="example",
                batch_size=4)
  b = next(iter(pipeline.train_dataset(same, tokenizer, seed=0)))
  assert b["query"]["text"].shape == (4, 1, 16)


def test_bad_mixture_configs(memory_sources, tokenizer):
  with pytest.raises(ValueError, match="unknown task"):
    pipeline.train_dataset(config(tasks=("nope",), weights=(1.0,)), tokenizer, seed=0)
  with pytest.raises(ValueError, match="positive data.weights"):
    pipeline.train_dataset(config(tasks=(TASK.name,), weights=(1.0, 2.0)), tokenizer, seed=0)
  with pytest.raises(ValueError, match="mixing"):
    pipeline.train_dataset(config(tasks=(TASK.name,), mixing="zip"), tokenizer, seed=0)
  c = config(tasks=(TASK.name,))
  c.model.modalities = ("text",)
  with pytest.raises(ValueError, match=r"needs modalities \['image'\]"):
    pipeline.train_dataset(c, tokenizer, seed=0)


def _assert_same(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


@pytest.mark.parametrize("workers", [0, 1])
def test_mixture_iterator_resumes_exactly(memory_sources, tokenizer, workers):
  c = config(tasks=(TASK.name, TEXT_TASK.name), weights=(0.5, 0.5), batch_size=4,
             num_negatives=2, num_workers=workers)
  ds = pipeline.train_dataset(c, tokenizer, seed=3)
  it = iter(ds)
  for _ in range(7):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(5)]
  resumed = iter(pipeline.train_dataset(c, tokenizer, seed=3))
  resumed.set_state(state)
  for e in expected:
    _assert_same(next(resumed), e)


@pytest.mark.parametrize("mixing", ["task", "example"])
def test_processes_read_disjoint_blocks_of_the_single_process_batches(memory_sources, tokenizer,
                                                                     mixing):
  c = config(tasks=(TEXT_TASK.name, CAPTION_TASK.name), weights=(1.0, 1.0), batch_size=4,
             mixing=mixing)
  single = iter(pipeline.train_dataset(c, tokenizer, seed=0))
  procs = [iter(pipeline.train_dataset(c, tokenizer, seed=0, process_index=p, process_count=2))
           for p in range(2)]
  read = [set(), set()]
  for _ in range(40):  # about two epochs of each task's 40 records
    whole, parts = next(single), [next(it) for it in procs]
    # Concatenated in process order, the blocks are the global batch a single process reads.
    _assert_same(jax.tree.map(lambda *xs: np.concatenate(xs), *parts), whole)
    ids = [set(zip(p["task_index"].tolist(), p["query_id"].tolist(), p["candidate_id"].tolist()))
           for p in parts]
    assert not ids[0] & ids[1] and len(ids[0]) == len(ids[1]) == 2  # disjoint examples
    read[0] |= ids[0]
    read[1] |= ids[1]
  assert len({i for i in read[0] | read[1] if i[0] == 0}) == 40  # whole epochs were read
  # Both iterators sit at the same global position, from which a single process resumes.
  assert procs[0].get_state() == procs[1].get_state()
  single_resumed = iter(pipeline.train_dataset(c, tokenizer, seed=0))
  single_resumed.set_state(procs[0].get_state())
  _assert_same(next(single_resumed), next(single))
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.train_dataset(config(tasks=(TEXT_TASK.name,), batch_size=3), tokenizer, seed=0,
                           process_count=2)


def test_retrieval_corpus_dedupes_and_relates_by_id(memory_sources, tokenizer):
  corpus = pipeline.retrieval_corpus(config(), TEXT_TASK, tokenizer, "test")
  # Queries are the 10 labels; candidates the 40 captions; label i relates to 4 captions.
  assert corpus["queries"]["text"].shape == (10, 1, 16)
  assert corpus["candidates"]["text"].shape == (40, 1, 16)
  for qi, q in enumerate(corpus["query_ids"]):
    relevant = {int(corpus["candidate_ids"][j]) for j in corpus["qrels"][qi]}
    assert relevant == {i for i in range(40) if i % 10 == q}
  # *_records: the first record of each id, where its raw values are read back.
  records = memory_sources
  first = {}
  for index, r in enumerate(records):
    first.setdefault(r["label_id"], index)
  assert corpus["query_records"].tolist() == [first[q] for q in corpus["query_ids"]]
  assert [records[i]["item_id"] for i in corpus["candidate_records"]] == \
      corpus["candidate_ids"].tolist()


def test_eval_max_records_is_one_fixed_sample_of_the_split(memory_sources, tokenizer):
  c = config()
  c.eval.max_records = 12
  picked = pipeline.eval_records(c, 40)
  assert len(picked) == 12 and list(picked) == sorted(set(picked.tolist()))
  np.testing.assert_array_equal(picked, pipeline.eval_records(c, 40))  # every run, every model
  c.eval.max_records = 0
  np.testing.assert_array_equal(pipeline.eval_records(c, 40), np.arange(40))
  c.eval.max_records = 12
  corpus = pipeline.retrieval_corpus(c, TEXT_TASK, tokenizer, "test")
  # The corpus is that of the 12 records alone: their captions, their labels, their pairs.
  records = [memory_sources[i] for i in picked]
  assert corpus["candidate_ids"].tolist() == sorted(r["item_id"] for r in records)
  assert corpus["query_ids"].tolist() == sorted({r["label_id"] for r in records})
  for qi, q in enumerate(corpus["query_ids"]):
    relevant = {int(corpus["candidate_ids"][j]) for j in corpus["qrels"][qi]}
    assert relevant == {r["item_id"] for r in records if r["label_id"] == q}
  labels = pipeline.classification_corpus(c, pipeline.ClassificationSpec(
      name="mem_caption_class", dataset="memory", query=("text:caption",), label="label",
      templates=("{}",)), tokenizer, "test")["labels"]
  assert len(labels) == 12


def test_emoji_task_end_to_end(emoji_data_dir):
  c = tiny.get_config()
  c.data.data_dir = emoji_data_dir
  c.data.batch_size = 8
  c.data.instructions = True
  tok = Tokenizer.train(pipeline.tokenizer_corpus(c), c.data.vocab_size)
  b = next(iter(pipeline.train_dataset(c, tok, seed=0)))
  assert b["query"]["image"].shape == (8, 1, 32, 32, 3)
  assert b["query"]["text"].shape == (8, 1, 16)  # the instruction
  np.testing.assert_array_equal(b["query"]["layout"][0], [batch.TEXT, batch.IMAGE])
  np.testing.assert_array_equal(b["query_id"], b["candidate_id"])
  corpus = pipeline.retrieval_corpus(c, pipeline.get_tasks(c, ["emoji_image_to_name"])[0], tok)
  assert len(corpus["qrels"]) == len(corpus["candidate_ids"]) > 100
  assert all(len(r) == 1 for r in corpus["qrels"])


def wav_bytes(seconds=0.5, rate=16000):
  buf = io.BytesIO()
  t = np.arange(int(seconds * rate)) / rate
  soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), rate,
                  format="WAV")
  return buf.getvalue()


AV_TASK = TaskSpec(name="mem_av", dataset="memory", query=("video:frames", "audio:speech"),
                   candidate=("text:caption",), query_id="item_id", candidate_id="item_id")


@pytest.mark.parametrize("field,value,message", [
    ("speech", b"RIFF....WAVEjunk", "audio"),
    ("speech", wav_bytes(seconds=61.0, rate=8000), "longer than|exceeds|max"),
    ("frames", [b"garbage"], "video"),
    ("frames", [], "no frames"),
])
def test_bad_audio_and_video_records_are_named(tokenizer, field, value, message):
  good = {"frames": [png((200, 0, 0)), png((0, 200, 0))], "speech": wav_bytes(),
          "caption": "a red then green clip", "item_id": 0}
  make = lambda rec: ExampleLoader(  # noqa: E731
      AV_TASK, [good, rec, good], np.arange(3), tokenizer,
      InputShapes.from_config(config()), split="test")
  ex = make(good)(0)
  np.testing.assert_array_equal(ex["query"]["layout"], [batch.VIDEO, batch.AUDIO])
  assert ex["query"]["video"].shape == (1, 8, 32, 32, 3)
  assert ex["query"]["audio"].shape == (1, 16000) and ex["query"]["audio_length"][0] == 8000
  with pytest.raises(BadRecord, match=rf"split 'test'.*record 1, field '{field}'.*({message})"):
    make(dict(good, **{field: value}))(1)


def test_manifest_task_from_config(tmp_path, tokenizer):
  (tmp_path / "img").mkdir()
  lines = []
  for i in range(12):
    (tmp_path / "img" / f"{i}.png").write_bytes(png((20 * i, 100, 200 - 10 * i)))
    lines.append({"id": i, "image": {"path": f"img/{i}.png"}, "caption": f"a {WORDS[i % 10]}"})
  lines[5]["image"] = {"path": "img/missing.png"}
  (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  c = config(tasks=("my_pairs",), batch_size=4)
  c.data.custom_tasks = {"my_pairs": dict(
      dataset=f"manifest:{tmp_path}/pairs.jsonl", query=("image:image",),
      candidate=("text:caption",), query_id="id", candidate_id="id")}
  assert pipeline.get_tasks(c, ["my_pairs"])[0].dataset.startswith("manifest:")
  it = iter(pipeline.train_dataset(c, tokenizer, seed=0))
  with pytest.raises(BadRecord, match=r"pairs.jsonl.*record 5.*missing.png"):
    for _ in range(3):  # one epoch of 12 records reaches record 5
      next(it)
  c.data.on_bad_record = "skip"
  it = iter(pipeline.train_dataset(c, tokenizer, seed=0))
  batches = [next(it) for _ in range(3)]
  assert sum(int(b["skipped"].sum()) for b in batches) == 1
  assert 5 not in np.concatenate([b["query_id"] for b in batches])
