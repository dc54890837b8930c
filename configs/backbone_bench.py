"""Benchmark recipe for pretrained backbones: a text-only model on all-MiniLM-L6-v2 (or
EmbeddingGemma-300M with `:gemma`), for gemb.bench against launch/st_peer_bench.py
(sentence-transformers) at the same shapes; launch/backbone_bench.py alternates the two.

  python -m gemb.bench --config=configs/backbone_bench.py                      # train step
  python -m gemb.bench --config=configs/backbone_bench.py --config.bench.mode=embed

Train: batch 32 text -> text pairs, 64 tokens per side, symmetric InfoNCE over in-batch
negatives (what MultipleNegativesRankingLoss computes, plus the reverse direction), AdamW.
Embed: 64 texts of `model.text.max_len` tokens per step through the evaluation's encoder.
"""

from configs import backbone_smoke
from configs.common import pretrained_dir


def get_config(arg=None):
  c = backbone_smoke.get_config()
  if arg == "gemma":
    c.model.backbone.checkpoint = pretrained_dir("embeddinggemma-300m")
    c.model.embed_dim = 768
  elif arg:
    raise ValueError(f"configs/backbone_bench.py: unknown variant {arg!r} (use '' or 'gemma')")
  c.model.modalities = ("text",)
  c.model.text.max_len = 64
  c.data.batch_size = 32
  c.data.instructions = False
  c.loss.matryoshka_dims, c.loss.matryoshka_weights = (c.model.embed_dim,), (1.0,)
  c.mesh = dict(data=1, fsdp=1, tensor=1)
  c.bench = dict(mode="train", embed_batch=64, warmup=2, steps=5, devices=1,
                 compile_only=False)
  return c
