"""Real multi-process training: jax.distributed on 127.0.0.1, processes x CPU devices.

Two processes x 2 devices must train exactly like one process x 4 devices (same global
batches, disjoint per-process blocks), checkpoints must move between process counts, and a
killed process must stop its peer quickly with a message naming it.
"""

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath

from configs import tiny
from configs.common import distributed_config
from gemb import distributed
from gemb.data import pipeline, sources
from gemb.data.tokenizer import Tokenizer
from launch import local

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Checkpoints at HALF and STEPS; every run plans STEPS steps, so the learning-rate schedule
# is the same whether a run starts fresh or resumes.
STEPS, HALF, BATCH = 4, 2, 16


@pytest.fixture(scope="module")
def data_dir(emoji_data_dir):
  sources.prepared_builder("emoji", emoji_data_dir, "small")
  return emoji_data_dir


def main_args(workdir, data_dir, *extra, steps=STEPS):
  return [
      "--config=configs/tiny.py", f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
      "--config.data.builtin_config=small", f"--config.data.batch_size={BATCH}",
      # Two stages (tiny's curriculum), the boundary at the HALF checkpoint.
      f"--config.stages[0].steps={HALF}", f"--config.stages[1].steps={steps - HALF}",
      f"--config.stages[1].data.batch_size={BATCH}", f"--config.train.checkpoint_every={HALF}",
      "--config.train.log_every=1", "--config.optimizer.warmup_steps=1",
      "--config.eval.dims=(128,)", "--config.distributed.heartbeat_timeout_s=10",
      "--config.distributed.shutdown_timeout_s=10",
      "--config.distributed.initialization_timeout_s=60", *extra]


def child_env():
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # launch/local.py sets each process's device count
  return env


def train(workdir, data_dir, *, processes, devices, evaluate=False):
  """Runs gemb.main through launch/local.py; returns its combined, prefixed log."""
  out = io.StringIO()
  extra = ["--config.eval.tasks=('emoji_image_to_name',)" if evaluate else
           "--config.eval.tasks=()"]
  status = local.run(main_args(workdir, data_dir, *extra), num_processes=processes,
                     devices_per_process=devices, env=child_env(), out=out)
  log = out.getvalue()
  assert status == 0, log[-5000:]
  return log


def read_state(workdir, step):
  """A checkpoint's train state as numpy arrays (read back independently of gemb)."""
  path = epath.Path(workdir) / "checkpoints" / str(step) / "state"
  checkpointer = ocp.PyTreeCheckpointer()
  tree = checkpointer.metadata(path).item_metadata.tree
  args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
  return checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=args))


def read_data_position(workdir, step):
  with open(os.path.join(workdir, "checkpoints", str(step), "data", "metadata")) as f:
    return json.load(f)


def max_param_diff(a, b):
  flat_a, flat_b = (jax.tree_util.tree_leaves_with_path(x["params"]) for x in (a, b))
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  return max(float(np.max(np.abs(x - y))) for (_, x), (_, y) in zip(flat_a, flat_b))


@pytest.fixture(scope="module")
def fresh_runs(data_dir, tmp_path_factory):
  """The same STEPS-step run from scratch with 2 processes x 2 devices and 1 x 4."""
  root = tmp_path_factory.mktemp("fresh")
  two, one = str(root / "two"), str(root / "one")
  log = train(two, data_dir, processes=2, devices=2, evaluate=True)
  train(one, data_dir, processes=1, devices=4)
  return two, one, log


def test_two_processes_train_like_one_on_disjoint_blocks(fresh_runs, data_dir):
  two, one, log = fresh_runs
  # Both processes ran, each on 2 of the 4 devices; process 0 wrote the files, eval included.
  assert "[p0]" in log and "[p1]" in log and "all processes finished" in log
  assert "process 1 of 2, 2 of 4 devices local" in log
  with open(os.path.join(two, "eval", f"step_{STEPS}.json")) as f:
    assert json.load(f)["tasks"]["emoji_image_to_name"]["num_queries"] > 10

  # Same global batches -> same parameters, and the same data position, at every checkpoint.
  for step in (HALF, STEPS):
    assert int(read_state(two, step)["step"]) == step
    assert max_param_diff(read_state(two, step), read_state(one, step)) <= 1e-5
    assert read_data_position(two, step) == read_data_position(one, step)
  # ...and they did train: the parameters moved between the checkpoints.
  assert max_param_diff(read_state(one, HALF), read_state(one, STEPS)) > 1e-3

  # What each process read: disjoint blocks of records that make up the single-process
  # batches (record positions from the pipeline's own ordering), and the same examples.
  config = tiny.get_config()
  config.data.data_dir, config.data.builtin_config = data_dir, "small"
  config.data.batch_size = BATCH
  [task] = pipeline.get_tasks(config, config.data.tasks)
  order = pipeline.record_order(len(pipeline.open_split(config, task, task.train_split)),
                                config.seed)
  whole_records = pipeline.process_block(order, BATCH, 0, 1)
  block_records = [pipeline.process_block(order, BATCH // 2, p, 2) for p in range(2)]
  with open(os.path.join(two, "tokenizer.model"), "rb") as f:
    tok = Tokenizer(f.read())
  with open(os.path.join(one, "tokenizer.model"), "rb") as f:
    assert f.read() == tok.model_proto
  single = iter(pipeline.train_dataset(config, tok, seed=config.seed))
  procs = [iter(pipeline.train_dataset(config, tok, seed=config.seed, process_index=p,
                                       process_count=2)) for p in range(2)]
  for step in range(STEPS):
    mine = [set(b[step].tolist()) for b in block_records]
    assert len(mine[0]) == len(mine[1]) == BATCH // 2 and not mine[0] & mine[1]
    assert mine[0] | mine[1] == set(whole_records[step].tolist())
    whole, parts = next(single), [next(it) for it in procs]
    for key in ("query_id", "candidate_id"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def resume_copy(workdir, destination):
  """A copy of ``workdir`` that has only its step-HALF checkpoint."""
  shutil.copytree(workdir, destination)
  shutil.rmtree(os.path.join(destination, "checkpoints", str(STEPS)))
  shutil.rmtree(os.path.join(destination, "eval"), ignore_errors=True)
  return str(destination)


def test_checkpoints_move_between_process_counts(fresh_runs, data_dir, tmp_path):
  two, one, _ = fresh_runs
  reference = read_state(one, STEPS)  # = read_state(two, STEPS), by the test above
  # Written by 2 processes, resumed by 1.
  two_to_one = resume_copy(two, tmp_path / "two_to_one")
  log = train(two_to_one, data_dir, processes=1, devices=4)
  assert f"resumed from step {HALF}" in log
  assert max_param_diff(read_state(two_to_one, STEPS), reference) <= 1e-5
  # Written by 1 process, resumed by 2.
  one_to_two = resume_copy(one, tmp_path / "one_to_two")
  log = train(one_to_two, data_dir, processes=2, devices=2)
  assert log.count(f"resumed from step {HALF}") == 2
  assert max_param_diff(read_state(one_to_two, STEPS), reference) <= 1e-5


def wait_for(predicate, timeout_s, what):
  deadline = time.time() + timeout_s
  while not predicate():
    if time.time() > deadline:
      raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
    time.sleep(0.2)


@pytest.mark.parametrize("victim", [1, pytest.param(0, marks=pytest.mark.slow)])
def test_killing_a_process_stops_its_peer_fast_with_the_dead_peer_named(tmp_path, data_dir,
                                                                        victim):
  """Processes started by hand (not launch/local.py, which would stop the peer itself)."""
  coordinator = f"127.0.0.1:{local.free_port()}"
  args = main_args(str(tmp_path / "run"), data_dir, "--config.eval.tasks=()", steps=100_000)
  logs = [tmp_path / f"p{i}.log" for i in range(2)]
  procs = []
  for i in range(2):
    with open(logs[i], "w") as f:
      procs.append(subprocess.Popen(
          [sys.executable, "-m", "gemb.main", *args], cwd=ROOT, stdout=f,
          stderr=subprocess.STDOUT,
          env=local.process_env(child_env(), process_id=i, num_processes=2,
                                coordinator=coordinator, devices_per_process=2)))
  try:
    wait_for(lambda: all(re.search(r"step 3/", p.read_text()) for p in logs) or
             any(p.poll() is not None for p in procs), 600, "both processes to train")
    assert all(p.poll() is None for p in procs), "\n".join(p.read_text()[-3000:] for p in logs)
    procs[victim].send_signal(signal.SIGKILL)
    survivor = procs[1 - victim]
    start = time.time()
    wait_for(lambda: survivor.poll() is not None, 30, "the surviving process to exit")
    log = logs[1 - victim].read_text()
    assert survivor.returncode != 0, log[-3000:]
    print(f"survivor exited {survivor.returncode} after {time.time() - start:.1f}s")
    # The dead peer is named by gemb's probe when the survivor's main thread meets the failed
    # collective first, or by jax's coordination service when its heartbeat check aborts
    # the survivor first (both race; each names the process).
    named = (rf"dead peer: process {victim}( \(the coordinator\))? at 127\.0\.0\.1:\d+ "
             rf"\(of 2 processes\)")
    if victim == 1:  # the survivor hosts the coordination service
      named += r"|unhealthy \(stopped sending heartbeats\):\s*1\b|Task 1 heartbeat timeout"
    else:  # the coordination service died with process 0
      named += r"|remote target coordination_service"
    assert re.search(named, log), log[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()


def test_initialize_reads_config_then_environment_and_names_what_is_missing(monkeypatch):
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setattr(distributed, "cluster_detected", lambda: False)
  cfg = distributed_config()
  assert distributed.initialize(cfg) is False  # nothing set, no cluster: one process
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "127.0.0.1:1")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  with pytest.raises(ValueError, match=r"num_processes \(or JAX_NUM_PROCESSES\)$"):
    distributed.initialize(cfg)
  cfg.num_processes = 2
  cfg.process_id = 2  # the config wins over JAX_PROCESS_ID=1
  with pytest.raises(ValueError, match=r"process_id=2 is not in \[0, 2\)"):
    distributed.initialize(cfg)
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  cfg.num_processes = -1
  with pytest.raises(ValueError, match="JAX_NUM_PROCESSES='two' is not an integer"):
    distributed.initialize(cfg)
  cfg.initialize = "never"
  assert distributed.initialize(cfg) is False
  cfg.initialize = "sometimes"
  with pytest.raises(ValueError, match="auto"):
    distributed.initialize(cfg)
