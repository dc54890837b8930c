"""Multi-process runs: starting jax.distributed, and stopping every process when one fails.

The same `python -m gemb.main` command runs on every host. ``initialize(config.distributed)``
must run before anything touches devices; it connects this process to the others when the
run is multi-process, decided in this order:

  1. ``coordinator_address`` / ``num_processes`` / ``process_id`` from the config
     (--config.distributed.*) or the environment (JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES,
     JAX_PROCESS_ID; launch/local.py sets these);
  2. otherwise a cluster jax recognizes (Cloud TPU VM pod slices and GKE TPU, SLURM, Open
     MPI...), which supplies all three itself (``initialize="auto"``);
  3. otherwise a single process.

Failures: a dead process makes the others' next collective fail at once (gloo / ICI), and
the coordination service notices its missing heartbeats within ``heartbeat_timeout_s`` and
aborts every process (SIGABRT) with "unhealthy tasks (stopped sending heartbeats): <i>" /
"Task <i> heartbeat timeout". To name the dead peer in gemb's own words, every process keeps
a listening "liveness" socket whose address it publishes at start-up; when an exception
reaches ``stop_all_on_failure`` (the failed collective), it probes the peers' sockets (a
dead process's port refuses connections), logs "dead peer: process <i> at <host:port>", and
exits at once instead of waiting for the others at jax's shutdown barrier. Whichever of the
two comes first stops the process; both name the dead one, and no process hangs.
"""

import concurrent.futures
import contextlib
import os
import socket
import sys
import traceback

import jax
from absl import logging

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"  # the name jax itself reads
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
MODES = ("auto", "always", "never")
# Exit status of a process stopped because the job failed (a peer's or its own error).
EXIT_JOB_FAILED = 3


def _setting(config_value, env_name, kind):
  """Config value if set (non-empty / >= 0), else the environment's, else None."""
  if kind is str:
    return config_value or os.environ.get(env_name) or None
  if config_value is not None and config_value >= 0:
    return int(config_value)
  raw = os.environ.get(env_name)
  if raw is None or raw == "":
    return None
  try:
    return int(raw)
  except ValueError:
    raise ValueError(f"environment variable {env_name}={raw!r} is not an integer") from None


def cluster_detected():
  """Whether jax recognizes a cluster that supplies coordinator, process count and id.

  jax keeps its detectors private (jax._src.clusters); they are what
  jax.distributed.initialize() consults when called without arguments.
  """
  from jax._src import clusters  # pylint: disable=g-import-not-at-top
  return any(not env.opt_in_only_method and env.is_env_present()
             for env in clusters.ClusterEnv._cluster_types)  # pylint: disable=protected-access


def initialize(cfg):
  """Starts jax.distributed if this run is multi-process (see the module docstring).

  Args:
    cfg: config.distributed (initialize, coordinator_address, num_processes, process_id,
      heartbeat_timeout_s, shutdown_timeout_s, initialization_timeout_s).

  Returns:
    True if jax.distributed was initialized.
  """
  if cfg.initialize not in MODES:
    raise ValueError(f"config.distributed.initialize={cfg.initialize!r}; choose one of {MODES}")
  if cfg.initialize == "never":
    return False
  coordinator = _setting(cfg.coordinator_address, ENV_COORDINATOR, str)
  num_processes = _setting(cfg.num_processes, ENV_NUM_PROCESSES, int)
  process_id = _setting(cfg.process_id, ENV_PROCESS_ID, int)
  explicit = coordinator is not None or num_processes is not None or process_id is not None
  if cfg.initialize == "auto" and not explicit and not cluster_detected():
    return False
  if explicit and not cluster_detected() and None in (coordinator, num_processes, process_id):
    missing = [f"--config.distributed.{k} (or {env})" for k, env, v in (
        ("coordinator_address", ENV_COORDINATOR, coordinator),
        ("num_processes", ENV_NUM_PROCESSES, num_processes),
        ("process_id", ENV_PROCESS_ID, process_id)) if v is None]
    raise ValueError(f"multi-process run outside a known cluster needs {', '.join(missing)}")
  if num_processes is not None and process_id is not None and not (
      0 <= process_id < num_processes):
    raise ValueError(f"distributed process_id={process_id} is not in [0, {num_processes})")
  jax.distributed.initialize(
      coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
      heartbeat_timeout_seconds=int(cfg.heartbeat_timeout_s),
      shutdown_timeout_seconds=int(cfg.shutdown_timeout_s),
      initialization_timeout=int(cfg.initialization_timeout_s))
  _publish_liveness(int(cfg.initialization_timeout_s))
  logging.info("jax.distributed: process %d of %d, %d of %d devices local, coordinator "
               "(process 0) at %s", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), _global_state().coordinator_address)
  return True


def _global_state():
  # jax keeps the distributed client private; jax.experimental.multihost_utils uses it too.
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state


# process index -> "host:port" of its liveness socket, fetched once at start-up (the key-value
# store lives in process 0, so it is gone exactly when it would be needed most).
_PEERS = {}
_LIVENESS_SOCKET = None


def _local_ip_towards(address):
  """The local IP this host uses to reach ``address`` (no packet is sent)."""
  host = address.rsplit(":", 1)[0].strip("[]")
  with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.connect((socket.gethostbyname(host), 9))
    return s.getsockname()[0]


def _publish_liveness(timeout_s):
  """Listens on a free port (the kernel answers connects; nothing is accepted) and shares
  its address with every process through jax's key-value store."""
  global _LIVENESS_SOCKET
  state = _global_state()
  _LIVENESS_SOCKET = socket.create_server(("0.0.0.0", 0), backlog=64)
  me = jax.process_index()
  address = f"{_local_ip_towards(state.coordinator_address)}:{_LIVENESS_SOCKET.getsockname()[1]}"
  state.client.key_value_set(f"gemb/liveness/{me}", address)
  for i in range(jax.process_count()):
    _PEERS[i] = state.client.blocking_key_value_get(f"gemb/liveness/{i}", timeout_s * 1000)


def _alive(address, timeout_s=3.0):
  host, port = address.rsplit(":", 1)
  try:
    with socket.create_connection((host, int(port)), timeout=timeout_s):
      return True
  except OSError:
    return False


def dead_processes():
  """Indices of the peer processes whose liveness socket does not answer."""
  me = jax.process_index()
  peers = {i: a for i, a in _PEERS.items() if i != me}
  with concurrent.futures.ThreadPoolExecutor(max(1, min(32, len(peers)))) as pool:
    alive = dict(zip(peers, pool.map(_alive, peers.values())))
  return sorted(i for i, ok in alive.items() if not ok)


def failure_message(error):
  """Why this process stops, naming the dead peers when there are any."""
  me, n = jax.process_index(), jax.process_count()
  dead = dead_processes()
  if dead:
    names = ", ".join(f"process {i}" + (" (the coordinator)" if i == 0 else "") +
                      f" at {_PEERS[i]}" for i in dead)
    return (f"dead peer: {names} (of {n} processes) does not answer on its liveness port. "
            f"Process {me} stops. Error seen here: {error}")
  return f"process {me} of {n} failed and stops the job: {error!r}"


@contextlib.contextmanager
def stop_all_on_failure():
  """In a multi-process run, turns an exception into a logged cause and a prompt exit.

  Python's normal exit would wait at jax's shutdown barrier (shutdown_timeout_s) while the
  other processes block in their next collective; exiting at once lets them fail fast.
  """
  try:
    yield
  except Exception as e:  # pylint: disable=broad-except
    if jax.process_count() == 1:
      raise
    traceback.print_exc()
    message = failure_message(e)
    logging.error("%s", message)
    print(f"gemb: {message}", file=sys.stderr, flush=True)
    logging.flush()
    os._exit(EXIT_JOB_FAILED)  # pylint: disable=protected-access
