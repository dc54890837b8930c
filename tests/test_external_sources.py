"""Tests of gemb/data/external.py: TFDS datasets by name and JSONL / ArrayRecord manifests."""
import base64
import io
import json
import os
import pickle

import grain
import numpy as np
from PIL import Image
import pytest
import soundfile
import tensorflow_datasets as tfds
from array_record.python.array_record_module import ArrayRecordWriter
from etils import epath

from gemb.data import external
from gemb.data.bad_records import BadRecord
from gemb.data.external import ManifestError, SourceError, open_source
from gemb.data.media.image import load_image


def _types(value):
  """A value's type structure, e.g. 'list[bytes]' or 'ndarray[uint8, 3]'."""
  if isinstance(value, list):
    return "list[" + (_types(value[0]) if value else "") + "]"
  if isinstance(value, np.ndarray):
    return f"ndarray[{value.dtype}, {value.ndim}]"
  return type(value).__name__


# ---------------------------------------------------------------------------------------
# TFDS through tfds.testing.mock_data: real registered datasets, fake records.

def test_tfds_mock_mnist_types():
  with tfds.testing.mock_data(num_examples=5):
    source = open_source("tfds:mnist", "train")
    assert len(source) == 5
    record = source[3]
  assert record.keys() == {"image", "label"}
  # mock_data gives a 0-d int64 array; a prepared dataset gives a Python int.
  assert type(record["label"]) is int
  assert record["image"].dtype == np.uint8 and record["image"].shape == (28, 28, 1)


def test_tfds_mock_nested_mapping_normalized():
  fields = {"image": "image", "caption": "objects/refexp/raw", "id": "image/id",
            "labels": "objects/label"}
  with tfds.testing.mock_data(num_examples=3):
    source = open_source("tfds:ref_coco/refcoco_unc", "train", fields=fields)
    records = [source[i] for i in range(len(source))]
  for record in records:
    assert record.keys() == fields.keys()
    assert _types(record["image"]) == "ndarray[uint8, 3]"
    assert type(record["id"]) is int
    # Sequence(Sequence(Text)): mock_data gives a 2-D str array, data_source nested lists.
    assert _types(record["caption"]) == "list[list[bytes]]"
    assert all(type(x) is int for x in record["labels"])
  # The record with fields mapped is exactly the mapped names, and images load.
  assert load_image(records[0]["image"], 16).shape == (16, 16, 3)


def test_tfds_mock_missing_path_names_everything():
  with tfds.testing.mock_data(num_examples=2):
    with pytest.raises(SourceError) as e:
      open_source("tfds:ref_coco/refcoco_unc", "validation",
                  fields={"image": "image", "caption": "objects/refexp/text"})
  message = str(e.value)
  for part in ("ref_coco/refcoco_unc", "'validation'", "'objects/refexp/text'",
               "objects/refexp/raw", "image/id"):
    assert part in message


def test_tfds_mock_source_pickles():
  with tfds.testing.mock_data(num_examples=4):
    source = open_source("tfds:squad", "train",
                         fields={"question": "question", "answers": "answers/text"})
    copy = pickle.loads(pickle.dumps(source))
    assert len(copy) == 4
    for i in range(4):
      assert copy[i] == source[i]
      assert type(copy[i]["question"]) is bytes
      assert _types(copy[i]["answers"]) == "list[bytes]"


# ---------------------------------------------------------------------------------------
# TFDS: a dataset really prepared as ArrayRecord, read back from its files only.

def _png(i):
  out = io.BytesIO()
  Image.new("RGB", (6, 4), (i * 40, 255 - i * 40, 7)).save(out, "png")
  return out.getvalue()


class _Captions(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Unregistered, so open_source can only find it through its prepared files."""
  name = "gemb_external_captions"
  VERSION = tfds.core.Version("1.0.0")

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return epath.Path(__file__)

  def __init__(self, **kwargs):
    super().__init__(file_format="array_record", **kwargs)

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(encoding_format="png"),
        "id": tfds.features.Scalar(np.int32),
        "captions": tfds.features.Sequence({"id": np.int64, "text": tfds.features.Text()}),
        "meta": {"lang": tfds.features.Text()},
    }))

  def _split_generators(self, dl_manager):
    return {"train": self._generate_examples(range(3)), "test": self._generate_examples([3])}

  def _generate_examples(self, items):
    for i in items:
      yield i, {"image": _png(i), "id": i, "meta": {"lang": "en"},
                "captions": {"id": [10 * i, 10 * i + 1], "text": [f"cap {i} a", f"cap {i} b"]}}


@pytest.fixture(scope="module")
def prepared_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds_ext"))
  _Captions(data_dir=data_dir).download_and_prepare(download_dir=os.path.join(data_dir, "dl"))
  return data_dir


def test_tfds_prepared_nested_and_pickle(prepared_dir):
  source = open_source("tfds:gemb_external_captions", "train", data_dir=prepared_dir)
  assert len(source) == 3
  by_id = {source[i]["id"]: source[i] for i in range(3)}
  record = by_id[1]
  assert record.keys() == {"image", "id", "captions/id", "captions/text", "meta/lang"}
  assert record["captions/text"] == [b"cap 1 a", b"cap 1 b"]
  assert record["captions/id"] == [10, 11] and all(type(x) is int for x in record["captions/id"])
  assert record["meta/lang"] == b"en"
  np.testing.assert_array_equal(record["image"], np.asarray(Image.open(io.BytesIO(_png(1)))))

  mapped = open_source("tfds:gemb_external_captions:1.0.0", "test", data_dir=prepared_dir,
                       fields={"picture": "image", "caption": "captions/text", "item": "id"})
  copy = pickle.loads(pickle.dumps(mapped))
  assert copy[0].keys() == {"picture", "caption", "item"}
  assert copy[0]["caption"] == [b"cap 3 a", b"cap 3 b"] and copy[0]["item"] == 3


def test_tfds_prepared_errors(prepared_dir, tmp_path):
  with pytest.raises(SourceError, match=r"no such split; splits: \['test', 'train'\]"):
    open_source("tfds:gemb_external_captions", "validation", data_dir=prepared_dir)
  with pytest.raises(SourceError, match="'captions/txt'.*captions/text"):
    open_source("tfds:gemb_external_captions", "train", data_dir=prepared_dir,
                fields={"caption": "captions/txt"})
  # A registered dataset that is not prepared: say how to prepare it.
  with pytest.raises(SourceError) as e:
    open_source("tfds:mnist", "train", data_dir=str(tmp_path))
  assert "not prepared" in str(e.value)
  assert f"tfds build mnist --data_dir={tmp_path} --file_format=array_record" in str(e.value)
  with pytest.raises(SourceError, match="no registered TFDS dataset"):
    open_source("tfds:no_such_dataset_xyz", "train", data_dir=str(tmp_path))


def test_bad_dataset_strings(tmp_path):
  for bad in ("mnist", "hub:mnist", "tfds:", "manifest:"):
    with pytest.raises(SourceError, match="expected"):
      open_source(bad, "train")
  (tmp_path / "x.csv").write_text("a,b\n")
  with pytest.raises(SourceError, match=r"\.jsonl or \.array_record"):
    open_source(f"manifest:{tmp_path}/x.csv", "train")
  with pytest.raises(SourceError, match="fields must map"):
    open_source(f"manifest:{tmp_path}/x.jsonl", "train", fields={"a": ""})


# ---------------------------------------------------------------------------------------
# Manifests.

def _wav(seed):
  samples = np.random.default_rng(seed).uniform(-0.5, 0.5, 800).astype(np.float32)
  out = io.BytesIO()
  soundfile.write(out, samples, 16000, format="WAV", subtype="FLOAT")
  return out.getvalue(), samples


@pytest.fixture
def manifest_dir(tmp_path):
  """img/{0,1}.png, a train manifest with blank lines, a shorter test manifest."""
  (tmp_path / "img").mkdir()
  for i in range(2):
    (tmp_path / "img" / f"{i}.png").write_bytes(_png(i))
  wav, _ = _wav(0)
  train = [
      {"id": 0, "image": {"path": "img/0.png"}, "caption": "a red thing",
       "negatives": ["a blue thing", "a green thing"], "negative_ids": [5, 6],
       "audio": {"bytes_b64": base64.b64encode(wav).decode()}, "meta": {"lang": "en"}},
      {"id": 1, "image": {"path": str(tmp_path / "img" / "1.png")}, "caption": "ünïcode ✓",
       "negatives": [], "negative_ids": [],
       "audio": {"bytes_b64": base64.b64encode(wav).decode()}, "meta": {"lang": "de"}},
  ]
  lines = [json.dumps(train[0]), "", "   ", json.dumps(train[1], ensure_ascii=False), ""]
  (tmp_path / "pairs_train.jsonl").write_text("\n".join(lines), encoding="utf-8")
  (tmp_path / "pairs_test.jsonl").write_text(json.dumps(train[0]) + "\n")
  return tmp_path


FIELDS = {"image": "image", "caption": "caption", "audio": "audio", "negatives": "negatives",
          "negative_ids": "negative_ids", "id": "id", "lang": "meta/lang"}


def _check_pairs(source, root):
  """Records 0 and 1 of the manifest_dir pairs, read through FIELDS."""
  r0, r1 = source[0], source[1]
  assert r0.keys() == FIELDS.keys()
  assert r0["image"] == (root / "img" / "0.png").read_bytes()
  assert r1["image"] == (root / "img" / "1.png").read_bytes()  # absolute path
  assert load_image(r0["image"], 8).shape == (8, 8, 3)
  assert r0["caption"] == b"a red thing" and r1["caption"] == "ünïcode ✓".encode()
  assert r0["negatives"] == [b"a blue thing", b"a green thing"] and r1["negatives"] == []
  assert r0["negative_ids"] == [5, 6] and r0["id"] == 0 and type(r1["id"]) is int
  assert (r0["lang"], r1["lang"]) == (b"en", b"de")
  samples, rate = soundfile.read(io.BytesIO(r1["audio"]), dtype="float32")
  np.testing.assert_array_equal(samples, _wav(0)[1])
  assert rate == 16000


def test_jsonl_manifest_records(manifest_dir):
  source = open_source(f"manifest:{manifest_dir}/pairs_{{split}}.jsonl", "train", fields=FIELDS)
  assert len(source) == 2
  _check_pairs(source, manifest_dir)
  unmapped = open_source(f"manifest:{manifest_dir}/pairs_train.jsonl", "validation")
  assert set(unmapped[0]) == {"id", "image", "caption", "negatives", "negative_ids", "audio",
                              "meta/lang"}
  assert unmapped[-1]["id"] == 1


def test_manifest_split_substitution(manifest_dir):
  pattern = f"manifest:{manifest_dir}/pairs_{{split}}.jsonl"
  assert len(open_source(pattern, "train")) == 2
  assert len(open_source(pattern, "test")) == 1
  with pytest.raises(SourceError, match=f"{manifest_dir}/pairs_validation.jsonl"):
    open_source(pattern, "validation")


def test_array_record_manifest(manifest_dir):
  jsonl = open_source(f"manifest:{manifest_dir}/pairs_train.jsonl", "train")
  path = str(manifest_dir / "pairs.array_record")
  writer = ArrayRecordWriter(path, "group_size:1")
  for i in range(len(jsonl)):
    line = jsonl._raw(i)  # the same JSON objects, one per record
    writer.write(line)
  writer.write(json.dumps({"id": 2, "image": {"path": "img/missing.png"}}).encode())
  writer.close()
  source = open_source(f"manifest:{path}", "train", fields=FIELDS)
  assert len(source) == 3
  copy = pickle.loads(pickle.dumps(source))
  _check_pairs(copy, manifest_dir)
  images = open_source(f"manifest:{path}", "test", fields={"image": "image"})
  with pytest.raises(ManifestError) as e:
    images[2]
  assert f"manifest {path} record 2" in str(e.value)
  assert "field 'image'" in str(e.value) and "img/missing.png" in str(e.value)


def _write_lines(path, records):
  path.write_text("".join(json.dumps(r) + "\n" for r in records))
  return f"manifest:{path}"


def test_manifest_errors_name_line_field_and_path(tmp_path):
  good = {"id": 0, "caption": "ok", "image": {"bytes_b64": base64.b64encode(_png(0)).decode()}}
  name = _write_lines(tmp_path / "m.jsonl", [
      good,
      {"id": 1, "caption": "x", "image": {"path": "nope/missing.png"}},
      {"id": 2, "caption": "x", "image": {"bytes_b64": "aGVsbG8h*"}},
      {"id": 3, "image": {"bytes_b64": ""}},
      {"id": 4, "caption": "x", "image": {"path": "a.png", "bytes_b64": ""}},
  ])
  # Line 1 is blank, so record k sits on line k + 2.
  text = (tmp_path / "m.jsonl").read_text()
  (tmp_path / "m.jsonl").write_text("\n" + text + "{not json\n")
  source = open_source(name, "train", fields={"caption": "caption", "image": "image"})
  assert source[0]["image"] == _png(0)
  cases = {
      1: ["line 3 (record 1)", "field 'image'", str(tmp_path / "nope/missing.png")],
      2: ["line 4 (record 2)", "field 'image'", "bad base64"],
      3: ["line 5 (record 3)", "no field 'caption'", "fields: ['id', 'image']"],
      4: ["line 6 (record 4)", "field 'image'", "exactly one key"],
      5: ["line 7 (record 5)", "not valid JSON"],
  }
  for index, parts in cases.items():
    with pytest.raises(ManifestError) as e:
      source[index]
    for part in [f"manifest {tmp_path / 'm.jsonl'}"] + parts:
      assert part in str(e.value), (index, str(e.value))
  # Each is a bad record of its kind, so the pipeline reports or skips and counts it.
  kinds = {1: "missing_file", 2: "bad_media_ref", 3: "missing_field", 4: "bad_media_ref",
           5: "not_json"}
  for index, kind in kinds.items():
    with pytest.raises(BadRecord) as e:
      source[index]
    assert e.value.kind == kind, (index, e.value.kind)
  # A mapped field that none of the first records has is a typo in the mapping: fail at
  # open (a field only some records lack is a bad record, as record 3 above).
  with pytest.raises(SourceError, match=r"m.jsonl: mapped field\(s\) \['captoin'\] are in none "
                     r"of its first 6 records; their fields: \['caption', 'id', 'image'\]"):
    open_source(name, "train", fields={"caption": "captoin"})


def test_jsonl_index_matches_a_plain_reading(tmp_path, monkeypatch):
  # Tiny numpy chunks so that lines straddle chunk boundaries; CRLF, whitespace-only
  # lines, a line far longer than one pread, and no final newline.
  monkeypatch.setattr(external, "_CHUNK", 7)
  long_caption = "w" * 200_000
  content = ('{"a": 1}\r\n\r\n  \t \n{"a": 2}\n\n \n' + json.dumps({"a": 3, "c": long_caption})
             + '\n   {"a": 4}\n{"a": 5}')
  path = tmp_path / "t.jsonl"
  path.write_bytes(content.encode())
  expected, offset = [], 0
  for line in content.encode().splitlines(keepends=True):
    if line.strip():
      expected.append(offset)
    offset += len(line)
  np.testing.assert_array_equal(external.index_lines(str(path)), expected)
  source = open_source(f"manifest:{path}", "train")
  assert [source[i]["a"] for i in range(len(source))] == [1, 2, 3, 4, 5]
  assert source[2]["c"] == long_caption.encode()
  assert source.line_number(3) == 8
  (tmp_path / "empty.jsonl").write_text("\n\n")
  assert len(open_source(f"manifest:{tmp_path}/empty.jsonl", "train")) == 0


def test_manifest_pickle_and_change_detection(manifest_dir):
  path = manifest_dir / "pairs_train.jsonl"
  source = open_source(f"manifest:{path}", "train", fields=FIELDS)
  source[0]  # opens the file descriptor, which must not travel with the pickle
  blob = pickle.dumps(source)
  copy = pickle.loads(blob)
  _check_pairs(copy, manifest_dir)
  with open(path, "a") as f:
    f.write(json.dumps({"id": 9}) + "\n")
  with pytest.raises(ManifestError, match="changed since it was indexed"):
    pickle.loads(blob)


def _image_size(record):
  return {"id": record["id"], "n": len(record["image"])}


def test_manifest_in_grain_worker(manifest_dir):
  # The worker (spawned) unpickles the source and reads the manifest itself.
  source = open_source(f"manifest:{manifest_dir}/pairs_train.jsonl", "train", fields=FIELDS)
  ds = (grain.MapDataset.source(source).map(_image_size)
        .to_iter_dataset()
        .mp_prefetch(grain.MultiprocessingOptions(num_workers=1)))
  got = sorted((r["id"], r["n"]) for r in ds)
  assert got == [(0, len(_png(0))), (1, len(_png(1)))]
