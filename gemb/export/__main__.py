"""Export a run to a serving bundle:

  python -m gemb.export --workdir=DIR --out=OUT [--step=N | --soup | --soup_steps=a,b,c]
      [--dtype=float32|bfloat16] [--slots=text=4,image=2,audio=2,video=1]
      [--platforms=cpu[,cuda,tpu]] [--saved_model=auto|yes|no]
      [--format=gemb|sentence-transformers]

Restores the params of DIR/checkpoints/<N> (latest by default), or the uniform average of
several checkpoints (--soup: every kept one; --soup_steps: those listed), onto the devices
of this machine, and writes OUT (gemb/serving/bundle.py describes its files). The run's
config.json and the tokenizer (tokenizer.model, or tokenizer.json for a pretrained backbone)
come from DIR. --format=sentence-transformers writes, for a run on a pretrained text
backbone, a directory that stock sentence-transformers loads instead (text only; see
gemb/export/sentence_transformers.py).
"""

import os

from absl import app, flags, logging

FORMATS = ("gemb", "sentence-transformers")


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
  """The params of checkpoint ``steps`` (one step: as is; several: their uniform soup)."""
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


def run(workdir, out, *, step=None, soup=False, soup_steps=None, dtype="float32", slots=None,
        platforms=("cpu",), saved_model="auto", format="gemb"):  # noqa: A002 (the flag's name)
  """Exports ``workdir`` to bundle ``out``; returns the manifest (for the
  sentence-transformers format: {"format", "source", "files"})."""
  from gemb.export.writer import write_bundle
  from gemb.run.workdir import load_config, tokenizer_path

  if format not in FORMATS:
    raise app.UsageError(f"--format={format!r}; choose one of {FORMATS}")
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)
  tokenizer = tokenizer_path(workdir)
  if os.path.exists(out):
    raise app.UsageError(f"--out={out} exists; remove it or choose another directory")
  steps = select_steps(workdir, step, soup, soup_steps)
  params = restore_params(workdir, config, steps)
  source = {"workdir": workdir, "steps": steps, "soup": len(steps) > 1}
  if format == "sentence-transformers":
    from gemb.export.sentence_transformers import write_sentence_transformers
    try:
      files = write_sentence_transformers(out, config, params)
    except ValueError as e:
      raise app.UsageError(str(e)) from None
    logging.info("exported %s for sentence-transformers (step(s) %s): %s", out, steps, files)
    return {"format": format, "source": source, "files": files}
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
  run(f.workdir, f.out, step=f.step, soup=f.soup, soup_steps=f.soup_steps, dtype=f.dtype,
      slots=parse_slots(f.slots), platforms=f.platforms, saved_model=f.saved_model,
      format=f.format)


if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/).")
  flags.DEFINE_string("out", None, "Bundle directory to create (must not exist).")
  flags.DEFINE_integer("step", None, "Checkpoint step to export (default: the latest).")
  flags.DEFINE_bool("soup", False, "Export the uniform average of every kept checkpoint.")
  flags.DEFINE_list("soup_steps", None, "Export the uniform average of these checkpoints.")
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored params dtype.")
  flags.DEFINE_list("slots", None, "Segment slots of the interleaved entry point per modality "
                    "(default text=4,image=2,audio=2,video=1).")
  flags.DEFINE_list("platforms", ["cpu"], "jax.export platforms (cpu, cuda, tpu).")
  flags.DEFINE_enum("saved_model", "auto", ["auto", "yes", "no"],
                    "Also write a TensorFlow SavedModel (auto: when tensorflow is installed).")
  flags.DEFINE_enum("format", "gemb", FORMATS, "gemb: a serving bundle (every modality); "
                    "sentence-transformers: a directory SentenceTransformer(OUT) loads (text "
                    "only, runs on a pretrained backbone).")
  flags.mark_flags_as_required(["workdir", "out"])
  app.run(main)
