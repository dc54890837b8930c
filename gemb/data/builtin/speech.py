"""TFDS builder "gemb_speech": espeak-ng speech paired with its text, plus real recordings.

Owns choosing the texts, the voices that read them, the synthesis, the split rule and the
"real" split of recorded sounds. Nothing is downloaded; every input is a Debian package:

  * speech: `espeak-ng` (GPL-3; its output is data). Each clip is
    `espeak-ng -b 1 -v <voice> -s <speed> -p <pitch> --stdout -- <text>` (22,050 Hz mono
    WAV), trailing digital silence cut to TRAIL_SECONDS, resampled to 16 kHz with
    gemb.data.media.audio.resample and stored as 16-bit PCM WAV bytes.
  * English texts:
      - "emoji_name": CLDR emoji names from `/usr/share/unicode/emoji/emoji-test.txt`
        (`unicode-data`, Unicode License), fully-qualified entries without skin-tone
        modifiers (a toned name is its base name plus "medium skin tone" etc.).
      - "word": WordNet 3.0 lemmas (`wordnet-base`, WordNet License) from
        `/usr/share/wordnet/data.{noun,verb,adj,adv}` that were sense-tagged at least
        MIN_WORD_COUNT times in SemCor (`cntlist.rev`), so the words are ones people use;
        letters, spaces and hyphens only; lowercase unless WordNet only has them capitalized.
      - "sentence": WordNet example sentences (the quoted parts of the glosses) of 3-14 words
        in plain ASCII.
  * German, French and Spanish texts ("word"): single-word headwords of the FreeDict
    dictionaries `dict-freedict-deu-eng`, `-fra-eng`, `-spa-eng` (GPL-2+,
    `/usr/share/dictd/freedict-*-eng.{index,dict.dz}`), in the dictionary's own spelling
    and case (the index is case-folded, so the entries' headword lines are read back).
    German keeps headwords with at least MIN_ENTRIES["deu"] entries (its dictionary is
    mostly rare compounds; common words have many senses). These are read by German /
    French / Spanish voices; English voices only read English texts.
  * "real" split: real recordings from `alsa-utils` (GPL-2; `/usr/share/sounds/alsa/*.wav`:
    a voice speaking the channel names, "Front_Left" -> "front left", and white noise,
    "noise") and `sound-theme-freedesktop` (CC-BY-SA-3.0 / CC-BY-3.0 / GPL-2+ per file, see
    its Debian copyright file; `/usr/share/sounds/freedesktop/stereo/*.oga`: named sound
    events, "dialog-warning" -> "dialog warning"; its audio-channel-* files are Vorbis copies
    of the ALSA recordings and are left out).
  * "real_train" split: the same named sound events as designed by two other sound themes,
    `yaru-theme-sound` (CC-BY-SA-4.0; `/usr/share/sounds/Yaru/stereo/*.oga`) and
    `deepin-sound-theme` (GPL-3; `/usr/share/sounds/deepin/stereo/*.wav`). File names follow
    the freedesktop sound naming spec, so a theme's "dialog-warning" is the event that
    freedesktop's "dialog-warning" sounds; a vendor extension drops its "x-<vendor>-" prefix
    ("x-deepin-app-sent-to-desktop" -> "app sent to desktop"). Training on them and testing
    on the freedesktop theme checks transfer across sound designers: no recording of the
    "real" split is ever trained on, and 13 of its 27 event names have no same-name sound in
    either theme.

Text selection: per source, candidates in order of sha256 of the normalized text (NFKC,
case-folded, runs of non-alphanumerics -> one space), skipping texts already taken by an
earlier source (sources in the order above) and texts of the real split; the first
FULL_QUOTAS[source] are taken. item_id is the text's index in that full list, so all voices
reading one text share it. The small config keeps the first SMALL_QUOTAS[source] texts of
each source, with the same item_ids. Real-split ids are REAL_ID_BASE + index of the text,
real_train ids REAL_TRAIN_ID_BASE + index of the text.

Splits are disjoint by text: sha256 of the normalized text sends 80 / 5 / 15 % of texts to
train / validation / test. Train has TRAIN_VOICES readings of each text, validation
VALIDATION_VOICES, test TEST_VOICES: distinct voices of the text's language (base voice x
variant, see VOICES / VARIANTS) with a speed (words/min) and pitch drawn per reading, seeded
by the text, so every build is byte-identical (espeak-ng is deterministic; the tests check).

Records: audio (WAV bytes, 16 kHz mono int16), text, language ("en", "de", "fr", "es"),
voice (e.g. "en-gb-scotland+f2", or "recording"), speed, pitch (0 for recordings), kind
("emoji_name", "word", "sentence"; real splits: "spoken_name", "sound_event"), source (the
program or file the audio came from), item_id.

Full build (2,450 texts; measured 2026-11-27 on 2 busy cores: 4 minutes, 182 MB): train 5,874
records (1,958 texts), validation 123 (123 texts), test 738 (369 texts), real 36 (36 texts),
real_train 39 (30 texts). Both configs hold both real splits whole.
Clips last 0.3-5 s (median 0.9 s). The small config (100 texts) builds in ~10-15 s.
"""
import concurrent.futures
import dataclasses
import functools
import glob
import gzip
import io
import os
import re
import unicodedata

import numpy as np
import soundfile
import tensorflow_datasets as tfds

from gemb.data import tasks
from gemb.data.builtin import base, glyphs, tts
from gemb.data.media import audio

EMOJI_TEST_PATH = glyphs.EMOJI_TEST_PATH
WORDNET_DIR = "/usr/share/wordnet"
DICTD_DIR = "/usr/share/dictd"
ALSA_GLOB = "/usr/share/sounds/alsa/*.wav"
FREEDESKTOP_GLOB = "/usr/share/sounds/freedesktop/stereo/*.oga"
# Sound themes whose recordings train (split "real_train"): theme -> files of its events.
OTHER_THEME_GLOBS = {"Yaru": "/usr/share/sounds/Yaru/stereo/*.oga",
                     "deepin": "/usr/share/sounds/deepin/stereo/*.wav"}

SAMPLE_RATE = 16000  # Stored rate: the usual speech-model rate, and half the bytes of 32 kHz.
TRAIL_SECONDS = 0.05  # espeak-ng ends every clip with 0.35 s of exact zeros; keep this much.
MIN_WORD_COUNT = 5  # SemCor tags of a WordNet lemma (all senses) to count as a common word.
# German (the Ding dictionary: 226k single words, mostly rare compounds) keeps words with
# many entries, i.e. many senses: "offen", "klar", "Werkzeug". The French and Spanish
# dictionaries are basic vocabularies of 7k and 4k words, all kept.
MIN_ENTRIES = {"deu": 5, "fra": 1, "spa": 1}
TRAIN_PERCENT, VALIDATION_PERCENT = 80, 5
TRAIN_VOICES, VALIDATION_VOICES, TEST_VOICES = 3, 1, 2
SPEED_RANGE = (130, 190)  # words per minute, espeak-ng's default is 175
PITCH_RANGE = (25, 75)  # 0-99, default 50
REAL_ID_BASE = 1_000_000
REAL_TRAIN_ID_BASE = 2_000_000

# Text sources in priority order: (name, language, kind).
SOURCES = (
    ("emoji", "en", "emoji_name"),
    ("wordnet_word", "en", "word"),
    ("wordnet_sentence", "en", "sentence"),
    ("freedict_deu", "de", "word"),
    ("freedict_fra", "fr", "word"),
    ("freedict_spa", "es", "word"),
)
FULL_QUOTAS = {"emoji": 800, "wordnet_word": 800, "wordnet_sentence": 400,
               "freedict_deu": 150, "freedict_fra": 150, "freedict_spa": 150}
SMALL_QUOTAS = {"emoji": 30, "wordnet_word": 30, "wordnet_sentence": 16,
                "freedict_deu": 8, "freedict_fra": 8, "freedict_spa": 8}

# espeak-ng voices per language, and voice variants (!v/ in espeak-ng-data: formant and
# pitch profiles of male and female speakers) that combine with any of them.
VOICES = {
    "en": ("en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd", "en-029", "en-us-nyc"),
    "de": ("de",),
    "fr": ("fr-fr", "fr-be", "fr-ch"),
    "es": ("es", "es-419"),
}
VARIANTS = ("", "+m2", "+m3", "+m5", "+f1", "+f2", "+f3", "+f4")

_SKIN_TONES = range(0x1F3FB, 0x1F400)
_DICTD_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_WORD = re.compile(r"[a-z]+(?:[ -][a-z]+)*")
_NOT_ALNUM = re.compile(r"[\W_]+")
_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")
_SENTENCE = re.compile(r"[A-Za-z][A-Za-z0-9 ,;:'?!.-]*")


@dataclasses.dataclass(frozen=True)
class SpeechText:
  """One text of the dataset, read by one or more voices."""
  text: str
  language: str
  kind: str
  item_id: int
  source: str


@dataclasses.dataclass(frozen=True)
class Reading:
  """How one clip of a text is synthesized."""
  voice: str
  speed: int
  pitch: int


def normalize(text: str) -> str:
  """The form texts are compared, deduplicated and split by: "Front_Left" -> "front left"."""
  return _NOT_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def split_of(text: str) -> str:
  """The split of a text, from a hash of its normalized form."""
  return base.hash_split(normalize(text), TRAIN_PERCENT, VALIDATION_PERCENT)


# ---------------------------------------------------------------------------- text sources

def emoji_names(path: str = EMOJI_TEST_PATH) -> list[str]:
  """Names of fully-qualified emoji without skin-tone modifiers, in file order."""
  with open(path, encoding="utf-8") as f:
    entries = glyphs.parse_emoji_test(f.read())
  return [e.name for e in entries if not any(c in _SKIN_TONES for c in e.codepoints)]


@functools.cache
def _wordnet_synsets(wordnet_dir: str) -> tuple[tuple[list[str], str], ...]:
  """(lemmas, gloss) of every synset in data.{noun,verb,adj,adv}, in file order."""
  synsets = []
  for pos in ("noun", "verb", "adj", "adv"):
    with open(os.path.join(wordnet_dir, f"data.{pos}"), encoding="latin-1") as f:
      for line in f:
        if line.startswith("  "):  # the license header
          continue
        # "offset lex_filenum ss_type w_cnt word lex_id [word lex_id...] ... | gloss"
        _, _, _, count, rest = line.split(" ", 4)
        lemmas = rest.split(" ", 2 * int(count, 16))[:-1:2]
        gloss = line.partition(" | ")[2]
        # Adjectives may carry a syntactic marker: "galore(ip)".
        synsets.append(([_ADJ_MARKER.sub("", w).replace("_", " ") if "(" in w
                         else w.replace("_", " ") for w in lemmas], gloss))
  return tuple(synsets)


def wordnet_words(wordnet_dir: str = WORDNET_DIR) -> list[str]:
  """Common WordNet lemmas (>= MIN_WORD_COUNT SemCor tags), sorted."""
  counts = {}
  with open(os.path.join(wordnet_dir, "cntlist.rev"), encoding="latin-1") as f:
    for line in f:  # "sense_key sense_number tag_count", sense_key = "lemma%..."
      key, _, count = line.split()
      lemma = key.split("%")[0].replace("_", " ")
      counts[lemma] = counts.get(lemma, 0) + int(count)
  common = {lemma for lemma, count in counts.items()
            if count >= MIN_WORD_COUNT and len(lemma) >= 2 and _WORD.fullmatch(lemma)}
  forms = {}
  for lemmas, _ in _wordnet_synsets(wordnet_dir):
    for w in lemmas:
      if w.lower() in common:
        forms.setdefault(w.lower(), set()).add(w)
  # "Monday" is only ever capitalized; "march" / "March" is written lowercase.
  return [lower if lower in surface else min(surface) for lower, surface in sorted(forms.items())]


def wordnet_sentences(wordnet_dir: str = WORDNET_DIR) -> list[str]:
  """WordNet example sentences of 3-14 words in plain ASCII, deduplicated, in file order."""
  seen, sentences = set(), []
  for _, gloss in _wordnet_synsets(wordnet_dir):
    for s in re.findall(r'"([^"]+)"', gloss):
      s = " ".join(s.split())
      if 3 <= len(s.split()) <= 14 and _SENTENCE.fullmatch(s) and s not in seen:
        seen.add(s)
        sentences.append(s)
  return sentences


def _dictd_number(digits: str) -> int:
  n = 0
  for c in digits:
    n = n * 64 + _DICTD_B64.index(c)
  return n


def freedict_index(lang: str, dictd_dir: str = DICTD_DIR) -> dict[str, list[tuple[int, int]]]:
  """Single-word headwords (case-folded, 3-16 letters) with at least MIN_ENTRIES[lang]
  entries -> (offset, length) of each entry in freedict-<lang>-eng.dict.dz."""
  entries = {}
  with open(os.path.join(dictd_dir, f"freedict-{lang}-eng.index"), encoding="utf-8") as f:
    for line in f:
      head, rest = line.split("\t", 1)
      if head in entries:
        entries[head].append(rest)
      elif head.isalpha() and 3 <= len(head) <= 16 and not head.startswith("00database"):
        entries[head] = [rest]
  return {head: [tuple(_dictd_number(n) for n in r.split()) for r in where]
          for head, where in entries.items() if len(where) >= MIN_ENTRIES[lang]}


def freedict_spellings(lang: str, heads, index, dictd_dir: str = DICTD_DIR) -> dict[str, str]:
  """The dictionary spelling of case-folded headwords ("werkzeug" -> "Werkzeug"): lowercase
  if any entry writes it so ("klar", though "Klar" is a noun too), else the first entry's.
  The first line of an entry is "Headword /ipa/ <pos>"."""
  wanted = sorted((where, head) for head in heads for where in index[head])
  spellings = {head: [] for head in heads}
  # dict.dz is gzip: reading entries in offset order decompresses the file at most once.
  with gzip.open(os.path.join(dictd_dir, f"freedict-{lang}-eng.dict.dz")) as f:
    for (offset, length), head in wanted:
      f.seek(offset)
      first = f.read(length).decode("utf-8").split("\n", 1)[0]
      word = first.split(" /", 1)[0].split(" <", 1)[0].strip()
      if word.casefold() == head.casefold():
        spellings[head].append(word)
  return {head: head if head in found or not found else found[0]
          for head, found in spellings.items()}


def select_texts(quotas, reserved=()) -> list[SpeechText]:
  """The texts of a config: the first quotas[source] of the full selection per source."""
  candidates = {
      "emoji": emoji_names,
      "wordnet_word": wordnet_words,
      "wordnet_sentence": wordnet_sentences,
  }
  seen = {normalize(t) for t in reserved}
  selected, first_id = [], 0
  for source, language, kind in SOURCES:
    if source.startswith("freedict_"):
      lang = source.split("_")[1]
      index = freedict_index(lang)
      texts = list(index)
    else:
      texts = candidates[source]()
    chosen = []
    for t in sorted(texts, key=lambda t: (base.stable_int(normalize(t)), t)):
      if len(chosen) == FULL_QUOTAS[source]:
        break
      key = normalize(t)
      if key and key not in seen:
        seen.add(key)
        chosen.append(t)
    if len(chosen) < FULL_QUOTAS[source]:
      raise ValueError(f"source {source} has only {len(chosen)} usable texts, "
                       f"{FULL_QUOTAS[source]} wanted")
    chosen = chosen[:quotas[source]]
    if source.startswith("freedict_"):
      spelled = freedict_spellings(lang, chosen, index)
      chosen = [spelled[t] for t in chosen]
    selected += [SpeechText(t, language, kind, first_id + i, source)
                 for i, t in enumerate(chosen)]
    # Ids count the full quota, so a small config's ids are those of the full config.
    first_id += FULL_QUOTAS[source]
  _wordnet_synsets.cache_clear()  # ~150 MB of parsed WordNet, needed only while selecting
  return selected


# ------------------------------------------------------------------------------ synthesis

def readings(text: SpeechText, count: int) -> list[Reading]:
  """count distinct voices of the text's language with a speed and pitch each, seeded by
  the text (the same readings on every build)."""
  voices = [v + variant for v in VOICES[text.language] for variant in VARIANTS]
  rng = np.random.default_rng(base.stable_int("readings:" + normalize(text.text)))
  picks = rng.choice(len(voices), size=count, replace=False)
  return [Reading(voices[i], int(rng.integers(SPEED_RANGE[0], SPEED_RANGE[1] + 1)),
                  int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))) for i in picks]


def wav_bytes(samples: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
  """Float samples in [-1, 1] -> 16-bit PCM WAV (soundfile reads x / 32768 back)."""
  ints = np.clip(np.round(samples * 32768), -32768, 32767).astype(np.int16)
  buf = io.BytesIO()
  soundfile.write(buf, ints, rate, format="WAV", subtype="PCM_16")
  return buf.getvalue()


def synthesize(text: str, reading: Reading) -> bytes:
  """The stored clip: espeak-ng speech, trailing silence cut, 16 kHz int16 WAV."""
  samples, rate = audio.decode_audio(
      tts.espeak(text, voice=reading.voice, speed=reading.speed, pitch=reading.pitch))
  nonzero = np.flatnonzero(samples)
  if not len(nonzero):
    raise RuntimeError(f"espeak-ng produced silence for {text!r} with {reading}")
  samples = samples[:nonzero[-1] + 1 + round(TRAIL_SECONDS * rate)]
  return wav_bytes(audio.resample(samples, rate, SAMPLE_RATE))


def ordered_map(fn, items, workers, chunk=256):
  """fn over items in a thread pool, results in item order; at most `chunk` in flight, so
  a split's audio never sits in memory all at once."""
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    for start in range(0, len(items), chunk):
      yield from pool.map(fn, items[start:start + chunk])


# ---------------------------------------------------------------------------- real sounds

def _sound_name(path: str) -> str:
  """The event a sound-theme file is named after: "x-deepin-app-sent-to-desktop.wav" ->
  "app sent to desktop" (the spec's vendor extensions start with "x-<vendor>-")."""
  name = os.path.splitext(os.path.basename(path))[0]
  if name.startswith("x-"):
    name = name.split("-", 2)[-1]
  return normalize(name)


def real_sounds():
  """[(path, text, kind)] of the recordings in the real split, sorted by path."""
  sounds = []
  for path in sorted(glob.glob(ALSA_GLOB)):
    name = _sound_name(path)
    sounds.append((path, name, "sound_event" if name == "noise" else "spoken_name"))
  for path in sorted(glob.glob(FREEDESKTOP_GLOB)):
    if not os.path.basename(path).startswith("audio-channel-"):
      sounds.append((path, _sound_name(path), "sound_event"))
  return sounds


def other_theme_sounds():
  """[(path, text, kind)] of the real_train split: the sound events of OTHER_THEME_GLOBS,
  sorted by path."""
  paths = sorted(p for pattern in OTHER_THEME_GLOBS.values() for p in glob.glob(pattern))
  return [(path, _sound_name(path), "sound_event") for path in paths]


def real_wav(path: str) -> bytes:
  with open(path, "rb") as f:
    samples, rate = audio.decode_audio(f.read())
  return wav_bytes(audio.resample(samples, rate, SAMPLE_RATE))


# ------------------------------------------------------------------------------- builder

@dataclasses.dataclass(eq=False)
class SpeechConfig(tfds.core.BuilderConfig):
  quotas: dict = dataclasses.field(default_factory=dict)  # source -> number of texts


class GembSpeech(base.GembBuilder):
  """espeak-ng speech of emoji names, words and sentences in 4 languages, with real
  recordings as an extra test split (module docstring has details)."""

  name = "gemb_speech"
  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: espeak-ng speech of emoji names, WordNet words and "
               "sentences, FreeDict de/fr/es words; ALSA / freedesktop recordings as 'real'.",
      "1.1.0": "Split 'real_train': the Yaru and deepin sound themes' named sound events.",
  }
  BUILDER_CONFIGS = base.full_and_small(
      f"{sum(FULL_QUOTAS.values())} texts", f"{sum(SMALL_QUOTAS.values())} texts, for tests",
      SpeechConfig, full_args=dict(quotas=FULL_QUOTAS), small_args=dict(quotas=SMALL_QUOTAS))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Speech paired with its text. Synthetic splits: espeak-ng (Debian espeak-ng) "
            "reading emoji names (unicode-data emoji-test.txt), common WordNet 3.0 words and "
            "example sentences (wordnet-base) in English voices, and FreeDict headwords "
            "(dict-freedict-{deu,fra,spa}-eng) in German, French and Spanish voices; several "
            "voices, speeds and pitches per text. Splits are disjoint by text (sha256 of the "
            f"normalized text: {TRAIN_PERCENT}% train, {VALIDATION_PERCENT}% validation, rest "
            f"test); {TRAIN_VOICES} readings per train text, {VALIDATION_VOICES} per "
            f"validation text, {TEST_VOICES} per test text. Split 'real': recordings of "
            "alsa-utils (spoken channel names, noise) and sound-theme-freedesktop (named "
            "sound events). Split 'real_train': the named sound events of the Yaru and "
            f"deepin sound themes. Audio: WAV bytes, {SAMPLE_RATE} Hz mono 16-bit PCM."),
        features=tfds.features.FeaturesDict({
            # Raw encoded bytes: tfds's Audio feature needs TensorFlow.
            "audio": tfds.features.Tensor(shape=(), dtype=np.object_),
            "text": tfds.features.Text(),
            "language": tfds.features.Text(),
            "voice": tfds.features.Text(),
            "speed": tfds.features.Scalar(np.int32),
            "pitch": tfds.features.Scalar(np.int32),
            "kind": tfds.features.Text(),
            "source": tfds.features.Text(),
            "item_id": tfds.features.Scalar(np.int32),
        }),
        homepage="https://github.com/espeak-ng/espeak-ng",
        license="Speech made with espeak-ng (GPL-3). Texts: Unicode License (emoji names), "
                "WordNet 3.0 License, FreeDict GPL-2+. Recordings: alsa-utils (GPL-2), "
                "sound-theme-freedesktop (CC-BY-SA-3.0 / CC-BY-3.0 / GPL-2+ per file, see "
                "/usr/share/doc/sound-theme-freedesktop/copyright), yaru-theme-sound "
                "(CC-BY-SA-4.0), deepin-sound-theme (GPL-3).",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from installed Debian files.
    required = [(EMOJI_TEST_PATH, "unicode-data"),
                (os.path.join(WORDNET_DIR, "data.noun"), "wordnet-base"),
                (os.path.join(WORDNET_DIR, "cntlist.rev"), "wordnet-base"),
                (os.path.join(DICTD_DIR, "freedict-deu-eng.index"), "dict-freedict-deu-eng"),
                (os.path.join(DICTD_DIR, "freedict-fra-eng.index"), "dict-freedict-fra-eng"),
                (os.path.join(DICTD_DIR, "freedict-spa-eng.index"), "dict-freedict-spa-eng"),
                ("/usr/share/sounds/alsa/Front_Left.wav", "alsa-utils"),
                ("/usr/share/sounds/freedesktop/stereo/bell.oga", "sound-theme-freedesktop"),
                ("/usr/share/sounds/Yaru/stereo/bell.oga", "yaru-theme-sound"),
                ("/usr/share/sounds/deepin/stereo/message.wav", "deepin-sound-theme")]
    base.require_files(required)
    tts.require_espeak()
    real = real_sounds()
    texts = select_texts(self.builder_config.quotas, reserved=[t for _, t, _ in real])
    counts = {"train": TRAIN_VOICES, "validation": VALIDATION_VOICES, "test": TEST_VOICES}
    splits = {split: self._generate_examples(
        [(t, i, r) for t in texts if split_of(t.text) == split
         for i, r in enumerate(readings(t, count))])
              for split, count in counts.items()}
    splits["real"] = self._generate_real(real, REAL_ID_BASE)
    splits["real_train"] = self._generate_real(other_theme_sounds(), REAL_TRAIN_ID_BASE)
    return splits

  def _generate_examples(self, jobs):
    workers = min(8, 2 * (os.cpu_count() or 1))  # threads wait on espeak-ng processes
    clips = ordered_map(lambda job: synthesize(job[0].text, job[2]), jobs, workers)
    for (t, i, r), wav in zip(jobs, clips):
      yield f"{t.item_id}_{i}", {
          "audio": wav, "text": t.text, "language": t.language, "voice": r.voice,
          "speed": r.speed, "pitch": r.pitch, "kind": t.kind, "source": tts.ESPEAK,
          "item_id": t.item_id,
      }

  def _generate_real(self, sounds, id_base):
    ids = {}  # one id per event name: two themes' sounds of an event share it
    for path, text, kind in sounds:
      item_id = ids.setdefault(text, id_base + len(ids))
      yield f"real_{os.path.basename(path)}", {  # the themes' files differ by extension
          "audio": real_wav(path), "text": text, "language": "en", "voice": "recording",
          "speed": 0, "pitch": 0, "kind": kind, "source": path, "item_id": item_id,
      }


INSTRUCTION = "task: speech retrieval | query: "
TASKS = (
    tasks.TaskSpec(
        name="speech_audio_to_text", dataset="speech", query=("audio:audio",),
        candidate=("text:text",), query_id="item_id", candidate_id="item_id",
        instruction=INSTRUCTION,
        description="Speech (espeak-ng, many voices, en/de/fr/es) -> the text it says."),
    tasks.TaskSpec(
        name="speech_text_to_audio", dataset="speech", query=("text:text",),
        candidate=("audio:audio",), query_id="item_id", candidate_id="item_id",
        instruction=INSTRUCTION,
        description="Text -> speech of it; every voice reading the text is relevant."),
    tasks.TaskSpec(
        name="speech_real_audio_to_text", dataset="speech", query=("audio:audio",),
        candidate=("text:text",), query_id="item_id", candidate_id="item_id",
        instruction=INSTRUCTION, train_split="real_train", eval_split="real",
        description="Real recordings -> what they say or signal: trained on two sound "
                    "themes' named events (Yaru, deepin), evaluated on other recordings: "
                    "spoken channel names (alsa-utils) and the freedesktop theme's events."),
)
