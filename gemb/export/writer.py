"""Writes a serving bundle (layout: gemb/serving/bundle.py) from a run's config and params.

Each entry point is the model's forward pass ``f(param list, side) -> raw embeddings [b, D]``
exported with jax.export for one fixed set of segment slots and a symbolic batch size "b".
The params are an input, not constants, so the artifacts stay small and one artifact
serves whatever params the bundle declares (float32, or bfloat16 with ``dtype``).

Entry points (only for the model's modalities):
  text, image, audio, video   one segment of that modality, after a text slot for the
                              task instruction (the text entry point has two text slots)
  interleaved                 ``interleaved_slots`` segments per modality in any order
The manifest lists each entry point's slots and input shapes; gemb.serving packs each
example into the smallest entry point it fits.
"""

import dataclasses
import os
import platform
import shutil
import tempfile

import jax
import numpy as np
from flax import nnx

import gemb
from gemb.batch import MODALITIES, PAD_ID
from gemb.data.tokenizer import PRETRAINED_FILE, SENTENCEPIECE_FILE
from gemb.data.examples import InputShapes
from gemb.data.pipeline import get_tasks
from gemb.data.tasks import ClassificationSpec
from gemb.model import backbone
from gemb.model.embedder_model import MultimodalEmbedder
from gemb.run.curriculum import resolve_stages
from gemb.serving import bundle
from gemb.trees import param_path

DEFAULT_INTERLEAVED_SLOTS = {"text": 4, "image": 2, "audio": 2, "video": 1}
DTYPES = ("float32", "bfloat16")


def entry_point_slots(modalities, interleaved_slots=None):
  """{entry point: {modality: slots}} for a model of ``modalities``."""
  interleaved_slots = dict(DEFAULT_INTERLEAVED_SLOTS, **(interleaved_slots or {}))
  unknown = set(interleaved_slots) - set(MODALITIES)
  if unknown:
    raise ValueError(f"interleaved slots for unknown modalities {sorted(unknown)}; known: "
                     f"{MODALITIES}")
  instruction = {"text": 1} if "text" in modalities else {}
  entries = {}
  for m in bundle.SINGLE_ENTRY_POINTS:
    if m in modalities:
      entries[m] = dict(instruction, **{m: instruction.get(m, 0) + 1})
  entries[bundle.INTERLEAVED] = {m: int(interleaved_slots[m]) for m in MODALITIES
                                 if m in modalities and int(interleaved_slots[m]) > 0}
  return entries


def side_spec(slots, shapes, batch):
  """ShapeDtypeStructs of a side with these slots and leading dim ``batch``."""
  per_slot = shapes.slot_shapes()
  spec = {"layout": jax.ShapeDtypeStruct((batch, sum(slots.values())), np.int32)}
  for m, n in slots.items():
    spec[m] = jax.ShapeDtypeStruct((batch, n, *per_slot[m]),
                                   np.int32 if m == "text" else np.float32)
  if slots.get("audio"):
    spec["audio_length"] = jax.ShapeDtypeStruct((batch, slots["audio"]), np.int32)
  return spec


def flat_params(params):
  """A params pure dict -> (names, leaves, treedef): the order the artifacts take them."""
  with_paths, treedef = jax.tree_util.tree_flatten_with_path(params)
  names = [param_path(path) for path, _ in with_paths]
  return names, [leaf for _, leaf in with_paths], treedef


def raw_embed_fn(model_config, treedef):
  """f(param leaves, side) -> raw embeddings, the function every entry point exports."""
  graphdef, _ = nnx.split(nnx.eval_shape(lambda: MultimodalEmbedder(model_config,
                                                                    rngs=nnx.Rngs(0))))

  def raw_embed(param_leaves, side):
    return nnx.merge(graphdef, jax.tree.unflatten(treedef, param_leaves))(side)
  return raw_embed


def export_entry_points(model_config, leaves, treedef, slots_by_entry, shapes, platforms):
  """{entry point: jax.export.Exported} with a symbolic batch dim "b"."""
  fn = jax.jit(raw_embed_fn(model_config, treedef))
  batch, = jax.export.symbolic_shape("b")
  param_specs = [jax.ShapeDtypeStruct(x.shape, x.dtype) for x in leaves]
  return {name: jax.export.export(fn, platforms=platforms)(param_specs,
                                                           side_spec(slots, shapes, batch))
          for name, slots in slots_by_entry.items()}


def task_instructions(config):
  """The run's tasks (trained and evaluated, in any stage): instruction and segment
  modalities; with a pretrained backbone also the checkpoint's own prompts
  (config_sentence_transformers.json) as tasks of their name, marked "prompt" (applied
  whatever data.instructions says)."""
  sections = [config] + [s.config for s in (resolve_stages(config) if config.get("stages")
                                             else ())]
  names = dict.fromkeys(n for c in sections for n in tuple(c.data.tasks) + tuple(c.eval.tasks))
  tasks = {t.name: {"instruction": t.instruction, "description": t.description,
                    "query": [s.modality for s in t.query],
                    # A zero-shot classification task's candidates are its text class prompts.
                    "candidate": (["text"] if isinstance(t, ClassificationSpec)
                                  else [s.modality for s in t.candidate])}
           for t in get_tasks(config, names)}
  checkpoint = backbone.resolve(config.model)
  for name, prompt in (checkpoint.prompts if checkpoint else {}).items():
    if name in tasks:
      raise ValueError(f"the run's task {name!r} has the name of a prompt of "
                       f"{checkpoint.path}; rename the task")
    tasks[name] = {"instruction": prompt, "prompt": True, "query": ["text"],
                   "candidate": ["text"],
                   "description": f"prompt {name!r} of the pretrained {checkpoint.family} model"}
  return tasks


def _versions():
  import flax
  import jaxlib
  import sentencepiece
  import tokenizers
  return {"gemb": gemb.__version__, "jax": jax.__version__, "jaxlib": jaxlib.__version__,
          "flax": flax.__version__, "numpy": np.__version__,
          "sentencepiece": sentencepiece.__version__, "tokenizers": tokenizers.__version__,
          "python": platform.python_version()}


def write_bundle(out, config, params, tokenizer_path, *, source, dtype="float32",
                 interleaved_slots=None, platforms=("cpu",), saved_model="auto"):
  """Writes the bundle of ``params`` (a pure dict) to directory ``out`` (must not exist).

  source: JSON-able description of where the params come from (workdir, steps, soup).
  saved_model: "yes" (needs tensorflow), "no", or "auto" (when tensorflow imports).
  Files are written to a temporary sibling directory that is renamed at the end, so an
  interrupted export never leaves a half bundle at ``out``.
  """
  out = os.path.abspath(out)
  if os.path.exists(out):
    raise FileExistsError(f"--out={out} exists; remove it or choose another directory")
  if dtype not in DTYPES:
    raise ValueError(f"--dtype={dtype!r}; choose one of {DTYPES}")
  if saved_model not in ("auto", "yes", "no"):
    raise ValueError(f"--saved_model={saved_model!r}; choose auto, yes or no")
  m = config.model
  shapes = InputShapes.from_config(config)
  slots_by_entry = entry_point_slots(tuple(m.modalities), interleaved_slots)
  tasks = task_instructions(config)

  names, leaves, treedef = flat_params(params)
  leaves = [np.asarray(jax.device_get(x)).astype(dtype) for x in leaves]
  exported = export_entry_points(m, leaves, treedef, slots_by_entry, shapes, tuple(platforms))

  os.makedirs(os.path.dirname(out), exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=os.path.basename(out) + ".tmp-", dir=os.path.dirname(out))
  try:
    bundle.save_params(tmp, names, leaves)
    # tokenizer.model (trained by the run) or tokenizer.json (a pretrained backbone's).
    tokenizer_file = PRETRAINED_FILE if tokenizer_path.endswith(".json") else SENTENCEPIECE_FILE
    shutil.copyfile(tokenizer_path, os.path.join(tmp, tokenizer_file))
    with open(os.path.join(tmp, bundle.CONFIG), "w") as f:
      f.write(config.to_json_best_effort(indent=2))
    bundle.write_json(os.path.join(tmp, bundle.PREPROCESS), {
        "shapes": dataclasses.asdict(shapes), "pad_id": PAD_ID,
        # A run trained without instructions (data.instructions=False) must be served
        # without them too: the templates are kept for reference only.
        "instructions": bool(config.data.instructions), "tasks": tasks,
        "tokenizer": tokenizer_file})
    os.makedirs(os.path.join(tmp, bundle.STABLEHLO_DIR))
    entry_points = {}
    for name, exp in exported.items():
      rel = os.path.join(bundle.STABLEHLO_DIR, f"{name}.bin")
      with open(os.path.join(tmp, rel), "wb") as f:
        f.write(exp.serialize())
      entry_points[name] = {
          "file": rel, "slots": slots_by_entry[name],
          "inputs": {k: {"shape": [str(d) for d in v.shape], "dtype": str(v.dtype)}
                     for k, v in side_spec(slots_by_entry[name], shapes, "b").items()},
          "output": {"shape": ["b", int(m.embed_dim)], "dtype": str(exp.out_avals[0].dtype)}}
    manifest = {
        "format": bundle.FORMAT, "format_version": bundle.FORMAT_VERSION,
        "versions": _versions(), "source": source, "platforms": list(platforms),
        "calling_convention_version": exported[bundle.INTERLEAVED].calling_convention_version,
        "model": {"embed_dim": int(m.embed_dim), "modalities": list(m.modalities),
                  "matryoshka_dims": [int(d) for d in config.loss.matryoshka_dims],
                  "num_params": int(sum(x.size for x in leaves))},
        "params": {"dtype": dtype, "count": len(leaves), "file": bundle.PARAMS},
        "entry_points": entry_points,
        "saved_model": None}
    if saved_model == "yes" or (saved_model == "auto" and _tensorflow_available()):
      from gemb.export.saved_model import write_saved_model
      manifest["saved_model"] = write_saved_model(tmp, entry_points)
    manifest["files"] = bundle.file_checksums(tmp)
    bundle.write_json(os.path.join(tmp, bundle.MANIFEST), manifest)
    os.rename(tmp, out)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return manifest


def _tensorflow_available():
  import importlib.util
  return importlib.util.find_spec("tensorflow") is not None
