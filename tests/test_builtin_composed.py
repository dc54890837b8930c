"""Tests of the gemb_composed builder (modifiers, splits, renderings) and emoji's small config.

Builds the "small" configs of gemb_composed and gemb_emoji once each (~5 s each).
"""
import collections
import dataclasses
import os

import pytest
import tensorflow_datasets as tfds

from gemb.data.builtin import composed
from gemb.data.builtin import emoji, glyphs

SPLITS = ("train", "validation", "test")
SKIP_IMAGES = {"base_image": tfds.decode.SkipDecoding(),
               "target_image": tfds.decode.SkipDecoding()}


@pytest.fixture(scope="module")
def emojis():
  with open(glyphs.EMOJI_TEST_PATH, encoding="utf-8") as f:
    return glyphs.parse_emoji_test(f.read())


@pytest.fixture(scope="module")
def by_name(emojis):
  return {e.name: e for e in emojis}


@pytest.fixture(scope="module")
def triples(emojis):
  return composed.triples(emojis)


def _build(cls, tmp_path_factory, decoders):
  data_dir = str(tmp_path_factory.mktemp(cls.name))
  cls(config="small", data_dir=data_dir).download_and_prepare(
      download_dir=os.path.join(data_dir, "downloads"))
  builder = cls(config="small", data_dir=data_dir)
  out = {}
  for split in SPLITS:
    src = builder.as_data_source(split, decoders=decoders)
    out[split] = [src[i] for i in range(len(src))]
    assert builder.info.splits[split].num_examples == len(out[split]) > 0
  return out


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  return _build(composed.GembComposed, tmp_path_factory, SKIP_IMAGES)


@pytest.fixture(scope="module")
def emoji_records(tmp_path_factory):
  return _build(emoji.GembEmoji, tmp_path_factory, {"image": tfds.decode.SkipDecoding()})


# ---------------------------------------------------------------- modifiers

@pytest.mark.parametrize("base,modifier,kind,target", [
    ("thumbs up", "medium-dark skin tone", "skin_tone", "\U0001F44D\U0001F3FE"),
    ("person running", "woman", "gender", "\U0001F3C3\u200D\u2640\uFE0F"),
    ("technologist", "man, dark skin tone", "gender+skin_tone",
     "\U0001F468\U0001F3FF\u200D\U0001F4BB"),
    ("person", "woman, red hair", "gender+hair", "\U0001F469\u200D\U0001F9B0"),
    ("person", "bald", "hair", "\U0001F9D1\u200D\U0001F9B2"),
    ("person: beard", "medium skin tone", "skin_tone", "\U0001F9D4\U0001F3FD"),
    ("people holding hands", "light skin tone, dark skin tone", "skin_tone",
     "\U0001F9D1\U0001F3FB\u200D\U0001F91D\u200D\U0001F9D1\U0001F3FF"),
])
def test_known_modifiers(triples, by_name, base, modifier, kind, target):
  found = {(t.base.name, t.modifier): t for t in triples}
  t = found[(base, modifier)]
  assert (t.target.chars, t.kind) == (target, kind)
  assert t.base is by_name[base] and t.target.base_id == t.base.item_id


def test_modifier_of_rejects_non_modifier_differences(by_name):
  def mod(a, b):
    return composed.modifier_of(by_name[a], by_name[b])
  assert mod("waving hand", "waving hand: dark skin tone") == ("dark skin tone", "skin_tone")
  assert mod("kiss: woman, man", "kiss: man, man") is None  # replaces a person
  assert mod("family: man, woman, boy", "family: man, woman, girl") is None
  assert mod("grinning face", "grinning face with big eyes") is None
  # Names must agree with code points: a mislabelled target gives no triple.
  base, toned = by_name["thumbs up"], by_name["thumbs up: medium-dark skin tone"]
  mislabelled = dataclasses.replace(toned, name="thumbs up: dark skin tone")
  assert composed.modifier_of(base, mislabelled) is None
  runner = by_name["person running"]
  assert composed.modifier_of(runner, dataclasses.replace(runner, name="woman running")) is None


def test_triples_are_well_posed(triples, emojis):
  queries = [(t.base.item_id, t.modifier) for t in triples]
  assert len(queries) == len(set(queries)) > 1500
  targets = [t.target.item_id for t in triples]
  assert len(targets) == len(set(targets))
  for t in triples:
    assert t.modifier and t.target.base_key == t.base.base_key
    assert set(t.kind.split("+")) <= set(composed.KINDS)
    assert not any(c in glyphs.SKIN_TONES for c in t.base.codepoints)
  kinds = collections.Counter(t.kind for t in triples)
  assert kinds["skin_tone"] > 700 and kinds["gender"] > 100 and kinds["hair"] > 0
  # Toned bases (the two-hand handshake family) give no triples at all.
  assert not any(t.base.name.startswith("handshake:") for t in triples)


# ---------------------------------------------------------------- the built dataset

def test_records_match_triples(records, triples):
  by_target = {t.target.item_id: t for t in triples}
  counts = collections.Counter()
  for split in SPLITS:
    for r in records[split]:
      t = by_target[r["target_id"]]
      assert (r["base_id"], r["modifier"].decode(), r["modifier_kind"].decode()) == (
          t.base.item_id, t.modifier, t.kind)
      assert (r["base_name"].decode(), r["target_name"].decode()) == (t.base.name,
                                                                      t.target.name)
      counts[split, r["target_id"]] += 1
  per_triple = {split: {n for (s, _), n in counts.items() if s == split} for split in SPLITS}
  assert per_triple == {"train": {glyphs.TRAIN_RENDERINGS}, "validation": {1}, "test": {1}}
  # Small takes whole families: every triple of a chosen family is there.
  for split in SPLITS:
    families = {by_target[r["target_id"]].base.base_key for r in records[split]}
    want = {t.target.item_id for t in triples if t.base.base_key in families}
    assert {r["target_id"] for r in records[split]} == want


def test_splits_agree_with_emoji(records, triples, emojis):
  """Each family is in the split gemb_emoji gives it, so no emoji test family trains here."""
  by_target = {t.target.item_id: t for t in triples}
  emoji_split = {e.item_id: glyphs.split_of(e.base_key) for e in emojis}
  emoji_test_families = {e.base_id for e in emojis if emoji_split[e.item_id] == "test"}
  for split in SPLITS:
    for r in records[split]:
      assert emoji_split[r["target_id"]] == emoji_split[r["base_id"]] == split
      assert by_target[r["target_id"]].base.base_id == r["base_id"]
  assert not {r["base_id"] for r in records["train"]} & emoji_test_families
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    for field in ("base_id", "target_id"):
      assert not {r[field] for r in records[a]} & {r[field] for r in records[b]}


def test_images_are_gemb_emoji_renderings(records, emojis):
  """Stored PNGs are exactly what rendering the same emoji again gives (determinism)."""
  by_id = {e.item_id: e for e in emojis}
  for split in SPLITS:
    rendered = {}
    for r in records[split][:40]:
      for field, id_field in (("base_image", "base_id"), ("target_image", "target_id")):
        e = by_id[r[id_field]]
        if e.item_id not in rendered:
          rendered[e.item_id] = glyphs.render_pngs(e, train=split == "train")
        assert r[field] in rendered[e.item_id]
    if split == "train":  # the i-th renderings of base and target go together
      r = records[split][0]
      i = rendered[r["target_id"]].index(r["target_image"])
      assert rendered[r["base_id"]][i] == r["base_image"]


def test_task_reads_existing_fields(records):
  (task,) = composed.TASKS
  fields = set(records["test"][0])
  assert [s.field for s in task.query] == ["base_image", "modifier"]
  assert [s.modality for s in task.query] == ["image", "text"]
  assert {s.field for s in task.candidate} | {task.query_id, task.candidate_id} <= fields
  assert task.query_id == task.candidate_id == "target_id"


# ---------------------------------------------------------------- gemb_emoji "small"

def test_emoji_small_config(emoji_records, emojis):
  truth = {e.item_id: e for e in emojis}
  families = {split: {truth[r["item_id"]].base_key for r in emoji_records[split]}
              for split in SPLITS}
  assert {s: len(f) for s, f in families.items()} == emoji.SMALL_FAMILIES
  for split in SPLITS:
    assert all(glyphs.split_of(k) == split for k in families[split])
    # Whole families, with the records the full config has for them.
    want = {e.item_id for e in emojis if e.base_key in families[split]}
    assert {r["item_id"] for r in emoji_records[split]} == want
    n = glyphs.TRAIN_RENDERINGS if split == "train" else 1
    assert len(emoji_records[split]) == n * len(want)
  r = emoji_records["test"][0]
  assert r["image"] in glyphs.render_pngs(truth[r["item_id"]], train=False)
  names = [t.name for t in emoji.TASKS]
  assert names == ["emoji_image_to_name", "emoji_name_to_image", "emoji_group_zero_shot"]
  for t in emoji.TASKS:
    fields = ({s.field for s in t.query} | {t.label} if hasattr(t, "label")
              else {s.field for s in t.query + t.candidate} | {t.query_id})
    assert fields <= set(r), t.name


def test_missing_debian_file_names_the_package(tmp_path, monkeypatch):
  monkeypatch.setattr(glyphs, "FONT_PATH", str(tmp_path / "nope.ttf"))
  builder = composed.GembComposed(config="small", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
    builder.download_and_prepare(download_dir=str(tmp_path / "downloads"))
