"""TFDS builder "gemb_clipart": Openclipart pictures paired with their titles and keywords.

Owns reading the Openclipart collection's metadata, deduplicating titles, the split rule and
rendering each picture into a 64x64 RGB image. Nothing is downloaded: the builder reads the
files that two Debian packages install (Openclipart 0.18, public domain):

  * images: `/usr/share/openclipart/png/<category>/.../<name>.png` from `openclipart-png`.
  * metadata: the matching `/usr/share/openclipart/svg/<category>/.../<name>.svg` from
    `openclipart-svg`; its RDF block holds `<cc:Work>` with `<dc:title>` and the keywords
    as `<rdf:li>` inside `<dc:subject>`. Only that block is parsed (xml.etree, stopping at
    the end of the first `<cc:Work>`), so damage further down a drawing does not matter;
    an SVG whose metadata cannot be parsed is skipped and counted.

An item is one distinct picture file. Skipped (counts logged by each build): symlinks
(1,221 PNGs: a picture filed under a second category, kept once under its real path), PNGs
over Pillow's decompression-bomb limit (`MAX_PIXELS`; 15 files, 16 paths with symlinks),
pictures without a title (58) or without keywords (115 more), SVGs whose metadata does not
parse (none in 0.18), pictures that render as one flat colour (7: fully transparent, or
white on transparent).

Records: image (PNG, 64x64x3: transparency composited on white, aspect kept, padded to a
square on white), title (whitespace-collapsed; items with the same normalized title store
the text of the first of them), keywords (the keywords joined by ", ", file order, duplicates
dropped), category (folder path below png/, e.g. "animals/birds"), item_id (index of the
picture among all non-symlink PNGs sorted by path), title_id (index of the normalized title
among all distinct titles: identical titles share it), keywords_id (the same for the set
of normalized keywords: items with identical keyword sets share it).

Titles are normalized by NFKC, case folding and whitespace collapsing. Many pictures share a
set title ("gramastar" names 1,375 icons): such a title names a set, not a picture, so
retrieval by it is ill-posed. Splits are disjoint by normalized title: titles used by more
than one picture of the collection go to train; titles used once go to train / validation /
test by sha256 of the normalized title (70 / 10 / 20 %), so every validation and test item
is the only picture with its title and title retrieval has exactly one right answer.

Configs: "full" (default) and "small": the first `SMALL_TITLES` titles of each split in hash
order with at most `SMALL_ITEMS_PER_TITLE` pictures each, for fast tests.
Full build: train 5,997, validation 228, test 480 records (6,705 pictures; ~100 s on 2 busy
cores, mostly PNG decoding). Small build: train 50, validation 8, test 16 (~4 s).

Tasks (`TASKS`): clipart_image_to_title, clipart_title_to_image (ids: title_id) and
clipart_keywords_to_image (ids: keywords_id).
"""
import collections
import dataclasses
import io
import logging
import os
import unicodedata
import warnings
import xml.etree.ElementTree as ET

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from gemb.data.builtin import base
from gemb.data.tasks import TaskSpec

PNG_ROOT = "/usr/share/openclipart/png"
SVG_ROOT = "/usr/share/openclipart/svg"
IMAGE_SIZE = 64
# Pillow's default decompression-bomb threshold (it warns above, refuses above twice this).
# Fixed here rather than read from Image.MAX_IMAGE_PIXELS, which any caller may change, so
# the set of items never depends on who imported what.
MAX_PIXELS = 89_478_485
# Percent of the titles used once that go to train / validation; the rest is test.
TRAIN_PERCENT, VALIDATION_PERCENT = 70, 10
# "small" config: titles per split (first in hash order) and pictures per title.
SMALL_TITLES = {"train": 40, "validation": 8, "test": 16}
SMALL_ITEMS_PER_TITLE = 3

_NS = {"cc": "http://web.resource.org/cc/",
       "dc": "http://purl.org/dc/elements/1.1/",
       "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#"}
_WORK = f"{{{_NS['cc']}}}Work"
_CHUNK = 2048


class TooLarge(ValueError):
  """A PNG with more than MAX_PIXELS pixels."""


@dataclasses.dataclass(frozen=True)
class ClipArt:
  """One picture of the collection with its metadata."""
  path: str          # PNG path relative to the png root
  item_id: int
  title: str         # as written, whitespace collapsed
  keywords: tuple[str, ...]

  @property
  def category(self) -> str:
    return os.path.dirname(self.path)

  @property
  def title_key(self) -> str:
    return normalize_text(self.title)

  @property
  def keywords_key(self) -> str:
    return "\n".join(sorted({normalize_text(k) for k in self.keywords}))


def normalize_text(text: str) -> str:
  """The form in which two titles (or keywords) count as the same."""
  return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def split_of(title_key: str, unique: bool) -> str:
  """The split of a title: shared titles train; unique ones by a hash of the title."""
  if not unique:
    return "train"
  return base.hash_split(title_key, TRAIN_PERCENT, VALIDATION_PERCENT)


def parse_metadata(svg_path: str) -> tuple[str, tuple[str, ...]]:
  """(title, keywords) of an Openclipart SVG; ("", ()) when it has no <cc:Work>.

  Raises ET.ParseError when the XML up to the end of the metadata is malformed.
  """
  work = None
  parser = ET.XMLPullParser(events=("end",))
  with open(svg_path, "rb") as f:
    # Small chunks: the metadata sits near the top, the drawing below can be megabytes.
    while work is None and (chunk := f.read(_CHUNK)):
      parser.feed(chunk)
      work = next((e for _, e in parser.read_events() if e.tag == _WORK), None)
  if work is None:
    return "", ()
  title = " ".join((work.findtext("dc:title", "", _NS)).split())
  keywords, seen = [], set()
  for li in work.iterfind("dc:subject//rdf:li", _NS):
    keyword = " ".join((li.text or "").split())
    if keyword and normalize_text(keyword) not in seen:
      seen.add(normalize_text(keyword))
      keywords.append(keyword)
  return title, tuple(keywords)


def list_pngs(png_root: str) -> list[str]:
  """Paths (relative, sorted) of the PNG files under png_root that are not symlinks."""
  paths = []
  # os.walk does not descend into symlinked folders, and symlinked files are skipped:
  # a link files the same picture under a second category, so it is not a new item.
  for folder, _, files in os.walk(png_root):
    for name in files:
      full = os.path.join(folder, name)
      if name.endswith(".png") and not os.path.islink(full):
        paths.append(os.path.relpath(full, png_root))
  return sorted(paths)


def read_collection(png_root: str = PNG_ROOT, svg_root: str = SVG_ROOT):
  """(every picture whose metadata parses, counts of pictures that cannot be used).

  Pictures without title or keywords are returned too (title uniqueness counts every
  titled picture) and counted as unusable; pictures whose SVG is missing or malformed are
  left out. item_id is the index in `list_pngs`, so ids do not depend on what is skipped.
  Too-large and blank pictures are found only when rendering.
  """
  items, skipped = [], collections.Counter()
  for item_id, path in enumerate(list_pngs(png_root)):
    svg_path = os.path.join(svg_root, path[:-len(".png")] + ".svg")
    try:
      title, keywords = parse_metadata(svg_path)
    except FileNotFoundError:
      skipped["no svg"] += 1
      continue
    except ET.ParseError as e:
      logging.warning("gemb_clipart: skipping %s: malformed metadata (%s)", svg_path, e)
      skipped["malformed svg"] += 1
      continue
    if not title:
      skipped["no title"] += 1
    elif not keywords:
      skipped["no keywords"] += 1
    items.append(ClipArt(path, item_id, title, keywords))
  return items, skipped


def render(path: str) -> Image.Image:
  """The picture as IMAGE_SIZE x IMAGE_SIZE RGB on white, or TooLarge."""
  with warnings.catch_warnings():
    # The pixel count is checked here, against the fixed MAX_PIXELS.
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
    try:
      with Image.open(path) as image:
        if image.width * image.height > MAX_PIXELS:
          raise TooLarge(f"{path}: {image.width}x{image.height} pixels")
        rgba = image.convert("RGBA")
    except Image.DecompressionBombError as e:
      raise TooLarge(f"{path}: {e}") from e
  w, h = rgba.size
  f = IMAGE_SIZE / max(w, h)
  size = (max(1, round(w * f)), max(1, round(h * f)))
  # Pillow resizes RGBA with premultiplied alpha, so pasting the small version with its
  # alpha as mask composites cleanly on white. reducing_gap: box-reduce large pictures
  # first (2-3x faster; Pillow documents 3.0 as indistinguishable from a full LANCZOS).
  small = rgba.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
  canvas = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), (255, 255, 255))
  canvas.paste(small, ((IMAGE_SIZE - size[0]) // 2, (IMAGE_SIZE - size[1]) // 2), mask=small)
  return canvas


def is_blank(image: Image.Image) -> bool:
  """True when every pixel is the same (a fully transparent or white-on-clear picture)."""
  lo, hi = zip(*image.getextrema())
  return lo == hi


def png_bytes(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


def assign(items):
  """Per usable item (title and keywords): (split, title_id, keywords_id, stored title).

  Title uniqueness and ids are counted over every titled picture of the collection, so
  they are the same in every config.
  """
  titled = [it for it in items if it.title]
  title_count = collections.Counter(it.title_key for it in titled)
  title_ids = {k: i for i, k in enumerate(sorted(title_count))}
  first_title = {}
  for it in titled:  # items are in item_id order
    first_title.setdefault(it.title_key, it.title)
  keyword_ids = {k: i for i, k in enumerate(sorted({it.keywords_key for it in titled
                                                     if it.keywords}))}
  return {it.item_id: (split_of(it.title_key, title_count[it.title_key] == 1),
                       title_ids[it.title_key], keyword_ids[it.keywords_key],
                       first_title[it.title_key])
          for it in titled if it.keywords}


def small_subset(items, assigned):
  """Items of the "small" config: first titles per split in hash order, a few items each."""
  by_title = collections.defaultdict(list)
  for it in items:
    if it.item_id in assigned:
      by_title[it.title_key].append(it)
  keep = []
  for split, n in SMALL_TITLES.items():
    keys = sorted((k for k, its in by_title.items() if assigned[its[0].item_id][0] == split),
                  key=lambda k: (base.stable_int(k), k))
    for k in keys[:n]:
      keep.extend(by_title[k][:SMALL_ITEMS_PER_TITLE])
  return sorted(keep, key=lambda it: it.item_id)


class GembClipart(base.GembBuilder):
  """Openclipart pictures with titles and keywords (module docstring has details)."""

  name = "gemb_clipart"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: Openclipart 0.18 pictures with a title and keywords, 64x64 "
               "on white; splits disjoint by title, validation/test only unique titles.",
  }
  BUILDER_CONFIGS = base.full_and_small(
      "Every usable picture.",
      f"The first titles of each split in hash order ({SMALL_TITLES}), at most "
      f"{SMALL_ITEMS_PER_TITLE} pictures each, for tests.")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Openclipart 0.18 pictures paired with their titles and keywords. Images: "
            f"{PNG_ROOT} (Debian package openclipart-png), converted to RGB on white, "
            f"aspect kept, padded to a square, {IMAGE_SIZE}x{IMAGE_SIZE}. Titles and "
            f"keywords: <dc:title> and <dc:subject> <rdf:li> of the matching SVG in {SVG_ROOT} "
            "(Debian package openclipart-svg). Public domain. Skipped: symlinked duplicates, "
            f"PNGs over {MAX_PIXELS} pixels, pictures without title or keywords, SVGs with "
            "malformed metadata. item_id = index among non-symlink PNGs sorted by path; "
            "title_id / keywords_id: ids of the normalized (NFKC, casefolded) title / "
            "keyword set. Splits disjoint by title: titles shared by several pictures go "
            f"to train; unique titles by sha256 ({TRAIN_PERCENT}% train, "
            f"{VALIDATION_PERCENT}% validation, rest test)."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                         encoding_format="png"),
            "title": tfds.features.Text(),
            "keywords": tfds.features.Text(),
            "category": tfds.features.Text(),
            "item_id": tfds.features.Scalar(np.int32),
            "title_id": tfds.features.Scalar(np.int32),
            "keywords_id": tfds.features.Scalar(np.int32),
        }),
        homepage="https://openclipart.org",
        license="Public domain (Openclipart).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from installed Debian files.
    base.require_files(((PNG_ROOT, "openclipart-png"), (SVG_ROOT, "openclipart-svg")))
    items, skipped = read_collection()
    assigned = assign(items)
    logging.info("gemb_clipart: %d pictures, skipped before rendering: %s", len(items),
                 dict(skipped))
    if self.builder_config.name == "small":
      items = small_subset(items, assigned)
    items = [it for it in items if it.item_id in assigned]
    return {split: self._generate_examples([it for it in items
                                            if assigned[it.item_id][0] == split], assigned)
            for split in ("train", "validation", "test")}

  def _generate_examples(self, items, assigned):
    for it in items:
      try:
        image = render(os.path.join(PNG_ROOT, it.path))
      except TooLarge as e:
        logging.info("gemb_clipart: skipping %s", e)
        continue
      if is_blank(image):
        logging.info("gemb_clipart: skipping %s: renders blank", it.path)
        continue
      _, title_id, keywords_id, title = assigned[it.item_id]
      yield str(it.item_id), {
          "image": png_bytes(image),
          "title": title,
          "keywords": ", ".join(it.keywords),
          "category": it.category,
          "item_id": it.item_id,
          "title_id": title_id,
          "keywords_id": keywords_id,
      }


_INSTRUCTION = "task: image retrieval | query: "
TASKS = (
    TaskSpec(name="clipart_image_to_title", dataset="clipart", query=("image:image",),
             candidate=("text:title",), query_id="title_id", candidate_id="title_id",
             instruction=_INSTRUCTION,
             description="Clip-art picture -> its title (pictures of one title share the id)."),
    TaskSpec(name="clipart_title_to_image", dataset="clipart", query=("text:title",),
             candidate=("image:image",), query_id="title_id", candidate_id="title_id",
             instruction=_INSTRUCTION,
             description="Clip-art title -> the picture."),
    TaskSpec(name="clipart_keywords_to_image", dataset="clipart", query=("text:keywords",),
             candidate=("image:image",), query_id="keywords_id", candidate_id="keywords_id",
             instruction=_INSTRUCTION,
             description="Comma-joined keywords -> the picture (identical keyword sets "
                         "share the id)."),
)
