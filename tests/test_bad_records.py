"""Bad records of a manifest task, one kind at a time, wherever they arise.

A manifest of 40 real image/caption pairs (Noto emoji renderings and their Unicode names)
gets one bad line at a time (record 7, line 8). With data.on_bad_record=error the
tokenizer corpus (when it reads what is bad), the training stream and the eval corpus
stop naming the dataset, split, task, record, line and field; with "skip" each leaves the
record out and counts it by kind.
"""

import base64
import json
import logging

import numpy as np
import pytest

from configs import tiny
from gemb.data import pipeline
from gemb.data.bad_records import KINDS, BadRecord, Tally, describe, kind_vector
from gemb.data.builtin import glyphs
from gemb.data.tokenizer import Tokenizer

NUM, BAD = 40, 7  # records; the index of the bad one (line 8: no blank lines)


@pytest.fixture(scope="module")
def pairs():
  """The 40 good records' images (PNG bytes) and captions: the first 40 distinct names."""
  with open(glyphs.EMOJI_TEST_PATH, encoding="utf-8") as f:
    entries = glyphs.parse_emoji_test(f.read())
  out, names = [], set()
  for e in entries:
    if e.name not in names and len(out) < NUM:
      names.add(e.name)
      out.append((glyphs.png_bytes(glyphs.canonical_rendering(glyphs.render_glyph(e.chars))),
                  e.name))
  return out


@pytest.fixture(scope="module")
def tokenizer(pairs):
  return Tokenizer.train([caption for _, caption in pairs], 256)


def _good(i):
  return {"id": i, "image": {"path": f"img/{i}.png"}, "caption": None}


def _set(field, value):
  def mutate(record, root):
    record[field] = value
    return json.dumps(record)
  return mutate


def _image_file(content):
  def mutate(record, root):
    (root / "img" / "bad.png").write_bytes(content(root))
    record["image"] = {"path": "img/bad.png"}
    return json.dumps(record)
  return mutate


def _drop(field):
  def mutate(record, root):
    del record[field]
    return json.dumps(record)
  return mutate


def _random_blob(root):
  blob = np.random.default_rng(0).integers(0, 256, 20 << 20, dtype=np.uint8).tobytes()
  return {"bytes_b64": base64.b64encode(blob).decode()}


# name -> (line 8 from the good record, kind, what the message says, whether the tokenizer
# corpus (which reads records but decodes no media) meets it).
CASES = {
    "not_json": (lambda r, root: "{not json", "not_json",
                 ["line 8 (record 7): not valid JSON"], True),
    "invalid_base64": (_set("image", {"bytes_b64": "aGVsbG8h*"}), "bad_media_ref",
                       ["line 8 (record 7), field 'image': bad base64"], True),
    "missing_path": (_set("image", {"path": "img/missing.png"}), "missing_file",
                     ["line 8 (record 7), field 'image': cannot read", "img/missing.png",
                      "No such file"], True),
    "extra_media_key": (_set("image", {"path": "img/0.png", "bytes_b64": ""}), "bad_media_ref",
                        ["line 8 (record 7), field 'image': a media value has exactly one key",
                         "['bytes_b64', 'path']"], True),
    "missing_field": (_drop("caption"), "missing_field",
                      ["record 7: no field 'caption'; fields: ['id', 'image']"], True),
    "truncated_png": (_image_file(lambda root: (root / "img" / "0.png").read_bytes()[:200]),
                      "bad_media", ["record 7, field 'image' (image):"], False),
    "zero_byte_png": (_image_file(lambda root: b""), "bad_media",
                      ["record 7, field 'image' (image):"], False),
    "text_named_png": (_image_file(lambda root: b"a text file, not a picture\n"), "bad_media",
                       ["record 7, field 'image' (image):"], False),
    "random_20mb_base64": (lambda r, root: json.dumps(dict(r, image=_random_blob(root))),
                           "bad_media", ["record 7, field 'image' (image):"], False),
    "empty_caption": (_set("caption", ""), "bad_text",
                      ["record 7, field 'caption' (text): empty text"], True),
    "2mb_caption": (_set("caption", "w" * (2 << 20)), "bad_text",
                    ["record 7, field 'caption' (text): text of 2097152 characters exceeds "
                     "data.max_text_chars=100000"], True),
    "number_caption": (_set("caption", 5), "bad_text",
                       ["record 7, field 'caption' (text): expected a text (str or bytes), "
                        "got int"], True),
    "null_caption": (_set("caption", None), "bad_text",
                     ["record 7, field 'caption' (text): expected a text (str or bytes), got "
                      "NoneType"], True),
    "null_id": (_set("id", None), "bad_value",
                ["record 7, field 'id': an id must be an integer, got None"], False),
}


def _write(root, pairs, bad_line=None):
  """root/pairs.jsonl (and root/img/<i>.png); line 8 replaced by bad_line(record, root)."""
  (root / "img").mkdir(exist_ok=True)
  lines = []
  for i, (png, caption) in enumerate(pairs):
    (root / "img" / f"{i}.png").write_bytes(png)
    record = dict(_good(i), caption=caption)
    lines.append(bad_line(record, root) if i == BAD and bad_line else json.dumps(record))
  (root / "pairs.jsonl").write_text("".join(line + "\n" for line in lines))
  return f"manifest:{root}/pairs.jsonl"


def _config(dataset, mode):
  c = tiny.get_config()
  c.data.custom_tasks = {"pairs": dict(dataset=dataset, query=("image:image",),
                                       candidate=("text:caption",), query_id="id",
                                       candidate_id="id", eval_split="train")}
  c.data.tasks, c.data.weights, c.eval.tasks = ("pairs",), (1.0,), ("pairs",)
  c.data.batch_size, c.data.on_bad_record = 8, mode
  return c


def _epoch(config, tokenizer):
  """The 5 batches of 8 of one epoch of the 40 records (each record's position once)."""
  it = iter(pipeline.train_dataset(config, tokenizer, seed=0))
  return [next(it) for _ in range(NUM // 8)]


def _skip_logs(caplog, what):
  return [r.getMessage() for r in caplog.records
          if r.getMessage().startswith(f"{what}: data.on_bad_record=skip left out")]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_is_skipped_and_counted(case, pairs, tokenizer, tmp_path, caplog):
  bad_line, kind, _, seen_by_tokenizer = CASES[case]
  dataset = _write(tmp_path, pairs, bad_line)
  c = _config(dataset, "skip")
  where = f"dataset {dataset!r} split 'train' (task 'pairs')"
  caplog.set_level(logging.WARNING)

  texts = pipeline.tokenizer_corpus(c)
  good = [caption for i, (_, caption) in enumerate(pairs) if i != BAD]
  assert set(good) <= set(texts)
  assert (pairs[BAD][1] in texts) == (not seen_by_tokenizer)
  assert _skip_logs(caplog, "tokenizer corpus") == (
      [f"tokenizer corpus: data.on_bad_record=skip left out 1 of 40 records of {where} "
       f"(1 {kind})"] if seen_by_tokenizer else [])

  batches = _epoch(c, tokenizer)
  skipped = sum(b["skipped"].sum(0) for b in batches)
  np.testing.assert_array_equal(skipped, kind_vector([kind]))
  ids = np.concatenate([b["query_id"] for b in batches])
  assert BAD not in ids and len(set(ids.tolist())) == NUM - 1  # replaced by another record
  # The first skipped record of each kind is logged with its full message.
  logged = [r.getMessage() for r in caplog.records if "data.on_bad_record=skip: skipping" in
            r.getMessage()]
  assert len(logged) == 1 and f"{where} record {BAD}" in logged[0]

  corpus = pipeline.retrieval_corpus(c, pipeline.get_tasks(c, ["pairs"])[0], tokenizer)
  assert corpus["num_skipped_records"] == 1
  assert len(corpus["query_ids"]) == NUM - 1 and BAD not in corpus["query_ids"]
  assert _skip_logs(caplog, "eval corpus") == [
      f"eval corpus: data.on_bad_record=skip left out 1 of 40 records of {where} (1 {kind})"]


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_record_stops_naming_it(case, pairs, tokenizer, tmp_path):
  bad_line, kind, parts, seen_by_tokenizer = CASES[case]
  dataset = _write(tmp_path, pairs, bad_line)
  c = _config(dataset, "error")
  # Errors of the manifest line itself also name the manifest and the line.
  parts = [f"dataset {dataset!r} split 'train' (task 'pairs') record {BAD}"] + [
      f"manifest {tmp_path}/pairs.jsonl {p}" if p.startswith("line 8") else p for p in parts]

  def check(error):
    for part in parts:
      assert part in str(error.value), (part, str(error.value))
    assert error.value.kind == kind

  if seen_by_tokenizer:
    with pytest.raises(BadRecord) as e:
      pipeline.tokenizer_corpus(c)
    check(e)
  else:
    assert pairs[BAD][1] in pipeline.tokenizer_corpus(c)
  with pytest.raises(BadRecord) as e:
    _epoch(c, tokenizer)
  check(e)
  with pytest.raises(BadRecord) as e:
    pipeline.retrieval_corpus(c, pipeline.get_tasks(c, ["pairs"])[0], tokenizer)
  check(e)


def test_an_extra_field_is_no_bad_record(pairs, tokenizer, tmp_path):
  c = _config(_write(tmp_path, pairs, _set("note", {"source": "web"})), "error")
  assert not sum(b["skipped"].sum() for b in _epoch(c, tokenizer))
  corpus = pipeline.retrieval_corpus(c, pipeline.get_tasks(c, ["pairs"])[0], tokenizer)
  assert len(corpus["query_ids"]) == NUM and corpus["num_skipped_records"] == 0


def test_a_task_whose_every_record_is_bad_stops(pairs, tokenizer, tmp_path):
  # Every line unparsable: the tokenizer corpus (the first reader) stops.
  (tmp_path / "junk.jsonl").write_text("".join(f"not json {i}\n" for i in range(NUM)))
  c = _config(f"manifest:{tmp_path}/junk.jsonl", "skip")
  with pytest.raises(BadRecord, match=r"\(task 'pairs'\): all 40 records sampled for the "
                     r"tokenizer are bad \(40 not_json\), so data.on_bad_record=skip has "
                     r"nothing to train on. The first: .*junk.jsonl line 1 \(record 0\)"):
    pipeline.tokenizer_corpus(c)
  # Every image truncated (nothing the tokenizer reads is bad): training stops at once.
  root = tmp_path / "truncated"
  root.mkdir()
  dataset = _write(root, [(png[:200], caption) for png, caption in pairs])
  c = _config(dataset, "skip")
  assert len(pipeline.tokenizer_corpus(c)) == NUM
  with pytest.raises(BadRecord, match=r"\(task 'pairs'\): all 40 records are bad \(40 "
                     r"bad_media\), so data.on_bad_record=skip has nothing to replace them "
                     r"with. First of each kind: bad_media: .* record \d+, field 'image'"):
    _epoch(c, tokenizer)
  with pytest.raises(ValueError, match=r"'pairs' split 'train' has no usable records: all "
                     r"bad \(40 bad_media\)"):
    pipeline.retrieval_corpus(c, pipeline.get_tasks(c, ["pairs"])[0], tokenizer)


def test_tally_counts_per_task_and_kind():
  tally = Tally(("a", "b"))
  skipped = np.stack([kind_vector(k) for k in (["not_json"], [], ["bad_media", "bad_media"],
                                               ["missing_file"])])
  tally.add(skipped, np.array([0, 0, 1, 0]))
  tally.add(skipped[:1], np.array([1]))
  assert tally.total == 5
  assert tally.scalars() == {"train/skipped_records": 5,
                             "train/skipped_records/a/not_json": 1,
                             "train/skipped_records/a/missing_file": 1,
                             "train/skipped_records/b/not_json": 1,
                             "train/skipped_records/b/bad_media": 2}
  assert tally.summary() == ("task 'a': 1 missing_file, 1 not_json; "
                             "task 'b': 2 bad_media, 1 not_json")
  assert describe({k: 0 for k in KINDS}) == ""
  with pytest.raises(ValueError, match="unknown bad-record kind 'typo'"):
    BadRecord("x", "typo")


RUN_CONFIG = '''
from configs.common import stage
from configs.tiny import get_config as tiny


def get_config(arg=None):
  c = tiny()
  c.data.custom_tasks = {"pairs": dict(dataset="manifest:%s", query=("image:image",),
                                       candidate=("text:caption",), query_id="id",
                                       candidate_id="id", eval_split="train")}
  c.data.tasks, c.data.weights, c.eval.tasks = ("pairs",), (1.0,), ("pairs",)
  c.data.batch_size, c.data.vocab_size, c.data.on_bad_record = 8, 256, "skip"
  c.eval.dims = (128,)
  c.train.log_every = c.train.checkpoint_every = 3
  c.soup.kind = "none"
  c.stages = [stage("align", 6)]
  return c
'''


def test_the_training_command_counts_skips_per_task_and_kind(pairs, tmp_path):
  import os
  import subprocess
  import sys
  from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  lines = {BAD: CASES["missing_path"][0], 20: CASES["not_json"][0]}
  dataset = _write(tmp_path, pairs)
  path = tmp_path / "pairs.jsonl"
  records = path.read_text().splitlines()
  for i, bad_line in lines.items():
    records[i] = bad_line(json.loads(records[i]), tmp_path)
  path.write_text("\n".join(records) + "\n")
  (tmp_path / "cfg.py").write_text(RUN_CONFIG % path)
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  workdir = tmp_path / "run"
  out = subprocess.run([sys.executable, "-m", "gemb.main", f"--config={tmp_path}/cfg.py",
                        f"--workdir={workdir}"], cwd=root, env=env, capture_output=True,
                       text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  where = f"dataset {dataset!r} split 'train' (task 'pairs')"
  assert (f"tokenizer corpus: data.on_bad_record=skip left out 2 of 40 records of {where} "
          "(1 missing_file, 1 not_json)") in out.stderr
  assert (f"eval corpus: data.on_bad_record=skip left out 2 of 40 records of {where} "
          "(1 missing_file, 1 not_json)") in out.stderr
  events = EventAccumulator(str(workdir / "tensorboard"), size_guidance={"scalars": 0})
  events.Reload()
  final = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]
           if tag.startswith("train/skipped_records")}
  # 48 examples read from 40 records: each bad record met once or twice.
  per_kind = {k: final[f"train/skipped_records/pairs/{k}"] for k in ("missing_file", "not_json")}
  assert all(1 <= n <= 2 for n in per_kind.values()), final
  assert final["train/skipped_records"] == sum(per_kind.values()) and len(final) == 3
  assert (f"align: {int(sum(per_kind.values()))} bad records skipped so far "
          "(data.on_bad_record=skip): task 'pairs': ") in out.stderr
  with open(workdir / "eval" / "step_6.json") as f:
    assert json.load(f)["tasks"]["pairs"]["num_skipped_records"] == 2
