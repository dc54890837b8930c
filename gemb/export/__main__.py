"""Export a run to a serving bundle, or (text only) to a sentence-transformers model:

  python -m gemb.export --workdir=DIR --out=OUT [--step=N | --soup | --soup_steps=a,b,c]
      [--dtype=float32|bfloat16] [--slots=text=4,image=2,audio=2,video=1]
      [--platforms=cpu[,cuda,tpu]] [--saved_model=auto|yes|no]
  python -m gemb.export --format=sentence-transformers --workdir=DIR --out=OUT
      [--step=N | --soup | --soup_steps=a,b,c]

Restores the params of DIR/checkpoints/<N> (latest by default), or the uniform average of
several checkpoints (--soup: every kept one; --soup_steps: those listed), onto the devices
of this machine, and writes OUT: a bundle (gemb/serving/bundle.py describes its files) or,
for a run on a pretrained BERT or Gemma 3 backbone, a directory that stock
sentence-transformers loads (gemb/export/sentence_transformers_dir.py). The run's
config.json and the tokenizer (tokenizer.model, or tokenizer.json for a pretrained backbone)
come from DIR. A run the chosen format cannot represent is refused with one line, exit 1.
"""

import os
import sys

from absl import app, flags, logging


def restore_target(config):
  """ShapeDtypeStructs of the run's params on this process's first device: what orbax
  restores onto (params only, no optimizer state). Nothing is initialized or compiled, and
  the training mesh need not exist here (a pod run exported on a laptop): orbax reshards."""
  import jax
  from flax import nnx

  from gemb.model.embedder_model import MultimodalEmbedder

  model = nnx.eval_shape(lambda: MultimodalEmbedder(config.model, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model))
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), params)


def restore_params(workdir, config, steps):
  """The params of checkpoint ``steps`` (one step: as is; several: their uniform soup): what
  every export format writes."""
  from gemb.run.checkpoint import Checkpointer
  from gemb.run.soup import soup_of_checkpoints

  ckpt = Checkpointer(workdir, async_save=False)
  try:
    return soup_of_checkpoints(ckpt, steps, restore_target(config))
  finally:
    ckpt.close()


def select_steps(workdir, step=None, soup=False, soup_steps=None):
  """Checkpoint steps to export (validated against the workdir's checkpoints)."""
  from gemb.run.workdir import checkpoint_steps
  if sum([step is not None, bool(soup), bool(soup_steps)]) > 1:
    raise app.UsageError("give at most one of --step, --soup and --soup_steps")
  available = checkpoint_steps(workdir)
  if soup:
    return available
  try:
    steps = [int(s) for s in soup_steps] if soup_steps else [
        available[-1] if step is None else int(step)]
  except ValueError:
    raise app.UsageError(f"--soup_steps={','.join(soup_steps)}: steps must be integers") from None
  missing = [s for s in steps if s not in available]
  if missing:
    raise app.UsageError(f"no checkpoint for step(s) {missing}; available steps: {available}")
  return steps


def parse_slots(values):
  """['text=4', 'image=2'] -> {'text': 4, 'image': 2}."""
  slots = {}
  for value in values or ():
    name, sep, count = value.partition("=")
    if not sep or not count.isdigit():
      raise app.UsageError(f"--slots: {value!r} must look like modality=count (e.g. image=2)")
    slots[name] = int(count)
  return slots


FORMATS = ("bundle", "sentence-transformers")


def run(workdir, out, *, step=None, soup=False, soup_steps=None, dtype="float32", slots=None,
        platforms=("cpu",), saved_model="auto", format="bundle"):  # noqa: A002 (the flag)
  """Exports ``workdir`` to ``out`` in ``format``; returns the bundle's manifest or the
  sentence-transformers export's record (its gemb_export.json)."""
  from gemb.export import sentence_transformers_dir
  from gemb.export.writer import write_bundle
  from gemb.run.workdir import load_config, tokenizer_path

  if format not in FORMATS:
    raise app.UsageError(f"--format={format!r}; choose one of {', '.join(FORMATS)}")
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)
  tokenizer = tokenizer_path(workdir)
  if os.path.exists(out):
    raise app.UsageError(f"--out={out} exists; remove it or choose another directory")
  if format == sentence_transformers_dir.FORMAT:
    sentence_transformers_dir.check(config)  # refuses before any checkpoint is opened
  steps = select_steps(workdir, step, soup, soup_steps)
  source = {"workdir": workdir, "steps": steps, "soup": len(steps) > 1}
  params = restore_params(workdir, config, steps)
  if format == sentence_transformers_dir.FORMAT:
    record = sentence_transformers_dir.write(out, config, params, tokenizer, source=source)
    logging.info("exported %s (step(s) %s) for sentence-transformers: max_seq_length %d, "
                 "prompts %s", out, steps, record["max_seq_length"], record["prompts"])
    return record
  manifest = write_bundle(out, config, params, tokenizer, source=source, dtype=dtype,
                          interleaved_slots=slots, platforms=tuple(platforms),
                          saved_model=saved_model)
  logging.info("exported %s (step(s) %s, %s params %s, entry points %s, SavedModel: %s)",
               out, steps, manifest["model"]["num_params"], dtype,
               sorted(manifest["entry_points"]), bool(manifest["saved_model"]))
  return manifest


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  logging.set_verbosity(logging.INFO)
  if f.format != "bundle":
    bundle_only = [n for n in ("dtype", "slots", "platforms", "saved_model") if f[n].present]
    if bundle_only:
      raise app.UsageError(f"--{', --'.join(bundle_only)}: bundle flags; a --format={f.format} "
                           "export is float32 text-only (see the README)")
  from gemb.export.sentence_transformers_dir import Refusal
  from gemb.model.backbone import CheckpointError
  try:
    run(f.workdir, f.out, step=f.step, soup=f.soup, soup_steps=f.soup_steps, dtype=f.dtype,
        slots=parse_slots(f.slots), platforms=f.platforms, saved_model=f.saved_model,
        format=f.format)
  except (Refusal, CheckpointError) as e:
    print(f"gemb.export: {e}", file=sys.stderr)  # one line: what the run is, what is supported
    sys.exit(1)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/).")
  flags.DEFINE_string("out", None, "Directory to create (must not exist).")
  flags.DEFINE_enum("format", "bundle", FORMATS, "bundle: a gemb serving bundle (every "
                    "modality); sentence-transformers: a text-only model directory for "
                    "SentenceTransformer(OUT) (runs on a bert / gemma3 backbone).")
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
  flags.DEFINE_bool("soup", False, "Export the uniform average of every kept checkpoint.")
  flags.DEFINE_list("soup_steps", None, "Export the uniform average of these checkpoints.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored params dtype.")
  flags.DEFINE_list("slots", None, "Segment slots of the interleaved entry point per modality "
                    "(default text=4,image=2,audio=2,video=1).")
  flags.DEFINE_list("platforms", ["cpu"], "jax.export platforms (cpu, cuda, tpu).")
  flags.DEFINE_enum("saved_model", "auto", ["auto", "yes", "no"],
                    "Also write a TensorFlow SavedModel (auto: when tensorflow is installed).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
