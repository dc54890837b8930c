"""Default CPU recipe: one shared transformer for text, images, audio and video, trained on
every built-in task in a two-stage curriculum, then souped.

  python -m gemb.main --config=configs/default.py --workdir=$PWD/runs/default

Tasks cover emoji and clip-art images <-> names/titles, composed [image + modifier] ->
image, espeak-ng speech <-> text, emoji/digit motion clips <-> captions (with narrated
clips as [video, audio] queries), WordNet words <-> definitions <-> examples with sibling
hard negatives, and stdlib docstrings <-> code. Every held-out test split is evaluated at
the end of each stage (eval/step_<N>.json), including the real ALSA / freedesktop
recordings (an eval-only task: they share speech's train split).

The curriculum follows the Gemini Embedding recipe at CPU scale:
  align      pre-finetuning: large single-task batches of plain pairs (no instructions, no
             hard negatives) across every task, to build the shared space;
  finetune   multi-task fine-tuning: smaller single-task batches with task instructions and
             mined hard negatives, a fresh (lower) learning-rate schedule;
  soup       the uniform average of the last checkpoints, compared with the best one
             (eval/soup.json, eval/soup_vs_best.md).
"""

from ml_collections import config_dict

from configs import tiny
from configs.common import model_config, stage
from gemb.data import sources


def get_config(arg=None):
  c = tiny.get_config(arg)
  vocab = config_dict.FieldReference(4096)
  c.model = model_config(width=128, depth=2, heads=4, mlp_dim=512, embed_dim=256,
                         vocab_size=vocab, text_len=32, image_size=32, patch=8)
  c.model.audio.num_samples = 32000  # 2 s at 16 kHz: most spoken names and captions
  c.model.video.frames = 4           # 4 frames x 16 patches: motion, at half the tokens of 8
  c.data.vocab_size = vocab
  # Every built-in task but the eval-only ones (zero-shot classification, real recordings),
  # weighted by how slowly each learns: clip-art pairs align within a few dozen steps,
  # code and WordNet text pairs need the most.
  slow = {"code": 2.0, "wordnet": 2.0, "speech": 1.5, "video": 1.5, "emoji": 1.5,
          "clipart": 0.5}
  c.data.tasks = sources.TRAIN_TASKS
  c.data.weights = tuple(slow.get(t.split("_")[0], 1.0) for t in sources.TRAIN_TASKS)
  c.data.batch_size = 64
  c.loss.matryoshka_dims = (64, 128, 256)
  c.loss.matryoshka_weights = (1.0, 1.0, 1.0)
  c.optimizer.learning_rate = 3e-3
  c.optimizer.warmup_steps = 50
  c.eval.dims = (64, 128, 256)
  c.eval.tasks = tuple(sorted(sources.BUILTIN_TASKS))

  c.stages = [
      stage("align", 700, data=dict(num_negatives=0, instructions=False)),
      stage("finetune", 300, data=dict(num_negatives=2, instructions=True),
            optimizer=dict(learning_rate=1e-3, warmup_steps=20)),
  ]
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 3
  c.soup = dict(kind="last", num=3)
  return c
