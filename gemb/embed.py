"""Batch embedding of a JSONL file with a serving bundle:

  python -m gemb.embed --model=OUT --input=items.jsonl --output=emb.npy [--dim=256]
      [--task=NAME] [--batch_size=64] [--skip_bad]

Each non-blank line of the input is one item in JSON (gemb/serving/inputs.py): a string,
{"image": {"path": "img.png"}} (paths relative to the input file) or base64, a list of
segments for an interleaved item, ... Row i of the output (float32 [n, dim] .npy) is the
embedding of the i-th item.

Constant memory: items are read, embedded and written ``batch_size`` at a time into a
memory-mapped .npy, whatever the size of the input.
Resumable: OUTPUT.progress records how many rows are written (after they are flushed)
and what they were computed with; rerunning the same command after an interruption
continues from there (a changed input, model, dim or task is refused). The progress file
is removed when the output is complete.
--skip_bad: an item that cannot be embedded becomes a row of NaN (its line is logged)
instead of stopping the run.
"""

import itertools
import json
import os
import sys
import time

import numpy as np
from absl import app, flags, logging

from gemb.serving import bundle
from gemb.serving.embedder import Embedder, matryoshka
from gemb.serving.inputs import InputError, from_json


def read_items(path):
  """Yields (line number, JSON item) of every non-blank line, reading one line at a time."""
  with open(path, "rb") as f:
    for number, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        yield number, json.loads(line)
      except (UnicodeDecodeError, json.JSONDecodeError) as e:
        yield number, InputError(f"{path}:{number}: not valid JSON: {e}")


def count_items(path):
  with open(path, "rb") as f:
    return sum(1 for line in f if line.strip())


def _run_key(embedder, input_path, total, dim, task):
  """What the rows were computed from: a resumed run must match it."""
  stat = os.stat(input_path)
  return {"input": os.path.abspath(input_path), "input_bytes": stat.st_size,
          "input_mtime_ns": stat.st_mtime_ns, "items": total, "dim": dim, "task": task,
          "model": bundle.sha256(os.path.join(embedder.directory, bundle.MANIFEST))}


def _write_progress(path, progress):
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(progress, f)
  os.replace(tmp, path)  # atomic: a kill leaves the old or the new record, never half


class ProgressBar:
  """A one-line progress bar on stderr, redrawn at most twice a second."""

  def __init__(self, total, done, enabled=True):
    self.total, self.start_done, self.enabled = total, done, enabled
    self.start, self.last = time.monotonic(), 0.0

  def rate(self, done):
    return (done - self.start_done) / max(time.monotonic() - self.start, 1e-9)

  def update(self, done, final=False):
    now = time.monotonic()
    if not self.enabled or (now - self.last < 0.5 and not final):
      return
    self.last = now
    rate = self.rate(done)
    filled = int(30 * done / max(self.total, 1))
    eta = (self.total - done) / rate if rate > 0 else float("inf")
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} items "
                     f"{rate:.1f} items/s ETA {eta:.0f}s" + ("\n" if final else ""))
    sys.stderr.flush()


def embed_file(embedder, input_path, output_path, *, dim=None, task=None, batch_size=64,
               skip_bad=False, items=None, show_progress=True):
  """Embeds every item of ``input_path`` into ``output_path``; returns a summary dict.

  items: the (line, item) iterator to read (default: read_items(input_path)); the tests
  pass an instrumented one.
  """
  dim = embedder.check_dim(dim)
  embedder.preprocessor.instruction(task)  # an unknown task fails before any work
  if batch_size <= 0:
    raise ValueError(f"--batch_size={batch_size} must be > 0")
  total = count_items(input_path)
  key = _run_key(embedder, input_path, total, dim, task)
  progress_path = output_path + ".progress"
  if os.path.exists(progress_path) and os.path.exists(output_path):
    with open(progress_path) as f:
      progress = json.load(f)
    if progress["key"] != key:
      changed = sorted(k for k in key if progress["key"].get(k) != key[k])
      raise ValueError(f"{progress_path} belongs to another run ({', '.join(changed)} "
                       f"changed); delete it and {output_path} to start over")
    out = np.lib.format.open_memmap(output_path, mode="r+")
  else:
    progress = {"key": key, "done": 0, "bad_lines": []}
    out = np.lib.format.open_memmap(output_path, mode="w+", dtype=np.float32,
                                    shape=(total, dim))
    _write_progress(progress_path, progress)
  done = progress["done"]
  bar = ProgressBar(total, done, show_progress)
  lines = itertools.islice(items if items is not None else read_items(input_path), done, None)
  while chunk := list(itertools.islice(lines, batch_size)):
    prepared, rows = [], []
    for row, (number, item) in enumerate(chunk):
      try:
        if isinstance(item, InputError):
          raise item
        prepared.append(embedder.prepare(
            from_json(item, f"line {number}", base_dir=os.path.dirname(
                os.path.abspath(input_path))), task, f"line {number}"))
        rows.append(row)
      except InputError as e:
        if not skip_bad:
          raise
        logging.warning("%s: %s (row %d is NaN)", input_path, e, done + row)
        progress["bad_lines"].append(number)
    block = np.full((len(chunk), dim), np.nan, np.float32)
    if prepared:
      block[rows] = matryoshka(embedder.embed_prepared(prepared), dim)
    out[done:done + len(chunk)] = block
    out.flush()  # rows reach the file before the progress record says they are there
    done += len(chunk)
    progress["done"] = done
    _write_progress(progress_path, progress)
    bar.update(done)
  bar.update(done, final=True)
  del out
  os.remove(progress_path)
  return {"items": total, "embedded_now": done - bar.start_done, "dim": dim,
          "items_per_s": bar.rate(done), "bad_lines": progress["bad_lines"],
          "output": output_path}


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  if not os.path.exists(f.input):
    raise app.UsageError(f"--input={f.input}: no such file")
  embedder = Embedder.load(f.model, max_batch=f.batch_size)
  summary = embed_file(embedder, f.input, f.output, dim=f.dim, task=f.task,
                       batch_size=f.batch_size, skip_bad=f.skip_bad)
  print(json.dumps(summary))


if __name__ == "__main__":
  flags.DEFINE_string("model", None, "Serving bundle directory (python -m gemb.export).")
  flags.DEFINE_string("input", None, "JSONL file, one item per line.")
  flags.DEFINE_string("output", None, ".npy file to write (float32 [items, dim]).")
  flags.DEFINE_integer("dim", None, "Matryoshka output size (default: the full size).")
  flags.DEFINE_string("task", None, "Apply this task's instruction (queries).")
  flags.DEFINE_integer("batch_size", 64, "Items read, embedded and written at a time.")
  flags.DEFINE_bool("skip_bad", False, "Write NaN rows for bad items instead of stopping.")
  flags.mark_flags_as_required(["model", "input", "output"])
  app.run(main)
