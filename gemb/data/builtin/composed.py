"""TFDS builder "gemb_composed": composed retrieval, [base emoji image + modifier text] -> variant.

Owns deriving (base, modifier, variant) triples from Unicode's emoji variants. A query is the
image of a base emoji ("thumbs up") followed by a modifier text ("medium-dark skin tone");
its one right answer is the image of the variant (U+1F44D U+1F3FE). Unicode defines the
variants exactly, so the ground truth is exact. Parsing, variant families, the split rule
and the rendering are gemb/data/builtin/glyphs.py's, imported, so this dataset reads the same
Debian files (`fonts-noto-color-emoji`: Noto Color Emoji, SIL OFL-1.1; `unicode-data`:
emoji-test.txt, Unicode License) and downloads nothing.

Triples: for every variant family of glyphs.py whose base carries no skin tone, each other
member is a target, and the modifier is the difference between the two CLDR names
(`modifier_of`): attributes after ": " that the target adds ("thumbs up: medium-dark skin
tone" -> "medium-dark skin tone") and words its name adds before them ("person running" ->
"woman running" gives "woman"; "person" -> "woman: red hair" gives "woman, red hair").
A triple is kept only when the code points confirm the text: the added skin-tone
modifiers spell the added tone names, the added hair components the added hair names, and
added words come with an added gender sign or gendered person. Left out: families whose
base is itself toned (handshake), and members whose names differ otherwise ("kiss: woman,
man" -> "kiss: man, man", "family: man, woman, boy" -> "family: man, woman, girl").

Records: base_image, target_image (PNG, 64x64x3), modifier, modifier_kind ("gender",
"hair", "skin_tone", or several joined by "+" in that order), base_name, target_name,
base_id, target_id (gemb_emoji item_ids of the base and of the variant).

Splits are glyphs.py's: by a hash of the family's base key, so they agree with gemb_emoji
(no family of gemb_emoji's test split appears in this train split, and so on). Train holds
`glyphs.TRAIN_RENDERINGS` records per triple, the i-th pairing gemb_emoji's i-th random
rendering of the base with that of the target; validation and test hold one record per
triple with the canonical renderings.

Configs: "full" (default) and "small": the first `SMALL_FAMILIES` families with triples of
each split in hash order, for tests.
Full build: 1,785 triples of 153 families; train 5,556 (1,389 triples x 4), validation 161,
test 235 records (~40 s on 2 busy cores). Small build: train 640, validation 119, test 32
(~5 s).

Task (`TASKS`): composed_image_text_to_image.
"""
import collections
import dataclasses
import functools

import numpy as np
import tensorflow_datasets as tfds

from gemb.data.builtin import base, glyphs
from gemb.data.tasks import TaskSpec

# Names that emoji-test.txt gives the components, as they appear after ": " in a name.
TONE_NAMES = {0x1F3FB: "light skin tone", 0x1F3FC: "medium-light skin tone",
              0x1F3FD: "medium skin tone", 0x1F3FE: "medium-dark skin tone",
              0x1F3FF: "dark skin tone"}
HAIR_NAMES = {0x1F9B0: "red hair", 0x1F9B1: "curly hair", 0x1F9B2: "bald",
              0x1F9B3: "white hair"}
KINDS = ("gender", "hair", "skin_tone")
# "small" config: families per split, the first ones in hash order.
SMALL_FAMILIES = {"train": 8, "validation": 3, "test": 4}


@dataclasses.dataclass(frozen=True)
class Triple:
  base: glyphs.Emoji
  target: glyphs.Emoji
  modifier: str
  kind: str


def _split_name(name: str) -> tuple[list[str], list[str]]:
  """"woman running: dark skin tone" -> (["woman", "running"], ["dark skin tone"])."""
  core, _, attrs = name.partition(": ")
  return core.split(), [a.strip() for a in attrs.split(",") if a.strip()]


def _named(e: glyphs.Emoji, names: dict[int, str]) -> set[str]:
  """Names of the components of `names` that e's code points contain."""
  return {names[c] for c in e.codepoints if c in names}


def _gendered(codepoints) -> collections.Counter:
  return collections.Counter(c for c in codepoints
                             if c in glyphs.GENDER_SIGNS or c in glyphs.NEUTRAL)


def modifier_of(base: glyphs.Emoji, target: glyphs.Emoji) -> tuple[str, str] | None:
  """(modifier text, kind) that turns base into target, or None if there is none.

  The text is what the target's CLDR name adds to the base's: new words of the name
  (joined by spaces) first, then new attributes, joined by ", ". None when the target drops
  an attribute of the base, adds an attribute that is neither a skin tone nor a hair
  component, adds nothing, or when the code points do not confirm the text.
  """
  base_words, base_attrs = _split_name(base.name)
  words, attrs = _split_name(target.name)
  added = list(attrs)
  for a in base_attrs:
    if a not in added:
      return None
    added.remove(a)
  tones = [a for a in added if a in TONE_NAMES.values()]
  hair = [a for a in added if a in HAIR_NAMES.values()]
  if len(tones) + len(hair) != len(added):
    return None
  new_words = [w for w in words if w not in base_words]
  # Code points must agree with the names, so a naming quirk never yields a wrong pair.
  if set(tones) != _named(target, TONE_NAMES) - _named(base, TONE_NAMES):
    return None
  if set(hair) != _named(target, HAIR_NAMES) - _named(base, HAIR_NAMES):
    return None
  gender_changed = _gendered(target.codepoints) != _gendered(base.codepoints)
  if bool(new_words) != gender_changed or (words != base_words and not new_words):
    return None
  parts = ([" ".join(new_words)] if new_words else []) + added
  if not parts:
    return None
  kinds = dict(zip(KINDS, (bool(new_words), bool(hair), bool(tones))))
  return ", ".join(parts), "+".join(k for k in KINDS if kinds[k])


def triples(emojis) -> list[Triple]:
  """Every (base, modifier, target) of the emoji list, in target order."""
  by_id = {e.item_id: e for e in emojis}
  out, seen = [], set()
  for target in emojis:
    base = by_id[target.base_id]
    if target is base or any(c in glyphs.SKIN_TONES for c in base.codepoints):
      continue
    found = modifier_of(base, target)
    if found is None:
      continue
    modifier, kind = found
    if (base.item_id, modifier) in seen:
      # Two targets for one query would make the answer ambiguous.
      raise ValueError(f"{base.name!r} + {modifier!r} names two emoji")
    seen.add((base.item_id, modifier))
    out.append(Triple(base, target, modifier, kind))
  return out


class GembComposed(base.GembBuilder):
  """[Base emoji image, modifier text] -> variant image (module docstring has details)."""

  name = "gemb_composed"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: skin-tone, gender and hair variants of emoji-test.txt; "
               f"{glyphs.TRAIN_RENDERINGS} random train renderings, canonical eval ones.",
  }
  BUILDER_CONFIGS = base.full_and_small(
      "Every triple.",
      f"The first families with triples of each split in hash order ({SMALL_FAMILIES}), "
      "for tests.")

  def _info(self) -> tfds.core.DatasetInfo:
    size = glyphs.IMAGE_SIZE
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Composed image+text -> image retrieval on emoji variants: the image of a base "
            "emoji plus a modifier text (skin tone, gender, hair) -> the image of the "
            "variant. Images: Noto Color Emoji (Debian package fonts-noto-color-emoji, SIL "
            f"OFL-1.1) rendered as in gemb_emoji ({size}x{size}). Variants, names and "
            "modifiers: Unicode emoji-test.txt (Debian package unicode-data, Unicode "
            "License); the modifier is the difference of the CLDR names, confirmed by the "
            "code points. base_id / target_id are gemb_emoji item_ids. Splits are "
            "gemb_emoji's (sha256 of the base key). Train: "
            f"{glyphs.TRAIN_RENDERINGS} random renderings per triple; validation/test: "
            "canonical renderings."),
        features=tfds.features.FeaturesDict({
            "base_image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            "target_image": tfds.features.Image(shape=(size, size, 3),
                                                encoding_format="png"),
            "modifier": tfds.features.Text(),
            "modifier_kind": tfds.features.Text(),
            "base_name": tfds.features.Text(),
            "target_name": tfds.features.Text(),
            "base_id": tfds.features.Scalar(np.int32),
            "target_id": tfds.features.Scalar(np.int32),
        }),
        homepage=glyphs.HOMEPAGE, license=glyphs.LICENSE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from installed Debian files.
    found = triples(glyphs.load_emojis())
    if self.builder_config.name == "small":
      keep = glyphs.first_families([t.base.base_key for t in found], SMALL_FAMILIES)
      found = [t for t in found if t.base.base_key in keep]
    return {split: self._generate_examples(
                [t for t in found if glyphs.split_of(t.base.base_key) == split],
                train=split == "train")
            for split in ("train", "validation", "test")}

  def _generate_examples(self, found, train):
    # A base serves many targets: render it once per split.
    base_pngs = functools.cache(lambda e: glyphs.render_pngs(e, train))
    for t in found:
      target_pngs = glyphs.render_pngs(t.target, train)
      for i, (base_png, target_png) in enumerate(zip(base_pngs(t.base), target_pngs)):
        yield f"{t.target.item_id}_{i}", {
            "base_image": base_png,
            "target_image": target_png,
            "modifier": t.modifier,
            "modifier_kind": t.kind,
            "base_name": t.base.name,
            "target_name": t.target.name,
            "base_id": t.base.item_id,
            "target_id": t.target.item_id,
        }


TASKS = (
    TaskSpec(name="composed_image_text_to_image", dataset="composed",
             query=("image:base_image", "text:modifier"), candidate=("image:target_image",),
             query_id="target_id", candidate_id="target_id",
             instruction="task: composed image retrieval | query: ",
             description="[Base emoji image, modifier text] -> the variant's image."),
)
