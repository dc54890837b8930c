"""Tests of the emoji builder, the source registry and the tokenizer.

The dataset is built once per test session (~20 s) into a temporary data dir.
"""
import collections
import io
import pickle

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import tiny
from gemb.data import pipeline
from gemb.data import sources
from gemb.data.builtin import glyphs
from gemb.data.tokenizer import Tokenizer
from gemb import batch

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="session")
def data_config(emoji_data_dir):
  config = tiny.get_config()
  config.data.data_dir = emoji_data_dir
  return config


@pytest.fixture(scope="session")
def emojis():
  with open(glyphs.EMOJI_TEST_PATH, encoding="utf-8") as f:
    return glyphs.parse_emoji_test(f.read())


@pytest.fixture(scope="session")
def records(data_config):
  """Per split: the records' ids and names, with images as stored PNG bytes."""
  out = {}
  for split in SPLITS:
    src = sources.builtin_source("emoji", split, data_config.data.data_dir,
                                 decoders={"image": tfds.decode.SkipDecoding()})
    out[split] = [src[i] for i in range(len(src))]
  return out


@pytest.fixture(scope="session")
def tokenizer(data_config):
  return Tokenizer.train(pipeline.tokenizer_corpus(data_config), data_config.data.vocab_size)


def _items(recs):
  return {r["item_id"] for r in recs}


def _names_by_item(recs):
  return {r["item_id"]: r["name"].decode() for r in recs}


# ---------------------------------------------------------------- emoji-test.txt parsing

def test_parse_keeps_fully_qualified_entries(emojis):
  with open(glyphs.EMOJI_TEST_PATH, encoding="utf-8") as f:
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
    glyphs.parse_emoji_test(header + "1F600 ; fully-qualified # \U0001F600 no version\n")
  with pytest.raises(ValueError, match="do not spell"):
    glyphs.parse_emoji_test(header + "1F600 ; fully-qualified # \U0001F603 E1.0 x\n")
  with pytest.raises(ValueError, match="duplicate names"):
    glyphs.parse_emoji_test(header + "1F600 ; fully-qualified # \U0001F600 E1.0 x\n"
                           "1F603 ; fully-qualified # \U0001F603 E1.0 x\n")


# ---------------------------------------------------------------- the built dataset

def test_split_sizes(records, emojis, data_config):
  builder = sources.prepared_builder("emoji", data_config.data.data_dir)
  items = {split: _items(records[split]) for split in SPLITS}
  assert sum(map(len, items.values())) == len(emojis)
  assert len(records["train"]) == glyphs.TRAIN_RENDERINGS * len(items["train"])
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
      fresh = glyphs.render_pngs(truth[item_id], train=split == "train")
      assert stored[item_id] == set(fresh)


def test_train_renderings_differ_eval_is_canonical(records):
  by_item = collections.defaultdict(list)
  for r in records["train"]:
    by_item[r["item_id"]].append(r["image"])
  for pngs in list(by_item.values())[:50]:
    pixels = [np.asarray(Image.open(io.BytesIO(p))) for p in pngs]
    assert all(p.shape == (64, 64, 3) and p.dtype == np.uint8 for p in pixels)
    assert len({p.tobytes() for p in pixels}) == glyphs.TRAIN_RENDERINGS
  for r in records["test"][:50]:
    pixels = np.asarray(Image.open(io.BytesIO(r["image"])))
    assert (pixels[0, 0] == 255).all() and (pixels[-1, -1] == 255).all()  # White margin.
    assert (pixels != 255).any()  # Something is drawn.


# ---------------------------------------------------------------- sources

def test_unknown_dataset_and_split(data_config):
  with pytest.raises(ValueError, match=r"'nope'.*known: \[.*'emoji'"):
    sources.builtin_source("nope", "train", data_config.data.data_dir)
  with pytest.raises(ValueError, match=r"no split 'dev'.*'validation'"):
    sources.builtin_source("emoji", "dev", data_config.data.data_dir)


def test_source_decodes_images_to_uint8(data_config):
  record = sources.builtin_source("emoji", "validation", data_config.data.data_dir)[0]
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
  assert 100 < tokenizer.vocab_size <= data_config.data.vocab_size
  again = Tokenizer.train(corpus, data_config.data.vocab_size)
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
