"""EmbeddingGemma-300M recipe: the default recipe's curriculum (align -> finetune with task
instructions and hard negatives -> soup) on the pretrained EmbeddingGemma-300M (Gemma 3,
24 layers, width 768, bidirectional attention, mean pooling and its Dense 768 -> 3072 ->
768 head) as the one shared transformer of every modality.

  python -m gemb.main --config=configs/embeddinggemma.py --workdir=$DIR          # accelerator
  python -m gemb.main --config=configs/embeddinggemma.py:cpu --workdir=$DIR      # 2-core CPU

The checkpoint: $GEMB_GEMMA_DIR, else the directory `python -m gemb.pretrained fetch
embeddinggemma-300m` writes (1.2 GB; Gemma terms of use). Its tokenizer (262k pieces) and
prompts come with it: gemb's task instructions are written in EmbeddingGemma's own query
prompt format ("task: search result | query: ", "task: code retrieval | query: ", ...), so
the model meets them as it was trained. Matryoshka output sizes 768 / 512 / 256 / 128, as
EmbeddingGemma was trained with. Images (EfficientNet-Lite0 features) and audio (Whisper
tiny) are frozen pretrained encoders whose features are projected to width 768, as in
configs/default.py.

Variants:
  ""     sized for an accelerator (GPU / TPU, bf16): a full fine-tune of every task at
         batch 256, 128 text tokens, every eval record.
  "cpu"  a short LoRA fine-tune (rank 8 on every attention and MLP projection of the 24
         layers; the base frozen, the adapters too in align) that fits in 30 minutes on a
         2-core CPU (28.4 measured, README): the WordNet, code and Wikipedia text tasks
         with the image and speech tasks learned from zero, 32 text tokens, a fixed sample
         of 200 records per eval task, no soup (one eval of the EmbeddingGemma start, one
         at the end).
"""

from ml_collections import config_dict

from configs.common import (NEW_INPUT_PARAMS, PRETRAINED_ENCODERS, base_config, model_config,
                            pretrained_dir, stage)
from gemb.data import sources

ALIGN_TASKS = ("clipart_image_to_title", "clipart_keywords_to_image",
               "composed_image_text_to_image", "emoji_image_to_name", "speech_audio_to_text",
               "speech_real_audio_to_text", "video_video_to_text", "video_narrated_to_text",
               "wiki_speech_to_extract")
# The CPU variant's tasks: the text tasks EmbeddingGemma already knows (held out: their test
# splits), and a few multimodal ones it learns from zero.
CPU_TEXT_TASKS = ("code_code_to_docstring", "code_docstring_to_code",
                  "wiki_description_to_extract", "wiki_title_to_extract", "wiki_en_to_fr",
                  "wiki_fr_to_en", "wiki_en_to_es", "wiki_es_to_en", "wiki_topic",
                  "wordnet_word_to_definition", "wordnet_definition_to_example")
CPU_MULTIMODAL_TASKS = ("emoji_image_to_name", "emoji_name_to_image", "clipart_image_to_title",
                        "speech_audio_to_text")
CPU_EVAL_TASKS = CPU_TEXT_TASKS + CPU_MULTIMODAL_TASKS + ("wiki_topic_zero_shot",)


def _multimodal(task):
  spec = sources.BUILTIN_TASKS[task]
  segments = tuple(spec.query) + tuple(getattr(spec, "candidate", ()) or ())
  return any(s.modality != "text" for s in segments)


def _weights(tasks, multimodal):
  """Task weights: ``multimodal`` for the tasks with images, audio or video, 1 for text."""
  return tuple(multimodal if _multimodal(t) else 1.0 for t in tasks)


def get_config(arg=None):
  if arg not in (None, "", "cpu"):
    raise ValueError(f"configs/embeddinggemma.py: unknown variant {arg!r} (use '' or 'cpu')")
  cpu = arg == "cpu"
  # width ... vocab_size come from the checkpoint's config.json (these are its values).
  model = model_config(width=768, depth=24, heads=3, mlp_dim=1152, embed_dim=768,
                       vocab_size=config_dict.FieldReference(262144),
                       text_len=32 if cpu else 128, image_size=64, patch=8)
  model.backbone.update(dict(family="auto", checkpoint=pretrained_dir("embeddinggemma-300m"),
                             pooling="", head="st"))
  model.audio.encoder = "whisper"
  model.audio.num_samples = 20000 if cpu else 48000
  model.audio.whisper_pool = 2 if cpu else 3
  model.video.frames = 4
  model.video.size = 32
  model.image.encoder = "efficientnet_lite0"
  dims = (128, 256, 512, 768)

  if cpu:
    train_tasks = CPU_TEXT_TASKS + CPU_MULTIMODAL_TASKS
    align_tasks = ("emoji_image_to_name", "clipart_image_to_title", "speech_audio_to_text")
    eval_tasks = CPU_EVAL_TASKS
  else:
    train_tasks, align_tasks = sources.TRAIN_TASKS, ALIGN_TASKS
    eval_tasks = tuple(sorted(sources.BUILTIN_TASKS))
  # The tasks with images, audio or video (EmbeddingGemma has never seen them) weigh 2x in
  # align and the accelerator's finetune; in the CPU variant's finetune (70 steps, where they
  # stay near chance) 1x: their from-zero losses (~10 vs ~2) pull the adapters off the text
  # space.
  finetune_multimodal_weight = 1.0 if cpu else 2.0
  # The CPU variant's align holds EmbeddingGemma (its LoRA adapters) still: only the new
  # projections learn, so its text space reaches the finetune as it was trained.
  align_freeze = PRETRAINED_ENCODERS + ("|^encoder/" if cpu else "")

  c = base_config(
      model, tasks=train_tasks, eval_tasks=eval_tasks,
      stages=[
          # The new inputs learn to speak to EmbeddingGemma (their projections at 1e-3 / 2e-3,
          # NEW_INPUT_PARAMS), which moves slowly (2e-5; with LoRA its adapters at 2e-4).
          stage("align", 30 if cpu else 2000, freeze=align_freeze,
                data=dict(tasks=align_tasks, weights=_weights(align_tasks, 2.0),
                          num_negatives=0, instructions=False),
                optimizer=dict(warmup_steps=10 if cpu else 100),
                eval=dict(tasks=())),
          stage("finetune", 70 if cpu else 3000, freeze=PRETRAINED_ENCODERS,
                data=dict(num_negatives=1 if cpu else 3, instructions=True),
                optimizer=dict(warmup_steps=10 if cpu else 200)),
      ])
  c.optimizer.learning_rate = 2e-4 if cpu else 2e-5
  c.optimizer.fast_params = NEW_INPUT_PARAMS
  c.optimizer.fast_lr_multiplier = 10.0 if cpu else 50.0
  c.data.weights = _weights(train_tasks, finetune_multimodal_weight)
  c.loss.matryoshka_dims = dims
  c.loss.matryoshka_weights = (1.0,) * len(dims)
  c.eval.dims = dims
  c.train.checkpoint_every = 50 if cpu else 500  # (cpu: at the stage ends, 30 and 100)
  c.train.keep_checkpoints = 3
  if cpu:
    c.model.modalities = ("text", "image", "audio")  # its tasks have no video
    # LoRA: 2.2M adapter params instead of 300M trained ones; the new projections train too.
    c.model.lora.update(dict(rank=8, alpha=16.0,
                             trainable=r"^(?!encoder/|dense/|audio/whisper/|image/efficientnet/)"))
    c.data.batch_size = 16
    c.data.num_workers = 1
    c.eval.batch_size = 32
    c.eval.max_records = 200
    c.train.log_every = 10
    c.soup.kind = "none"
  else:
    c.model.dtype = "bfloat16"
    c.model.scan_layers = True
    c.model.remat_policy = "nothing_saveable"
    c.mesh = dict(data=-1, fsdp=1, tensor=1)
    c.data.batch_size = 256
    c.data.num_workers = 4
    c.soup = dict(kind="last", num=3)
  return c
