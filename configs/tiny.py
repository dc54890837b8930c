"""Tiny recipe: a 2-layer model on emoji image <-> name in two stages, ~2 minutes on a 2-core CPU.

Stage "align" learns image -> name with large batches; stage "finetune" continues its
learning-rate decay on both directions with smaller, task-instructed batches. Used by the
tests and as the quickest end-to-end check:

  python -m gemb.main --config=configs/tiny.py --workdir=/tmp/gemb_tiny
"""

from ml_collections import config_dict

from configs.common import base_config, model_config, stage


def get_config(arg=None):
  del arg
  model = model_config(width=128, depth=2, heads=4, mlp_dim=512, embed_dim=128,
                       vocab_size=config_dict.FieldReference(1024), text_len=16,
                       image_size=32, patch=8, modalities=("text", "image"))
  # Instructions stay off (the base's default): one task needs no task cue, and 16
  # identical tokens in every query slow a 300-step run's learning.
  return base_config(
      model, tasks=("emoji_image_to_name",),
      eval_tasks=("emoji_image_to_name", "emoji_name_to_image"),
      stages=[
          stage("align", 200),
          stage("finetune", 100,
                data=dict(tasks=("emoji_image_to_name", "emoji_name_to_image"),
                          weights=(1.0, 1.0), batch_size=64),
                optimizer=dict(schedule="continue")),
      ])
