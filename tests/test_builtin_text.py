"""Tests of the text-only built-in datasets: gemb_wordnet and gemb_code ("small" configs).

Each dataset is built once per module into a temporary data dir; the checks compare the
stored records with what the parsers say about the source files.
"""
import ast
import glob
import os

import pytest

from gemb.data import tasks
from gemb.data.builtin import code
from gemb.data.builtin import wordnet

WORD_SPLITS = wordnet.WORD_SPLITS
EXAMPLE_SPLITS = wordnet.EXAMPLE_SPLITS
HELD_OUT = {"train": "train", "validation": "validation", "test": "test",
            "train_examples": "train", "validation_examples": "validation",
            "test_examples": "test"}


def _build(cls, tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp(cls.name))
  builder = cls(config="small", data_dir=data_dir)
  builder.download_and_prepare(download_dir=os.path.join(data_dir, "downloads"))
  return cls(config="small", data_dir=data_dir)


def _read(builder, split):
  source = builder.as_data_source(split)
  return [source[i] for i in range(len(source))]


def _text(value):
  return value.decode("utf-8")


def _split_files(builder):
  return {os.path.basename(p): open(p, "rb").read()
          for p in sorted(glob.glob(os.path.join(builder.data_dir, "*.array_record*")))}


# ---------------------------------------------------------------- wordnet

@pytest.fixture(scope="module")
def synsets():
  return wordnet.load_wordnet()


@pytest.fixture(scope="module")
def wn_builder(tmp_path_factory):
  return _build(wordnet.GembWordnet, tmp_path_factory)


@pytest.fixture(scope="module")
def wn_records(wn_builder):
  return {split: _read(wn_builder, split) for split in WORD_SPLITS + EXAMPLE_SPLITS}


def test_parse_gloss():
  assert wordnet.parse_gloss('a canine; "the dog barked all night"; "a dog\'s life"  ') == (
      "a canine", ("the dog barked all night", "a dog's life"))
  # A quote inside the definition is not an example; ":" and "," also start examples.
  assert wordnet.parse_gloss('progress (especially in the phrase "make strides"); "big '
                             'strides"') == (
      'progress (especially in the phrase "make strides")', ("big strides",))
  assert wordnet.parse_gloss('a complete range: "a gamut of emotions"') == (
      "a complete range", ("a gamut of emotions",))
  assert wordnet.parse_gloss("no examples here") == ("no examples here", ())


def test_parse_data_line():
  line = ("00001930 03 n 02 physical_entity 0 e-mail(a) 1 003 @ 00001740 n 0000 "
          "~ 00002452 n 0000 @ 00000007 v 0000 | an entity that exists; \"a thing\"  ")
  s = wordnet.parse_data_line(line)
  assert s == wordnet.Synset(100001930, "n", ("physical entity", "e-mail"),
                             "an entity that exists", ("a thing",), (100001740, 200000007))
  assert wordnet.family_key("E-mail") == wordnet.family_key("email")


def test_real_wordnet_ids_and_dog(synsets):
  assert len(synsets) > 100_000
  dog = synsets[102084071]
  assert dog.lemmas[:2] == ("dog", "domestic dog") and dog.pos == "n"
  assert dog.examples == ("the dog barked all night",)
  assert set(dog.hypernyms) == {102083346, 101317541}  # canine, domestic animal
  assert synsets[102083346].lemmas[0] == "canine"


def test_dog_gets_sibling_definitions(synsets):
  """On dog's neighbourhood: its negatives are same-split hyponyms of canine / domestic animal."""
  dog = synsets[102084071]
  siblings = set()
  for h in dog.hypernyms:
    siblings |= {i for i, s in synsets.items() if h in s.hypernyms}
  siblings.discard(dog.synset_id)
  assert {synsets[i].lemmas[0] for i in siblings} >= {"wolf", "fox", "jackal"}
  subset = {i: synsets[i] for i in sorted(siblings | {dog.synset_id})}
  records = wordnet.build_records(subset)
  split = wordnet.synset_split(dog)
  (record,) = [r for _, r in records[split] if r["word"] == "dog"]
  eligible = {i for i in siblings if wordnet.synset_split(synsets[i]) == split}
  assert len(record["negative_ids"]) == min(wordnet.NUM_NEGATIVES, len(eligible))
  assert set(record["negative_ids"]) <= eligible
  assert record["negatives"] == [synsets[i].definition for i in record["negative_ids"]]


def test_wordnet_split_sizes(wn_builder, wn_records):
  for split, recs in wn_records.items():
    assert len(recs) > 0, split
    assert wn_builder.info.splits[split].num_examples == len(recs)
  assert len(wn_records["train"]) >= 1500 and len(wn_records["train_examples"]) >= 600
  assert "wordnet-base" in wn_builder.info.description


def test_wordnet_records_match_the_parser(wn_records, synsets):
  for split, recs in wn_records.items():
    for r in recs:
      s = synsets[r["synset_id"]]
      assert _text(r["definition"]) == s.definition != ""
      assert _text(r["pos"]) == s.pos
      assert wordnet.synset_split(s) == HELD_OUT[split]
      if split in WORD_SPLITS:
        assert _text(r["word"]) in s.lemmas and _text(r["example"]) == ""
      else:
        assert _text(r["word"]) == s.lemmas[0] and _text(r["example"]) in s.examples


def test_wordnet_splits_disjoint_by_synset_and_lemma_family(wn_records):
  held_out = {}
  for split, recs in wn_records.items():
    part = held_out.setdefault(HELD_OUT[split], {"synsets": set(), "families": set(),
                                                 "texts": set()})
    for r in recs:
      part["synsets"].add(r["synset_id"])
      part["families"].add(wordnet.family_key(_text(r["word"])))
      part["texts"] |= {_text(r["definition"]), _text(r["example"])} - {""}
      part["texts"] |= {_text(t) for t in r["negatives"]}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    for key in ("synsets", "families", "texts"):
      assert not held_out[a][key] & held_out[b][key], (a, b, key)
  for split in WORD_SPLITS:  # Every word's family hashes to the split it is in.
    assert {wordnet.split_of(wordnet.family_key(_text(r["word"])))
            for r in wn_records[split]} == {split}


def test_wordnet_hard_negatives_are_same_split_siblings(wn_records, synsets):
  with_all = 0
  for split, recs in wn_records.items():
    for r in recs:
      s, ids = synsets[r["synset_id"]], [int(i) for i in r["negative_ids"]]
      assert len(ids) == len(r["negatives"]) <= wordnet.NUM_NEGATIVES
      assert len(set(ids)) == len(ids) and s.synset_id not in ids
      for i, text in zip(ids, r["negatives"]):
        t = synsets[i]
        assert set(t.hypernyms) & set(s.hypernyms), (s, t)
        assert wordnet.synset_split(t) == HELD_OUT[split]
        if split in WORD_SPLITS:
          assert _text(text) == t.definition
          word = wordnet.family_key(_text(r["word"]))
          assert word not in {wordnet.family_key(l) for l in t.lemmas}
        else:
          assert _text(text) in t.examples
      with_all += split == "train" and len(ids) == wordnet.NUM_NEGATIVES
  assert with_all > 0.3 * len(wn_records["train"])


def test_wordnet_equal_texts_share_ids(wn_records):
  for kind, field in ((WORD_SPLITS, "definition"), (EXAMPLE_SPLITS, "example")):
    ids = {}
    for split in kind:
      for r in wn_records[split]:
        assert ids.setdefault(r[field], r["synset_id"]) == r["synset_id"]


def _plain(value):
  """A record value as str / int / tuple, whether stored (bytes, numpy) or freshly built."""
  if isinstance(value, bytes):
    return value.decode("utf-8")
  if isinstance(value, str):
    return value
  if isinstance(value, (list, tuple)):
    return tuple(map(_plain, value))
  return int(value)


def test_wordnet_build_is_deterministic(wn_records, synsets):
  """The stored records are exactly those a fresh computation gives."""
  fresh = wordnet.build_records(synsets, 1_500, 600)
  for split, recs in wn_records.items():
    stored = sorted(tuple(sorted((k, _plain(v)) for k, v in r.items())) for r in recs)
    again = sorted(tuple(sorted((k, _plain(v)) for k, v in r.items())) for _, r in fresh[split])
    assert stored == again, split


# ---------------------------------------------------------------- code

@pytest.fixture(scope="module")
def code_builder(tmp_path_factory):
  return _build(code.GembCode, tmp_path_factory)


@pytest.fixture(scope="module")
def code_records(code_builder):
  return {split: _read(code_builder, split) for split in code.SPLITS}


_SOURCE = '''
import functools

class Shape:
  """A shape."""

  @functools.cache
  def area(self, scale=1):
    """Area of the shape, in square units.

    More text that is not the first paragraph.
    """
    def helper(x):
      """Squares x for the area computation."""
      return x * x
    return helper(scale)

  def stub(self):
    """Subclasses must override this method."""
    pass

  def short(self):
    """Too short."""
    return 1

if True:
  def one_line(a): "A docstring sharing its line with code."; return a  # note
'''


def test_extract_pairs_removes_every_docstring():
  pairs = {p.qualname: p for p in code.extract_pairs(_SOURCE, "shapes")}
  assert set(pairs) == {"Shape.area", "Shape.area.<locals>.helper", "one_line"}
  area = pairs["Shape.area"]
  assert area.docstring == "Area of the shape, in square units."
  assert area.code == ("@functools.cache\ndef area(self, scale=1):\n  def helper(x):\n"
                       "    return x * x\n  return helper(scale)")
  assert pairs["Shape.area.<locals>.helper"].code == "def helper(x):\n  return x * x"
  # The docstring shares its line with code: ast.unparse of the tree without it.
  assert pairs["one_line"].code == "def one_line(a):\n    return a"
  assert [p.index for p in pairs.values()] == [0, 1, 2]


def test_code_split_sizes(code_builder, code_records):
  for split, recs in code_records.items():
    assert len(recs) > 0, split
    assert code_builder.info.splits[split].num_examples == len(recs)
  assert "PSF" in code_builder.info.redistribution_info.license


def test_code_splits_disjoint_by_module(code_records):
  modules = {split: {_text(r["module"]) for r in recs} for split, recs in code_records.items()}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not modules[a] & modules[b]
  for split, names in modules.items():
    assert {code.split_of(m) for m in names} == {split}
    for m in names:
      parts = m.split(".")
      assert not {"test", "tests", "idle_test"} & set(parts), m
      assert not any(p.startswith("test_") for p in parts) and "site-packages" not in m


def test_code_has_no_docstrings(code_records):
  all_records = [r for recs in code_records.values() for r in recs]
  for r in all_records:
    doc, src = _text(r["docstring"]), _text(r["code"])
    assert len(doc) >= code.MIN_DOCSTRING_CHARS and "\n" not in doc
    assert doc not in " ".join(src.split())
    tree = ast.parse(src)
    assert len(tree.body) == 1 and isinstance(tree.body[0], code._DEFS)
    assert tree.body[0].name == _text(r["qualname"]).rsplit(".", 1)[-1]
    for node in ast.walk(tree):
      if isinstance(node, (*code._DEFS, ast.ClassDef)):
        assert ast.get_docstring(node) is None, (r["module"], r["qualname"])
  # Deduplicated: no code or docstring twice, ids unique, across all splits.
  for field in ("code", "docstring", "item_id"):
    values = [r[field] for r in all_records]
    assert len(set(values)) == len(values), field


def test_code_records_match_their_module(code_records):
  modules = code.find_modules(code.stdlib_dir())
  rank = {m: i for i, m in enumerate(code.module_order(modules))}
  for split, recs in code_records.items():
    by_module = {}
    for r in recs:
      by_module.setdefault(_text(r["module"]), []).append(r)
    for module, rs in sorted(by_module.items())[:3]:
      pairs = code.extract_pairs(code.read_source(modules[module]), module)
      for r in rs:
        p = pairs[r["item_id"] % 10_000]
        assert r["item_id"] // 10_000 == rank[module]
        assert (p.docstring, p.code, p.qualname) == (
            _text(r["docstring"]), _text(r["code"]), _text(r["qualname"]))


def test_code_build_is_byte_identical(code_builder, tmp_path_factory):
  again = _build(code.GembCode, tmp_path_factory)
  first, second = _split_files(code_builder), _split_files(again)
  assert len(first) == len(code.SPLITS) and first == second


# ---------------------------------------------------------------- tasks

@pytest.mark.parametrize("module,builder,records", [
    (wordnet, "wn_builder", "wn_records"), (code, "code_builder", "code_records")])
def test_tasks_read_existing_fields(module, builder, records, request):
  builder, records = request.getfixturevalue(builder), request.getfixturevalue(records)
  features = set(builder.info.features.keys())
  for task in module.TASKS:
    assert isinstance(task, tasks.TaskSpec) and task.instruction.startswith("task: ")
    fields = {s.field for s in task.query + task.candidate} | {task.query_id, task.candidate_id}
    if task.negatives:
      fields |= {task.negatives.field, task.negative_ids}
    assert fields <= features, task.name
    for split in (task.train_split, task.eval_split):
      r = records[split][0]
      assert all(r[s.field] for s in task.query + task.candidate), (task.name, split)
  assert {t.name for t in wordnet.TASKS} == {"wordnet_word_to_definition",
                                             "wordnet_definition_to_example"}
  assert {t.name for t in code.TASKS} == {"code_docstring_to_code", "code_code_to_docstring"}
