"""Tests of the gemb_clipart builder: metadata parsing, title dedup, splits, rendering.

Builds the "small" config once (~5 s); the metadata of the whole collection is read once.
"""
import collections
import io
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from gemb.data.builtin import clipart

SPLITS = ("train", "validation", "test")


@pytest.fixture(scope="module")
def collection():
  items, skipped = clipart.read_collection()
  return items, skipped, clipart.assign(items)


@pytest.fixture(scope="module")
def records(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("clipart"))
  builder = clipart.GembClipart(config="small", data_dir=data_dir)
  builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
  builder = clipart.GembClipart(config="small", data_dir=data_dir)
  out = {}
  for split in SPLITS:
    src = builder.as_data_source(split, decoders={"image": tfds.decode.SkipDecoding()})
    out[split] = [src[i] for i in range(len(src))]
    assert builder.info.splits[split].num_examples == len(out[split])
  return out


def _png(path, image):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path)


def _svg(title, keywords, tail=""):
  lis = "".join(f"<rdf:li>{k}</rdf:li>" for k in keywords)
  return (
      '<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" '
      'xmlns:cc="http://web.resource.org/cc/" xmlns:dc="http://purl.org/dc/elements/1.1/" '
      'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><metadata><rdf:RDF>'
      f'<cc:Work rdf:about=""><dc:title>{title}</dc:title><dc:subject><rdf:Bag>{lis}'
      '</rdf:Bag></dc:subject><dc:creator><cc:Agent><dc:title>Someone</dc:title>'
      f'</cc:Agent></dc:creator></cc:Work></rdf:RDF></metadata>{tail}</svg>')


# ---------------------------------------------------------------- parsing the collection

def test_read_collection_skips_and_counts(tmp_path):
  png, svg = tmp_path / "png", tmp_path / "svg"
  tiny = Image.new("RGBA", (4, 4), (255, 0, 0, 255))
  for name in ("animals/a", "animals/b", "animals/c", "animals/d", "food/e"):
    _png(str(png / f"{name}.png"), tiny)
  os.makedirs(svg / "animals")
  os.makedirs(svg / "food")
  # Damage after the metadata does not matter: only the metadata is parsed.
  (svg / "animals/a.svg").write_text(
      _svg("  A   cat ", ["cat", "Cat", " ", "animal"], tail="<g><unclosed></g>"))
  (svg / "animals/b.svg").write_text("<svg><metadata><rdf:RDF>")  # malformed
  (svg / "animals/c.svg").write_text(_svg("", ["x"]))  # no title
  # animals/d has no SVG.
  (svg / "food/e.svg").write_text(_svg("pie", []))  # no keywords
  os.symlink("../animals/a.png", png / "food/link.png")  # same picture, second category
  items, skipped = clipart.read_collection(str(png), str(svg))
  assert clipart.list_pngs(str(png)) == [
      "animals/a.png", "animals/b.png", "animals/c.png", "animals/d.png", "food/e.png"]
  assert [(it.path, it.item_id, it.title, it.keywords) for it in items] == [
      ("animals/a.png", 0, "A cat", ("cat", "animal")),
      ("animals/c.png", 2, "", ("x",)),
      ("food/e.png", 4, "pie", ())]
  assert skipped == {"malformed svg": 1, "no svg": 1, "no title": 1, "no keywords": 1}
  assert items[0].category == "animals" and items[0].title_key == "a cat"
  # Only titled pictures with keywords are usable.
  assert list(clipart.assign(items)) == [0]


def test_collection_matches_the_documented_counts(collection):
  items, skipped, assigned = collection
  assert len(clipart.list_pngs(clipart.PNG_ROOT)) == 6900
  assert skipped == {"no title": 58, "no keywords": 115}
  assert len(assigned) == 6727
  by_title = collections.Counter(it.title_key for it in items if it.title)
  assert by_title["gramastar"] == 1375


def test_title_ids_follow_normalized_titles(collection):
  items, _, assigned = collection
  key_of = {it.item_id: it.title_key for it in items}
  ids = collections.defaultdict(set)
  texts = collections.defaultdict(set)
  for item_id, (_, title_id, _, title) in assigned.items():
    ids[key_of[item_id]].add(title_id)
    texts[title_id].add(title)
    assert clipart.normalize_text(title) == key_of[item_id]
  assert all(len(v) == 1 for v in ids.values())  # one id per title
  assert len({min(v) for v in ids.values()}) == len(ids)  # distinct titles, distinct ids
  assert all(len(v) == 1 for v in texts.values())  # one stored text per id
  assert clipart.normalize_text(" Red\u00a0 APPLE ") == "red apple"


def test_split_rule(collection):
  _, _, assigned = collection
  assert clipart.split_of("gramastar", unique=False) == "train"
  counts = collections.Counter(split for split, *_ in assigned.values())
  unique_eval = counts["validation"] + counts["test"]
  # 10 / 20 % of the ~2,500 unique titles; allow sampling noise.
  assert 150 < counts["validation"] < 350 and 350 < counts["test"] < 650
  assert counts["train"] > 5 * unique_eval


def test_eval_splits_hold_only_unique_titles(collection):
  items, _, assigned = collection
  uses = collections.Counter(it.title_key for it in items if it.title)
  for it in items:
    if it.item_id in assigned and assigned[it.item_id][0] != "train":
      assert uses[it.title_key] == 1, it


# ---------------------------------------------------------------- rendering

def test_render_composites_on_white_and_pads(tmp_path):
  image = Image.new("RGBA", (40, 20), (0, 0, 255, 255))
  image.paste((0, 0, 0, 0), (0, 0, 20, 20))  # left half: transparent black
  path = str(tmp_path / "wide.png")
  image.save(path)
  pixels = np.asarray(clipart.render(path))
  assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8
  assert (pixels[:16] == 255).all() and (pixels[48:] == 255).all()  # padding rows
  assert (pixels[16:48, :28] == 255).all()  # transparent -> white, not black
  assert (pixels[16:48, 36:] == (0, 0, 255)).all()
  assert not clipart.is_blank(clipart.render(path))
  Image.new("LA", (8, 8), (0, 0)).save(path)
  assert clipart.is_blank(clipart.render(path))


def test_render_refuses_pixel_bombs(tmp_path, monkeypatch):
  path = str(tmp_path / "big.png")
  Image.new("RGB", (30, 30)).save(path)
  monkeypatch.setattr(clipart, "MAX_PIXELS", 899)
  with pytest.raises(clipart.TooLarge, match="30x30"):
    clipart.render(path)


# ---------------------------------------------------------------- the built dataset

def test_splits_disjoint_by_item_and_title(records):
  assert all(records[s] for s in SPLITS)
  titles = {s: {clipart.normalize_text(r["title"].decode()) for r in records[s]}
            for s in SPLITS}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    for field in ("item_id", "title_id"):
      assert not {r[field] for r in records[a]} & {r[field] for r in records[b]}
    assert not titles[a] & titles[b]


def test_records_match_the_metadata(records, collection):
  items, _, assigned = collection
  by_id = {it.item_id: it for it in items}
  for split in SPLITS:
    for r in records[split]:
      it = by_id[r["item_id"]]
      want_split, title_id, keywords_id, title = assigned[it.item_id]
      assert (split, r["title_id"], r["keywords_id"]) == (want_split, title_id, keywords_id)
      assert r["title"].decode() == title and r["category"].decode() == it.category
      assert r["keywords"].decode() == ", ".join(it.keywords) != ""
  # Eval titles are the only picture with that title: one record per title id.
  for split in ("validation", "test"):
    ids = [r["title_id"] for r in records[split]]
    assert len(ids) == len(set(ids))


def test_build_is_reproducible(records):
  """The stored PNGs are exactly what rendering the same picture again gives."""
  paths = {it.item_id: it.path for it in clipart.read_collection()[0]}
  for split in SPLITS:
    for r in records[split]:
      stored = r["image"]
      fresh = clipart.png_bytes(clipart.render(os.path.join(clipart.PNG_ROOT,
                                                            paths[r["item_id"]])))
      assert stored == fresh
      pixels = np.asarray(Image.open(io.BytesIO(stored)))
      assert pixels.shape == (64, 64, 3) and pixels.min() < pixels.max()


def test_tasks_read_existing_fields(records):
  fields = set(records["test"][0])
  names = [t.name for t in clipart.TASKS]
  assert names == ["clipart_image_to_title", "clipart_title_to_image",
                   "clipart_keywords_to_image"]
  for t in clipart.TASKS:
    assert t.dataset == "clipart" and t.instruction == "task: image retrieval | query: "
    assert {s.field for s in t.query + t.candidate} | {t.query_id, t.candidate_id} <= fields
  assert clipart.TASKS[0].candidate_id == "title_id"


def test_missing_debian_package_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr(clipart, "SVG_ROOT", str(tmp_path / "svg"))
  builder = clipart.GembClipart(config="small", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="openclipart-svg"):
    builder.download_and_prepare(download_dir=str(tmp_path / "downloads"))
