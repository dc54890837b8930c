"""HTTP embedding service over a serving bundle (JSON, standard library only):

  python -m gemb.serve --model=OUT [--port=8080] [--host=127.0.0.1] [--max_body_bytes=8388608]
      [--max_inputs=256] [--max_image_pixels=N] [--max_request_pixels=N] [--max_batch=64]
      [--batch_wait_ms=5] [--workers=32] [--max_queue=256] [--backlog=1024]
      [--request_timeout_s=30] [--idle_timeout_s=5] [--model_name=gemb]

It binds 127.0.0.1 unless --host says otherwise (put a TLS / auth proxy in front to expose it).

  POST /v1/embeddings  the OpenAI embeddings API (texts; see gemb/serving/openai_api.py):
      {"input": "text" | ["text", ...], "model": "<--model_name>", "dimensions": 256,
       "encoding_format": "float" | "base64"} -> {"object": "list", "data": [...], "usage": ...}
      with OpenAI-shaped errors, so the openai client and the tools built on it work as is.
  GET /v1/models  the served model, as OpenAI lists models
  POST /v1/embed  {"inputs": [item, ...], "task": "<task>" | null, "dim": 256 | null}
      -> 200 {"embeddings": [[float, ...], ...], "dim": d, "task": ..., "count": n}
      items as in gemb/serving/inputs.py (JSON form): "text", {"image": "<base64>"},
      {"audio": "<base64 WAV/OGG/FLAC>"}, {"video": "<base64 mp4>" | ["<base64 frame>", ...]},
      or a list of those for one interleaved item. "task" applies that task's instruction
      (queries); omit it for documents. "dim" defaults to the full embedding size.
  GET /v1/info    embedding size, trained dims, modalities, tasks, limits
  GET /v1/stats   requests, items, model calls, batches, refused connections since start
  GET /health     {"status": "ok"}

Errors are JSON {"error": {"code": c, "message": "..."}}: 400 for malformed JSON, JSON nested
deeper than MAX_JSON_DEPTH, wrong types, undecodable media, an unknown task or an impossible
dim (the message names the input and field, never a server path or object); 408 when the
headers or the body do not arrive within --request_timeout_s; 411 without Content-Length;
413 for a body over --max_body_bytes, more than --max_inputs inputs, or images over
--max_image_pixels each / --max_request_pixels in all (measured from their headers, before
decoding); 404 / 405 for unknown paths / methods; 503 with Retry-After when --workers are
busy and --max_queue connections already wait.

Concurrency: one acceptor thread puts connections in a queue of --max_queue that --workers
threads serve (a connection refused when it is full gets its 503 from a separate thread that
reads its request first, so the client receives the answer instead of a reset). A kept-alive
connection holds its worker only while it sends requests: --idle_timeout_s without one, or
another connection waiting, closes it after its response. The listen backlog (--backlog,
capped by the kernel's net.core.somaxconn) absorbs bursts of connects.

Micro-batching: worker threads decode their requests' inputs in parallel, then queue them
for one model thread, which waits up to --batch_wait_ms after the first queued request for
more (up to --max_batch items) and embeds them together: one model call per entry point used.
Dims and tasks are per request (the model computes raw embeddings; dims are slices), so
any concurrent requests can share a call.
"""

import http.server
import io
import json
import queue
import re
import socket
import threading
import time

import numpy as np
from absl import app, flags, logging

from gemb.batch import PAD_ID
from gemb.serving import openai_api
from gemb.serving.embedder import Embedder, matryoshka
from gemb.serving.inputs import InputError, LimitError, from_json
from gemb.serving.preprocess import PixelBudget

# A request is an object > inputs array > interleaved item > segment > video frame list >
# {"bytes_b64"}: 6 levels. Deeper JSON is no request, and Python's parser recurses per level.
MAX_JSON_DEPTH = 16
_JSON_STRING = re.compile(rb'"(?:[^"\\]++|\\.)*+"')


class HTTPError(Exception):
  def __init__(self, code, message):
    super().__init__(message)
    self.code, self.message = code, message


def json_depth(body):
  """Deepest nesting of arrays / objects in a JSON text, without parsing it (strings, which
  may hold brackets, are blanked first): vectorized, ~10 ms per MB."""
  b = np.frombuffer(_JSON_STRING.sub(b'""', body), np.uint8)
  step = np.zeros(len(b), np.int32)
  step[(b == ord("[")) | (b == ord("{"))] = 1
  step[(b == ord("]")) | (b == ord("}"))] = -1
  return int(np.cumsum(step).max(initial=0))


def parse_json(body):
  """Request body -> JSON value; HTTPError 400 for invalid or too deeply nested JSON."""
  depth = json_depth(body)
  if depth > MAX_JSON_DEPTH:
    raise HTTPError(400, f"the body's JSON is nested {depth} deep; requests are at most "
                         f"{MAX_JSON_DEPTH} deep")
  try:
    return json.loads(body)
  except ValueError as e:  # JSONDecodeError, UnicodeDecodeError, a number of over 4300 digits
    raise HTTPError(400, f"the body is not valid JSON: {e}") from None


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

  def __init__(self, embedder, *, max_body_bytes, max_inputs, max_batch, batch_wait_ms,
               max_image_pixels=None, max_request_pixels=None, model_name="gemb"):
    self.embedder, self.model_name = embedder, model_name
    self.max_body_bytes, self.max_inputs = max_body_bytes, max_inputs
    budget = PixelBudget.for_shapes(embedder.preprocessor.shapes, max_image_pixels,
                                    max_request_pixels)
    self.max_image_pixels, self.max_request_pixels = budget.per_image, budget.per_request
    self.batcher = MicroBatcher(embedder, max_batch, batch_wait_ms / 1000.0)
    self.requests = self.items = 0
    self.server = None  # the Server, for its connection stats (set by make_server)
    self.created = int(time.time())
    self._lock = threading.Lock()

  def info(self):
    m = self.embedder.manifest
    return {"embed_dim": self.embedder.embed_dim,
            "matryoshka_dims": m["model"]["matryoshka_dims"],
            "modalities": m["model"]["modalities"],
            "tasks": {name: t["instruction"] for name, t in self.embedder.tasks.items()},
            "limits": {"max_body_bytes": self.max_body_bytes, "max_inputs": self.max_inputs,
                       "max_image_pixels": self.max_image_pixels,
                       "max_request_pixels": self.max_request_pixels,
                       "max_json_depth": MAX_JSON_DEPTH},
            # Which checkpoint, not where it was: the workdir path is the server's business.
            "checkpoint": {k: m["source"].get(k) for k in ("steps", "soup")}}

  def stats(self):
    out = {"requests": self.requests, "items": self.items,
           "model_calls": self.embedder.model_calls, "batches": self.batcher.batches}
    if self.server is not None:
      out.update(connections=self.server.connections, refused=self.server.refused)
    return out

  def embed_request(self, body):
    request = parse_json(body)
    if not isinstance(request, dict):
      raise HTTPError(400, "the body must be a JSON object {\"inputs\": [...], \"task\": ..., "
                           "\"dim\": ...}")
    unknown = sorted(set(request) - {"inputs", "task", "dim"})
    if unknown:
      raise HTTPError(400, f"unknown field(s) {unknown}; fields: inputs, task, dim")
    items, task, dim = request.get("inputs"), request.get("task"), request.get("dim")
    if not isinstance(items, list) or not items:
      raise HTTPError(400, "\"inputs\" must be a non-empty array of items")
    if task is not None and not isinstance(task, str):
      raise HTTPError(400, f"\"task\" must be a string or null, got {json.dumps(task)}")
    embeddings, dim, _ = self.embed(items, task, dim, "inputs")
    return {"embeddings": embeddings.tolist(), "dim": dim, "task": task,
            "count": len(items)}

  def openai_request(self, body):
    """POST /v1/embeddings: OpenAIError (answered in OpenAI's error shape) for bad requests."""
    request = parse_json(body)  # its HTTPError is answered in OpenAI's shape by the handler
    try:
      texts, dim, task, fmt = openai_api.parse(request, self.model_name)
      try:
        dim = self.embedder.check_dim(dim, "dimensions")
      except InputError as e:
        raise openai_api.OpenAIError(400, str(e), param="dimensions") from None
      try:
        self.embedder.preprocessor.instruction(task)
      except InputError as e:
        raise openai_api.OpenAIError(400, str(e), param="task") from None
      embeddings, _, tokens = self.embed(texts, task, dim, "input")
    except HTTPError as e:
      raise openai_api.OpenAIError(e.code, e.message, param="input") from None
    return openai_api.response(embeddings, self.model_name, tokens, fmt)

  def models(self):
    """GET /v1/models: the one served model, as OpenAI lists models."""
    return {"object": "list", "data": [{"id": self.model_name, "object": "model",
                                        "created": self.created, "owned_by": "gemb"}]}

  def embed(self, items, task, dim, field):
    """JSON items -> (float32 [n, dim] embeddings, dim, text tokens the model reads);
    HTTPError 400 / 413 naming ``field``[i] for bad items or exceeded limits."""
    if len(items) > self.max_inputs:
      raise HTTPError(413, f"{len(items)} inputs exceed the limit of {self.max_inputs} per "
                           "request")
    budget = PixelBudget(self.max_image_pixels, self.max_request_pixels)
    try:
      dim = self.embedder.check_dim(dim)
      prepared = [self.embedder.prepare(from_json(item, f"{field}[{i}]"), task,
                                        f"{field}[{i}]", budget)
                  for i, item in enumerate(items)]
    except LimitError as e:
      raise HTTPError(413, str(e)) from None
    except InputError as e:
      raise HTTPError(400, str(e)) from None
    embeddings = matryoshka(self.batcher.embed(prepared), dim)
    with self._lock:
      self.requests += 1
      self.items += len(items)
    tokens = sum(int(np.count_nonzero(side["text"] != PAD_ID)) for _, side in prepared
                 if "text" in side)
    return embeddings, dim, tokens

  def close(self):
    self.batcher.close()


class _DeadlineReader(io.RawIOBase):
  """Socket reads that fail with TimeoutError once ``deadline`` (monotonic) has passed,
  however slowly the bytes trickle in: a per-read socket timeout alone lets a client that
  sends a byte now and then hold a worker forever."""

  def __init__(self, sock):
    self.sock, self.deadline = sock, float("inf")

  def readable(self):
    return True

  def readinto(self, buffer):
    left = self.deadline - time.monotonic()
    if left <= 0:
      raise TimeoutError("deadline passed")
    self.sock.settimeout(left)
    return self.sock.recv_into(buffer)


class Handler(http.server.BaseHTTPRequestHandler):
  protocol_version = "HTTP/1.1"  # keep-alive: clients reuse connections
  service: EmbeddingService = None  # set by make_server on a subclass
  # POST path -> EmbeddingService method
  routes = {"/v1/embed": "embed_request", "/v1/embeddings": "openai_request"}

  def setup(self):
    super().setup()
    self.reader = _DeadlineReader(self.connection)
    self.rfile = io.BufferedReader(self.reader)

  def handle_one_request(self):
    # An idle kept-alive connection holds a worker: it has idle_timeout_s to start a request
    # (the base class closes the connection when reading the request line times out).
    self.reader.deadline = time.monotonic() + self.server.idle_timeout_s
    super().handle_one_request()

  def parse_request(self):
    # The request line has arrived: the headers and the body get request_timeout_s in all.
    self.reader.deadline = time.monotonic() + self.server.request_timeout_s
    try:
      return super().parse_request()
    except TimeoutError:
      self._error(408, f"the request headers did not arrive within "
                       f"{self.server.request_timeout_s:g} s", close=True)
      return False

  def send_error(self, code, message=None, explain=None):
    """The base class's own errors (bad request line, 501, ...) as JSON too."""
    self._error(code, message or self.responses.get(code, ("error",))[0], close=True)

  def do_GET(self):
    routes = {"/health": lambda: {"status": "ok"}, "/v1/info": self.service.info,
              "/v1/stats": self.service.stats, "/v1/models": self.service.models}
    if self.path not in routes:
      return self._error(404, f"no such path {self.path[:200]}; GET {', '.join(routes)}, "
                              f"POST {', '.join(self.routes)}")
    self._send(200, routes[self.path]())

  def do_POST(self):
    if self.path not in self.routes:
      return self._error(404 if self.path not in ("/health", "/v1/info", "/v1/stats",
                                                  "/v1/models") else 405,
                         f"POST {self.path[:200]}: embed with POST {' or '.join(self.routes)}")
    length = self.headers.get("Content-Length")
    if length is None or not length.isdigit():
      return self._error(411, "a Content-Length header is required", close=True)
    if int(length) > self.service.max_body_bytes:
      # The body is not read: answer at once and drop the connection.
      return self._error(413, f"body of {int(length)} bytes exceeds the limit of "
                              f"{self.service.max_body_bytes} bytes", close=True)
    try:
      body = self.rfile.read(int(length))
    except TimeoutError:
      return self._error(408, f"the body of {int(length)} bytes (its Content-Length) did not "
                              f"arrive within {self.server.request_timeout_s:g} s", close=True)
    if len(body) < int(length):
      return self._error(400, f"the body ended after {len(body)} of its {int(length)} bytes "
                              "(Content-Length)", close=True)
    try:
      self._send(200, getattr(self.service, self.routes[self.path])(body))
    except HTTPError as e:
      self._error(e.code, e.message)
    except openai_api.OpenAIError as e:
      self._send(e.status, openai_api.error_body(e.status, e.message, e.param, e.code))
    except Exception:  # noqa: BLE001 - a server error must not kill the server
      # The details are the server's (they can hold paths and objects): logged, not sent.
      logging.exception("embedding failed")
      self._error(500, "internal error while embedding (logged on the server)")

  def do_PUT(self):
    self._error(405, f"{self.command} {self.path[:200]}: embed with POST "
                     f"{' or '.join(self.routes)}")

  do_DELETE = do_PATCH = do_PUT

  def _error(self, code, message, close=False):
    self._send(code, self.error_payload(code, message), close=close)

  def error_payload(self, code, message):
    if getattr(self, "path", None) == "/v1/embeddings":  # OpenAI clients parse their own shape
      return openai_api.error_body(code, message)
    return {"error": {"code": code, "message": message}}

  def _send(self, code, payload, close=False):
    data = json.dumps(payload).encode()
    # Writing gets its own time: the reads may have used up the request's deadline.
    self.connection.settimeout(self.server.request_timeout_s)
    self.send_response(code)
    self.send_header("Content-Type", "application/json")
    self.send_header("Content-Length", str(len(data)))
    if close or self.server.pending.qsize():
      # Keep-alive would hold this worker while other connections wait for one.
      self.send_header("Connection", "close")
      self.close_connection = True
    else:  # tells clients that honour it when an idle connection is closed
      self.send_header("Keep-Alive", f"timeout={int(self.server.idle_timeout_s)}")
    self.end_headers()
    self.wfile.write(data)

  def log_message(self, format, *args):  # noqa: A002 - the base class's signature
    logging.debug("%s %s", self.address_string(), format % args)


class Server(http.server.HTTPServer):
  """An HTTPServer with a fixed pool of worker threads and a bounded connection queue:
  a connection that finds the queue full is answered 503 + Retry-After."""

  def __init__(self, address, handler, *, workers, max_queue, backlog, request_timeout_s,
               idle_timeout_s):
    if workers < 1 or max_queue < 1 or backlog < 1:
      raise ValueError(f"workers={workers}, max_queue={max_queue}, backlog={backlog}: each "
                       "must be at least 1")
    self.request_queue_size = backlog  # listen() backlog, read by server_activate
    self.request_timeout_s, self.idle_timeout_s = request_timeout_s, idle_timeout_s
    self.pending = queue.Queue(max_queue)
    self._refusals = queue.Queue(max_queue)
    self.connections = self.refused = 0
    super().__init__(address, handler)
    self._threads = [threading.Thread(target=self._work, name=f"gemb-worker-{i}", daemon=True)
                     for i in range(workers)]
    self._threads.append(threading.Thread(target=self._refuse_loop, name="gemb-refuser",
                                          daemon=True))
    for thread in self._threads:
      thread.start()

  def process_request(self, request, client_address):
    """Called by serve_forever's thread for each accepted connection: queue, or refuse."""
    self.connections += 1
    try:
      self.pending.put_nowait((request, client_address))
    except queue.Full:
      self.refused += 1
      try:
        self._refusals.put_nowait(request)
      except queue.Full:  # refusals back up too: drop it (the client sees a reset)
        self.shutdown_request(request)

  def _work(self):
    while (job := self.pending.get()) is not None:
      request, client_address = job
      try:
        self.finish_request(request, client_address)
      except Exception:  # noqa: BLE001 - one connection's failure must not end the worker
        self.handle_error(request, client_address)
      finally:
        self.shutdown_request(request)

  def _refuse_loop(self):
    while (request := self._refusals.get()) is not None:
      self._refuse(request)

  def _refuse(self, request):
    body = json.dumps({"error": {"code": 503, "message": (
        f"the server is at capacity ({self.pending.maxsize} connections wait for a worker); "
        "retry after 1 s")}}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n")
    try:
      # Read the request before answering and drain after: closing a socket with unread
      # bytes sends a reset, which can destroy the 503 before the client reads it.
      request.settimeout(1.0)
      request.recv(1 << 16)
      request.sendall(head.encode() + body)
      request.shutdown(socket.SHUT_WR)
      deadline = time.monotonic() + 1.0
      while time.monotonic() < deadline and request.recv(1 << 16):
        pass
    except OSError:
      pass
    finally:
      request.close()

  def server_close(self):
    super().server_close()
    for _ in self._threads[:-1]:
      self.pending.put(None)
    self._refusals.put(None)
    for thread in self._threads:
      thread.join()


def make_server(embedder, host="127.0.0.1", port=8080, *, max_body_bytes=8 << 20,
                max_inputs=256, max_batch=64, batch_wait_ms=5.0, max_image_pixels=None,
                max_request_pixels=None, workers=32, max_queue=256, backlog=1024,
                request_timeout_s=30.0, idle_timeout_s=5.0, model_name="gemb"):
  """A Server (not yet serving) and its EmbeddingService; port 0 = any free.
  max_image_pixels / max_request_pixels None: sized to the model (PixelBudget.for_shapes)."""
  service = EmbeddingService(embedder, max_body_bytes=max_body_bytes, max_inputs=max_inputs,
                             max_batch=max_batch, batch_wait_ms=batch_wait_ms,
                             max_image_pixels=max_image_pixels,
                             max_request_pixels=max_request_pixels, model_name=model_name)
  handler = type("BoundHandler", (Handler,), {"service": service})
  server = Server((host, port), handler, workers=workers, max_queue=max_queue,
                  backlog=backlog, request_timeout_s=request_timeout_s,
                  idle_timeout_s=idle_timeout_s)
  service.server = server
  return server, service


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  embedder = Embedder.load(f.model, max_batch=f.max_batch)
  server, service = make_server(
      embedder, f.host, f.port, max_body_bytes=f.max_body_bytes, max_inputs=f.max_inputs,
      max_batch=f.max_batch, batch_wait_ms=f.batch_wait_ms,
      max_image_pixels=f.max_image_pixels or None,
      max_request_pixels=f.max_request_pixels or None, workers=f.workers,
      max_queue=f.max_queue, backlog=f.backlog, request_timeout_s=f.request_timeout_s,
      idle_timeout_s=f.idle_timeout_s, model_name=f.model_name)
  host, port = server.server_address[:2]
  logging.info("serving %s on http://%s:%d (POST %s); limits: %s", f.model, host, port,
               ", ".join(Handler.routes), service.info()["limits"])
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
  flags.DEFINE_string("model_name", "gemb", "The model name of POST /v1/embeddings requests "
                      "(their \"model\" field) and of GET /v1/models.")
  flags.DEFINE_integer("max_body_bytes", 8 << 20, "Largest request body accepted (413 above).")
  flags.DEFINE_integer("max_inputs", 256, "Most inputs per request (413 above).")
  flags.DEFINE_integer("max_image_pixels", 0, "Most pixels of one image or video frame, read "
                       "from its header before decoding (413 above); 0: (64 x the model's "
                       "image size)^2, at most 64,000,000.")
  flags.DEFINE_integer("max_request_pixels", 0, "Most decoded image / video-frame pixels per "
                       "request (413 above); 0: 16 x max_image_pixels.")
  flags.DEFINE_integer("max_batch", 64, "Most items per model call.")
  flags.DEFINE_float("batch_wait_ms", 5.0, "How long the model thread waits for more requests "
                     "to batch with the first one.")
  flags.DEFINE_integer("workers", 32, "Threads serving connections (each decodes its "
                       "requests' inputs).")
  flags.DEFINE_integer("max_queue", 256, "Accepted connections waiting for a worker; beyond, "
                       "503 + Retry-After.")
  flags.DEFINE_integer("backlog", 1024, "Listen backlog: connects not yet accepted (capped by "
                       "net.core.somaxconn).")
  flags.DEFINE_float("request_timeout_s", 30.0, "Time for a request's headers and body to "
                     "arrive (408 after).")
  flags.DEFINE_float("idle_timeout_s", 5.0, "How long a kept-alive connection may wait "
                     "before its next request.")
  flags.mark_flags_as_required(["model"])
  app.run(main)
