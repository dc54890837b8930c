"""HTTP embedding service over a serving bundle (JSON, standard library only):

  python -m gemb.serve --model=OUT [--port=8080] [--host=127.0.0.1] [--max_body_bytes=8388608]
      [--max_inputs=256] [--max_batch=64] [--batch_wait_ms=5]

It binds 127.0.0.1 unless --host says otherwise (put a TLS / auth proxy in front to expose it).

  POST /v1/embed  {"inputs": [item, ...], "task": "<task>" | null, "dim": 256 | null}
      -> 200 {"embeddings": [[float, ...], ...], "dim": d, "task": ..., "count": n}
      items as in gemb/serving/inputs.py (JSON form): "text", {"image": "<base64>"},
      {"audio": "<base64 WAV/OGG/FLAC>"}, {"video": "<base64 mp4>" | ["<base64 frame>", ...]},
      or a list of those for one interleaved item. "task" applies that task's instruction
      (queries); omit it for documents. "dim" defaults to the full embedding size.
  GET /v1/info    embedding size, trained dims, modalities, tasks, limits
  GET /v1/stats   requests, items, model calls, batches since start
  GET /health     {"status": "ok"}

Errors are JSON {"error": {"code": c, "message": "..."}}: 400 for malformed JSON, wrong
types, undecodable media, an unknown task or an impossible dim (the message names the
input and field); 411 without Content-Length; 413 for a body over --max_body_bytes or more
than --max_inputs inputs; 404 / 405 for unknown paths / methods.

Micro-batching: request threads decode their inputs in parallel, then queue them for one
model thread, which waits up to --batch_wait_ms after the first queued request for more
(up to --max_batch items) and embeds them together: one model call per entry point used.
Dims and tasks are per request (the model computes raw embeddings; dims are slices), so
any concurrent requests can share a call.
"""

import http.server
import json
import queue
import threading
import time

from absl import app, flags, logging

from gemb.serving.embedder import Embedder, matryoshka
from gemb.serving.inputs import InputError, from_json


class HTTPError(Exception):
  def __init__(self, code, message):
    super().__init__(message)
    self.code, self.message = code, message


class _Job:
  def __init__(self, prepared):
    self.prepared, self.done = prepared, threading.Event()
    self.result = self.error = None


class MicroBatcher:
  """One model thread embedding the queued requests' items together."""

  def __init__(self, embedder, max_batch, wait_s):
    self.embedder, self.max_batch, self.wait_s = embedder, max_batch, wait_s
    self.queue = queue.Queue()
    self.batches = 0
    self.thread = threading.Thread(target=self._loop, name="gemb-batcher", daemon=True)
    self.thread.start()

  def embed(self, prepared):
    """[(entry point, side)] -> raw embeddings [n, D], computed with other requests' items."""
    job = _Job(prepared)
    self.queue.put(job)
    job.done.wait()
    if job.error is not None:
      raise job.error
    return job.result

  def close(self):
    self.queue.put(None)
    self.thread.join()

  def _collect(self, first):
    jobs, count = [first], len(first.prepared)
    deadline = time.monotonic() + self.wait_s
    while count < self.max_batch:
      try:
        job = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
      except queue.Empty:
        break
      if job is None:  # closing: finish this batch, then stop
        self.queue.put(None)
        break
      jobs.append(job)
      count += len(job.prepared)
    return jobs

  def _loop(self):
    while (first := self.queue.get()) is not None:
      jobs = self._collect(first)
      try:
        raw = self.embedder.embed_prepared([p for job in jobs for p in job.prepared])
        start = 0
        for job in jobs:
          job.result = raw[start:start + len(job.prepared)]
          start += len(job.prepared)
      except Exception as e:  # noqa: BLE001 - handed to every waiting request
        for job in jobs:
          job.error = e
      self.batches += 1
      for job in jobs:
        job.done.set()


class EmbeddingService:
  """Request parsing, limits and stats; the HTTP handler calls ``embed_request``."""

  def __init__(self, embedder, *, max_body_bytes, max_inputs, max_batch, batch_wait_ms):
    self.embedder = embedder
    self.max_body_bytes, self.max_inputs = max_body_bytes, max_inputs
    self.batcher = MicroBatcher(embedder, max_batch, batch_wait_ms / 1000.0)
    self.requests = self.items = 0
    self._lock = threading.Lock()

  def info(self):
    m = self.embedder.manifest
    return {"embed_dim": self.embedder.embed_dim,
            "matryoshka_dims": m["model"]["matryoshka_dims"],
            "modalities": m["model"]["modalities"],
            "tasks": {name: t["instruction"] for name, t in self.embedder.tasks.items()},
            "limits": {"max_body_bytes": self.max_body_bytes, "max_inputs": self.max_inputs},
            "source": m["source"]}

  def stats(self):
    return {"requests": self.requests, "items": self.items,
            "model_calls": self.embedder.model_calls, "batches": self.batcher.batches}

  def embed_request(self, body):
    try:
      request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
      raise HTTPError(400, f"the body is not valid JSON: {e}") from None
    if not isinstance(request, dict):
      raise HTTPError(400, "the body must be a JSON object {\"inputs\": [...], \"task\": ..., "
                           "\"dim\": ...}")
    unknown = sorted(set(request) - {"inputs", "task", "dim"})
    if unknown:
      raise HTTPError(400, f"unknown field(s) {unknown}; fields: inputs, task, dim")
    items, task, dim = request.get("inputs"), request.get("task"), request.get("dim")
    if not isinstance(items, list) or not items:
      raise HTTPError(400, "\"inputs\" must be a non-empty array of items")
    if len(items) > self.max_inputs:
      raise HTTPError(413, f"{len(items)} inputs exceed the limit of {self.max_inputs} per "
                           "request")
    if task is not None and not isinstance(task, str):
      raise HTTPError(400, f"\"task\" must be a string or null, got {json.dumps(task)}")
    try:
      dim = self.embedder.check_dim(dim)
      prepared = [self.embedder.prepare(from_json(item, f"inputs[{i}]"), task, f"inputs[{i}]")
                  for i, item in enumerate(items)]
    except InputError as e:
      raise HTTPError(400, str(e)) from None
    embeddings = matryoshka(self.batcher.embed(prepared), dim)
    with self._lock:
      self.requests += 1
      self.items += len(items)
    return {"embeddings": embeddings.tolist(), "dim": dim, "task": task,
            "count": len(items)}

  def close(self):
    self.batcher.close()


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
  service: EmbeddingService = None  # set by make_server on a subclass

  def do_GET(self):
    routes = {"/health": lambda: {"status": "ok"}, "/v1/info": self.service.info,
              "/v1/stats": self.service.stats}
    if self.path not in routes:
      return self._error(404, f"no such path {self.path}; GET /health, /v1/info, /v1/stats, "
                              "POST /v1/embed")
    self._send(200, routes[self.path]())

  def do_POST(self):
    if self.path != "/v1/embed":
      return self._error(404 if self.path not in ("/health", "/v1/info", "/v1/stats") else 405,
                         f"POST {self.path}: embed with POST /v1/embed")
    length = self.headers.get("Content-Length")
    if length is None or not length.isdigit():
      return self._error(411, "a Content-Length header is required", close=True)
    if int(length) > self.service.max_body_bytes:
      # The body is not read: answer at once and drop the connection.
      return self._error(413, f"body of {int(length)} bytes exceeds the limit of "
                              f"{self.service.max_body_bytes} bytes", close=True)
    body = self.rfile.read(int(length))
    try:
      self._send(200, self.service.embed_request(body))
    except HTTPError as e:
      self._error(e.code, e.message)
    except Exception as e:  # noqa: BLE001 - a server error must not kill the server
      logging.exception("embedding failed")
      self._error(500, f"internal error: {type(e).__name__}: {e}")

  def do_PUT(self):
    self._error(405, f"PUT {self.path}: embed with POST /v1/embed")

  do_DELETE = do_PATCH = do_PUT

  def _error(self, code, message, close=False):
    self._send(code, {"error": {"code": code, "message": message}}, close=close)

  def _send(self, code, payload, close=False):
    data = json.dumps(payload).encode()
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    if close:
      self.send_header("Connection", "close")
      self.close_connection = True
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, format, *args):  # noqa: A002 - the base class's signature
    logging.debug("%s %s", self.address_string(), format % args)


def make_server(embedder, host="127.0.0.1", port=8080, *, max_body_bytes=8 << 20,
                max_inputs=256, max_batch=64, batch_wait_ms=5.0):
  """A ThreadingHTTPServer (not yet serving) and its EmbeddingService; port 0 = any free."""
  service = EmbeddingService(embedder, max_body_bytes=max_body_bytes, max_inputs=max_inputs,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms)
  handler = type("BoundHandler", (Handler,), {"service": service})
  server = http.server.ThreadingHTTPServer((host, port), handler)
  server.daemon_threads = True
  return server, service


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  embedder = Embedder.load(f.model, max_batch=f.max_batch)
  server, service = make_server(embedder, f.host, f.port, max_body_bytes=f.max_body_bytes,
                                max_inputs=f.max_inputs, max_batch=f.max_batch,
                                batch_wait_ms=f.batch_wait_ms)
  host, port = server.server_address[:2]
  logging.info("serving %s on http://%s:%d (POST /v1/embed)", f.model, host, port)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    pass
  finally:
    server.server_close()
    service.close()


if __name__ == "__main__":
  flags.DEFINE_string("model", None, "Serving bundle directory (python -m gemb.export).")
  flags.DEFINE_string("host", "127.0.0.1", "Address to bind (default: loopback only).")
  flags.DEFINE_integer("port", 8080, "Port (0: any free port).")
  flags.DEFINE_integer("max_body_bytes", 8 << 20, "Largest request body accepted (413 above).")
  flags.DEFINE_integer("max_inputs", 256, "Most inputs per request (413 above).")
  flags.DEFINE_integer("max_batch", 64, "Most items per model call.")
  flags.DEFINE_float("batch_wait_ms", 5.0, "How long the model thread waits for more requests "
                     "to batch with the first one.")
  flags.mark_flags_as_required(["model"])
  app.run(main)
