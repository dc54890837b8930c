"""Emoji for the builders: the Unicode emoji list, its variant families and split rule, and
Noto Color Emoji glyph renderings. gemb_emoji (emoji.py), gemb_composed, gemb_video and
gemb_speech (its emoji names) all read emoji through this module, so an emoji has the same
family, split and pixels in every dataset.

Nothing is downloaded; two files that Debian packages install are read:

  * glyphs: `/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf` from `fonts-noto-color-emoji`
    (Google Noto Color Emoji, SIL Open Font License 1.1). It is a CBDT bitmap font, so Pillow
    renders it only at its native size 109 with `embedded_color=True`.
  * names: `/usr/share/unicode/emoji/emoji-test.txt` from `unicode-data` (Unicode, Inc.,
    Unicode License): code points, qualification status, CLDR short name, `# group:` and
    `# subgroup:` headers. Only fully-qualified entries are used.

A variant family (an emoji with its skin-tone, gender and hair variants, see `base_key`)
goes to train / validation / test by a hash of its base key (`split_of`: 80 / 5 / 15 %).
Train renderings are randomly scaled, shifted and background-coloured, seeded by the emoji
itself so every build is byte-identical; validation and test renderings are canonical
(centred, white).
"""
import dataclasses
import functools
import io
import re

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gemb.data.builtin import base

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

# The dataset info of a builder whose images are these glyphs.
HOMEPAGE = "https://github.com/googlefonts/noto-emoji"
LICENSE = ("Images: SIL Open Font License 1.1 (Noto Color Emoji). "
           "Names: Unicode License (emoji-test.txt).")

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


def require_files():
  """FileNotFoundError naming the Debian package of a missing font or emoji list."""
  base.require_files(((FONT_PATH, "fonts-noto-color-emoji"), (EMOJI_TEST_PATH, "unicode-data")))


def load_emojis() -> list[Emoji]:
  """The fully-qualified emoji of the installed emoji-test.txt (after require_files)."""
  require_files()
  with open(EMOJI_TEST_PATH, encoding="utf-8") as f:
    return parse_emoji_test(f.read())
