"""Default CPU recipe: a 3-layer shared transformer trained on the built-in data.

  python -m gemb.main --config=configs/default.py --workdir=$PWD/runs/default

Trains image <-> name retrieval on the built-in emoji set (held-out test emoji are never
seen in training) and writes eval/step_<N>.json with both retrieval directions at every
Matryoshka size in eval.dims. Same shape as configs/tiny.py, scaled up: wider and deeper,
more steps (about 10 minutes on a 2-core CPU).
"""

from configs import tiny
from configs.common import model_config


def get_config(arg=None):
  c = tiny.get_config(arg)
  c.model = model_config(width=192, depth=3, heads=6, mlp_dim=768, embed_dim=256,
                         vocab_size=c.data.get_ref("vocab_size"),
                         text_len=c.data.get_ref("text_max_len"),
                         image_size=c.data.get_ref("image_size"), patch=8,
                         modalities=("text", "image"))
  c.loss.matryoshka_dims = (64, 128, 256)
  c.loss.matryoshka_weights = (1.0, 1.0, 1.0)
  c.optimizer.learning_rate = 1e-3
  c.optimizer.warmup_steps = 60
  c.train.steps = 600
  c.train.checkpoint_every = 200
  c.eval.every = 200
  c.eval.dims = (64, 128, 256)
  return c
