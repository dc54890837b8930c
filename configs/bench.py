"""Benchmark recipe: the dims of the open_clip peer benchmark (../shared/peers/).

Image 64x64 patch 8, text length 32, vocab 8192, width 256, depth 4, heads 4, MLP 1024,
embed dim 256, batch 128 image-text pairs, fp32, CLIP (symmetric InfoNCE) loss.
`:small` is a width-128, depth-2 model on 32x32 images and 16 text tokens, for the GradCache
demonstration of the memory table (fast enough to train at a 16x batch). `:vitb` is a
ViT-B/16-sized shared model (width 768, depth 12, heads 12, MLP 3072; 224x224 images, 77 text
tokens) in bfloat16, batch 256, for one GPU (launch/gpu_bench.sh).

  python -m gemb.bench --config=configs/bench.py
  python -m gemb.bench --config=configs/bench.py --table --table_out=/tmp/perf.md
"""

from configs.common import base_config, model_config, stage


def get_config(arg=None):
  if arg == "small":
    model = model_config(width=128, depth=2, heads=4, mlp_dim=512, embed_dim=128,
                         vocab_size=1024, text_len=16, image_size=32, patch=8,
                         modalities=("text", "image"))
  elif arg == "vitb":
    model = model_config(width=768, depth=12, heads=12, mlp_dim=3072, embed_dim=512,
                         vocab_size=32768, text_len=77, image_size=224, patch=16,
                         modalities=("text", "image"))
    model.dtype = "bfloat16"
  elif arg:
    raise ValueError(f"configs/bench.py: unknown variant {arg!r} (use '', 'small' or 'vitb')")
  else:
    model = model_config(width=256, depth=4, heads=4, mlp_dim=1024, embed_dim=256,
                         vocab_size=8192, text_len=32, image_size=64, patch=8,
                         modalities=("text", "image"))
  # Emoji image -> name: the task the synthetic bench batches have the shapes of. The stages
  # only set the learning-rate schedule the timed steps run at.
  c = base_config(
      model, tasks=("emoji_image_to_name",),
      eval_tasks=("emoji_image_to_name", "emoji_name_to_image"),
      stages=[
          stage("align", 200),
          stage("finetune", 100,
                data=dict(tasks=("emoji_image_to_name", "emoji_name_to_image"),
                          weights=(1.0, 1.0), batch_size=64),
                optimizer=dict(schedule="continue")),
      ])
  c.data.batch_size = 256 if arg == "vitb" else 128
  c.loss.matryoshka_dims = (model.embed_dim,)
  c.loss.matryoshka_weights = (1.0,)
  c.bench = dict(
      mode="train",        # train: the train step | embed: forward-only eval encoder
      embed_batch=256,     # examples per embed step (open_clip_bench.py --eval-only: 256)
      warmup=3, steps=10,
      devices=0,           # > 0: simulate this many CPU devices (0: what the process has)
      compile_only=False,  # True: compile for the memory analysis, do not run
      # --table grid. levers: (loss.cache_chunk, loss.score_block) pairs, 0 = off; in the
      # device-count rows the chunk is per device. Batches above run_up_to are compiled only.
      table=dict(batches=(128, 1024, 8192), levers=((0, 0), (64, 0), (64, 512)),
                 run_up_to=128, steps=2, devices=(2, 8), devices_batch=1024,
                 cap_mib=100, demo_start=16, demo_block=256, demo_rounds=2, demo_steps=5),
  )
  return c
