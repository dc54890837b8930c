"""all-MiniLM-L6-v2 through a serving bundle: gemb.export's writer -> Embedder.embed in a
fresh process without flax, and gemb.serve over HTTP, equal sentence-transformers' encode
(the fixture of tests/make_backbone_references.py); the checkpoint's prompts are tasks."""

import http.client
import json
import os
import subprocess
import sys
import threading

import jax
import numpy as np
import pytest
from flax import nnx

from backbone_fixtures import minilm_dir, minilm_reference
from configs import backbone_smoke
from gemb.data.tokenizer import backbone_tokenizer
from gemb.model import backbone
from gemb.trees import param_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPTS = {"query": "task: search result | query: ", "document": "title: none | text: "}


def with_prompts(path, out):
  """The MiniLM directory (files linked) plus a config_sentence_transformers.json with the
  prompts EmbeddingGemma uses: the reference fixture holds texts that start with them."""
  os.makedirs(out)
  for name in os.listdir(path):
    if name != "config_sentence_transformers.json":
      os.symlink(os.path.join(path, name), os.path.join(out, name))
  with open(os.path.join(out, "config_sentence_transformers.json"), "w") as f:
    json.dump({"prompts": PROMPTS, "default_prompt_name": None}, f)
  return out


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
  from gemb.export.writer import write_bundle
  from gemb.model.embedder_model import MultimodalEmbedder

  tmp = tmp_path_factory.mktemp("minilm_bundle")
  config = backbone_smoke.get_config()
  config.model.backbone.checkpoint = with_prompts(minilm_dir(), str(tmp / "minilm"))
  config.model.modalities = ("text",)
  config.data.tasks, config.data.weights = ("wordnet_word_to_definition",), (1.0,)
  for s in config.stages:  # a bundle's task table holds every stage's tasks too
    s.data.tasks, s.data.weights = config.data.tasks, config.data.weights
  config.eval.tasks = ("wordnet_word_to_definition",)
  config.model.text.max_len = 256  # MiniLM's max_seq_length: no text is cut shorter than ST's
  params = nnx.to_pure_dict(nnx.state(MultimodalEmbedder(config.model, rngs=nnx.Rngs(0))))
  pretrained = backbone.pretrained_params(config.model)
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: pretrained.get(param_path(p), np.asarray(x)), params)
  tok = backbone_tokenizer(backbone.read_checkpoint(config.model.backbone.checkpoint))
  tok.save(str(tmp / "tokenizer.json"))
  out = str(tmp / "bundle")
  # Two text slots of 256 tokens fill BERT's 512 positions (the default interleaved 4 would not).
  write_bundle(out, config, params, str(tmp / "tokenizer.json"), source={"test": True},
               interleaved_slots={"text": 2}, saved_model="no")
  return out


def reference_rows():
  """The fixture's non-empty texts (serving refuses an empty text) and their embeddings."""
  ref = minilm_reference()
  rows = [i for i, t in enumerate(ref["texts"]) if t.strip()]
  assert len(rows) >= 64
  return [ref["texts"][i] for i in rows], ref["embedding"][rows], ref


def assert_parity(got, want):
  got = np.asarray(got, np.float32)
  cos = np.sum(got * want, -1) / np.linalg.norm(got, axis=-1) / np.linalg.norm(want, axis=-1)
  assert cos.min() >= 0.9999, cos.min()
  assert np.abs(got - want).max() <= 1e-4, np.abs(got - want).max()


_FRESH = """
import json, sys
from gemb.serving import Embedder
model = Embedder.load(sys.argv[1])
texts = json.loads(sys.argv[2])
plain = model.embed(texts)
prompted = model.embed(["capital of France"], task="query")
banned = sorted(m for m in sys.modules if m.split(".")[0] in ("flax", "orbax", "grain",
                                                              "tensorflow_datasets")
                or m.startswith(("gemb.model", "gemb.train")))
print(json.dumps({"banned": banned, "plain": plain.tolist(), "prompted": prompted.tolist(),
                  "tasks": model.tasks}))
"""


def test_bundle_in_a_fresh_process_equals_sentence_transformers(bundle):
  texts, want, ref = reference_rows()
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  proc = subprocess.run([sys.executable, "-c", _FRESH, bundle, json.dumps(texts)],
                        capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["banned"] == []
  assert os.path.exists(os.path.join(bundle, "tokenizer.json"))
  assert_parity(result["plain"], want)
  # The checkpoint's prompt "query" is a task; joined to the text as ST applies prompts.
  assert result["tasks"]["query"]["instruction"] == PROMPTS["query"]
  i = ref["texts"].index(PROMPTS["query"] + "capital of France")
  assert_parity(result["prompted"], ref["embedding"][i:i + 1])


def test_gemb_serve_equals_sentence_transformers(bundle):
  from gemb.serve import make_server
  from gemb.serving import Embedder

  texts, want, ref = reference_rows()
  server, service = make_server(Embedder.load(bundle), "127.0.0.1", 0, max_inputs=128)
  thread = threading.Thread(target=server.serve_forever, daemon=True)
  thread.start()
  try:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=600)
    conn.request("POST", "/v1/embed", body=json.dumps({"inputs": texts, "task": None,
                                                        "dim": None}).encode())
    response = conn.getresponse()
    payload = json.loads(response.read())
    assert response.status == 200, payload
    assert_parity(payload["embeddings"], want)
    document = "Paris is the capital and most populous city of France."
    conn.request("POST", "/v1/embed", body=json.dumps({"inputs": [document],
                                                        "task": "document"}).encode())
    response = conn.getresponse()
    payload = json.loads(response.read())
    assert response.status == 200, payload
    i = ref["texts"].index(PROMPTS["document"] + document)
    assert_parity(payload["embeddings"], ref["embedding"][i:i + 1])
    conn.close()
  finally:
    server.shutdown()
    server.server_close()
    service.close()
