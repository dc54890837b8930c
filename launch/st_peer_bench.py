#!/usr/bin/env python3
"""The sentence-transformers peer of ``gemb.bench`` for pretrained backbones: one JSON line.

  python launch/st_peer_bench.py --model_dir=DIR --mode=embed --batch=64 --tokens=128
  python launch/st_peer_bench.py --model_dir=DIR --mode=train --batch=32 --tokens=64

embed: ``SentenceTransformer.encode`` of ``--batch`` texts that its tokenizer turns into
exactly ``--tokens`` tokens each (special tokens included), on CPU in float32, or with
``--dtype=bfloat16`` under torch.autocast (float32 weights, bfloat16 matmuls: the peer of
gemb's ``model.dtype=bfloat16``).
train: one MultipleNegativesRankingLoss step (anchors and positives of ``--tokens`` tokens
each, in-batch negatives, AdamW) of a ``--batch``-pair batch, forward + backward + update.
--warmup untimed calls, then --steps timed ones; medians in seconds.

Needs torch + sentence-transformers (the `reference` extra of setup.py); gemb is not
imported. ``launch/backbone_bench.py`` alternates this with gemb.bench in one run.
"""

import argparse
import contextlib
import json
import statistics
import time

import torch


def texts_of_length(tokenizer, n, tokens, seed=0):
  """``n`` distinct texts of exactly ``tokens`` tokens with the model's framing."""
  import random
  rng = random.Random(seed)
  words = [w for w in tokenizer.get_vocab() if w.isalpha() and w.islower() and len(w) > 3]
  words.sort()
  out = []
  while len(out) < n:
    text = " ".join(rng.choice(words) for _ in range(tokens))
    ids = tokenizer(text, add_special_tokens=True, truncation=True, max_length=tokens)["input_ids"]
    out.append(tokenizer.decode(ids, skip_special_tokens=True))
  for t in out:  # decode / re-encode can merge pieces: check every text's length
    got = len(tokenizer(t, add_special_tokens=True)["input_ids"])
    if got != tokens:
      raise SystemExit(f"a synthetic text has {got} tokens, wanted {tokens}")
  return out


def timed(fn, warmup, steps):
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--model_dir", required=True)
  p.add_argument("--mode", choices=("embed", "train"), default="embed")
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--tokens", type=int, default=128)
  p.add_argument("--warmup", type=int, default=2)
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
  a = p.parse_args()
  if a.threads:
    torch.set_num_threads(a.threads)
  import sentence_transformers
  from sentence_transformers import SentenceTransformer, losses

  model = SentenceTransformer(a.model_dir, device="cpu")
  model.max_seq_length = max(model.max_seq_length, a.tokens)
  texts = texts_of_length(model.tokenizer, 2 * a.batch, a.tokens)
  if a.mode == "embed":
    model.eval()
    fn = lambda: model.encode(texts[:a.batch], batch_size=a.batch,  # noqa: E731
                              convert_to_numpy=True)
  else:
    model.train()
    loss = losses.MultipleNegativesRankingLoss(model)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5)
    anchors = model.tokenize(texts[:a.batch])
    positives = model.tokenize(texts[a.batch:])

    def fn():
      opt.zero_grad()
      value = loss([dict(anchors), dict(positives)], None)
      value.backward()
      opt.step()
  precision = (torch.autocast("cpu", dtype=torch.bfloat16) if a.dtype == "bfloat16"
               else contextlib.nullcontext())
  with precision:
    times = timed(fn, a.warmup, a.steps)
  median = statistics.median(times)
  print(json.dumps({
      "framework": "sentence-transformers", "mode": a.mode, "batch": a.batch,
      "tokens": a.tokens, "dtype": a.dtype, "torch": torch.__version__,
      "sentence_transformers": sentence_transformers.__version__,
      "threads": torch.get_num_threads(), "steps": a.steps, "step_s_median": median,
      "step_s_min": min(times), "step_s_max": max(times),
      "examples_per_s": a.batch / median}), flush=True)


if __name__ == "__main__":
  main()
