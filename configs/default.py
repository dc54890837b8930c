"""Default CPU recipe: one shared transformer for text, images, audio and video, trained on
a mixture of every built-in task (one task per batch, with task instructions).

  python -m gemb.main --config=configs/default.py --workdir=$PWD/runs/default

Tasks cover emoji and clip-art images <-> names/titles, composed [image + modifier] ->
image, espeak-ng speech <-> text, emoji/digit motion clips <-> captions (with narrated
clips as [video, audio] queries), WordNet words <-> definitions <-> examples with sibling
hard negatives, and stdlib docstrings <-> code. Every held-out test split is evaluated at
the end (eval/step_<N>.json), including the real ALSA / freedesktop recordings.
"""

from ml_collections import config_dict

from configs import tiny
from configs.common import model_config
from gemb.data import sources


def get_config(arg=None):
  c = tiny.get_config(arg)
  vocab = config_dict.FieldReference(4096)
  c.model = model_config(width=128, depth=2, heads=4, mlp_dim=512, embed_dim=256,
                         vocab_size=vocab, text_len=32, image_size=32, patch=8)
  c.model.audio.num_samples = 32000  # 2 s at 16 kHz: most spoken names and captions
  c.data.vocab_size = vocab
  # Every built-in task but the eval-only ones (zero-shot classification, real recordings).
  c.data.tasks = sources.TRAIN_TASKS
  c.data.weights = (1.0,) * len(sources.TRAIN_TASKS)
  c.data.batch_size = 64
  c.data.num_negatives = 2
  c.data.instructions = True
  c.loss.matryoshka_dims = (64, 128, 256)
  c.loss.matryoshka_weights = (1.0, 1.0, 1.0)
  c.optimizer.learning_rate = 2e-3
  c.optimizer.warmup_steps = 100
  c.train.steps = 800
  c.train.checkpoint_every = 200
  c.eval.every = 0
  c.eval.dims = (64, 128, 256)
  c.eval.tasks = tuple(sorted(sources.BUILTIN_TASKS))
  return c
