"""POST /v1/embeddings with the real `openai` client against gemb.serve on loopback: the
numbers equal Embedder.embed, the response and error objects are the client's own types."""

import base64
import http.client
import json
import os
import threading

import numpy as np
import openai
import pytest

import export_fixtures as fx
from export_fixtures import bundle_dir, embedder, run_dir  # noqa: F401 (pytest fixtures)
from gemb.batch import PAD_ID
from gemb.data.tokenizer import Tokenizer
from gemb.serve import make_server

TEXTS = list(fx.WORDS)


@pytest.fixture(scope="module")
def server(embedder):
  server, service = make_server(embedder, "127.0.0.1", 0, max_inputs=16)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  yield server.server_address[1]
  server.shutdown()
  server.server_close()
  service.close()


@pytest.fixture(scope="module")
def client(server):
  return openai.OpenAI(base_url=f"http://127.0.0.1:{server}/v1", api_key="unused",
                       max_retries=0, timeout=120)


def token_count(bundle_dir, texts, task=None):
  """Token ids the model reads, counted with the bundle's tokenizer directly."""
  tokenizer = Tokenizer.load(os.path.join(bundle_dir, "tokenizer.model"))
  per_text = np.count_nonzero(tokenizer.encode(texts, 12) != PAD_ID, axis=1)  # text_len 12
  instruction = 0 if task is None else np.count_nonzero(tokenizer.encode([fx.INSTRUCTION], 12))
  return int(per_text.sum() + instruction * len(texts))


def test_embeddings_equal_the_in_process_embedder(client, embedder, bundle_dir):
  # The client asks for base64 unless told otherwise and decodes it itself.
  out = client.embeddings.create(model="gemb", input=TEXTS)
  assert out.object == "list" and out.model == "gemb" and len(out.data) == len(TEXTS)
  assert [d.index for d in out.data] == list(range(len(TEXTS)))
  assert all(d.object == "embedding" for d in out.data)
  expected = embedder.embed(TEXTS)
  print(f"openai client vs Embedder.embed: max abs diff "
        f"{np.abs(np.asarray([d.embedding for d in out.data]) - expected).max():.2e}")
  np.testing.assert_allclose([d.embedding for d in out.data], expected, atol=1e-6)
  assert out.usage.prompt_tokens == out.usage.total_tokens == token_count(bundle_dir, TEXTS)
  floats = client.embeddings.create(model="gemb", input=TEXTS, encoding_format="float")
  np.testing.assert_allclose([d.embedding for d in floats.data], expected, atol=1e-6)
  # base64 is the float32 bytes exactly: the two encodings agree bit for bit.
  raw = client.embeddings.create(model="gemb", input=TEXTS, encoding_format="base64")
  np.testing.assert_array_equal(
      [np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in raw.data],
      np.asarray([d.embedding for d in floats.data], np.float32))


def test_dimensions_single_string_and_task(client, embedder, bundle_dir):
  out = client.embeddings.create(model="gemb", input="red heart", dimensions=8)
  assert len(out.data) == 1 and len(out.data[0].embedding) == 8
  np.testing.assert_allclose(out.data[0].embedding, embedder.embed(["red heart"], dim=8)[0],
                             atol=1e-6)
  # gemb's task instruction (queries) travels as an extra body field.
  out = client.embeddings.create(model="gemb", input=TEXTS[:3], dimensions=16,
                                 extra_body={"task": "k_mixed"})
  np.testing.assert_allclose([d.embedding for d in out.data],
                             embedder.embed(TEXTS[:3], task="k_mixed", dim=16), atol=1e-6)
  assert out.usage.prompt_tokens == token_count(bundle_dir, TEXTS[:3], task="k_mixed")
  assert [m.id for m in client.models.list()] == ["gemb"]


@pytest.mark.parametrize("kwargs,error,param,message", [
    (dict(input=[]), openai.BadRequestError, "input",
     "\"input\" must be a string or a non-empty array of strings"),
    (dict(input=[[101, 2023, 102]]), openai.BadRequestError, "input",
     "input[0]: token arrays are not accepted"),
    (dict(input=[5, 6]), openai.BadRequestError, "input", "token arrays are not accepted"),
    (dict(input=["ok", "  "]), openai.BadRequestError, "input", "input[1].text: empty text"),
    (dict(input="a", dimensions=0), openai.BadRequestError, "dimensions",
     "dimensions=0 is impossible: an integer in [1, 32]"),
    (dict(input="a", dimensions=33), openai.BadRequestError, "dimensions",
     "dimensions=33 is impossible"),
    (dict(input="a", encoding_format="hex"), openai.BadRequestError, "encoding_format",
     "encoding_format='hex': 'float' or 'base64'"),
    (dict(input="a", extra_body={"task": "nope"}), openai.BadRequestError, "task",
     "unknown task 'nope'"),
    (dict(input="a", extra_body={"temperature": 1}), openai.BadRequestError, "temperature",
     "unrecognized request argument(s) ['temperature']"),
    (dict(input="a", model="text-embedding-3-small"), openai.NotFoundError, "model",
     "the model 'text-embedding-3-small' does not exist; this server serves 'gemb'"),
    (dict(input=["a"] * 17), openai.APIStatusError, "input",
     "17 inputs exceed the limit of 16 per request"),
])
def test_errors_reach_the_client_as_openai_errors(client, kwargs, error, param, message):
  kwargs = {"model": "gemb", **kwargs}
  with pytest.raises(error) as caught:
    client.embeddings.create(**kwargs)
  e = caught.value
  assert message in e.message and e.param == param, (e.message, e.body)
  assert e.type == "invalid_request_error" and e.body["message"] in e.message
  assert e.status_code == (404 if error is openai.NotFoundError else
                           413 if error is openai.APIStatusError else 400)
  if error is openai.NotFoundError:
    assert e.code == "model_not_found"


def test_transport_errors_are_openai_shaped_too(server):
  """Errors raised before the endpoint's own checks (here: a body that is no JSON) carry
  OpenAI's error shape on this path too."""
  conn = http.client.HTTPConnection("127.0.0.1", server, timeout=60)
  conn.request("POST", "/v1/embeddings", body=b"{not json",
               headers={"Content-Type": "application/json"})
  response = conn.getresponse()
  body = json.loads(response.read())
  assert response.status == 400 and body["error"]["type"] == "invalid_request_error"
  assert body["error"]["message"].startswith("the body is not valid JSON")
  assert body["error"]["param"] is None
  conn.close()
