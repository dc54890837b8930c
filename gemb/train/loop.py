"""The training loop: mesh, data, model, step, checkpoints, logs and evaluation, in order.

Read top to bottom, it is one run. Rerunning with the same workdir resumes from the latest
checkpoint, data iterator included, so the continued run sees the batches it would have.
"""

import time

import hashlib

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from gemb import parallel, paths
from gemb.data.pipeline import tokenizer_corpus, train_dataset
from gemb.data.tokenizer import Tokenizer
from gemb.eval import report
from gemb.eval.tasks import evaluate_dims, load_tasks
from gemb.train.checkpoint import Checkpointer
from gemb.train.state import create_train_state
from gemb.train.step import make_train_step
from gemb.train.summary import SummaryWriter


def load_or_train_tokenizer(config, workdir):
  """The run's sentencepiece model lives in the workdir, so evals and exports reuse it.

  Every process trains the same model (deterministic training on the same texts) and
  process 0 saves it; the barrier keeps a process from reading a half-written file, and
  the digest check proves all processes tokenize alike (it fails if the workdir is not
  shared, e.g. a stale tokenizer.model on one host only).
  """
  path = paths.Path(workdir) / "tokenizer.model"
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("gemb: before reading tokenizer.model")
  if path.exists():
    tok = Tokenizer(path.read_bytes())
  else:
    tok = Tokenizer.train(tokenizer_corpus(config), config.data.vocab_size)
    if jax.process_index() == 0:
      path.write_bytes(tok.model_proto)
  if jax.process_count() > 1:
    digest = np.frombuffer(hashlib.sha256(tok.model_proto).digest(), np.uint8)
    multihost_utils.assert_equal(digest, f"processes have different tokenizers ({path}): "
                                 "is the workdir shared by all hosts?")
  if tok.vocab_size > config.model.text.vocab_size:
    raise ValueError(f"tokenizer has {tok.vocab_size} pieces > model.text.vocab_size="
                     f"{config.model.text.vocab_size}")
  return tok


def run_eval(config, workdir, step, graphdef, params, mesh, tasks, writer):
  """Evaluates every task at each configured Matryoshka dim; writes eval/step_<N>.json."""
  results = evaluate_dims(graphdef, params, mesh, tasks, config.eval.dims,
                          config.eval.batch_size)
  writer.scalars(step, report.eval_scalars(results))
  if jax.process_index() == 0:
    path = report.write_eval_json(workdir, step, "train", results)
    logging.info("eval at step %d -> %s\n%s", step, path, report.markdown_table(results))
  return results


def train_and_evaluate(config, workdir):
  workdir = paths.absolute(workdir)  # local: absolute (orbax); gs://...: unchanged
  paths.Path(workdir).mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  total_steps = config.train.steps

  # ---- Mesh, tokenizer, resolved config.
  mesh = parallel.make_mesh(config.mesh)
  logging.info("mesh %s on %d devices (%d processes)", dict(mesh.shape), mesh.size,
               jax.process_count())
  tokenizer = load_or_train_tokenizer(config, workdir)
  if is_main:
    (paths.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  writer = SummaryWriter(str(paths.Path(workdir) / "tensorboard"), enabled=is_main)
  writer.text(0, "config", config.to_json_best_effort(indent=2))

  # ---- Input pipeline: this process's shard of every global batch.
  per_device = config.data.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"])
  if per_device:
    raise ValueError(f"data.batch_size={config.data.batch_size} is not divisible by the batch "
                     f"axes data*fsdp={mesh.shape['data'] * mesh.shape['fsdp']}")
  dataset = train_dataset(config, tokenizer, seed=config.seed,
                          process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(dataset)

  # ---- Model and optimizer, born sharded; the compiled step.
  graphdef, state, shardings, tx, schedule = create_train_state(config, mesh, total_steps)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info("model: %.2fM parameters", n_params / 1e6)
  train_step = make_train_step(graphdef, tx, schedule, config, mesh, shardings)

  # ---- Resume from the latest checkpoint, if any.
  ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints)
  start = ckpt.latest_step()
  if start is not None:
    state, _ = ckpt.restore(start, state, data_iter)
    logging.info("resumed from step %d", start)
  step = int(state["step"])
  eval_tasks = load_tasks(config, tokenizer)
  task_names = tuple(config.data.tasks)

  # ---- Train.
  t0, step0, last, skipped_total = time.time(), step, None, 0
  while step < total_steps:
    host_batch = next(data_iter)
    task_index, skipped = host_batch.pop("task_index"), host_batch.pop("skipped")
    with jax.set_mesh(mesh):
      state, metrics = train_step(state, parallel.host_to_global(host_batch, mesh))
    step += 1
    skipped_total += int(skipped.sum())
    if step % config.train.log_every == 0 or step == total_steps:
      metrics = jax.device_get(metrics)
      elapsed = time.time() - t0
      rate = (step - step0) / elapsed
      scalars = {f"train/{k}": float(v) for k, v in metrics.items()}
      if config.data.mixing == "task":  # the whole batch is one task
        scalars[f"train/loss/{task_names[int(task_index[0])]}"] = float(metrics["loss"])
      writer.scalars(step, scalars | {"train/steps_per_s": rate,
                                      "train/examples_per_s": rate * config.data.batch_size,
                                      "train/skipped_records": skipped_total})
      logging.info("step %d/%d loss %.4f acc %.3f | %.2f steps/s, ETA %.0fs", step, total_steps,
                   metrics["loss"], metrics.get("accuracy", np.nan), rate,
                   (total_steps - step) / max(rate, 1e-9))
    if step % config.train.checkpoint_every == 0 or step == total_steps:
      ckpt.save(step, state, data_iter, {"step": step}, force=step == total_steps)
    if config.eval.every and step % config.eval.every == 0 and step != total_steps:
      last = run_eval(config, workdir, step, graphdef, state["params"], mesh, eval_tasks, writer)

  # ---- Final evaluation.
  ckpt.wait()
  last = run_eval(config, workdir, step, graphdef, state["params"], mesh, eval_tasks, writer)
  writer.close()
  ckpt.close()
  return last
