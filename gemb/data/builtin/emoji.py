"""TFDS builder "gemb_emoji": rendered emoji images paired with their official names.

Owns parsing the emoji list, grouping variants into base emoji, the split rule and the
rendering of each emoji into 64x64 RGB images. Nothing is downloaded: the builder reads two
files that Debian packages install:

  * images: `/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf` from `fonts-noto-color-emoji`
    (Google Noto Color Emoji, SIL Open Font License 1.1). It is a CBDT bitmap font, so Pillow
    renders it only at its native size 109 with `embedded_color=True`.
  * names: `/usr/share/unicode/emoji/emoji-test.txt` from `unicode-data` (Unicode, Inc.,
    Unicode License): code points, qualification status, CLDR short name, `# group:` and
    `# subgroup:` headers. Only fully-qualified entries are used.

Records: image (PNG, 64x64x3), name, group, subgroup, emoji (the characters), item_id (the
entry's index among fully-qualified entries in file order), base_id (item_id of the base of
its variant family, see `base_key` and `parse_emoji_test`).

Splits are disjoint by variant family: a family goes to train / validation / test by a hash
of its base key (80 / 5 / 15 % of families), so no skin-tone or gender variant of a test
emoji is seen in training. Train holds `TRAIN_RENDERINGS` randomly scaled, shifted and
background-coloured renderings of each emoji, seeded by the emoji itself so every build is
byte-identical; validation and test hold one canonical rendering (centred, white).

Configs: "full" (default) holds every fully-qualified emoji; "small" holds the first
`SMALL_FAMILIES` families of each split in hash order (same records as "full" for those
families), for fast tests. Full build: train 11,624 (2,906 emoji x 4), validation 231,
test 518 records (~35 s). Small build: train 732, validation 40, test 34 (~5 s).

Tasks (`TASKS`): emoji_image_to_name (image -> its name), emoji_name_to_image, and
emoji_group_zero_shot (eval only: classify a test image into its Unicode group from prompts
of the 9 group names; the full test split holds all 9, 284 of its 518 images are
"People & Body").
"""
import dataclasses
import functools
import io
import os
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont
import tensorflow_datasets as tfds

from gemb.data.builtin import base
from gemb.data.tasks import ClassificationSpec, TaskSpec

FONT_PATH = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST_PATH = "/usr/share/unicode/emoji/emoji-test.txt"
FONT_SIZE = 109  # The only size the CBDT bitmap strikes exist at.
IMAGE_SIZE = 64
TRAIN_RENDERINGS = 4
# Percent of variant families per split; the rest is test.
TRAIN_PERCENT, VALIDATION_PERCENT = 80, 5
# Glyph size relative to the image: train draws from this range, eval uses its midpoint so
# evaluation images sit inside the training distribution.
TRAIN_SCALE = (0.6, 1.0)
CANONICAL_SCALE = 0.8
# Families per split in the "small" config: the first ones in hash order.
SMALL_FAMILIES = {"train": 40, "validation": 6, "test": 12}

SKIN_TONES = range(0x1F3FB, 0x1F400)
HAIR = range(0x1F9B0, 0x1F9B4)  # red hair, curly hair, bald, white hair
GENDER_SIGNS = (0x2640, 0x2642)
_ZWJ = 0x200D
_VS16 = 0xFE0F  # emoji presentation selector: presentation only, not identity
# Gendered people map to their neutral form, so "man technologist", "woman technologist"
# and "technologist" are one family.
NEUTRAL = {
    0x1F468: 0x1F9D1, 0x1F469: 0x1F9D1,  # man, woman -> person
    0x1F466: 0x1F9D2, 0x1F467: 0x1F9D2,  # boy, girl -> child
    0x1F474: 0x1F9D3, 0x1F475: 0x1F9D3,  # old man, old woman -> older person
}

_LINE = re.compile(
    r"^(?P<codepoints>[0-9A-Fa-f ]+?)\s*;\s*(?P<status>[a-z-]+)\s*#\s*(?P<chars>\S+)"
    r"\s+E\d+\.\d+\s+(?P<name>.+?)\s*$")


@dataclasses.dataclass(frozen=True)
class Emoji:
  """One fully-qualified entry of emoji-test.txt."""
  codepoints: tuple[int, ...]
  name: str
  group: str
  subgroup: str
  item_id: int
  base_id: int
  base_key: str

  @property
  def chars(self) -> str:
    return "".join(map(chr, self.codepoints))


def base_key(codepoints) -> str:
  """Key shared by all variants of one emoji, e.g. "1F44B" for every waving hand.

  Drops skin-tone modifiers and the presentation selector, drops gender signs and hair
  components joined by ZWJ ("man: red hair" -> "man"), and maps gendered people to the
  neutral person, so skin-tone, gender and hair variants land in one family.
  """
  parts, part = [], []
  for c in list(codepoints) + [_ZWJ]:
    if c == _ZWJ:
      parts.append(part)
      part = []
    elif c != _VS16 and c not in SKIN_TONES:
      part.append(NEUTRAL.get(c, c))
  # A gender sign or hair part only modifies what precedes it; alone (the "female sign"
  # emoji) it is the emoji itself.
  kept = [p for i, p in enumerate(parts)
          if p and not (i > 0 and len(p) == 1 and (p[0] in GENDER_SIGNS or p[0] in HAIR))]
  return " 200D ".join(" ".join(f"{c:04X}" for c in p) for p in kept)


def split_of(key: str) -> str:
  """The split of a variant family, from a hash of its base key."""
  return base.hash_split(key, TRAIN_PERCENT, VALIDATION_PERCENT)


def first_families(keys, per_split) -> set[str]:
  """The first per_split[split] distinct family keys of each split, in hash order.

  A deterministic subset that never leaves a split empty (as long as the split has
  families), and whose families keep the split they have in the full dataset.
  """
  chosen = set()
  for split, n in per_split.items():
    in_split = sorted({k for k in keys if split_of(k) == split},
                      key=lambda k: (base.stable_int(k), k))
    chosen.update(in_split[:n])
  return chosen


def parse_emoji_test(text: str) -> list[Emoji]:
  """Fully-qualified emoji of an emoji-test.txt, in file order, with ids and families."""
  group = subgroup = None
  entries = []
  for lineno, line in enumerate(text.splitlines(), 1):
    if line.startswith("# group:"):
      group = line.split(":", 1)[1].strip()
    elif line.startswith("# subgroup:"):
      subgroup = line.split(":", 1)[1].strip()
    elif line.strip() and not line.startswith("#"):
      m = _LINE.match(line)
      if not m:
        raise ValueError(f"emoji-test.txt line {lineno}: cannot parse {line!r}")
      if m["status"] != "fully-qualified":
        continue
      if group is None or subgroup is None:
        raise ValueError(f"emoji-test.txt line {lineno}: entry before any group/subgroup")
      codepoints = tuple(int(c, 16) for c in m["codepoints"].split())
      if "".join(map(chr, codepoints)) != m["chars"]:
        raise ValueError(f"emoji-test.txt line {lineno}: code points do not spell "
                         f"{m['chars']!r}")
      entries.append((codepoints, m["name"], group, subgroup))
  names = [e[1] for e in entries]
  if len(set(names)) != len(names):
    dup = sorted({n for n in names if names.count(n) > 1})
    # The pipeline uses the name as the unique text of an item.
    raise ValueError(f"emoji-test.txt has duplicate names: {dup[:5]}")
  keys = [base_key(e[0]) for e in entries]
  # The family's base: the entry that is its own key (the unmodified emoji), else the first
  # entry without a skin tone (some ZWJ families list toned forms first), else the first.
  base_rank = {}
  for item_id, ((codepoints, *_), key) in enumerate(zip(entries, keys)):
    plain = " ".join(f"{c:04X}" for c in codepoints if c != _VS16)
    rank = (0 if plain == key else 1 if not any(c in SKIN_TONES for c in codepoints) else 2,
            item_id)
    base_rank[key] = min(base_rank.get(key, rank), rank)
  return [Emoji(codepoints, name, group, subgroup, item_id, base_rank[key][1], key)
          for item_id, ((codepoints, name, group, subgroup), key)
          in enumerate(zip(entries, keys))]


@functools.cache
def _font(path: str = FONT_PATH):
  return ImageFont.truetype(path, FONT_SIZE)


def render_glyph(chars: str, font_path: str = FONT_PATH) -> Image.Image:
  """The emoji's colour bitmap, RGBA, cropped to its visible pixels."""
  font = _font(font_path)
  _, _, right, bottom = font.getbbox(chars)
  canvas = Image.new("RGBA", (right, bottom), (0, 0, 0, 0))
  ImageDraw.Draw(canvas).text((0, 0), chars, font=font, embedded_color=True)
  bbox = canvas.getbbox()  # Non-zero alpha region.
  if bbox is None:
    raise ValueError(f"{font_path} renders nothing for {chars!r} "
                     f"({' '.join(f'U+{ord(c):04X}' for c in chars)})")
  return canvas.crop(bbox)


def compose(glyph: Image.Image, *, scale: float, shift: tuple[float, float],
            background: tuple[int, int, int], size: int = IMAGE_SIZE) -> Image.Image:
  """Draws the glyph on a size x size RGB background.

  scale: glyph's longest side / image side. shift: where the glyph sits in the free margin,
  0 = left/top, 1 = right/bottom. Pillow resizes RGBA with premultiplied alpha, so shrinking
  the glyph before pasting gives clean edges at a fraction of the cost of shrinking a
  full-resolution composite.
  """
  w, h = glyph.size
  f = scale * size / max(w, h)
  gw, gh = max(1, round(w * f)), max(1, round(h * f))
  small = glyph.resize((gw, gh), Image.Resampling.LANCZOS)
  canvas = Image.new("RGB", (size, size), tuple(int(c) for c in background))
  canvas.paste(small, (round((size - gw) * shift[0]), round((size - gh) * shift[1])), mask=small)
  return canvas


def canonical_rendering(glyph: Image.Image) -> Image.Image:
  return compose(glyph, scale=CANONICAL_SCALE, shift=(0.5, 0.5), background=(255, 255, 255))


def train_rendering(glyph: Image.Image, emoji: Emoji, index: int) -> Image.Image:
  """The index-th random rendering of an emoji; same inputs, same pixels on every build."""
  rng = np.random.default_rng([base.stable_int(emoji.chars), index])
  return compose(glyph, scale=rng.uniform(*TRAIN_SCALE), shift=tuple(rng.uniform(0, 1, 2)),
                 background=tuple(rng.integers(0, 256, 3)))


def png_bytes(image: Image.Image) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format="PNG")
  return buf.getvalue()


def render_pngs(emoji: Emoji, train: bool) -> list[bytes]:
  """PNG bytes of an emoji's renderings: TRAIN_RENDERINGS random ones, or one canonical."""
  glyph = render_glyph(emoji.chars)
  if not train:
    return [png_bytes(canonical_rendering(glyph))]
  return [png_bytes(train_rendering(glyph, emoji, i)) for i in range(TRAIN_RENDERINGS)]


class GembEmoji(base.GembBuilder):
  """Noto Color Emoji renderings with their CLDR names (module docstring has details)."""

  name = "gemb_emoji"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": f"Initial release: fully-qualified emoji of emoji-test.txt, {TRAIN_RENDERINGS} "
               "random train renderings, one canonical validation/test rendering.",
  }
  BUILDER_CONFIGS = [
      tfds.core.BuilderConfig(name="full", description="Every fully-qualified emoji."),
      tfds.core.BuilderConfig(
          name="small", description="The first families of each split in hash order "
          f"({SMALL_FAMILIES}), for tests."),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Emoji images paired with their official names. Images: Noto Color Emoji "
            f"({FONT_PATH}, Debian package fonts-noto-color-emoji, SIL OFL-1.1), rendered "
            f"with Pillow at size {FONT_SIZE}, cropped, composited and resized to "
            f"{IMAGE_SIZE}x{IMAGE_SIZE}. Names, groups and subgroups: Unicode "
            f"emoji-test.txt ({EMOJI_TEST_PATH}, Debian package unicode-data, Unicode "
            "License), fully-qualified entries only. item_id = index among those entries "
            "in file order; base_id = item_id of the unmodified emoji of its variant "
            "family (skin tone, gender and hair variants share it). Splits are disjoint by family "
            f"(sha256 of the base key: {TRAIN_PERCENT}% train, {VALIDATION_PERCENT}% "
            f"validation, rest test). Train: {TRAIN_RENDERINGS} renderings per emoji "
            f"(scale {TRAIN_SCALE[0]}-{TRAIN_SCALE[1]}, random position and background, "
            "seeded per emoji); validation/test: one centred rendering on white at scale "
            f"{CANONICAL_SCALE}."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3),
                                         encoding_format="png"),
            "name": tfds.features.Text(),
            "group": tfds.features.Text(),
            "subgroup": tfds.features.Text(),
            "emoji": tfds.features.Text(),
            "item_id": tfds.features.Scalar(np.int32),
            "base_id": tfds.features.Scalar(np.int32),
        }),
        homepage="https://github.com/googlefonts/noto-emoji",
        license="Images: SIL Open Font License 1.1 (Noto Color Emoji). "
                "Names: Unicode License (emoji-test.txt).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from installed Debian files.
    for path, package in ((FONT_PATH, "fonts-noto-color-emoji"),
                          (EMOJI_TEST_PATH, "unicode-data")):
      if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is missing: install the Debian package {package}")
    with open(EMOJI_TEST_PATH, encoding="utf-8") as f:
      emojis = parse_emoji_test(f.read())
    if self.builder_config.name == "small":
      keep = first_families([e.base_key for e in emojis], SMALL_FAMILIES)
      emojis = [e for e in emojis if e.base_key in keep]
    splits = [split_of(e.base_key) for e in emojis]
    # Serial on purpose: a process pool would need spawn (the caller may run JAX threads),
    # and spawn re-runs an unguarded caller script, which would deadlock on the build lock.
    return {split: self._generate_examples([e for e, s in zip(emojis, splits) if s == split],
                                           train=split == "train")
            for split in ("train", "validation", "test")}

  def _generate_examples(self, emojis, train):
    for e in emojis:
      for i, png in enumerate(render_pngs(e, train)):
        yield f"{e.item_id}_{i}", {
            "image": png,
            "name": e.name,
            "group": e.group,
            "subgroup": e.subgroup,
            "emoji": e.chars,
            "item_id": e.item_id,
            "base_id": e.base_id,
        }


_INSTRUCTION = "task: image retrieval | query: "
TASKS = (
    TaskSpec(name="emoji_image_to_name", dataset="emoji", query=("image:image",),
             candidate=("text:name",), query_id="item_id", candidate_id="item_id",
             instruction=_INSTRUCTION,
             description="Emoji image -> its CLDR name (renderings of one emoji share the id)."),
    TaskSpec(name="emoji_name_to_image", dataset="emoji", query=("text:name",),
             candidate=("image:image",), query_id="item_id", candidate_id="item_id",
             instruction=_INSTRUCTION,
             description="CLDR name -> the emoji's image."),
    # The retrieval instruction on purpose: classifying is retrieving the nearest class
    # prompt, and it is the instruction the model saw with emoji images in training.
    # Lower-cased names: the CLDR names the model learns from are lower-case. Zero-shot on
    # purpose: trained on the train split's groups (train_split="train") in the default
    # recipe, when its images were patches learned from scratch, it reached 53-54% accuracy,
    # under the 54.8% majority class, at other tasks' cost.
    ClassificationSpec(name="emoji_group_zero_shot", dataset="emoji", query=("image:image",),
                       label="group", lowercase=True, instruction=_INSTRUCTION,
                       templates=("{}", "an emoji of {}", "{} emoji",
                                  "an emoji from the group {}"),
                       description="Zero-shot: emoji image -> its Unicode group (Smileys & "
                                   "Emotion, Flags, ...) by prompts of the group names."),
)
