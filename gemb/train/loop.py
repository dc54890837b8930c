"""The training loop: config check, mesh, data, model, stages, checkpoints, logs, evals, soup.

Read top to bottom, it is one run. Rerunning with the same workdir resumes from the latest
checkpoint (train state, the running stage's data iterator, curriculum position), so the
continued run sees the batches it would have and ends with bitwise the same parameters.
SIGTERM (TPU preemption) saves the current step and returns within seconds.
"""

import dataclasses
import hashlib
import time

import jax
import numpy as np
from absl import logging
from clu import parameter_overview
from jax.experimental import multihost_utils

from gemb import parallel, paths
from gemb.data.bad_records import Tally
from gemb.data.pipeline import tokenizer_corpus, train_dataset
from gemb.data.tokenizer import (PRETRAINED_FILE, SENTENCEPIECE_FILE, PretrainedTokenizer,
                                 Tokenizer, backbone_tokenizer)
from gemb.eval import report
from gemb.eval.tasks import evaluate_dims, load_tasks
from gemb.model import backbone
from gemb.run.checkpoint import Checkpointer
from gemb.run.init_params import describe_start, starting_params, starts_pretrained
from gemb.run.optimizer import make_optimizer
from gemb.run.state import Trainable, TrainSetup, create_train_state
from gemb.run.summary import SummaryWriter
from gemb.train import config_check
from gemb.train.metrics import Window
from gemb.train.preemption import PreemptionWatch
from gemb.train.soup import soup_and_compare
from gemb.train.step import make_train_step
from gemb.trees import param_path


class NonFiniteError(RuntimeError):
  """Too many non-finite steps in a row: the run stops, its last checkpoint is good."""


def load_or_train_tokenizer(config, stages, workdir):
  """The run's tokenizer lives in the workdir, so evals and exports reuse it.

  With a pretrained backbone (model.backbone) it is the backbone's own tokenizer.json
  (truncating at its max_seq_length), copied to the workdir once. Otherwise a sentencepiece
  model trained on the texts of every stage's tasks and eval tasks: every process trains the
  same model (deterministic training on the same texts) and process 0 saves it; the barrier
  keeps a process from reading a half-written file, and the digest check proves all
  processes tokenize alike (it fails if the workdir is not shared, e.g. a stale
  tokenizer.model on one host only).
  """
  checkpoint = backbone.resolve(config.model)
  name = SENTENCEPIECE_FILE if checkpoint is None else PRETRAINED_FILE
  path = paths.Path(workdir) / name
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(f"gemb: before reading {name}")
  if path.exists():
    tok = (Tokenizer(path.read_bytes()) if checkpoint is None
           else PretrainedTokenizer(path.read_text(), where=str(path)))
  elif checkpoint is not None:
    tok = backbone_tokenizer(checkpoint)
    if jax.process_index() == 0:
      path.write_bytes(tok.file_bytes)
  else:
    names = [t for s in stages for t in tuple(s.config.data.tasks) + tuple(s.config.eval.tasks)]
    tok = Tokenizer.train(tokenizer_corpus(config, tuple(dict.fromkeys(names))),
                          config.data.vocab_size)
    if jax.process_index() == 0:
      path.write_bytes(tok.model_proto)
  if jax.process_count() > 1:
    content = tok.model_proto if checkpoint is None else tok.file_bytes
    digest = np.frombuffer(hashlib.sha256(content).digest(), np.uint8)
    multihost_utils.assert_equal(digest, f"processes have different tokenizers ({path}): "
                                 "is the workdir shared by all hosts?")
  vocab = (config.model.text.vocab_size if checkpoint is None
           else int(checkpoint.hf_config["vocab_size"]))
  if tok.vocab_size > vocab:
    raise ValueError(f"tokenizer {path} has {tok.vocab_size} pieces > the model's vocabulary "
                     f"of {vocab}")
  return tok


# The data settings that shape an eval corpus besides its task (a stage may change them: the
# default recipe's finetune stage turns instructions on); the model's input shapes are the
# same in every stage.
CORPUS_SETTINGS = ("instructions", "builtin_config", "data_dir", "on_bad_record",
                   "max_text_chars", "max_audio_seconds", "max_video_frames")


def _corpus_setting(config):
  return (tuple(config.data[k] for k in CORPUS_SETTINGS)
          + (config.eval.get("max_records", 0),))


class Evaluator:
  """Evaluates a stage's eval tasks at every configured dim, on the stage's own inputs;
  caches each corpus across stages that build it the same way."""

  def __init__(self, workdir, graphdef, mesh, tokenizer, writer):
    self.workdir, self.graphdef, self.mesh = workdir, graphdef, mesh
    self.tokenizer, self.writer, self.corpora = tokenizer, writer, {}
    self.baselines = {}  # stage name -> the "baseline" entry of its eval reports

  def corpora_for(self, config):
    setting = _corpus_setting(config)
    keys = {t: (t, setting) for t in config.eval.tasks}
    missing = [t for t, key in keys.items() if key not in self.corpora]
    if missing:
      loaded = load_tasks(config, self.tokenizer, missing)
      self.corpora.update({keys[t]: loaded[t] for t in missing})
    return {t: self.corpora[key] for t, key in keys.items()}

  def __call__(self, config, step, stage_name, params, *, name=None, publish=True):
    """-> (results, score): score = the mean of train.best_metric over the retrieval tasks
    (None when none reports it, e.g. only classification tasks: the checkpoint is then not
    ranked); (None, None) when the stage has no eval tasks. publish=False: leave writing the
    results to a later ``publish`` (once the checkpoint of that step is saved)."""
    if not config.eval.tasks:
      return None, None
    results = evaluate_dims(self.graphdef, params, self.mesh, self.corpora_for(config),
                            config.eval.dims, config.eval.batch_size)
    values = report.metric_values(results, config.train.best_metric)
    score = float(np.mean(values)) if values else None
    if publish:
      self.publish(step, stage_name, results, score, name=name)
    return results, score

  def baselines_of_start(self, stages, start_params, model_name, seed):
    """The eval tasks of every stage evaluated with the params the run starts from (once per
    distinct corpus), written to eval/baseline_<stage>.json and listed under "baseline" in
    each of that stage's reports. ``start_params`` None (a resumed run): read back."""
    done = {}  # corpus setting -> tasks
    for stage in stages:
      config = stage.config
      if not config.eval.tasks:
        continue
      name = f"baseline_{stage.name}"
      path = paths.Path(self.workdir) / "eval" / f"{name}.json"
      if start_params is None:
        if path.exists():
          self.baselines[stage.name] = report.read_eval_json(path)["baseline"]
        continue
      key = (_corpus_setting(config), tuple(config.eval.tasks), tuple(config.eval.dims))
      if key not in done:
        logging.info("baseline: evaluating the start (%s) on stage %r's eval tasks",
                     model_name, stage.name)
        done[key], _ = self(config, 0, stage.name, start_params, publish=False)
      baseline = {"model": model_name, "seed": seed, "tasks": done[key]}
      self.baselines[stage.name] = baseline
      if jax.process_index() == 0:
        report.write_eval_json(self.workdir, 0, stage.name, done[key], baseline=baseline,
                               name=name)
    if stages[-1].name in self.baselines:  # the soup is evaluated as the last stage is
      self.baselines["soup"] = self.baselines[stages[-1].name]

  def publish(self, step, stage_name, results, score, *, name=None):
    """TensorBoard scalars (not for a named eval, e.g. the soup) and eval/<...>.json (with
    the stage's baseline, if any)."""
    if results is None:
      return
    if name is None:
      self.writer.scalars(step, report.eval_scalars(results)
                          | ({} if score is None else {"eval/score": score}))
    if jax.process_index() == 0:
      baseline = self.baselines.get(stage_name)
      path = report.write_eval_json(self.workdir, step, stage_name, results, name=name,
                                    baseline=baseline)
      versus = ("" if baseline is None else f"\nvs the start ({baseline['model']}):\n" +
                report.versus_table(results, baseline["tasks"], "start"))
      logging.info("eval (%s) at step %d -> %s\n%s%s", stage_name, step, path,
                   report.markdown_table(results), versus)


def train_and_evaluate(config, workdir):
  """Runs every stage of ``config`` in ``workdir``; returns the final eval results."""
  stages = config_check.validate(config)  # a bad config fails here, before any work
  workdir = paths.absolute(workdir)  # local: absolute (orbax); gs://...: unchanged
  paths.Path(workdir).mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0

  # ---- Mesh, tokenizer, resolved config, logs.
  mesh = parallel.make_mesh(config.mesh)
  config_check.check_mesh(stages, mesh)
  logging.info("mesh %s on %d devices (%d processes); stages: %s", dict(mesh.shape), mesh.size,
               jax.process_count(), ", ".join(f"{s.name} [{s.start}, {s.end})" for s in stages))
  tokenizer = load_or_train_tokenizer(config, stages, workdir)
  if is_main:
    (paths.Path(workdir) / "config.json").write_text(config.to_json_best_effort(indent=2))
  writer = SummaryWriter(str(paths.Path(workdir) / "tensorboard"), enabled=is_main)
  writer.text(0, "config", config.to_json_best_effort(indent=2))

  # ---- Model and optimizer state, born sharded.
  setup, state = create_train_state(config, mesh)
  trainable = Trainable(config.model)
  logging.info("parameters:\n%s", parameter_overview.get_parameter_overview(
      state["params"], include_stats=False))
  if trainable.adapters is not None:
    train = trainable.of(state)
    logging.info("LoRA rank %d on %d kernels: %d adapter params; trained base params: %s",
                 trainable.adapters.rank, len(trainable.adapters.views),
                 sum(x.size for x in jax.tree.leaves(train["lora"])),
                 sorted(param_path(p) for p, _ in
                        jax.tree_util.tree_flatten_with_path(train["params"])[0]))

  # ---- Resume from the latest checkpoint, or start from another run's params.
  soup_pins = [s.end for s in stages] if config.soup.kind == "stages" else ()
  ckpt = Checkpointer(workdir, keep=config.train.keep_checkpoints,
                      keep_best=config.train.keep_best, pinned=soup_pins)
  watch = PreemptionWatch()
  try:
    # The newest intact checkpoint: corrupt newer ones are named and moved aside.
    resumed, restored = ckpt.restore_newest_intact(
        lambda step: (ckpt.restore_state(step, state), ckpt.restore_meta(step)["stage_index"]))
    data_stage = None  # the stage whose data iterator the checkpoint holds
    if resumed is not None:
      state, data_stage = restored
      logging.info("resumed from step %d (stage %s)", resumed, stages[data_stage].name)
    else:  # a fresh start: pretrained parts first, then another run's params on top
      state["params"] = starting_params(config, state["params"])

    # ---- The start as a baseline (a pretrained backbone's zero-shot scores), then train,
    # stage by stage.
    evaluator = Evaluator(workdir, setup.graphdef, mesh, tokenizer, writer)
    if config.eval.baseline and starts_pretrained(config):
      evaluator.baselines_of_start(stages, trainable.effective(state) if resumed is None
                                   else None, describe_start(config), config.seed)
    run = RunContext(stages, setup, mesh, tokenizer, ckpt, evaluator, writer, watch)
    last = None
    for stage in stages:
      if int(state["step"]) >= stage.end:
        continue
      restore = resumed if data_stage == stage.index else None
      state, last = run_stage(run, stage, state, restore)
      if watch.requested:
        logging.warning("preempted: saved step %d; rerun the same command to resume",
                        int(state["step"]))
        break
    ckpt.wait()

    # ---- Final evaluation (if the last stage's did not already run) and the model soup.
    if not watch.requested:
      final = stages[-1]
      if last is None:
        last, _ = evaluator(final.config, final.end, final.name, trainable.effective(state))
      if config.soup.kind != "none" and final.config.eval.tasks:
        soup_and_compare(config, stages, ckpt, state["params"], evaluator, workdir)
  finally:
    # Also when the run stops on an error: orbax's save threads must end before the
    # interpreter does, or they print "Event loop is closed" stacks under the one message.
    writer.close()
    ckpt.close()
    watch.restore()
  return last


@dataclasses.dataclass(frozen=True)
class RunContext:
  """What every stage of one run trains with (run_stage's context)."""
  stages: list                    # [curriculum.Stage] of the run, in order
  setup: TrainSetup               # graphdef, state shardings, the run's lr schedule
  mesh: jax.sharding.Mesh
  tokenizer: Tokenizer
  ckpt: Checkpointer
  evaluator: Evaluator
  writer: SummaryWriter
  watch: PreemptionWatch


def run_stage(run, stage, state, restore_step):
  """Trains ``stage`` from the state's step to its end (resuming the data iterator of
  checkpoint ``restore_step`` if not None); -> (state, last eval results)."""
  stages, mesh, ckpt, schedule = run.stages, run.mesh, run.ckpt, run.setup.schedule
  config, train_cfg = stage.config, stage.config.train
  step = int(state["step"])
  logging.info("stage %d/%d %r: steps [%d, %d), tasks %s", stage.index + 1, len(stages),
               stage.name, stage.start, stage.end, tuple(config.data.tasks))

  # ---- This stage's input pipeline (its own seed), at the checkpointed position.
  dataset = train_dataset(config, run.tokenizer, seed=config.seed + stage.index,
                          process_index=jax.process_index(), process_count=jax.process_count())
  data_iter = iter(dataset)
  if restore_step is not None:
    ckpt.restore_data(restore_step, data_iter)

  # ---- This stage's step function: its loss, optimizer hyper-parameters, frozen params.
  tx = make_optimizer(config.optimizer, schedule)
  trainable = Trainable(config.model)
  frozen = trainable.frozen_mask(state, stage.freeze)
  train_step = make_train_step(run.setup.graphdef, tx, schedule, config, mesh,
                               run.setup.shardings, frozen)
  task_names = tuple(config.data.tasks)
  # Batch structure (one per task under mixing="task") -> (compiled step, its FLOPs): one
  # trace and one compilation each, and the FLOPs XLA counts in that executable.
  compiled = {}
  meta = {"stage_index": stage.index, "stage": stage.name,
          "config": config.to_json_best_effort()}

  window, last = Window(), None
  # Rates and ETAs leave out compilation (a new batch structure compiles for seconds, and the
  # first steps of a stage meet most of them): the ETA is that of the steps still to run.
  t0, step0, flops_done, compile_seconds = time.time(), step, 0.0, 0.0
  skipped, skipped_logged = Tally(task_names), 0  # bad records replaced (data.on_bad_record)
  while step < stage.end:
    if run.watch.reached(step):
      ckpt.wait()
      if step not in ckpt.all_steps():  # the signal may come right after a save of this step
        ckpt.save(step, state, data_iter, meta, force=True)
        ckpt.wait()
      return state, last
    ckpt.poll()  # a background save that failed stops the run here, not at the next save
    host_batch = next(data_iter)
    task_index = host_batch.pop("task_index")
    skipped.add(host_batch.pop("skipped"), task_index)
    batch = parallel.host_to_global(host_batch, mesh)
    with jax.set_mesh(mesh):
      key = jax.tree.structure(batch), tuple(x.shape for x in jax.tree.leaves(batch))
      if key not in compiled:
        start = time.time()
        executable = train_step.lower(state, batch).compile()
        compiled[key] = executable, step_flops(executable)
        compile_seconds += time.time() - start
      run_step, flops = compiled[key]
      state, step_metrics = run_step(state, batch)
    step += 1
    flops_done += flops
    window.add(step_metrics, task_names[int(task_index[0])]
               if config.data.mixing == "task" else None)

    if step % train_cfg.log_every == 0 or step == stage.end:
      scalars = {f"train/{k}": v for k, v in window.compute().items()}
      check_finite(scalars, train_cfg, step, ckpt)
      elapsed = time.time() - t0 - compile_seconds
      rate = (step - step0) / elapsed
      scalars |= {"train/steps_per_s": rate,
                  "train/examples_per_s": rate * config.data.batch_size,
                  "train/model_flops_per_s": flops_done / elapsed,
                  "train/stage": stage.index} | skipped.scalars()
      if train_cfg.peak_flops:
        scalars["train/mfu"] = flops_done / elapsed / (train_cfg.peak_flops * mesh.size)
      run.writer.scalars(step, scalars)
      total_left = (stage.end - step) + sum(s.steps for s in stages[stage.index + 1:])
      logging.info("%s %d/%d (step %d/%d) loss %.4f acc %.3f | %.2f steps/s, %.1f GFLOP/s | "
                   "stage ETA %s, run ETA %s (at this rate)", stage.name, step - stage.start,
                   stage.steps, step, stages[-1].end, scalars["train/loss"],
                   scalars["train/accuracy"], rate, flops_done / elapsed / 1e9,
                   _duration((stage.end - step) / rate), _duration(total_left / rate))
      if skipped.total > skipped_logged:
        skipped_logged = skipped.total
        logging.warning("%s: %d bad records skipped so far (data.on_bad_record=skip): %s",
                        stage.name, skipped.total, skipped.summary())

    every = config.eval.every
    evaluate_now = step == stage.end or (every and (step - stage.start) % every == 0)
    score = None
    if evaluate_now:
      last, score = run.evaluator(config, step, stage.name, trainable.effective(state),
                                  publish=False)
    if evaluate_now or step % train_cfg.checkpoint_every == 0:
      check_finite({"train/nonfinite_streak": int(state["nonfinite_streak"])}, train_cfg,
                   step, ckpt)
      ckpt.save(step, state, data_iter, meta, score=score, force=evaluate_now)
    if evaluate_now:
      # An eval result is written once its step's checkpoint is: nothing reports a step
      # that a failed save lost.
      ckpt.wait()
      run.evaluator.publish(step, stage.name, last, score)
  return state, last


def step_flops(executable):
  """FLOPs of one step on this batch structure, from XLA's cost analysis of the compiled
  step (what runs: frozen parameters' dead gradients are not counted)."""
  cost = executable.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get("flops", 0.0))


def check_finite(scalars, train_cfg, step, ckpt):
  """Stops the run when the last steps were all non-finite (their updates were skipped)."""
  streak = int(scalars.get("train/nonfinite_streak", 0))
  if streak >= train_cfg.max_nonfinite_streak:
    ckpt.wait()
    raise NonFiniteError(
        f"the loss or gradient was NaN/Inf in the last {streak} steps (up to step {step}); "
        f"their updates were skipped (train.max_nonfinite_streak="
        f"{train_cfg.max_nonfinite_streak}). The last good checkpoint is step "
        f"{ckpt.latest_step()}: lower optimizer.learning_rate, check the data, then rerun.")


def _duration(seconds):
  seconds = int(seconds)
  return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else \
      f"{seconds // 60}m{seconds % 60:02d}s"
