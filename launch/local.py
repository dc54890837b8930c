"""Runs N jax processes x M CPU devices on this machine, as a multi-host job would run.

  python launch/local.py --num_processes=2 --devices_per_process=2 -- \
      --config=configs/tiny.py --workdir=$PWD/runs/mh --config.stages[0].steps=20

Every process runs `python -m gemb.main <args after -->` with JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID set (gemb/distributed.py reads them) and M simulated CPU
devices. Their output is streamed line by line with a "[p<i>] " prefix. If one process
fails, the others are stopped (SIGTERM, then SIGKILL) and the launcher exits with the
failed process's status after printing which process failed and how.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_env(base_env, *, process_id, num_processes, coordinator, devices_per_process):
  """The environment of one process: where the coordinator is, who it is, its CPU devices."""
  env = dict(base_env)
  flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith(DEVICE_COUNT_FLAG)]
  env["XLA_FLAGS"] = " ".join(flags + [f"{DEVICE_COUNT_FLAG}={devices_per_process}"])
  env.update(JAX_PLATFORMS="cpu", JAX_COORDINATOR_ADDRESS=coordinator,
             JAX_NUM_PROCESSES=str(num_processes), JAX_PROCESS_ID=str(process_id),
             PYTHONUNBUFFERED="1")
  return env


def describe_exit(code):
  if code < 0:
    return f"was killed by {signal.Signals(-code).name}"
  if code == 134:
    return "aborted (SIGABRT, rc 134: jax's coordination service stopped it)"
  return f"exited with code {code}"


def _stream(index, pipe, out, lock):
  for line in iter(pipe.readline, ""):
    with lock:
      out.write(f"[p{index}] {line}")
      out.flush()
  pipe.close()


def run(args, *, num_processes, devices_per_process, module="gemb.main", port=0,
        grace_s=10.0, out=sys.stdout, env=None, cwd=ROOT):
  """Starts the processes, streams their logs, returns the job's exit status.

  0 if every process succeeded; otherwise the status of the first process that failed
  (others are stopped as soon as one fails).
  """
  coordinator = f"127.0.0.1:{port or free_port()}"
  lock = threading.Lock()
  procs, threads = [], []
  for i in range(num_processes):
    p = subprocess.Popen(
        [sys.executable, "-m", module, *args], cwd=cwd, text=True, bufsize=1,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=process_env(os.environ if env is None else env, process_id=i,
                        num_processes=num_processes, coordinator=coordinator,
                        devices_per_process=devices_per_process))
    procs.append(p)
    threads.append(threading.Thread(target=_stream, args=(i, p.stdout, out, lock), daemon=True))
    threads[-1].start()

  def say(message):
    with lock:
      out.write(f"[launch] {message}\n")
      out.flush()

  say(f"{num_processes} processes x {devices_per_process} CPU devices, coordinator "
      f"{coordinator}: python -m {module} {' '.join(args)}")
  status = 0
  try:
    while [p.poll() for p in procs].count(None):  # poll every process, every time
      failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode not in (None, 0)]
      if failed:
        i, status = failed[0]
        say(f"p{i} {describe_exit(status)}; stopping the other processes")
        break
      time.sleep(0.1)
  except KeyboardInterrupt:
    say("interrupted; stopping every process")
    status = 130
  for p in procs:
    if p.poll() is None:
      p.send_signal(signal.SIGTERM)
  deadline = time.time() + grace_s
  for p in procs:
    try:
      p.wait(timeout=max(0.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      p.kill()
      p.wait()
  for t in threads:
    t.join(timeout=5)
  if status == 0:
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    if failed:  # all ended in the same poll interval
      i, status = failed[0]
      say(f"p{i} {describe_exit(status)}")
  if status == 0:
    say("all processes finished")
  return status if status >= 0 else 128 - status


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                   usage="%(prog)s [options] -- <gemb.main flags>")
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--module", default="gemb.main", help="python -m MODULE in each process")
  parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
  parser.add_argument("--grace_s", type=float, default=10.0,
                      help="seconds between SIGTERM and SIGKILL when stopping processes")
  parser.add_argument("args", nargs=argparse.REMAINDER)
  ns = parser.parse_args(argv)
  args = ns.args[1:] if ns.args[:1] == ["--"] else ns.args
  if ns.num_processes < 1 or ns.devices_per_process < 1:
    parser.error("--num_processes and --devices_per_process must be >= 1")
  return run(args, num_processes=ns.num_processes, devices_per_process=ns.devices_per_process,
             module=ns.module, port=ns.port, grace_s=ns.grace_s)


if __name__ == "__main__":
  sys.exit(main())
