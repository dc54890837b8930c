"""python -m gemb.serve with a real HTTP client on loopback: good and bad requests,
micro-batching of concurrent requests, a 64-client load test, hostile clients (playlists
reading server files, deep JSON, short bodies, pixel bombs, a full queue) and the CLI itself."""

import base64
import concurrent.futures
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import av
import numpy as np
import pytest
from PIL import Image

import export_fixtures as fx
from export_fixtures import bundle_dir, embedder, run_dir  # noqa: F401 (pytest fixtures)
from gemb.serve import make_server

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BODY = 300_000


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


def raw_exchange(port, data, timeout=20):
  """Sends raw bytes, returns everything the server answers until it closes."""
  with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
    raw.sendall(data)
    answer = b""
    while chunk := raw.recv(65536):
      answer += chunk
    return answer


def mp4(frames):
  out = io.BytesIO()
  with av.open(out, "w", format="mp4") as container:
    stream = container.add_stream("libx264", rate=10)
    stream.height, stream.width = frames[0].shape[:2]
    stream.pix_fmt = "yuv420p"
    for a in frames:
      container.mux(stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")))
    container.mux(stream.encode())
  return out.getvalue()


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
      ({"inputs": ["a"], "task": "nope"}, 400, r"unknown task 'nope'; known: \[.*'k_audio'"),
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


def test_64_concurrent_clients_without_connection_errors(embedder):
  """64 clients x 20 requests of 1-4 mixed text / image items, each on a fresh connection,
  all connecting at once (the default listen backlog of 5 once reset a third of them):
  every request answered 200 with the in-process Embedder's embeddings. Prints the rate."""
  clients, per_client = 64, 20
  recs = fx.records(4)
  python_items = [fx.WORDS[0], {"image": recs[0]["i"]}, fx.WORDS[5], {"image": recs[1]["i"]},
                  {"image": recs[2]["i"]}, fx.WORDS[2], {"image": recs[3]["i"]}]
  json_items = [{"image": b64(x["image"])} if isinstance(x, dict) else x for x in python_items]
  expected = embedder.embed(python_items, dim=16)
  for n in (1, 2, 4, 8, 16, 32, 64):  # compile the batch sizes micro-batching produces
    embedder.embed([f"warm {i}" for i in range(n)])
    embedder.embed([{"image": recs[0]["i"]}] * n)
  server, service = start(embedder)
  port = server.server_address[1]
  calls_before = service.stats()["model_calls"]
  barrier = threading.Barrier(clients)

  def client(c):
    barrier.wait()
    results = []
    for r in range(per_client):
      picks = [(c + r + k) % len(json_items) for k in range(1 + (c + r) % 4)]
      t0 = time.perf_counter()
      try:
        status, out = request(port, "POST", "/v1/embed",
                              {"inputs": [json_items[k] for k in picks], "dim": 16})
      except OSError as e:  # resets, refused connects, timeouts
        results.append((f"{type(e).__name__}: {e}", None, None, 0.0))
        continue
      results.append((status, picks, out.get("embeddings"), time.perf_counter() - t0))
    return results

  try:
    start_time = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
      results = [r for rs in pool.map(client, range(clients)) for r in rs]
    elapsed = time.perf_counter() - start_time
    stats = service.stats()
  finally:
    stop(server, service)
  errors = [status for status, _, _, _ in results if status != 200]
  assert not errors, f"{len(errors)} of {len(results)} failed: {sorted(set(map(str, errors)))}"
  worst = max(np.abs(np.array(emb) - expected[picks]).max() for _, picks, emb, _ in results)
  assert worst < 1e-6
  assert stats["refused"] == 0 and stats["connections"] == clients * per_client
  latency = np.array([t for _, _, _, t in results]) * 1000
  items = sum(len(picks) for _, picks, _, _ in results)
  print(f"\nload: {clients} clients x {per_client} requests ({items} items): "
        f"{len(results) / elapsed:.1f} requests/s, p50 {np.percentile(latency, 50):.0f} "
        f"ms, p99 {np.percentile(latency, 99):.0f} ms, {stats['model_calls'] - calls_before} "
        "model calls, "
        f"max |diff| vs Embedder.embed {worst:.1e}")


def test_cli_serves_on_loopback(bundle_dir):
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.Popen([sys.executable, "-m", "gemb.serve", f"--model={bundle_dir}",
                           "--port=0", "--workers=4", "--max_queue=8", "--backlog=64",
                           "--max_image_pixels=5000", "--request_timeout_s=10",
                           "--model_name=mine"],
                          cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
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
    limits = request(port, "GET", "/v1/info")[1]["limits"]
    assert limits["max_image_pixels"] == 5000 and limits["max_request_pixels"] == 80_000
    status, out = request(port, "POST", "/v1/embeddings", {"input": "red heart",
                                                           "model": "mine"})
    assert status == 200 and len(out["data"][0]["embedding"]) == 32
  finally:
    proc.terminate()
    proc.wait(timeout=30)


# ---- Hostile clients (issue 24): each test below failed on the server before its fix.

PLAYLISTS = {
    "concat": "ffconcat version 1.0\nfile {path}\n",
    "hls": "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:10,\n{path}\n#EXT-X-ENDLIST\n",
    "image2_pattern": "ffconcat version 1.0\nfile secret/frame%03d.png\n",
}


@pytest.mark.parametrize("kind", sorted(PLAYLISTS))
def test_video_playlists_cannot_read_server_files(server, tmp_path, monkeypatch, kind):
  """A concat playlist once made the server embed secret/clip.mp4 of its working directory,
  and its error told whether a named file existed."""
  port, _ = server
  monkeypatch.chdir(tmp_path)
  (tmp_path / "secret").mkdir()
  frames = [np.full((16, 16, 3), 40 * k, np.uint8) for k in range(4)]
  (tmp_path / "secret" / "clip.mp4").write_bytes(mp4(frames))
  for k in range(4):
    Image.fromarray(frames[k]).save(tmp_path / "secret" / f"frame{k:03d}.png")
  answers = []
  for name in ("clip.mp4", "no_such_file.mp4"):
    payload = PLAYLISTS[kind].format(path=f"secret/{name}").encode()
    answers.append(request(port, "POST", "/v1/embed", {"inputs": [{"video": b64(payload)}]}))
  assert answers[0][0] == 400, answers[0]
  assert answers[0] == answers[1]  # the same answer whether the file exists or not
  assert "inputs[0].video: cannot decode video" in answers[0][1]["error"]["message"]


def test_errors_and_info_reveal_nothing_of_the_server(server, run_dir, monkeypatch):
  port, service = server
  for item in ({"image": b64(b"GIF89a garbage")}, {"audio": b64(b"RIFF\x00\x00garbage")},
               {"video": b64(b"\x00\x00\x00\x18ftypmp42 garbage")}):
    status, out = request(port, "POST", "/v1/embed", {"inputs": [item]})
    assert status == 400 and "object at 0x" not in out["error"]["message"], out
  status, info = request(port, "GET", "/v1/info")
  assert status == 200 and run_dir[0] not in json.dumps(info)
  assert info["checkpoint"] == {"steps": [3], "soup": False}

  def broken(prepared):
    raise RuntimeError(f"failure in {run_dir[0]}/secret at {object()}")

  monkeypatch.setattr(service.embedder, "embed_prepared", broken)
  status, out = request(port, "POST", "/v1/embed", {"inputs": ["a"]})
  assert status == 500 and out["error"]["message"] == (
      "internal error while embedding (logged on the server)")


def test_deeply_nested_json_is_a_400(server):
  port, _ = server
  for depth in (17, 100_000):
    body = b"[" * depth + b"]" * depth
    assert request(port, "POST", "/v1/embed", body) == (400, {"error": {
        "code": 400, "message": f"the body's JSON is nested {depth} deep; requests are at most "
                                "16 deep"}})
  # Python refuses to parse integers of over 4300 digits (a ValueError, once a 500).
  status, out = request(port, "POST", "/v1/embed", b'{"inputs": ["a"], "dim": ' + b"1" * 5000
                        + b"}")
  assert status == 400 and out["error"]["message"].startswith("the body is not valid JSON: "
                                                              "Exceeds the limit (4300 digits)")
  # Brackets inside strings are text, not nesting.
  status, out = request(port, "POST", "/v1/embed", {"inputs": ["[[[[" * 10 + "{" * 20]})
  assert status == 200, out


def test_slow_or_short_bodies_get_408_within_the_request_timeout(embedder):
  server, service = start(embedder, request_timeout_s=1.0, idle_timeout_s=1.0)
  port = server.server_address[1]
  try:
    t0 = time.monotonic()
    # A Content-Length larger than the body once held the handler forever.
    answer = raw_exchange(port, b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: 100"
                                b"\r\n\r\n{\"inputs\"")
    assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert b"the body of 100 bytes (its Content-Length) did not arrive within 1 s" in answer
    # A client dripping header bytes: each read is quick, the whole is not.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as raw:
      raw.sendall(b"POST /v1/embed HTTP/1.1\r\n")
      answer = b""
      for _ in range(40):
        try:
          raw.sendall(b"X-Slow: y\r\n")
        except OSError:  # the server has answered and closed
          break
        time.sleep(0.1)
      while chunk := raw.recv(65536):
        answer += chunk
    assert answer.startswith(b"HTTP/1.1 408 ") and b"headers did not arrive" in answer, answer
    # An idle connection is closed without an answer.
    assert raw_exchange(port, b"") == b""
    assert time.monotonic() - t0 < 15
    # Still serving.
    status, out = request(port, "POST", "/v1/embed", {"inputs": ["red heart"]})
    assert status == 200
  finally:
    stop(server, service)


def png_bytes(width, height, mode="RGBA"):
  out = io.BytesIO()
  Image.new(mode, (width, height)).save(out, "PNG")
  return out.getvalue()


def test_pixel_bombs_are_refused_from_their_header(embedder, monkeypatch):
  """A few KB of PNG that decodes to 4096 x 4096 RGBA (64 MB): refused before any pixel is
  decoded (decoding is made to fail here, so a 413 proves it never started)."""
  bomb = png_bytes(4096, 4096)
  assert len(bomb) < 100_000
  server, service = start(embedder, max_body_bytes=MAX_BODY)
  port = server.server_address[1]
  try:
    limits = request(port, "GET", "/v1/info")[1]["limits"]
    # Sized to the model: 64 x its 16-pixel side, squared; a request holds 16 such images.
    assert limits["max_image_pixels"] == 1024 ** 2
    assert limits["max_request_pixels"] == 16 * 1024 ** 2
    from PIL import ImageFile

    def no_decoding(self):
      raise AssertionError("pixels decoded")

    with monkeypatch.context() as patch:
      patch.setattr(ImageFile.ImageFile, "load", no_decoding)
      for item in ({"image": b64(bomb)}, {"video": [b64(bomb)]}, ["a", {"image": b64(bomb)}]):
        status, out = request(port, "POST", "/v1/embed", {"inputs": ["ok", item]})
        assert status == 413, out
        assert re.search(r"inputs\[1\](\[1\])?\.(image|video): an image of 16777216 pixels "
                         r"exceeds the limit of 1048576 pixels per image \(--max_image_pixels\)",
                         out["error"]["message"]), out
    big_mp4 = mp4([np.zeros((1088, 1024, 3), np.uint8)] * 2)
    status, out = request(port, "POST", "/v1/embed", {"inputs": [{"video": b64(big_mp4)}]})
    assert status == 413 and "1114112 pixels exceeds the limit of 1048576" in \
        out["error"]["message"], out
  finally:
    stop(server, service)
  # The request's total: three 512 x 512 images fit 1,000,000 pixels, a fourth does not.
  server, service = start(embedder, max_image_pixels=300_000, max_request_pixels=1_000_000)
  port = server.server_address[1]
  try:
    image = {"image": b64(png_bytes(512, 512, "RGB"))}
    assert request(port, "POST", "/v1/embed", {"inputs": [image] * 3})[0] == 200
    status, out = request(port, "POST", "/v1/embed", {"inputs": ["a"] + [image] * 4})
    assert status == 413 and out["error"]["message"] == (
        "inputs[4].image: the request's images exceed the limit of 1000000 decoded pixels per "
        "request (--max_request_pixels)")
    status, out = request(port, "POST", "/v1/embed", {"inputs": [{"image": b64(
        png_bytes(600, 600, "RGB"))}]})
    assert status == 413 and "360000 pixels exceeds the limit of 300000" in \
        out["error"]["message"]
  finally:
    stop(server, service)


def test_a_full_queue_gets_503_with_retry_after(embedder):
  """One worker, one queue place: a stalled request holds the worker, a second connection
  waits in the queue, a third is refused with 503 (and read, so the client gets the answer
  instead of a reset); once the stall times out the queued one is served."""
  server, service = start(embedder, workers=1, max_queue=1, request_timeout_s=3.0)
  port = server.server_address[1]
  good = json.dumps({"inputs": ["red heart"]}).encode()
  post = (b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
          b"Content-Length: %d\r\n\r\n" % len(good)) + good
  try:
    stall = socket.create_connection(("127.0.0.1", port), timeout=20)
    stall.sendall(b"POST /v1/embed HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
    time.sleep(0.5)  # the worker has taken it
    queued = socket.create_connection(("127.0.0.1", port), timeout=20)
    queued.sendall(post)
    time.sleep(0.5)
    refused = raw_exchange(port, post)
    head, _, body = refused.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1\r\n" in head, refused
    assert json.loads(body)["error"]["code"] == 503
    assert service.stats()["refused"] == 1
    stall_answer = stall.recv(65536)
    assert stall_answer.startswith(b"HTTP/1.1 408 "), stall_answer
    answer = queued.recv(65536)
    assert answer.startswith(b"HTTP/1.1 200 "), answer
    stall.close()
    queued.close()
  finally:
    stop(server, service)


def test_random_malformed_requests_get_json_4xx_never_500(server):
  """Seeded random request structures (wrong types, nesting, media, paths) on both POST
  endpoints: every answer is 200 or a 4xx with a message (a 500 fails the test)."""
  port, _ = server
  rec = fx.records(1)[0]
  atoms = [None, True, 0, -1, 1.5, 1e308, 2 ** 70, "", "x", b64(rec["i"]), b64(rec["a"]), "%%",
           [], {}, [b64(rec["i"])], {"path": "/etc/passwd"}, {"bytes_b64": 3},
           {"bytes_b64": b64(rec["i"])}, [[b64(rec["i"])]], [None], {"text": None}]
  rng = np.random.default_rng(7)

  def value(depth=0):
    r = rng.random()
    if depth > 3 or r < 0.4:
      return atoms[rng.integers(len(atoms))]
    if r < 0.7:
      return [value(depth + 1) for _ in range(rng.integers(4))]
    keys = ["text", "image", "audio", "video", "sample_rate", "x"]
    return {keys[rng.integers(len(keys))]: value(depth + 1) for _ in range(rng.integers(3))}

  def pick(*options):
    return options[rng.integers(len(options))]

  answers = []
  for k in range(400):
    if k % 2:
      body = {"inputs": [value() for _ in range(rng.integers(4))],
              "task": pick(None, "k_text", 3, "zz"), "dim": pick(None, 8, 0, 1.5, "8", True)}
      path = "/v1/embed"
    else:
      body = {"input": value(), "model": pick("gemb", None, 3),
              "dimensions": pick(None, 16, 0, 1.5, True),
              "encoding_format": pick("float", "base64", None, 1)}
      path = "/v1/embeddings"
    status, out = request(port, "POST", path, body)
    answers.append(status)
    assert status == 200 or (400 <= status < 500 and out["error"]["message"]), (body, out)
  print(f"\nrandom requests: {sorted((s, answers.count(s)) for s in set(answers))}")
