"""Tests of the emoji data path: TFDS builder, source registry, tokenizer, transforms, pipeline.

The dataset is built once per test session (~20 s) into a temporary data dir.
"""
import collections
import io
import pickle

import jax
import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from gemb.data import pipeline
from gemb.data import preprocess
from gemb.data import sources
from gemb.data.builtin import emoji
from gemb.data.tokenizer import Tokenizer
from gemb.model import batch

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="session")
def data_config(emoji_data_dir):
  return ml_collections.ConfigDict(dict(
      dataset="emoji", data_dir=emoji_data_dir, image_size=32,
      text_max_len=16, batch_size=8, num_workers=0, vocab_size=1000))


@pytest.fixture(scope="session")
def emojis():
  with open(emoji.EMOJI_TEST_PATH, encoding="utf-8") as f:
    return emoji.parse_emoji_test(f.read())


@pytest.fixture(scope="session")
def records(data_config):
  """Per split: the records' ids and names, with images as stored PNG bytes."""
  out = {}
  for split in SPLITS:
    src = sources.builtin_source("emoji", split, data_config.data_dir,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    out[split] = [src[i] for i in range(len(src))]
  return out


@pytest.fixture(scope="session")
def tokenizer(data_config):
  return Tokenizer.train(pipeline.tokenizer_corpus(data_config), data_config.vocab_size)


def _items(recs):
  return {r["item_id"] for r in recs}


def _names_by_item(recs):
  return {r["item_id"]: r["name"].decode() for r in recs}


# ---------------------------------------------------------------- emoji-test.txt parsing

def test_parse_keeps_fully_qualified_entries(emojis):
  with open(emoji.EMOJI_TEST_PATH, encoding="utf-8") as f:
    expected = sum("; fully-qualified" in line for line in f)
  assert len(emojis) == expected > 3000
  assert [e.item_id for e in emojis] == list(range(len(emojis)))
  first = emojis[0]
  assert (first.name, first.chars, first.group, first.subgroup) == (
      "grinning face", "\U0001F600", "Smileys & Emotion", "face-smiling")


def test_variants_share_their_base(emojis):
  by_name = {e.name: e for e in emojis}
  base = lambda name: by_name[name].base_id  # noqa: E731
  wave = by_name["waving hand"].item_id
  assert base("waving hand") == base("waving hand: dark skin tone") == wave
  tech = by_name["technologist"].item_id
  assert base("man technologist: light skin tone") == base("woman technologist") == tech
  assert base("woman: red hair") == base("man") == by_name["person"].item_id
  assert base("man gesturing OK") == by_name["person gesturing OK"].item_id
  # Alone, a gender sign is an emoji of its own, not a modifier.
  assert base("female sign") == by_name["female sign"].item_id != base("male sign")
  assert base("grinning face") != base("grinning face with big eyes")


def test_parse_errors_name_the_line():
  header = "# group: G\n# subgroup: s\n"
  with pytest.raises(ValueError, match="line 3"):
    emoji.parse_emoji_test(header + "1F600 ; fully-qualified # \U0001F600 no version\n")
  with pytest.raises(ValueError, match="do not spell"):
    emoji.parse_emoji_test(header + "1F600 ; fully-qualified # \U0001F603 E1.0 x\n")
  with pytest.raises(ValueError, match="duplicate names"):
    emoji.parse_emoji_test(header + "1F600 ; fully-qualified # \U0001F600 E1.0 x\n"
                           "1F603 ; fully-qualified # \U0001F603 E1.0 x\n")


# ---------------------------------------------------------------- the built dataset

def test_split_sizes(records, emojis, data_config):
  builder = sources.prepared_builder("emoji", data_config.data_dir)
  items = {split: _items(records[split]) for split in SPLITS}
  assert sum(map(len, items.values())) == len(emojis)
  assert len(records["train"]) == emoji.TRAIN_RENDERINGS * len(items["train"])
  assert len(records["validation"]) == len(items["validation"])
  assert len(records["test"]) == len(items["test"])
  for split in SPLITS:
    assert builder.info.splits[split].num_examples == len(records[split])
  families = {split: {r["base_id"] for r in records[split]} for split in SPLITS}
  n = sum(map(len, families.values()))
  # 80 / 5 / 15 % of families by hash: allow a few percent of sampling noise.
  assert 0.75 < len(families["train"]) / n < 0.85
  assert 0.02 < len(families["validation"]) / n < 0.08
  assert 0.10 < len(families["test"]) / n < 0.20
  assert "OFL-1.1" in builder.info.description and "unicode-data" in builder.info.description


def test_splits_disjoint_by_item_and_family(records, emojis):
  truth = {e.item_id: e for e in emojis}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not _items(records[a]) & _items(records[b])
    assert not {r["base_id"] for r in records[a]} & {r["base_id"] for r in records[b]}
  for split in SPLITS:
    for r in records[split]:
      e = truth[r["item_id"]]
      assert (r["name"].decode(), r["emoji"].decode(), r["base_id"]) == (
          e.name, e.chars, e.base_id)
    # A family's base is in the same split as its variants.
    assert {r["base_id"] for r in records[split]} <= _items(records[split])


def test_build_is_reproducible(records, emojis):
  """The stored PNGs are exactly what rendering the same emoji again gives."""
  truth = {e.item_id: e for e in emojis}
  for split in SPLITS:
    stored = collections.defaultdict(set)
    for r in records[split]:
      stored[r["item_id"]].add(r["image"])
    for item_id in sorted(stored)[:10]:
      fresh = emoji.render_pngs(truth[item_id], train=split == "train")
      assert stored[item_id] == set(fresh)


def test_train_renderings_differ_eval_is_canonical(records):
  by_item = collections.defaultdict(list)
  for r in records["train"]:
    by_item[r["item_id"]].append(r["image"])
  for pngs in list(by_item.values())[:50]:
    pixels = [np.asarray(Image.open(io.BytesIO(p))) for p in pngs]
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in pixels)
    assert len({p.tobytes() for p in pixels}) == emoji.TRAIN_RENDERINGS
  for r in records["test"][:50]:
    pixels = np.asarray(Image.open(io.BytesIO(r["image"])))
    assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()  # White margin.
    assert (pixels != 255).any()  # Something is drawn.


# ---------------------------------------------------------------- sources

def test_unknown_dataset_and_split(data_config):
  with pytest.raises(ValueError, match=r"'nope'.*known: \['emoji'\]"):
    sources.builtin_source("nope", "train", data_config.data_dir)
  with pytest.raises(ValueError, match=r"no split 'dev'.*'validation'"):
    sources.builtin_source("emoji", "dev", data_config.data_dir)


def test_source_decodes_images_to_uint8(data_config):
  record = sources.builtin_source("emoji", "validation", data_config.data_dir)[0]
  assert record["image"].shape == (64, 64, 3) and record["image"].dtype == np.uint8
  assert isinstance(record["name"], bytes) and isinstance(record["item_id"], int)


def test_resolve_data_dir_is_absolute(monkeypatch, tmp_path):
  monkeypatch.chdir(tmp_path)
  assert sources.resolve_data_dir("rel") == str(tmp_path / "rel")
  assert sources.resolve_data_dir("").endswith("/.cache/gemb/tfds")


# ---------------------------------------------------------------- tokenizer

def test_tokenizer_round_trip_and_determinism(data_config, tokenizer, tmp_path):
  corpus = pipeline.tokenizer_corpus(data_config)
  assert len(corpus) == len(set(corpus)) > 2000
  ids = tokenizer.encode(corpus, 64)
  assert ids.dtype == np.int32 and ids.shape == (len(corpus), 64)
  assert tokenizer.decode(ids) == corpus
  assert 100 < tokenizer.vocab_size <= data_config.vocab_size
  again = Tokenizer.train(corpus, data_config.vocab_size)
  assert again.model_proto == tokenizer.model_proto
  path = str(tmp_path / "sp.model")
  tokenizer.save(path)
  loaded = Tokenizer.load(path)
  np.testing.assert_array_equal(loaded.encode(corpus[:50], 64), ids[:50])
  np.testing.assert_array_equal(pickle.loads(pickle.dumps(tokenizer)).encode(corpus, 64), ids)


def test_tokenizer_pads_and_truncates(tokenizer):
  full = tokenizer.encode("grinning face with smiling eyes", 32)[0]
  n = int((full != 0).sum())
  assert n > 2 and (full[n:] == batch.PAD_ID).all() and (full[:n] > 3).all()
  np.testing.assert_array_equal(tokenizer.encode("grinning face with smiling eyes", 2)[0],
                                full[:2])


def test_tokenizer_small_corpus_and_errors():
  small = Tokenizer.train(["a b", "c"], 100)  # Far fewer pieces than asked for.
  assert small.vocab_size < 100
  assert small.decode(small.encode("a c", 8)[0]) == "a c"
  with pytest.raises(ValueError, match="no non-empty texts"):
    Tokenizer.train(["", " "], 100)


# ---------------------------------------------------------------- preprocess

def test_decode_image_accepts_bytes_and_arrays():
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
  buf = io.BytesIO()
  Image.fromarray(pixels).save(buf, format="PNG")
  from_bytes = preprocess.DecodeImage(32).map({"image": buf.getvalue()})["image"]
  from_array = preprocess.DecodeImage(32).map({"image": pixels})["image"]
  np.testing.assert_array_equal(from_bytes, from_array)
  assert from_bytes.shape == (32, 32, 3) and from_bytes.dtype == np.float32
  same = preprocess.DecodeImage(64).map({"image": pixels})["image"]
  np.testing.assert_allclose(same, pixels / 127.5 - 1, atol=1e-6)
  with pytest.raises(ValueError, match=r"'image' of record \{item_id=7"):
    preprocess.DecodeImage(32).map({"image": np.zeros((4, 4), np.uint8), "item_id": 7})
  with pytest.raises(KeyError, match="no field 'image'"):
    preprocess.DecodeImage(32).map({"name": b"x"})


# ---------------------------------------------------------------- pipeline

def test_train_batches(data_config, tokenizer, records):
  names = _names_by_item(records["train"])
  it = iter(pipeline.train_dataset(data_config, tokenizer, seed=0))
  b = next(it)
  n, s, l = data_config.batch_size, data_config.image_size, data_config.text_max_len
  shapes = jax.tree.map(lambda x: (x.shape, x.dtype.name), b)
  assert shapes == {
      "query": {"layout": ((n, 1), "int32"), "image": ((n, 1, s, s, 3), "float32")},
      "candidate": {"layout": ((n, 1), "int32"), "text": ((n, 1, l), "int32")},
      "query_id": ((n,), "int32"), "candidate_id": ((n,), "int32")}
  assert (b["query"]["layout"] == batch.IMAGE).all()
  assert (b["candidate"]["layout"] == batch.TEXT).all()
  image = b["query"]["image"]
  assert image.min() >= -1 and image.max() <= 1 and image.min() < -0.5 < 0.5 < image.max()
  np.testing.assert_array_equal(b["query_id"], b["candidate_id"])
  # The text is the name of the imaged item.
  texts = tokenizer.decode(b["candidate"]["text"][:, 0])
  assert texts == [names[i] for i in b["query_id"]]


def test_record_order_reshuffles_each_epoch():
  records = np.arange(100) + 1000
  order = pipeline.record_order(records, seed=3)
  epoch0 = [order[i] for i in range(100)]
  epoch1 = [order[i] for i in range(100, 200)]
  assert sorted(epoch0) == sorted(epoch1) == list(records)
  assert epoch0 != epoch1 and epoch0 != list(records)
  assert epoch0 == [pipeline.record_order(records, seed=3)[i] for i in range(100)]
  assert epoch0 != [pipeline.record_order(records, seed=4)[i] for i in range(100)]


def test_processes_read_disjoint_items(data_config, tokenizer, records):
  item_ids = np.array([r["item_id"] for r in records["train"]])
  shards = [pipeline.shard_records(item_ids, p, 2) for p in range(2)]
  assert sorted(np.concatenate(shards)) == list(range(len(item_ids)))
  assert not set(item_ids[shards[0]]) & set(item_ids[shards[1]])
  for p in range(2):
    it = iter(pipeline.train_dataset(data_config, tokenizer, seed=0, process_index=p,
                                     process_count=2))
    for _ in range(3):
      ids = next(it)["query_id"]
      assert ids.shape == (data_config.batch_size // 2,) and (ids % 2 == p).all()
  with pytest.raises(ValueError, match="not divisible"):
    pipeline.train_dataset(data_config, tokenizer, seed=0, process_index=0, process_count=3)
  with pytest.raises(ValueError, match=r"process_index=2 is not in \[0, 2\)"):
    pipeline.shard_records(item_ids, 2, 2)


def _assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    jax.tree.map(np.testing.assert_array_equal, x, y)


def _resume_check(ds):
  it = iter(ds)
  first = [next(it) for _ in range(3)]
  state = it.get_state()
  expected = [next(it) for _ in range(2)]
  resumed = iter(ds)
  resumed.set_state(state)
  _assert_same_batches([next(resumed) for _ in range(2)], expected)
  return first + expected


def test_iterator_resumes_exactly(data_config, tokenizer):
  batches = _resume_check(pipeline.train_dataset(data_config, tokenizer, seed=1))
  assert not np.array_equal(batches[3]["query_id"], batches[4]["query_id"])


def test_worker_processes_give_the_same_stream(data_config, tokenizer):
  in_process = iter(pipeline.train_dataset(data_config, tokenizer, seed=2))
  expected = [next(in_process) for _ in range(5)]
  config = ml_collections.ConfigDict(data_config.to_dict())
  config.num_workers = 1
  _assert_same_batches(_resume_check(pipeline.train_dataset(config, tokenizer, seed=2)),
                       expected)


def test_retrieval_split_alignment(data_config, tokenizer, records):
  r = pipeline.retrieval_split(data_config, tokenizer, "test")
  n, s = len(records["test"]), data_config.image_size
  assert r["images"]["image"].shape == (n, 1, s, s, 3)
  assert r["texts"]["text"].shape == (n, 1, data_config.text_max_len)
  assert (r["images"]["layout"] == batch.IMAGE).all()
  assert (r["texts"]["layout"] == batch.TEXT).all()
  np.testing.assert_array_equal(r["image_ids"], r["text_ids"])
  np.testing.assert_array_equal(r["image_ids"], sorted(_items(records["test"])))
  names = _names_by_item(records["test"])
  expected_text = tokenizer.encode([names[i] for i in r["text_ids"]], data_config.text_max_len)
  np.testing.assert_array_equal(r["texts"]["text"][:, 0], expected_text)
  decode = preprocess.DecodeImage(s)
  for rec in records["test"][:10]:
    i = int(np.flatnonzero(r["image_ids"] == rec["item_id"])[0])
    np.testing.assert_array_equal(r["images"]["image"][i, 0], decode.map(rec)["image"])
