"""Tiny recipe: a 2-layer model on emoji image <-> name in two stages, ~2 minutes on a 2-core CPU.

Stage "align" learns image -> name with large batches; stage "finetune" continues its
learning-rate decay on both directions with smaller, task-instructed batches. Used by the
tests and as the quickest end-to-end check:

  python -m gemb.main --config=configs/tiny.py --workdir=/tmp/gemb_tiny
"""

import ml_collections
from ml_collections import config_dict

from configs.common import distributed_config, model_config, stage


def get_config(arg=None):
  del arg
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1 = all remaining devices
  c.distributed = distributed_config()

  vocab = config_dict.FieldReference(1024)
  c.model = model_config(width=128, depth=2, heads=4, mlp_dim=512, embed_dim=128,
                         vocab_size=vocab, text_len=16, image_size=32, patch=8,
                         modalities=("text", "image"))
  c.data = dict(
      tasks=("emoji_image_to_name",), weights=(1.0,),
      mixing="task",            # task: one task per batch | example: tasks mixed in a batch
      batch_size=128,           # global, over all processes
      num_negatives=0,          # hard negatives per query (tasks that provide them)
      # Prefix queries with their task's instruction. Off here: one task needs no task
      # cue, and 16 identical tokens in every query slow a 300-step run's learning.
      instructions=False,
      on_bad_record="error",    # error | skip (skipped records are counted in train/skipped)
      data_dir="",              # "" = ~/.cache/gemb/tfds; built-in datasets are built there
      builtin_config="full",    # full | small (a subset of every built-in dataset, for CI)
      num_workers=0,            # grain worker processes (0 = in-process)
      read_threads=0,           # grain read threads per process (for I/O-bound sources)
      vocab_size=vocab, tokenizer_texts=20000,
      max_text_chars=100_000, max_audio_seconds=60.0, max_video_frames=2000,  # bad-input bounds
      custom_tasks={},          # name -> TaskSpec fields, for tfds:/manifest: datasets
  )

  c.loss = dict(kind="infonce", symmetric=True, mask_false_negatives=True,
                margin=config_dict.placeholder(float),
                matryoshka_dims=(32, 64, 128), matryoshka_weights=(1.0, 1.0, 1.0),
                learn_temperature=True, max_logit_scale=100.0,
                # Memory levers for big contrastive batches (0 = off); both give the same loss
                # and gradients. cache_chunk: GradCache, embed cache_chunk examples at a time
                # (a multiple of the data*fsdp devices dividing the batch; costs a second
                # forward pass). score_block: score candidates in blocks of this many columns
                # (per-device loss memory O(b_local x block) instead of O(b_local x B*(1+K))).
                cache_chunk=0, score_block=0)
  c.optimizer = dict(learning_rate=3e-3, warmup_steps=30, end_lr_fraction=0.0,
                     weight_decay=0.05, grad_clip_norm=1.0, b1=0.9, b2=0.98, eps=1e-8,
                     schedule="new")  # new: own warmup + cosine | continue: previous stage's
  c.eval = dict(every=0, batch_size=256, dims=(32, 128),  # every=0: only at stage ends
                tasks=("emoji_image_to_name", "emoji_name_to_image"))

  # The curriculum: each stage overrides the sections above for itself (data, loss,
  # optimizer, eval) and may freeze parameters by regex (gemb/run/curriculum.py).
  c.stages = [
      stage("align", 200),
      stage("finetune", 100,
            data=dict(tasks=("emoji_image_to_name", "emoji_name_to_image"), weights=(1.0, 1.0),
                      batch_size=64),
            optimizer=dict(schedule="continue")),
  ]
  c.train = dict(
      log_every=25, checkpoint_every=100,
      keep_checkpoints=2,        # the latest N checkpoints ...
      keep_best=1,               # ... plus the best K by eval metric (0: none)
      best_metric="R@1",         # averaged over the eval tasks; higher is better
      max_nonfinite_streak=20,   # this many non-finite steps in a row stop the run
      peak_flops=0.0,            # per-device peak FLOP/s for the MFU scalar (0: not logged)
  )
  c.init_from = ""               # a run's workdir (or checkpoint dir): start from its params
  c.init_params = ".*"           # regex: which parameters init_from copies
  # Model soup at the end, evaluated against the best single checkpoint:
  # "last": uniform average of the last `num` checkpoints | "stages": of each stage's
  # final checkpoint | "none".
  c.soup = dict(kind="last", num=2)
  return c
