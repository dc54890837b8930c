"""Evaluate a run's checkpoint: python -m gemb.eval --workdir=DIR [--step=N] [--tasks=a,b]
[--dims=64,128] [--batch_size=256] [--max_records=N].

Restores the params of DIR/checkpoints/<N> (latest by default) onto the config's mesh,
builds each task's corpus as the stage that saved the checkpoint did (its data settings,
e.g. task instructions on in a finetune stage), evaluates every task (retrieval and zero-shot classification; built-in or from
config.data.custom_tasks) at every dim, and compares with two baselines: chance and the
run's start (random init with the config's seed, with the pretrained backbone, towers and
init_from params the run started from). Writes DIR/eval/step_<N>.json (the trainer's
format, plus the start's results under "baseline"), step_<N>.md (tables,
encode throughput), step_<N>.png (R@1 / accuracy vs dim) and TensorBoard scalars
eval/<task>/<metric>@<dim>; prints the markdown.
"""

import os

from absl import app, flags

from gemb.run.workdir import checkpoint_steps, config_from_json, load_config, tokenizer_path


def markdown_report(step, dims, trained, start, start_name):
  from gemb.eval.report import encode_tables, markdown_table, versus_table
  return (f"# Eval at step {step}\n\ndims: {', '.join(map(str, dims))} "
          f"(top-level metrics at dim {max(dims)})\n\n"
          f"## Trained (step {step})\n\n{markdown_table(trained)}\n"
          f"## The start: {start_name}\n\n{markdown_table(start)}\n"
          f"## R@1 (retrieval) / accuracy (classification) by dim\n\n"
          f"{versus_table(trained, start, 'start', dims)}\n"
          f"## Encode throughput (trained model, items/s, without compilation)\n\n"
          f"{encode_tables(trained)}")


def run(workdir, step=None, tasks=None, dims=None, batch_size=None, max_records=None):
  """Evaluates DIR's checkpoint; returns (trained results, the start's results, paths)."""
  workdir = os.path.abspath(workdir)
  config = load_config(workdir)

  # ---- Check every argument before any expensive work.
  from gemb.data.pipeline import task_registry
  names = tuple(tasks or config.eval.tasks)
  known = task_registry(config)
  unknown = [n for n in names if n not in known]
  if unknown:
    raise app.UsageError(f"unknown task(s) {unknown}; known: {sorted(known)}")
  from gemb import parallel
  from gemb.eval.tasks import check_batch_size, check_dims
  mesh = parallel.make_mesh(config.mesh)
  batch_size = config.eval.batch_size if batch_size is None else batch_size
  if max_records is not None and max_records < 0:
    raise app.UsageError(f"--max_records={max_records}: must be >= 0 (0 = every record)")
  try:
    dims = check_dims(dims or config.eval.dims, config.model.embed_dim)
    check_batch_size(batch_size, mesh)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  tokenizer = tokenizer_path(workdir)
  available = checkpoint_steps(workdir)
  explicit = step is not None
  step = available[-1] if step is None else int(step)
  if step not in available:
    raise app.UsageError(f"--step={step}: no such checkpoint; available steps: {available}")

  from gemb.data import tokenizer as tokenizers
  from gemb.eval import report
  from gemb.eval.plot import plot_by_dim
  from gemb.eval.tasks import evaluate_dims, load_tasks
  from gemb.run.checkpoint import Checkpointer
  from gemb.run.init_params import describe_start, starting_params
  from gemb.run.state import create_train_state
  from gemb.run.summary import SummaryWriter

  ckpt = Checkpointer(workdir, async_save=False)
  try:
    # ---- A fresh model (the config's seed) is the restore target; restore the trained params.
    setup, init_state = create_train_state(config, mesh)
    graphdef = setup.graphdef
    step, (params, meta) = _restore_intact(
        ckpt, workdir, step, explicit,
        lambda s: (ckpt.restore_params(s, init_state["params"]), ckpt.restore_meta(s)))
  finally:
    ckpt.close()

  # The corpora are built as the stage that saved the checkpoint built its own (its data
  # settings: with or without task instructions, ...), so the numbers are the trainer's.
  stage = meta.get("stage", "")
  corpus_config = config_from_json(meta["config"]) if meta.get("config") else config
  if max_records is not None:
    corpus_config.eval.max_records = max_records  # (runs before it existed lack the key)
  corpora = load_tasks(corpus_config, tokenizers.load(tokenizer), names)
  trained = evaluate_dims(graphdef, params, mesh, corpora, dims, batch_size)
  # The baseline: what training started from (random init, or pretrained parts on it).
  start_name = describe_start(config)
  start = evaluate_dims(graphdef, starting_params(config, init_state["params"]), mesh, corpora,
                        dims, batch_size)

  # ---- Outputs: JSON (trainer format), markdown, plot, TensorBoard.
  import jax
  paths = {}
  if jax.process_index() == 0:
    paths["json"] = report.write_eval_json(
        workdir, step, stage, trained,
        baseline={"model": start_name, "seed": config.seed, "tasks": start})
    base = paths["json"][:-len(".json")]
    markdown = markdown_report(step, dims, trained, start, start_name)
    with open(base + ".md", "w") as f:
      f.write(markdown)
    paths["md"] = base + ".md"
    paths["png"] = plot_by_dim(base + ".png", trained, start,
                               title=f"step {step}: quality (x chance) vs dim (dashed: the start, "
                                     "dotted: chance)")
    with SummaryWriter(os.path.join(workdir, "tensorboard")) as writer:
      writer.scalars(step, report.eval_scalars(trained))
    print(markdown)
  return trained, start, paths


def _restore_intact(ckpt, workdir, step, explicit, restore):
  """(step, restore(step)). A corrupt checkpoint given by --step stops, naming it and the
  newest intact one; the latest (no --step) falls back to the newest intact one, saying so."""
  from absl import logging
  found, restored, corrupt = ckpt.newest_intact(
      restore, steps=[step] if explicit else None)
  if found is not None:
    for bad, reason in corrupt:
      logging.warning("checkpoint step %d (%s) is corrupt: %s; evaluating step %d, the newest "
                      "intact checkpoint", bad, ckpt.step_dir(bad), reason, found)
    return found, restored
  if not explicit:
    raise app.UsageError(f"--workdir={workdir}: no intact checkpoint: " + "; ".join(
        f"step {s} ({ckpt.step_dir(s)}): {reason}" for s, reason in corrupt))
  others = [s for s in ckpt.all_steps() if s != step and ckpt.problem(s) is None]
  hint = (f"The newest intact one: python -m gemb.eval --workdir={workdir} --step={others[-1]}"
          if others else "No other checkpoint is intact.")
  raise app.UsageError(f"--step={step}: checkpoint {ckpt.step_dir(step)} is corrupt: "
                       f"{corrupt[0][1]}. {hint}")


def _int_list(values):
  try:
    return [int(v) for v in values] if values else None
  except ValueError:
    raise app.UsageError(f"--dims={','.join(values)}: dims must be integers") from None


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  f = flags.FLAGS
  run(f.workdir, step=f.step, tasks=f.tasks, dims=_int_list(f.dims), batch_size=f.batch_size,
      max_records=f.max_records)


if __name__ == "__main__":
  # Flags are defined only when run as a program, so importing this module (tests) cannot
  # clash with gemb.main's --workdir.
  flags.DEFINE_string("workdir", None, "The run's directory (config.json, checkpoints/).")
  flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).")
  flags.DEFINE_list("tasks", None, "Tasks to evaluate (default: config.eval.tasks).")
  flags.DEFINE_list("dims", None, "Matryoshka dims (default: config.eval.dims).")
  flags.DEFINE_integer("batch_size", None, "Eval batch size (default: config.eval.batch_size).")
  flags.DEFINE_integer("max_records", None, "Records per task's eval split, a fixed sample (0 = "
                       "all; default: config.eval.max_records).")
  flags.mark_flags_as_required(["workdir"])
  app.run(main)
