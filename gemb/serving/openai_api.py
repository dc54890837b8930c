"""The OpenAI embeddings API shape (POST /v1/embeddings) over gemb's request fields.

What LangChain, LlamaIndex and the `openai` client send and expect:

  request   {"input": "text" | ["text", ...], "model": "<served name>",
             "dimensions": 256 (optional: a Matryoshka prefix), "encoding_format": "float" |
             "base64" (optional), "user": "..." (optional, ignored),
             "task": "<gemb task>" (optional, a gemb extension: that task's instruction)}
  response  {"object": "list", "model": name, "data": [{"object": "embedding", "index": i,
             "embedding": [float, ...] | "<base64 of little-endian float32>"}, ...],
             "usage": {"prompt_tokens": n, "total_tokens": n}}
  error     {"error": {"message": "...", "type": "invalid_request_error" | "server_error",
             "param": "input" | ... | null, "code": null | "model_not_found"}}

Token arrays (OpenAI's tiktoken ids) are refused: they mean nothing to this model's
tokenizer. prompt_tokens counts the token ids the model reads (after truncation to the
model's text length, with the task instruction's).
"""

import base64

import numpy as np

FIELDS = ("input", "model", "dimensions", "encoding_format", "user", "task")


class OpenAIError(Exception):
  """An error to answer in OpenAI's shape; ``param`` names the request field."""

  def __init__(self, status, message, param=None, code=None):
    super().__init__(message)
    self.status, self.message, self.param, self.code = status, message, param, code


def error_body(status, message, param=None, code=None):
  kind = "server_error" if status >= 500 else "invalid_request_error"
  return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def parse(request, model_name):
  """A decoded JSON body -> (texts, dimensions or None, task or None, encoding_format)."""
  if not isinstance(request, dict):
    raise OpenAIError(400, "the body must be a JSON object {\"input\": ..., \"model\": ...}")
  unknown = sorted(set(request) - set(FIELDS))
  if unknown:
    raise OpenAIError(400, f"unrecognized request argument(s) {unknown}; accepted: "
                           f"{', '.join(FIELDS)}", param=unknown[0])
  model = request.get("model")
  if not isinstance(model, str):
    raise OpenAIError(400, f"\"model\" is required: the served model is {model_name!r}",
                      param="model")
  if model != model_name:
    raise OpenAIError(404, f"the model {model[:100]!r} does not exist; this server serves "
                           f"{model_name!r}", param="model", code="model_not_found")
  texts = request.get("input")
  if isinstance(texts, str):
    texts = [texts]
  if not isinstance(texts, list) or not texts:
    raise OpenAIError(400, "\"input\" must be a string or a non-empty array of strings",
                      param="input")
  for i, text in enumerate(texts):
    if isinstance(text, int) or (isinstance(text, list) and text
                                 and all(isinstance(t, int) for t in text)):
      raise OpenAIError(400, f"input[{i}]: token arrays are not accepted (this model's "
                             "tokenizer is not OpenAI's); send the text as a string (LangChain: "
                             "OpenAIEmbeddings(check_embedding_ctx_length=False))",
                        param="input")
    if not isinstance(text, str):
      raise OpenAIError(400, f"input[{i}]: expected a string", param="input")
  fmt = request.get("encoding_format") or "float"  # null: the default, as OpenAI's
  if fmt not in ("float", "base64"):
    raise OpenAIError(400, f"encoding_format={fmt!r}: 'float' or 'base64'",
                      param="encoding_format")
  task = request.get("task")
  if task is not None and not isinstance(task, str):
    raise OpenAIError(400, "\"task\" must be a string or null", param="task")
  return texts, request.get("dimensions"), task, fmt


def response(embeddings, model_name, prompt_tokens, encoding_format):
  """float32 [n, d] unit-norm embeddings -> the response object."""
  embeddings = np.asarray(embeddings, np.float32)
  if encoding_format == "base64":
    # The openai client decodes this with np.frombuffer(..., dtype="float32").
    values = [base64.b64encode(e.astype("<f4").tobytes()).decode() for e in embeddings]
  else:
    values = embeddings.tolist()
  return {"object": "list", "model": model_name,
          "data": [{"object": "embedding", "index": i, "embedding": v}
                   for i, v in enumerate(values)],
          "usage": {"prompt_tokens": int(prompt_tokens), "total_tokens": int(prompt_tokens)}}
