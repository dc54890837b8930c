#!/usr/bin/env python3
"""gemb vs sentence-transformers on a pretrained backbone, alternated in one run.

  python launch/backbone_bench.py --rounds=3 [--gemma] [--mode=embed|train|both]
                                  [--dtype=float32|bfloat16]

Each round runs, one after the other, ``python -m gemb.bench`` on configs/backbone_bench.py
and launch/st_peer_bench.py (sentence-transformers, torch) at the same shapes, each in a
fresh process: embed = 64 texts of 128 tokens per call (encode), train = a batch of 32
pairs of 64 tokens per side (gemb: symmetric InfoNCE train step; sentence-transformers: a
MultipleNegativesRankingLoss step), both in --dtype (bfloat16: float32 weights with bfloat16
matmuls, gemb's model.dtype and torch.autocast). Prints every JSON line and a Markdown table
of the medians with the gemb / sentence-transformers ratio. torch runs with the process's default
threads, jax with its own; quote `lscpu | grep "Model name"` with the figures.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPES = {"embed": dict(batch=64, tokens=128), "train": dict(batch=32, tokens=64)}


def last_json(cmd, env):
  proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
  if proc.returncode:
    raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--rounds", type=int, default=3)
  p.add_argument("--mode", choices=("embed", "train", "both"), default="both")
  p.add_argument("--gemma", action="store_true", help="EmbeddingGemma-300M instead of MiniLM")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  a = p.parse_args()
  sys.path.insert(0, ROOT)
  from configs import backbone_bench
  config_arg = "configs/backbone_bench.py" + (":gemma" if a.gemma else "")
  model_dir = backbone_bench.get_config("gemma" if a.gemma else None).model.backbone.checkpoint
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  modes = ("embed", "train") if a.mode == "both" else (a.mode,)
  results = {(m, f): [] for m in modes for f in ("gemb", "sentence-transformers")}
  for r in range(a.rounds):
    for mode in modes:
      s = SHAPES[mode]
      gemb = [sys.executable, "-m", "gemb.bench", f"--config={config_arg}",
              f"--config.bench.mode={mode}", f"--config.bench.steps={a.steps}",
              f"--config.model.text.max_len={s['tokens']}", f"--config.model.dtype={a.dtype}"]
      gemb += ([f"--config.bench.embed_batch={s['batch']}"] if mode == "embed"
               else [f"--config.data.batch_size={s['batch']}"])
      peer = [sys.executable, os.path.join(ROOT, "launch", "st_peer_bench.py"),
              f"--model_dir={model_dir}", f"--mode={mode}", f"--batch={s['batch']}",
              f"--tokens={s['tokens']}", f"--steps={a.steps}", f"--dtype={a.dtype}"]
      for name, cmd in (("gemb", gemb), ("sentence-transformers", peer)):
        out = last_json(cmd, env)
        print(json.dumps(dict(out, round=r)), flush=True)
        results[(mode, name)].append(out["examples_per_s"])
  print(f"\n{a.dtype}:")
  print("| mode | shapes | gemb examples/s | sentence-transformers examples/s | ratio |")
  print("|---|---|---:|---:|---:|")
  for mode in modes:
    g = statistics.median(results[(mode, "gemb")])
    t = statistics.median(results[(mode, "sentence-transformers")])
    s = SHAPES[mode]
    print(f"| {mode} | batch {s['batch']}, {s['tokens']} tokens | {g:.1f} | {t:.1f} | "
          f"{g / t:.2f}x |")


if __name__ == "__main__":
  main()
