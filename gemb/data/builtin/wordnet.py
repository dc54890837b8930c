"""TFDS builder "gemb_wordnet": WordNet words, definitions and example sentences.

Owns parsing the WordNet 3.0 data files, the sibling-synset hard negatives, the split rule
and the size caps. Nothing is downloaded: the builder reads
`/usr/share/wordnet/data.{noun,verb,adj,adv}` from the Debian package `wordnet-base`
(WordNet 3.0, Princeton University, WordNet 3.0 license: BSD-like, keep the copyright
notice). Each data line is one synset: offset, lexicographer file, type, lemmas, pointers
and, after " | ", the gloss: a definition followed by quoted example sentences.

Two record kinds, in separate splits, with the same fields:
  * word records (splits "train", "validation", "test"): one per (synset, lemma):
    word = the lemma ("hot dog"), definition = the synset's definition, example = "".
  * example records (splits "train_examples", "validation_examples", "test_examples"): one
    per (synset, example sentence): word = the synset's head lemma, definition, example.
Fields: word, definition, example, pos (n, v, a, s = adjective satellite, r),
synset_id (int: 10^8 * [n=1, v=2, a/s=3, r=4] + byte offset, WordNet's own Prolog synset
id; the id of the record's definition), negatives / negative_ids: up to K=4 hard negatives
and their synset ids. Hard negatives come from sibling synsets, i.e. synsets sharing a
hypernym ("@" pointer) with the record's synset, in the same split: the siblings'
definitions in word records (for "dog": "wolf", "fox", "jackal", ...; a sibling that also
has the record's word as a lemma is skipped, its definition would be a right answer), the
first example of each sibling that has one in example records. Which siblings: each
hypernym's hyponyms are listed in sha256 order and a synset takes the first eligible ones
from a place set by its own hash (round-robin over its hypernyms), so builds are identical.
Records without such siblings have empty lists (adjectives and adverbs have no hypernyms,
and validation / test have few same-split siblings); the pipeline pads.

Splits are disjoint by synset and by lemma family (the lemma lowercased with spaces,
underscores and punctuation removed: "e-mail" = "email"). A family goes to train /
validation / test by the sha256 of its key (80 / 5 / 15 %); a synset goes where the
family of its head (first) lemma goes, and a (synset, lemma) word record exists only if
the lemma's family goes there too, so no word of a test record is ever a word of a train
record, and no test definition or example is seen in training, not even as a negative.
Other lemmas of a held-out synset mostly hash to train and are dropped, so validation /
test hold fewer records than 5 / 15 % (3 / 11 %), biased to head lemmas. Example records
follow their synset's split. A synset whose definition repeats an earlier synset's (962,
0.8 %) is left out, and a repeated example (114) stays with its first synset, so equal
texts never carry different ids.

Size caps: all of WordNet gives ~175k word records and ~48k example records, which take
minutes to serialize here, so a config keeps lemma families in sha256 order ("order:" +
key) until the train split holds `max_train_pairs` word records (resp.
`max_train_examples` example records); validation and test keep the same families'
records, so they shrink in proportion.
  full:  max_train_pairs=60,000, examples uncapped. Counts: train 60,001, validation
         2,266, test 7,760; train_examples 38,465, validation_examples 2,146,
         test_examples 7,209. Build ~30 s of CPU (~70 s on this busy 2-core machine).
  small: max_train_pairs=1,500, max_train_examples=600: train 1,503, validation 63,
         test 213; train_examples 600, validation_examples 55, test_examples 95 (~5 s CPU).

Tasks (`TASKS`): wordnet_word_to_definition (word -> definition, sibling definitions as hard
negatives; splits train / test) and wordnet_definition_to_example (definition -> example
sentence, sibling examples as hard negatives; splits train_examples / test_examples).
Both use synset_id as query and candidate id, so a polysemous word's other senses count as
wrong answers: the task asks for the sense in the record.
"""
import collections
import dataclasses
import functools
import itertools
import os
import re

import numpy as np
import tensorflow_datasets as tfds

from gemb.data.builtin import base
from gemb.data.tasks import TaskSpec

WORDNET_DIR = "/usr/share/wordnet"
POS_FILES = ("noun", "verb", "adj", "adv")
# First digit of a synset id by synset type, as in WordNet's Prolog files; satellites live
# in data.adj, so they share the adjectives' digit (offsets are unique per file).
POS_NUMBER = {"n": 1, "v": 2, "a": 3, "s": 3, "r": 4}
_ID_BASE = 10**8  # Offsets are byte positions in files < 100 MB.
HYPERNYM = "@"
NUM_NEGATIVES = 4
TRAIN_PERCENT, VALIDATION_PERCENT = 80, 5  # Of lemma families; the rest is test.
WORD_SPLITS = ("train", "validation", "test")
EXAMPLE_SPLITS = tuple(f"{s}_examples" for s in WORD_SPLITS)

_ADJ_MARKER = re.compile(r"\((?:a|p|ip)\)$")  # Syntactic position of some adjectives.
# An example starts at a quote at the start of the gloss or after ";", ":" or ",";
# other quotes belong to the definition ('in the phrase "make strides"').
_FIRST_EXAMPLE = re.compile(r'(?:^|[;:,])\s*"')
_QUOTED = re.compile(r'"([^"]*)"')


@dataclasses.dataclass(frozen=True)
class Synset:
  """One line of a WordNet data file."""
  synset_id: int
  pos: str
  lemmas: tuple[str, ...]  # Display forms, in WordNet order: "hot dog", "Einstein".
  definition: str
  examples: tuple[str, ...]
  hypernyms: tuple[int, ...]  # Synset ids of its "@" pointers.


def synset_id(pos: str, offset: int) -> int:
  return POS_NUMBER[pos] * _ID_BASE + offset


@functools.lru_cache(maxsize=None)
def family_key(lemma: str) -> str:
  """The lemma family: case, spaces, underscores and punctuation do not make a new word."""
  return re.sub(r"[\W_]+", "", lemma.lower()) or lemma.lower()


@functools.lru_cache(maxsize=None)
def split_of(family: str) -> str:
  """The split (train / validation / test) of a lemma family, from a hash of its key."""
  return base.hash_split(family, TRAIN_PERCENT, VALIDATION_PERCENT)


def synset_split(synset: Synset) -> str:
  return split_of(family_key(synset.lemmas[0]))


def parse_gloss(gloss: str) -> tuple[str, tuple[str, ...]]:
  """(definition, examples) of a gloss: 'a canine; "the dog barked"' -> ('a canine', (...))."""
  gloss = gloss.strip()
  m = _FIRST_EXAMPLE.search(gloss)
  head, tail = (gloss[:m.start()], gloss[m.start():]) if m else (gloss, "")
  definition = head.strip().rstrip(";:, ").strip()
  examples = []
  for e in _QUOTED.findall(tail):
    e = " ".join(e.split())
    if e and e not in examples:
      examples.append(e)
  return definition, tuple(examples)


def parse_data_line(line: str) -> Synset:
  """A synset from one data.* line (format: WordNet's wndb(5WN) manual page)."""
  head, sep, gloss = line.partition(" | ")
  if not sep:
    raise ValueError(f"no gloss in {line[:80]!r}")
  tokens = head.split()
  offset, pos = int(tokens[0]), tokens[2]
  num_words = int(tokens[3], 16)
  words = tokens[4:4 + 2 * num_words:2]  # Each word is followed by its lex_id.
  i = 4 + 2 * num_words
  num_pointers = int(tokens[i])
  pointers = [tokens[i + 1 + 4 * p:i + 5 + 4 * p] for p in range(num_pointers)]
  hypernyms = tuple(synset_id(p[2], int(p[1])) for p in pointers if p[0] == HYPERNYM)
  lemmas = []
  for w in words:
    w = _ADJ_MARKER.sub("", w).replace("_", " ")
    if w not in lemmas:
      lemmas.append(w)
  definition, examples = parse_gloss(gloss)
  return Synset(synset_id(pos, offset), pos, tuple(lemmas), definition, examples, hypernyms)


def parse_data_file(text: str) -> list[Synset]:
  """All synsets of one data.* file; the license header lines start with two spaces."""
  return [parse_data_line(line) for line in text.splitlines()
          if line.strip() and not line.startswith("  ")]


def load_wordnet(wordnet_dir: str = WORDNET_DIR) -> dict[int, Synset]:
  """Every synset of the installed WordNet, by id, in id order."""
  synsets = {}
  paths = [os.path.join(wordnet_dir, f"data.{name}") for name in POS_FILES]
  base.require_files((path, "wordnet-base") for path in paths)
  for path in paths:
    with open(path, encoding="latin-1") as f:
      for s in parse_data_file(f.read()):
        synsets[s.synset_id] = s
  return dict(sorted(synsets.items()))


def hyponyms(synsets: dict[int, Synset]) -> dict[int, set[int]]:
  """Synset id -> ids of the synsets that name it as a hypernym."""
  children = collections.defaultdict(set)
  for s in synsets.values():
    for h in s.hypernyms:
      children[h].add(s.synset_id)
  return children


def unique_texts(synsets: dict[int, Synset]) -> tuple[set[int], set[tuple[int, str]]]:
  """Synsets whose definition, and (synset, example) pairs whose example, are kept.

  A text shared by several synsets stays with the smallest id: a query whose text equals
  another item's must not count that item as a wrong answer.
  """
  seen_definitions, seen_examples = set(), set()
  definitions, examples = set(), set()
  for s in synsets.values():  # In id order.
    if s.definition and s.definition not in seen_definitions:
      definitions.add(s.synset_id)
    seen_definitions.add(s.definition)
    for e in s.examples:
      if e not in seen_examples:
        examples.add((s.synset_id, e))
      seen_examples.add(e)
  return definitions, examples


def build_records(synsets: dict[int, Synset], max_train_pairs: int | None = None,
                  max_train_examples: int | None = None) -> dict[str, list[tuple[str, dict]]]:
  """Split name -> [(key, record)] of word and example records (module docstring rules)."""
  split = {i: synset_split(s) for i, s in synsets.items()}
  children = hyponyms(synsets)
  lemma_families = {i: {family_key(l) for l in s.lemmas} for i, s in synsets.items()}
  definitions, examples = unique_texts(synsets)
  first_example = {}  # Synset id -> its first kept example: the negative it offers.
  for s in synsets.values():
    for e in s.examples:
      if (s.synset_id, e) in examples:
        first_example.setdefault(s.synset_id, e)
  # Per hypernym and split, its hyponyms that are items, in hash order. A synset walks each
  # of its hypernyms' lists from a place set by its own hash: a stable, per-synset choice
  # in O(K) rather than a sort of all siblings (hypernyms have up to ~600 hyponyms).
  rank = {i: base.stable_int(str(i)) for i in synsets}
  by_hypernym = collections.defaultdict(lambda: collections.defaultdict(list))
  for h, kids in children.items():
    for t in sorted(kids, key=lambda t: (rank[t], t)):
      if t in definitions:
        by_hypernym[h][split[t]].append(t)

  def ordered_siblings(i):
    """Siblings of synset i in its split, round-robin over its hypernyms, no repeats."""
    walks = []
    for h in synsets[i].hypernyms:
      kids = by_hypernym[h][split[i]]
      start = rank[i] % len(kids) if kids else 0
      walks.append(itertools.chain(kids[start:], kids[:start]))
    seen = {i}
    for t in itertools.chain.from_iterable(itertools.zip_longest(*walks)):
      if t is not None and t not in seen:
        seen.add(t)
        yield t

  def word_records(s):
    families = []
    for lemma in s.lemmas:
      family = family_key(lemma)
      if family in families or split_of(family) != split[s.synset_id]:
        continue  # Said already, or its family belongs to another split.
      families.append(family)
      # A sibling that has this word too defines it correctly: not a negative.
      negatives = list(itertools.islice(
          (t for t in ordered_siblings(s.synset_id) if family not in lemma_families[t]),
          NUM_NEGATIVES))
      yield f"{s.synset_id}_{family}", {
          "word": lemma, "definition": s.definition, "example": "",
          "negatives": [synsets[t].definition for t in negatives], "negative_ids": negatives}

  def example_records(s):
    negatives = list(itertools.islice(
        (t for t in ordered_siblings(s.synset_id) if t in first_example), NUM_NEGATIVES))
    for n, e in enumerate(s.examples):
      if (s.synset_id, e) in examples:
        yield f"{s.synset_id}_{n}", {
            "word": s.lemmas[0], "definition": s.definition, "example": e,
            "negatives": [first_example[t] for t in negatives], "negative_ids": negatives}

  by_family = collections.defaultdict(list)
  for i in sorted(definitions):
    by_family[family_key(synsets[i].lemmas[0])].append(synsets[i])
  order = sorted(by_family, key=lambda f: (base.stable_int("order:" + f), f))
  out = {}
  for make, names, cap in ((word_records, WORD_SPLITS, max_train_pairs),
                           (example_records, EXAMPLE_SPLITS, max_train_examples)):
    recs = {name: [] for name in names}
    for family in order:
      if cap is not None and len(recs[names[0]]) >= cap:
        break
      name = names[WORD_SPLITS.index(split_of(family))]
      for s in by_family[family]:
        for key, r in make(s):
          r.update(synset_id=s.synset_id, pos=s.pos)
          recs[name].append((key, r))
    out.update(recs)
  return out


@dataclasses.dataclass
class WordnetConfig(tfds.core.BuilderConfig):
  """Size caps: see the module docstring; None keeps everything."""
  max_train_pairs: int | None = None
  max_train_examples: int | None = None


class GembWordnet(base.GembBuilder):
  """WordNet word <-> definition and definition <-> example pairs (module docstring)."""

  name = "gemb_wordnet"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: WordNet 3.0 word/definition and definition/example "
               f"records, up to {NUM_NEGATIVES} sibling-synset hard negatives.",
  }
  BUILDER_CONFIGS = base.full_and_small(
      "Word records capped at 60k train pairs.", "Small subset for tests.", WordnetConfig,
      full_args=dict(max_train_pairs=60_000),
      small_args=dict(max_train_pairs=1_500, max_train_examples=600))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "WordNet 3.0 (Princeton University; Debian package wordnet-base, files "
            f"{WORDNET_DIR}/data.{{noun,verb,adj,adv}}; WordNet 3.0 license). Splits "
            "train/validation/test hold one record per (synset, lemma): word -> "
            "definition; splits *_examples hold one record per (synset, example sentence): "
            "definition -> example. synset_id = 10^8 * (n=1, v=2, a/s=3, r=4) + offset. "
            f"negatives: up to {NUM_NEGATIVES} definitions (word records) or examples "
            "(example records) of sibling synsets (sharing a '@' hypernym) in the same "
            "split; negative_ids their synset ids. Splits are disjoint by synset and by "
            "lemma family (sha256 of the lowercased lemma without spaces/punctuation: "
            f"{TRAIN_PERCENT}% train, {VALIDATION_PERCENT}% validation, rest test; a "
            "synset follows its head lemma). Caps: families in hash order until the train "
            f"split has {self.builder_config.max_train_pairs} word records and "
            f"{self.builder_config.max_train_examples} example records (None = all)."),
        features=tfds.features.FeaturesDict({
            "word": tfds.features.Text(),
            "definition": tfds.features.Text(),
            "example": tfds.features.Text(),
            "pos": tfds.features.Text(),
            "synset_id": tfds.features.Scalar(np.int32),
            "negatives": tfds.features.Sequence(tfds.features.Text()),
            "negative_ids": tfds.features.Sequence(tfds.features.Scalar(np.int32)),
        }),
        homepage="https://wordnet.princeton.edu/",
        license="WordNet 3.0 license (Princeton University), BSD-like: "
                "https://wordnet.princeton.edu/license-and-commercial-use",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from installed Debian files.
    cfg = self.builder_config
    records = build_records(load_wordnet(), cfg.max_train_pairs, cfg.max_train_examples)
    return {name: self._generate_examples(recs) for name, recs in records.items()}

  def _generate_examples(self, records):
    yield from records


TASKS = (
    TaskSpec(
        name="wordnet_word_to_definition", dataset="wordnet",
        query=("text:word",), candidate=("text:definition",),
        query_id="synset_id", candidate_id="synset_id",
        negatives="text:negatives", negative_ids="negative_ids",
        instruction="task: dictionary lookup | query: ",
        description="WordNet lemma -> the definition of one of its synsets; hard "
                    "negatives: definitions of sibling synsets."),
    TaskSpec(
        name="wordnet_definition_to_example", dataset="wordnet",
        query=("text:definition",), candidate=("text:example",),
        query_id="synset_id", candidate_id="synset_id",
        negatives="text:negatives", negative_ids="negative_ids",
        instruction="task: usage example retrieval | query: ",
        train_split="train_examples", eval_split="test_examples",
        description="WordNet definition -> an example sentence of that sense; hard "
                    "negatives: examples of sibling synsets."),
)
