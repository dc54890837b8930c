"""The sentence-transformers side of a gemb-vs-ST embedding bench: times encode() of fixed texts.

    pip install -e .[reference]        # torch==2.13.0 (CPU), sentence-transformers, transformers
    python launch/st_peer_bench.py --model=~/.cache/gemb/pretrained/all-minilm-l6-v2 \
        --batch=32 --length=128 --steps=10 [--threads=2]

Every text is exactly ``--length`` tokens long for the model's own tokenizer (its special
tokens included): the texts are long word sequences (``make_texts``, seeded) and the model's
max_seq_length is set to ``--length``, so the tokenizer truncates each one to that length and
no batch carries padding. The gemb side embeds the same texts at the same length
(``make_texts`` is importable); alternate the two commands in one run so both see the same
machine. Prints one JSON line: texts/s from the median of ``--steps`` timed encode() calls of
``--batch`` texts after one untimed warm-up call, and over the whole timed loop.
"""

import argparse
import json
import os
import statistics
import time

# Common English words: every tokenizer splits them into few tokens, so 4 words per requested
# token are always enough to fill the length before truncation.
WORDS = ("the of and to in is was for on that with as by at from his her it an were are which "
         "this be or has had not first one their its new after who they have two her she been "
         "other when there all during into school time may years more most only over city some "
         "world would where later up such used many can state about national out known "
         "university united then made").split()


def make_texts(n, length, seed=0):
  """``n`` distinct texts of ``4 * length`` words (seeded), longer than ``length`` tokens."""
  import random
  rng = random.Random(seed)
  return [" ".join(rng.choice(WORDS) for _ in range(4 * length)) for _ in range(n)]


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", required=True, help="sentence-transformers model directory")
  parser.add_argument("--batch", type=int, default=32)
  parser.add_argument("--length", type=int, default=128, help="tokens per text (truncated)")
  parser.add_argument("--steps", type=int, default=10, help="timed encode() calls")
  parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
  args = parser.parse_args(argv)

  import sentence_transformers
  import torch
  if args.threads:
    torch.set_num_threads(args.threads)
  model = sentence_transformers.SentenceTransformer(os.path.expanduser(args.model), device="cpu")
  model.eval()
  model.max_seq_length = args.length
  texts = make_texts(args.batch * (args.steps + 1), args.length)
  lengths = model.preprocess(texts[:args.batch])["attention_mask"].sum(1)
  if int(lengths.min()) != args.length:
    raise SystemExit(f"texts tokenize to {int(lengths.min())}..{int(lengths.max())} tokens, "
                     f"not {args.length}: --length exceeds the model's limit?")

  def encode(i):
    return model.encode(texts[i * args.batch:(i + 1) * args.batch], batch_size=args.batch,
                        convert_to_numpy=True)

  encode(0)  # warm-up: first-call allocations, not steady state
  times, start = [], time.perf_counter()
  for i in range(1, args.steps + 1):
    t = time.perf_counter()
    encode(i)
    times.append(time.perf_counter() - t)
  total = time.perf_counter() - start
  median = statistics.median(times)
  print(json.dumps({
      "framework": "sentence-transformers", "mode": "embed", "model": args.model,
      "batch": args.batch, "length": args.length, "steps": args.steps,
      "median_s_per_batch": round(median, 4), "texts_per_s": round(args.batch / median, 2),
      "loop_texts_per_s": round(args.batch * args.steps / total, 2),
      "torch": torch.__version__, "sentence_transformers": sentence_transformers.__version__,
      "threads": torch.get_num_threads()}))


if __name__ == "__main__":
  main()
