"""TFDS builder "gemb_video": short clips of real emoji and handwritten digits moving as captioned.

Owns the object pool, the caption grammar, the motion plan of every clip, its rendering into
frames and its spoken narration. Nothing is downloaded; the clips are made from real images
that installed packages ship:

  * emoji: Noto Color Emoji glyphs (`/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf`,
    Debian `fonts-noto-color-emoji`, SIL OFL-1.1) named by their CLDR names
    (`/usr/share/unicode/emoji/emoji-test.txt`, Debian `unicode-data`, Unicode License),
    parsed and rendered with gemb/data/builtin/glyphs.py. Only the base of each variant family
    in the groups of things (`EMOJI_GROUPS`, no symbols or flags), and no names with a ":"
    ("family: man, boy"), which do not read as a noun in a caption.
  * handwritten digits: scikit-learn's `load_digits` (the UCI optical-recognition digits,
    8x8 images, bundled with scikit-learn, BSD-3 / CC-BY-4.0): the first `DIGITS_PER_CLASS`
    of each class, each drawn in one ink colour named in its caption ("the red digit 3").
  * narration: espeak-ng (Debian `espeak-ng`, GPL-3; its output is data) speaking the caption
    in the en-us voice at a per-clip speed and pitch, resampled to 16 kHz mono int16 WAV.

A clip is `FRAMES` frames of `IMAGE_SIZE` x `IMAGE_SIZE` on a plain light background. One
object does one motion over the whole clip ("a red apple slides to the left"); or two
objects act in turn, the first in the first half and the second in the second half ("the
blue digit 3 moves up, then a cat appears"), each inside its own half of the frame so their
motions never overlap. Motions (`MOTIONS`): slide left / right / up / down, grow, shrink,
spin, appear (fade in), disappear (fade out); each has two phrasings. Captions are unique in
the dataset up to phrasing (objects by name, motions, order), so every caption describes
exactly one clip and item_id is the id of both.

Records: frames (Sequence of `FRAMES` PNG images), caption, narration (WAV bytes, empty when
the clip has none), has_narration, item_id (the clip), object_ids (emoji: item_id of the
family's base emoji in gemb_emoji; digits: `DIGIT_ID_OFFSET` + index in load_digits),
object_names, motions (motion names, in caption order).

Splits are disjoint by object: an emoji goes to train / validation / test by the same rule as
in gemb_emoji (glyphs.split_of of its family key: 80 / 5 / 15 %), a digit by glyphs.split_of of
"digit:<index>", and a two-object clip draws its second object from its first object's
split. So no object of a test clip moves in any training clip, and no test emoji is in
gemb_emoji's train split either (digits are split by sample: load_digits has no writer ids,
so a writer may have samples on both sides). The clips of each split with a narration
(`NARRATED_PERCENT`) are also in "<split>_narrated" (same records), for tasks that need the
audio. Each object starts `CLIPS_PER_OBJECT` clips; every random choice of a clip (motions,
second object, phrasing, layout, colours, narration voice) is drawn from a generator seeded
by the clip's key, so builds are byte-identical. "small" keeps the clips started by the
first `SMALL_OBJECTS` objects of each split in hash order (ids as in "full").

Full build (2,870 clips from 1,185 emoji and 250 digits, 193 MB, ~3 min on 2 busy cores):
train 2,324, validation 130, test 416, train_narrated 727, validation_narrated 46,
test_narrated 138. Small: train 48, validation 24, test 28, narrated 18 / 9 / 7 (~12 s).
"""
import dataclasses
import functools
import hashlib
import io

import av
import numpy as np
from PIL import Image
import soundfile as sf
import tensorflow_datasets as tfds

from gemb.data.builtin import base, glyphs, tts
from gemb.data.tasks import TaskSpec

FRAMES = 16
IMAGE_SIZE = 64
CLIPS_PER_OBJECT = 2
PAIR_PERCENT = 33       # clips with a second object
NARRATED_PERCENT = 33   # clips with a spoken narration
DIGITS_PER_CLASS = 25
DIGIT_ID_OFFSET = 100_000  # above every emoji item_id
DIGIT_EDGES = (0.2, 0.6)  # ink density that becomes a stroke edge, see digit_glyph
SMALL_OBJECTS = {"train": 24, "validation": 12, "test": 14}
SPLITS = ("train", "validation", "test")
NARRATION_RATE = 16_000
# Redraws of a clip's plan whose caption is already taken, before the clip is dropped.
MAX_DRAWS = 30

EMOJI_GROUPS = ("Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink",
                "Travel & Places", "Activities", "Objects")
INKS = {"black": (20, 20, 20), "red": (200, 30, 30), "green": (20, 130, 40),
        "blue": (30, 60, 200), "purple": (120, 40, 160), "orange": (230, 110, 0),
        "brown": (110, 65, 20)}
# Motion name -> its phrasings (chosen per clip; equal meaning, so captions are deduplicated
# by motion, not by phrase).
MOTIONS = {
    "slide_left": ("slides to the left", "moves left"),
    "slide_right": ("slides to the right", "moves right"),
    "slide_up": ("moves up", "slides upward"),
    "slide_down": ("moves down", "slides downward"),
    "grow": ("grows larger", "gets bigger"),
    "shrink": ("shrinks", "gets smaller"),
    "spin": ("spins", "spins around"),
    "appear": ("appears", "fades in"),
    "disappear": ("disappears", "fades out"),
}
# CLDR names of the used emoji that end in "s" but are one thing.
_SINGULAR_IN_S = ("rhinoceros", "tennis", "leftwards pushing hand", "rightwards pushing hand")
_HORIZONTAL = ("slide_left", "slide_right")
_VERTICAL = ("slide_up", "slide_down")


@dataclasses.dataclass(frozen=True)
class VideoObject:
  """Something that moves in clips: one emoji family or one handwritten digit."""
  key: str        # split / leakage key: emoji family key, or "digit:<index>"
  object_id: int
  name: str       # noun phrase with its article, as captions use it
  plural: bool = False
  chars: str = ""  # emoji characters; "" for a digit
  digit: int = -1  # index in load_digits; -1 for an emoji
  ink: tuple[int, int, int] = (0, 0, 0)


@dataclasses.dataclass(frozen=True)
class State:
  cx: float       # center, pixels
  cy: float
  size: float     # longest side of the unrotated object, pixels
  angle: float    # degrees, counter-clockwise
  opacity: float  # 0 = absent


@dataclasses.dataclass(frozen=True)
class Track:
  """One object's part in a clip: it goes from `start` to `end` over frames first..last."""
  obj: VideoObject
  motion: str
  phrase: str
  start: State
  end: State
  first: int
  last: int

  def state(self, t: int) -> State:
    p = min(max((t - self.first) / (self.last - self.first), 0.0), 1.0)
    return State(*(a + p * (b - a) for a, b in zip(dataclasses.astuple(self.start),
                                                     dataclasses.astuple(self.end))))


@dataclasses.dataclass(frozen=True)
class Clip:
  key: str
  item_id: int
  split: str
  tracks: tuple[Track, ...]
  background: tuple[int, int, int]
  narrated: bool
  voice: tuple[int, int]  # espeak-ng speed (words/min), pitch (0-99)

  @property
  def caption(self) -> str:
    return ", then ".join(f"{t.obj.name} {verb_phrase(t.phrase, t.obj.plural)}"
                          for t in self.tracks)


def _hash(text: str) -> bytes:
  return hashlib.sha256(text.encode("utf-8")).digest()


def _rng(key: str) -> np.random.Generator:
  return np.random.default_rng(list(_hash(key)))


def _is_plural(name: str) -> bool:
  """Whether a name takes a plural verb: 'sparkles', 'people hugging', not 'octopus',
  'dress' or 'money with wings' (the head noun is what precedes a 'with' / 'and' / '-ing'
  phrase)."""
  if name in _SINGULAR_IN_S:
    return False
  words = name.split()
  head = words[:1]
  for w in words[1:]:
    if w in ("with", "of", "in", "on", "over", "and", "at", "from", "for") or w.endswith("ing"):
      break
    head.append(w)
  last = head[-1]
  return last == "people" or (last.endswith("s") and not last.endswith(("ss", "us")))


def _with_article(name: str) -> str:
  """'apple' -> 'an apple'; names that are proper ('Tokyo tower') or plural take 'the'."""
  if name[0].isupper() or _is_plural(name):
    return f"the {name}"
  # Vowel letters that sound like a consonant ('a unicorn'), and a silent h ('an hourglass').
  vowel = (name[0] in "aeiou" and not name.startswith(("uni", "use", "eu", "one"))
           or name.startswith("hour"))
  return f"{'an' if vowel else 'a'} {name}"


def verb_phrase(phrase: str, plural: bool) -> str:
  """A MOTIONS phrasing (third person singular) agreeing with its subject."""
  verb, _, rest = phrase.partition(" ")
  return " ".join(filter(None, (verb[:-1] if plural else verb, rest)))


def emoji_objects(emojis) -> list[VideoObject]:
  """The base emoji of the groups of things, as objects (see module docstring)."""
  return [VideoObject(key=e.base_key, object_id=e.item_id, name=_with_article(e.name),
                      plural=_is_plural(e.name), chars=e.chars)
          for e in emojis
          if e.item_id == e.base_id and e.group in EMOJI_GROUPS and ":" not in e.name]


def digit_objects(labels) -> list[VideoObject]:
  """The first DIGITS_PER_CLASS digits of each class; the ink colour is drawn from the key."""
  objects, seen = [], {}
  for index, label in enumerate(labels):
    label = int(label)
    seen[label] = seen.get(label, 0) + 1
    if seen[label] > DIGITS_PER_CLASS:
      continue
    key = f"digit:{index}"
    ink = sorted(INKS)[_rng(key).integers(len(INKS))]
    objects.append(VideoObject(key=key, object_id=DIGIT_ID_OFFSET + index,
                               name=f"the {ink} digit {label}", digit=index, ink=INKS[ink]))
  return objects


def _boxes(motions, rng):
  """Each track's region of the frame: all of it, or a half each (no overlap in pairs).

  Halves are side by side when a track slides vertically and none sideways, else stacked
  (full width), so a slide crosses the whole frame where the layout allows; which object
  gets which half is random.
  """
  s = float(IMAGE_SIZE)
  if len(motions) == 1:
    return [(0.0, 0.0, s, s)]
  if any(m in _VERTICAL for m in motions) and not any(m in _HORIZONTAL for m in motions):
    halves = [(0.0, 0.0, s / 2, s), (s / 2, 0.0, s, s)]
  else:
    halves = [(0.0, 0.0, s, s / 2), (0.0, s / 2, s, s)]
  return halves if rng.integers(2) else halves[::-1]


def _states(motion, box, rng, single):
  """Start and end state of a motion inside box (x0, y0, x1, y1), all within the box."""
  # A pixel of margin: rounding a sprite's corner to the pixel grid never crosses the box.
  x0, y0, x1, y1 = box[0] + 1, box[1] + 1, box[2] - 1, box[3] - 1
  d = min(x1 - x0, y1 - y0)

  def place(size):  # a random center keeping an object of extent `size` inside the box
    return (rng.uniform(x0 + size / 2, x1 - size / 2), rng.uniform(y0 + size / 2, y1 - size / 2))

  if motion in _HORIZONTAL + _VERTICAL:
    size = d * (rng.uniform(0.35, 0.45) if single else rng.uniform(0.55, 0.7))
    cx, cy = place(size)
    lo_x, hi_x, lo_y, hi_y = x0 + size / 2, x1 - size / 2, y0 + size / 2, y1 - size / 2
    a, b = {"slide_left": ((hi_x, cy), (lo_x, cy)), "slide_right": ((lo_x, cy), (hi_x, cy)),
            "slide_up": ((cx, hi_y), (cx, lo_y)), "slide_down": ((cx, lo_y), (cx, hi_y))}[motion]
    return State(*a, size, 0.0, 1.0), State(*b, size, 0.0, 1.0)
  if motion in ("grow", "shrink"):
    big = d * rng.uniform(0.8, 0.95)
    small = big * rng.uniform(0.25, 0.35)
    cx, cy = place(big)
    states = State(cx, cy, small, 0.0, 1.0), State(cx, cy, big, 0.0, 1.0)
    return states if motion == "grow" else states[::-1]
  # spin / appear / disappear: a fixed place; at most d / sqrt(2) so any rotation fits.
  size = d * rng.uniform(0.5, 0.68)
  cx, cy = place(size * np.sqrt(2))
  if motion == "spin":
    turn = 360.0 if rng.integers(2) else -360.0
    return State(cx, cy, size, 0.0, 1.0), State(cx, cy, size, turn, 1.0)
  states = State(cx, cy, size, 0.0, 0.0), State(cx, cy, size, 0.0, 1.0)
  return states if motion == "appear" else states[::-1]


def _draw_clip(key, item_id, split, obj, partners, rng):
  """One random plan for a clip started by obj (see module docstring)."""
  objs = [obj]
  if partners and rng.integers(100) < PAIR_PERCENT:
    objs.append(partners[rng.integers(len(partners))])
  motions = [sorted(MOTIONS)[rng.integers(len(MOTIONS))] for _ in objs]
  boxes = _boxes(motions, rng)
  half = FRAMES // len(objs)
  tracks = tuple(
      Track(o, m, MOTIONS[m][rng.integers(len(MOTIONS[m]))],
            *_states(m, box, rng, single=len(objs) == 1), first=i * half, last=(i + 1) * half - 1)
      for i, (o, m, box) in enumerate(zip(objs, motions, boxes)))
  background = tuple(int(c) for c in rng.integers(190, 256, 3))
  narrated = bool(rng.integers(100) < NARRATED_PERCENT)
  voice = (int(rng.integers(140, 181)), int(rng.integers(30, 71)))
  return Clip(key, item_id, split, tracks, background, narrated, voice)


def plan_clips(objects) -> list[Clip]:
  """Every clip of the full dataset, in item_id order.

  Objects are taken split by split in hash order; each starts CLIPS_PER_OBJECT clips. A plan
  whose caption (objects by name, motions, order) is already taken is redrawn from the same
  generator, so captions stay unique and the result depends only on the object list.
  """
  by_split = {s: sorted((o for o in objects if glyphs.split_of(o.key) == s),
                        key=lambda o: _hash(o.key)) for s in SPLITS}
  clips, taken = [], set()
  for split in SPLITS:
    pool = by_split[split]
    for obj in pool:
      partners = [o for o in pool if o.name != obj.name]
      for k in range(CLIPS_PER_OBJECT):
        key = f"{obj.key}#{k}"
        rng = _rng(key)
        for _ in range(MAX_DRAWS):
          clip = _draw_clip(key, len(clips), split, obj, partners, rng)
          meaning = tuple((t.obj.name, t.motion) for t in clip.tracks)
          if meaning not in taken:
            taken.add(meaning)
            clips.append(clip)
            break
  return clips


def small_subset(clips) -> list[Clip]:
  """Clips started by the first SMALL_OBJECTS[split] objects of each split (in plan order)."""
  starters = {s: [] for s in SPLITS}
  for c in clips:
    first = c.tracks[0].obj.key
    if first not in starters[c.split]:
      starters[c.split].append(first)
  keep = {k for s in SPLITS for k in starters[s][:SMALL_OBJECTS[s]]}
  return [c for c in clips if c.tracks[0].obj.key in keep]


def digit_glyph(pixels, ink) -> Image.Image:
  """An 8x8 digit (values 0-16) as an RGBA glyph in ink, upsampled, cropped to its strokes.

  Bicubic upsampling alone leaves a blur; a smoothstep of the ink density over
  DIGIT_EDGES turns it into strokes with soft edges, which read as handwriting at 64x64.
  """
  density = Image.fromarray(np.round(np.asarray(pixels) * 255 / 16).astype(np.uint8), "L")
  density = np.asarray(density.resize((32, 32), Image.Resampling.BICUBIC), np.float32) / 255
  lo, hi = DIGIT_EDGES
  x = np.clip((density - lo) / (hi - lo), 0, 1)
  alpha = Image.fromarray(np.round(x * x * (3 - 2 * x) * 255).astype(np.uint8), "L")
  glyph = Image.new("RGBA", alpha.size, tuple(ink) + (255,))
  glyph.putalpha(alpha)
  return glyph.crop(alpha.getbbox())


def _sprite(glyph, state):
  """The glyph at the state's size, rotation and opacity (RGBA)."""
  w, h = glyph.size
  f = state.size / max(w, h)
  sprite = glyph.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.LANCZOS)
  if state.angle % 360:
    sprite = sprite.rotate(state.angle, Image.Resampling.BICUBIC, expand=True)
  if state.opacity < 1:
    a = np.asarray(sprite.getchannel("A"), np.float32) * state.opacity
    sprite.putalpha(Image.fromarray(np.round(a).astype(np.uint8), "L"))
  return sprite


def render_frames(clip, sprites) -> list[Image.Image]:
  """The clip's frames; sprites maps object key -> RGBA glyph."""
  frames = []
  for t in range(FRAMES):
    frame = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), clip.background)
    for track in clip.tracks:
      state = track.state(t)
      if state.opacity <= 0:
        continue
      sprite = _sprite(sprites[track.obj.key], state)
      frame.paste(sprite, (round(state.cx - sprite.width / 2), round(state.cy - sprite.height / 2)),
                  mask=sprite)
    frames.append(frame)
  return frames


def narration_wav(text, voice) -> bytes:
  """espeak-ng speech of text as NARRATION_RATE mono int16 WAV bytes."""
  speed, pitch = voice
  out = tts.espeak(text, voice="en-us", speed=speed, pitch=pitch)
  wave, rate = sf.read(io.BytesIO(out), dtype="int16")
  # libswresample through PyAV (gemb decodes video with it anyway); scipy.signal would add
  # seconds of import time to every build.
  resampler = av.AudioResampler(format="s16", layout="mono", rate=NARRATION_RATE)
  frame = av.AudioFrame.from_ndarray(wave[None, :], format="s16", layout="mono")
  frame.sample_rate = rate
  pieces = resampler.resample(frame) + resampler.resample(None)  # None flushes its delay
  buf = io.BytesIO()
  sf.write(buf, np.concatenate([p.to_ndarray()[0] for p in pieces]), NARRATION_RATE,
           subtype="PCM_16", format="WAV")
  return buf.getvalue()


def clip_record(clip, sprites) -> dict:
  """The record of a clip (PNG frames, narration WAV bytes), as the builder stores it."""
  return {
      "frames": [glyphs.png_bytes(f) for f in render_frames(clip, sprites)],
      "caption": clip.caption,
      "narration": narration_wav(clip.caption, clip.voice) if clip.narrated else b"",
      "has_narration": clip.narrated,
      "item_id": clip.item_id,
      "object_ids": [t.obj.object_id for t in clip.tracks],
      "object_names": [t.obj.name for t in clip.tracks],
      "motions": [t.motion for t in clip.tracks],
  }


@functools.cache
def _digit_images():
  from sklearn.datasets import load_digits  # A 3 s import: only when digits are needed.
  digits = load_digits()
  return digits.images, digits.target


def load_objects() -> list[VideoObject]:
  """All objects, from the installed emoji files and scikit-learn's digits."""
  return emoji_objects(glyphs.load_emojis()) + digit_objects(_digit_images()[1])


def glyph_of(obj) -> Image.Image:
  if obj.chars:
    return glyphs.render_glyph(obj.chars)
  return digit_glyph(_digit_images()[0][obj.digit], obj.ink)


class GembVideo(base.GembBuilder):
  """Captioned clips of moving emoji and digits (module docstring has details)."""

  name = "gemb_video"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": f"Initial release: {FRAMES}-frame {IMAGE_SIZE}x{IMAGE_SIZE} clips of one or "
               "two emoji / digits with captioned motions; espeak-ng narration on a third.",
  }
  BUILDER_CONFIGS = base.full_and_small(
      "All clips.",
      f"The clips of the first {SMALL_OBJECTS} objects per split in hash order (for tests).")

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            f"{FRAMES}-frame {IMAGE_SIZE}x{IMAGE_SIZE} clips of real emoji (Noto Color Emoji, "
            "Debian fonts-noto-color-emoji, OFL-1.1; CLDR names from Debian unicode-data) "
            "and handwritten digits (scikit-learn load_digits) doing captioned motions "
            f"({', '.join(MOTIONS)}), one object or two in turn ('..., then ...'). "
            f"{NARRATED_PERCENT}% of clips carry an espeak-ng narration of the caption "
            f"(16 kHz mono WAV) and are repeated in '<split>_narrated'. Splits are disjoint "
            "by object (emoji by family as in gemb_emoji; digits by sample)."),
        features=tfds.features.FeaturesDict({
            "frames": tfds.features.Sequence(
                tfds.features.Image(shape=(IMAGE_SIZE, IMAGE_SIZE, 3), encoding_format="png"),
                length=FRAMES),
            "caption": tfds.features.Text(),
            # Raw encoded bytes: tfds's Audio feature needs TensorFlow to encode.
            "narration": tfds.features.Tensor(shape=(), dtype=np.object_),
            "has_narration": tfds.features.Scalar(np.bool_),
            "item_id": tfds.features.Scalar(np.int32),
            "object_ids": tfds.features.Sequence(tfds.features.Scalar(np.int32)),
            "object_names": tfds.features.Sequence(tfds.features.Text()),
            "motions": tfds.features.Sequence(tfds.features.Text()),
        }),
        homepage=glyphs.HOMEPAGE,
        license="Emoji images: SIL OFL-1.1 (Noto Color Emoji); names: Unicode License; "
                "digits: scikit-learn digits (UCI, CC-BY-4.0); narration made with espeak-ng.",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from installed packages.
    tts.require_espeak()
    clips = plan_clips(load_objects())
    if self.builder_config.name == "small":
      clips = small_subset(clips)
    # A narrated clip is in two splits; the first one to need its record renders it for both.
    shared = {}
    out = {}
    for split in SPLITS:
      chosen = [c for c in clips if c.split == split]
      out[split] = self._generate_examples(chosen, shared)
      out[f"{split}_narrated"] = self._generate_examples([c for c in chosen if c.narrated],
                                                          shared)
    return out

  def _generate_examples(self, clips, shared):
    sprites = {}
    for clip in clips:
      if clip.item_id in shared:
        record = shared.pop(clip.item_id)
      else:
        for t in clip.tracks:
          if t.obj.key not in sprites:
            sprites[t.obj.key] = glyph_of(t.obj)
        record = clip_record(clip, sprites)
        if clip.narrated:
          shared[clip.item_id] = record
      yield clip.item_id, record

TASKS = (
    TaskSpec(
        name="video_text_to_video", dataset="video",
        query=("text:caption",), candidate=("video:frames",),
        query_id="item_id", candidate_id="item_id",
        instruction="task: video retrieval | query: ",
        description="Caption -> the clip it describes (objects, motions and their order)."),
    TaskSpec(
        name="video_video_to_text", dataset="video",
        query=("video:frames",), candidate=("text:caption",),
        query_id="item_id", candidate_id="item_id",
        instruction="task: video description | query: ",
        description="Clip -> its caption."),
    TaskSpec(
        name="video_narrated_to_text", dataset="video",
        query=("video:frames", "audio:narration"), candidate=("text:caption",),
        query_id="item_id", candidate_id="item_id",
        instruction="task: narrated video description | query: ",
        train_split="train_narrated", eval_split="test_narrated",
        description="Clip with its spoken narration -> its caption (narrated clips only)."),
)
