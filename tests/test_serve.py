"""python -m gemb.serve with a real HTTP client on loopback: good and bad requests,
micro-batching of concurrent requests, a bounded load test, and the CLI itself."""

import base64
import concurrent.futures
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import export_fixtures as fx
from export_fixtures import bundle_dir, embedder, run_dir  # noqa: F401 (pytest fixtures)
from gemb.serve import make_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BODY = 200_000




def start(embedder, **kwargs):
  server, service = make_server(embedder, "127.0.0.1", 0, **kwargs)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  return server, service


def stop(server, service):
  server.shutdown()
  server.server_close()
  service.close()


@pytest.fixture
def server(embedder):
  server, service = start(embedder, max_body_bytes=MAX_BODY, max_inputs=16)
  yield server.server_address[1], service
  stop(server, service)


def request(port, method, path, body=None, headers=None):
  """-> (status, JSON payload) over a fresh connection."""
  conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
  try:
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    conn.request(method, path, body=data, headers=headers or {})
    response = conn.getresponse()
    return response.status, json.loads(response.read())
  finally:
    conn.close()


def b64(data):
  return base64.b64encode(data).decode()


def test_good_requests(server, embedder):
  port, _ = server
  assert request(port, "GET", "/health") == (200, {"status": "ok"})
  status, info = request(port, "GET", "/v1/info")
  assert status == 200 and info["embed_dim"] == 32 and info["matryoshka_dims"] == [8, 16, 32]
  assert info["tasks"]["k_mixed"] == fx.INSTRUCTION and info["limits"]["max_inputs"] == 16
  rec = fx.records(1)[0]
  json_items = ["red heart", {"image": b64(rec["i"])}, {"audio": b64(rec["a"])},
                {"video": [b64(f) for f in rec["v"]]},
                [{"image": b64(rec["i"])}, {"text": "with a hat"}, {"audio": b64(rec["a"])}]]
  python_items = ["red heart", {"image": rec["i"]}, {"audio": rec["a"]}, {"video": rec["v"]},
                  [{"image": rec["i"]}, {"text": "with a hat"}, {"audio": rec["a"]}]]
  for task, dim in ((None, None), ("k_mixed", 8)):
    status, out = request(port, "POST", "/v1/embed",
                          {"inputs": json_items, "task": task, "dim": dim})
    assert status == 200, out
    assert out["count"] == 5 and out["dim"] == (dim or 32) and out["task"] == task
    np.testing.assert_allclose(out["embeddings"],
                               embedder.embed(python_items, task=task, dim=dim), atol=1e-6)


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(server):
  port, service = server
  image, audio = b64(fx.records(1)[0]["i"]), b64(fx.records(1)[0]["a"])
  cases = [
      ({"inputs": ["x" * (MAX_BODY + 10)]}, 413, rf"body of \d+ bytes exceeds the limit of "
                                                 rf"{MAX_BODY} bytes"),
      ({"inputs": ["a"] * 17}, 413, "17 inputs exceed the limit of 16 per request"),
      (b"{not json", 400, "not valid JSON"),
      ([1, 2], 400, "must be a JSON object"),
      ({"inputs": "red heart"}, 400, "\"inputs\" must be a non-empty array"),
      ({"inputs": ["a"], "dims": 8}, 400, r"unknown field\(s\) \['dims'\]"),
      ({"inputs": [{"text": 5}]}, 400, r"inputs\[0\]\.text: expected a string, got int"),
      ({"inputs": [5]}, 400, r"inputs\[0\]: expected a string, .* got number"),
      ({"inputs": ["a"], "dim": "16"}, 400, r"dim='16' is impossible"),
      ({"inputs": ["a"], "task": 3}, 400, "\"task\" must be a string or null"),
      ({"inputs": [{"image": "%%%"}]}, 400, r"inputs\[0\]\.image: not valid base64"),
      ({"inputs": [{"image": b64(b"GIF89a garbage")}]}, 400,
       r"inputs\[0\]\.image: cannot decode image"),
      ({"inputs": ["ok", {"audio": b64(b"RIFF\x00\x00garbage")}]}, 400,
       r"inputs\[1\]\.audio: cannot decode audio"),
      ({"inputs": [{"image": {"path": "/etc/passwd"}}]}, 400, "file paths are not accepted"),
      ({"inputs": [[{"image": image}] * 3]}, 400, "do not fit the bundle's entry points"),
      ({"inputs": [{"audio": audio, "sample_rate": -1}]}, 400, "sample_rate"),
      ({"inputs": ["a"], "task": "nope"}, 400, r"unknown task 'nope'; known: \['k_audio'"),
      ({"inputs": ["a"], "dim": 0}, 400, r"dim=0 is impossible: an integer in \[1, 32\]"),
      ({"inputs": ["a"], "dim": 33}, 400, r"dim=33 is impossible"),
  ]
  for body, code, message in cases:
    status, out = request(port, "POST", "/v1/embed", body)
    assert status == code and out["error"]["code"] == code, (body if len(str(body)) < 200
                                                             else message, status, out)
    assert re.search(message, out["error"]["message"]), out["error"]["message"]
    assert request(port, "GET", "/health")[0] == 200
  assert request(port, "GET", "/nope")[0] == 404
  assert request(port, "PUT", "/v1/embed", b"{}")[0] == 405
  with socket.create_connection(("127.0.0.1", port), timeout=60) as raw:  # no Content-Length
    raw.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\n\r\n")
    assert raw.recv(4096).startswith(b"HTTP/1.1 411 ")
  # Still serving real work, and none of the bad requests was counted as served.
  status, out = request(port, "POST", "/v1/embed", {"inputs": ["red heart"], "dim": 8})
  assert status == 200 and len(out["embeddings"][0]) == 8
  assert service.stats()["requests"] == 1


def test_concurrent_requests_are_grouped_into_one_model_call(embedder):
  server, service = start(embedder, batch_wait_ms=2000)
  port = server.server_address[1]
  texts = [f"{w} {i}" for i, w in enumerate(fx.WORDS)]
  try:
    before = service.stats()
    barrier = threading.Barrier(len(texts))

    def one(i):
      barrier.wait()
      return request(port, "POST", "/v1/embed", {"inputs": [texts[i]], "dim": 8 + i})

    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
      results = list(pool.map(one, range(len(texts))))
    after = service.stats()
  finally:
    stop(server, service)
  assert after["model_calls"] - before["model_calls"] == 1
  assert after["batches"] - before["batches"] == 1 and after["requests"] == len(texts)
  for i, (status, out) in enumerate(results):
    assert status == 200
    np.testing.assert_allclose(out["embeddings"], embedder.embed([texts[i]], dim=8 + i),
                               atol=1e-6)


def test_bounded_load(embedder):
  """200 requests from 8 threads; prints requests/s and latency percentiles."""
  server, service = start(embedder)
  port = server.server_address[1]
  for n in (1, 2, 4, 8):  # compile the batch sizes micro-batching produces, before timing
    embedder.embed([f"warm {i}" for i in range(n)])
  texts = [f"{fx.WORDS[i % len(fx.WORDS)]} {i}" for i in range(200)]

  def one(i):
    t0 = time.perf_counter()
    status, out = request(port, "POST", "/v1/embed", {"inputs": [texts[i]], "dim": 16})
    return status, len(out["embeddings"][0]), time.perf_counter() - t0

  try:
    before = service.stats()
    start_time = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
      results = list(pool.map(one, range(len(texts))))
    elapsed = time.perf_counter() - start_time
    after = service.stats()
  finally:
    stop(server, service)
  assert all(status == 200 and dim == 16 for status, dim, _ in results)
  latency = np.array([t for _, _, t in results]) * 1000
  calls = after["model_calls"] - before["model_calls"]
  print(f"\nload: {len(texts)} requests, 8 threads: {len(texts) / elapsed:.1f} requests/s, "
        f"p50 {np.percentile(latency, 50):.1f} ms, p99 {np.percentile(latency, 99):.1f} ms, "
        f"{calls} model calls ({len(texts) / calls:.1f} requests per call)")


def test_cli_serves_on_loopback(bundle_dir):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen([sys.executable, "-m", "gemb.serve", f"--model={bundle_dir}",
                           "--port=0"], cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
  try:
    deadline, port = time.time() + 240, None
    while time.time() < deadline and port is None:
      line = proc.stderr.readline()
      if not line and proc.poll() is not None:
        break
      found = re.search(r"on http://127\.0\.0\.1:(\d+)", line)
      port = int(found.group(1)) if found else None
    assert port, "the server did not report its address"
    status, out = request(port, "POST", "/v1/embed", {"inputs": ["red heart"], "dim": 8})
    assert status == 200 and len(out["embeddings"]) == 1
  finally:
    proc.terminate()
    proc.wait(timeout=30)
