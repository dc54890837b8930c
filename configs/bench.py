"""Benchmark recipe: the dims of the open_clip peer benchmark (../shared/peers/).

Image 64x64 patch 8, text length 32, vocab 8192, width 256, depth 4, heads 4, MLP 1024,
embed dim 256, batch 128 image-text pairs, fp32, CLIP (symmetric InfoNCE) loss.

  python -m gemb.bench --config=configs/bench.py
"""

from configs import tiny
from configs.common import model_config


def get_config(arg=None):
  c = tiny.get_config(arg)
  c.model = model_config(width=256, depth=4, heads=4, mlp_dim=1024, embed_dim=256,
                         vocab_size=8192, text_len=32, image_size=64, patch=8,
                         modalities=("text", "image"))
  c.data.vocab_size = 8192
  c.data.batch_size = 128
  c.loss.matryoshka_dims = (256,)
  c.loss.matryoshka_weights = (1.0,)
  c.bench = dict(warmup=3, steps=10)
  return c
