"""python -m gemb.embed: JSONL in, .npy out, streaming in constant memory, resumable."""

import base64
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import export_fixtures as fx
from export_fixtures import bundle_dir, embedder, run_dir  # noqa: F401 (pytest fixtures)
from gemb import embed
from gemb.serving import InputError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))




def write_jsonl(path, items):
  with open(path, "w") as f:
    for item in items:
      f.write(json.dumps(item) + "\n")


def text_items(n):
  return [f"{fx.WORDS[i % len(fx.WORDS)]} number {i}" for i in range(n)]


def test_embeds_every_kind_of_item(embedder, tmp_path):
  rec = fx.records(2)[1]
  (tmp_path / "img.png").write_bytes(rec["i"])
  b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
  json_items = ["red heart", {"image": {"path": "img.png"}}, {"audio": b64(rec["a"])},
                {"video": [b64(f) for f in rec["v"]]},
                [{"image": {"bytes_b64": b64(rec["i"])}}, "with a hat"], "blue square"]
  python_items = ["red heart", {"image": rec["i"]}, {"audio": rec["a"]}, {"video": rec["v"]},
                  [{"image": rec["i"]}, "with a hat"], "blue square"]
  write_jsonl(tmp_path / "items.jsonl", json_items[:3])
  with open(tmp_path / "items.jsonl", "a") as f:
    f.write("\n")  # blank lines are skipped
  with open(tmp_path / "items.jsonl", "a") as f:
    f.writelines(json.dumps(item) + "\n" for item in json_items[3:])
  out = str(tmp_path / "emb.npy")
  summary = embed.embed_file(embedder, str(tmp_path / "items.jsonl"), out, dim=16,
                             task="k_mixed", batch_size=4, show_progress=False)
  assert summary["items"] == 6 and summary["items_per_s"] > 0
  np.testing.assert_allclose(np.load(out), embedder.embed(python_items, task="k_mixed", dim=16),
                             atol=1e-6)
  assert not os.path.exists(out + ".progress")


def test_streams_in_constant_memory(embedder, tmp_path, monkeypatch):
  """At most one batch of items is read ahead of what is written, whatever the file size."""
  items = text_items(40)
  write_jsonl(tmp_path / "items.jsonl", items)
  read = {"n": 0}

  def counting_reader():
    for line in embed.read_items(str(tmp_path / "items.jsonl")):
      read["n"] += 1
      yield line

  written, real = [], embedder.embed_prepared

  def checked(prepared):
    assert read["n"] <= sum(written) + 8, "read more than one batch ahead"
    written.append(len(prepared))
    return real(prepared)

  monkeypatch.setattr(embedder, "embed_prepared", checked)
  out = str(tmp_path / "emb.npy")
  embed.embed_file(embedder, str(tmp_path / "items.jsonl"), out, dim=8, batch_size=8,
                   items=counting_reader(), show_progress=False)
  assert written == [8] * 5 and read["n"] == 40
  assert isinstance(np.load(out, mmap_mode="r"), np.memmap)  # written through a memmap
  np.testing.assert_allclose(np.load(out), embedder.embed(items, dim=8), atol=1e-6)


def test_bad_lines_stop_or_become_nan(embedder, tmp_path):
  path = tmp_path / "items.jsonl"
  path.write_text('"red heart"\n{"image": "bm90IGFuIGltYWdl"}\n{not json\n"blue square"\n')
  with pytest.raises(InputError, match=r"line 2\.image: cannot decode image"):
    embed.embed_file(embedder, str(path), str(tmp_path / "a.npy"), show_progress=False)
  summary = embed.embed_file(embedder, str(path), str(tmp_path / "b.npy"), skip_bad=True,
                             show_progress=False)
  out = np.load(tmp_path / "b.npy")
  assert summary["bad_lines"] == [2, 3]
  assert np.isnan(out[1:3]).all()
  np.testing.assert_allclose(out[[0, 3]], embedder.embed(["red heart", "blue square"]),
                             atol=1e-6)


def test_resumes_after_kill_and_equals_uninterrupted_run(bundle_dir, embedder, tmp_path):
  items = text_items(600)
  write_jsonl(tmp_path / "items.jsonl", items)
  reference = str(tmp_path / "reference.npy")
  embed.embed_file(embedder, str(tmp_path / "items.jsonl"), reference, dim=16, task="k_text",
                   batch_size=4, show_progress=False)

  out = str(tmp_path / "emb.npy")
  command = [sys.executable, "-m", "gemb.embed", f"--model={bundle_dir}",
             f"--input={tmp_path / 'items.jsonl'}", f"--output={out}", "--dim=16",
             "--task=k_text", "--batch_size=4"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
  progress, done, deadline = out + ".progress", 0, time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    try:
      with open(progress) as f:
        done = json.load(f)["done"]
    except (OSError, ValueError):
      done = 0
    if done >= 16:
      break
    time.sleep(0.005)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL and 16 <= done < len(items), (done, proc.returncode)

  with pytest.raises(ValueError, match=r"belongs to another run \(dim changed\)"):
    embed.embed_file(embedder, str(tmp_path / "items.jsonl"), out, dim=8, task="k_text",
                     batch_size=4, show_progress=False)
  rerun = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  summary = json.loads(rerun.stdout.strip().splitlines()[-1])
  assert summary["items"] == 600 and 0 < summary["embedded_now"] < 600
  assert "items/s" in rerun.stderr  # the progress bar
  assert not os.path.exists(progress)
  np.testing.assert_allclose(np.load(out), np.load(reference), atol=1e-6)
