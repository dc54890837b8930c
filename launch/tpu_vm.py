"""Runs gemb.main on a Cloud TPU VM or pod slice, every worker at once, via gcloud.

  python launch/tpu_vm.py --name=gemb-v5e --zone=us-west4-a --accelerator_type=v5litepod-256 \
      --version=v2-alpha-tpuv5-lite --spot --workdir=gs://my-bucket/runs/v5e \
      --config=configs/default.py --dry_run -- --config.stages[0].steps=20000

Steps (``--steps``, default all but delete): create (a TPU VM, or with --queued a queued
resource, waiting until it is ACTIVE), ship (this checkout as a tarball over scp, or
``--ship=git`` to clone --git_url at --git_ref), install (launch/install.sh plus the `tpu`
and `gcp` extras on every worker), run (gemb.main on --worker=all, detached under nohup so
a dropped ssh session does not stop it), logs (follow worker 0's log), delete. ``--dry_run``
prints the exact commands and runs nothing.

Every worker runs the same command; jax.distributed finds the pod's coordinator and
process ids itself (gemb/distributed.py). Preempted (spot / queued) slices: rerun with the
same --workdir (a gs:// URL, read and written by orbax/tensorstore) and training resumes
from the latest checkpoint.
"""

import argparse
import os
import shlex
import subprocess
import sys
import tarfile
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = ("create", "ship", "install", "run", "logs", "delete")
REMOTE_DIR = "gemb"  # under the worker's home directory
REMOTE_LOG = "gemb_run.log"
ARCHIVE = "gemb_code.tar.gz"


class Plan:
  """The gcloud commands of one launch; each command is an argv list."""

  def __init__(self, args):
    self.a = args
    if not args.workdir.startswith("gs://") and hosts(args.accelerator_type) > 1:
      raise ValueError(f"--workdir={args.workdir}: a multi-host slice needs a workdir every "
                       "worker shares, e.g. gs://bucket/run")

  def _where(self):
    flags = [f"--zone={self.a.zone}"]
    if self.a.project:
      flags.append(f"--project={self.a.project}")
    return flags

  def _tpu_vm(self, *verb):
    return ["gcloud", "compute", "tpus", "tpu-vm", *verb]

  def ssh(self, command, worker="all"):
    return self._tpu_vm("ssh", self.a.name, *self._where(), f"--worker={worker}",
                        f"--command={command}")

  def create(self):
    a = self.a
    if a.queued:
      cmd = ["gcloud", "compute", "tpus", "queued-resources", "create", a.name,
             f"--node-id={a.name}", *self._where(), f"--accelerator-type={a.accelerator_type}",
             f"--runtime-version={a.version}"]
      cmd += ["--spot"] if a.spot else []
      cmd += ["--reserved"] if a.reserved else []
      return [cmd]
    cmd = self._tpu_vm("create", a.name, *self._where(),
                       f"--accelerator-type={a.accelerator_type}", f"--version={a.version}")
    cmd += ["--spot"] if a.spot else []
    cmd += ["--reserved"] if a.reserved else []
    return [cmd]

  def queued_state(self):
    return ["gcloud", "compute", "tpus", "queued-resources", "describe", self.a.name,
            *self._where(), "--format=value(state.state)"]

  def ship(self, archive):
    a = self.a
    if a.ship == "git":
      ref = shlex.quote(a.git_ref)
      return [self.ssh(f"rm -rf ~/{REMOTE_DIR} && git clone -q {shlex.quote(a.git_url)} "
                       f"~/{REMOTE_DIR} && git -C ~/{REMOTE_DIR} checkout -q {ref}")]
    return [self._tpu_vm("scp", archive, f"{a.name}:~/{ARCHIVE}", *self._where(),
                         "--worker=all"),
            self.ssh(f"rm -rf ~/{REMOTE_DIR} && mkdir -p ~/{REMOTE_DIR} && "
                     f"tar xzf ~/{ARCHIVE} -C ~/{REMOTE_DIR}")]

  def install(self):
    return [self.ssh(f"cd ~/{REMOTE_DIR} && bash launch/install.sh && "
                     f".venv/bin/pip install -q -e '.[tpu,gcp]'")]

  def main_command(self):
    a = self.a
    argv = [".venv/bin/python", "-m", "gemb.main", f"--config={a.config}",
            f"--workdir={a.workdir}", *a.overrides]
    return " ".join(shlex.quote(x) for x in argv)

  def run(self):
    # setsid + nohup: the training outlives the ssh session; every worker logs locally.
    return [self.ssh(f"cd ~/{REMOTE_DIR} && setsid nohup {self.main_command()} "
                     f"> ~/{REMOTE_LOG} 2>&1 < /dev/null &")]

  def logs(self):
    return [self.ssh(f"tail -n +1 -F ~/{REMOTE_LOG}", worker=self.a.log_worker)]

  def delete(self):
    a = self.a
    if a.queued:
      return [["gcloud", "compute", "tpus", "queued-resources", "delete", a.name,
               *self._where(), "--force", "--quiet"]]
    return [self._tpu_vm("delete", a.name, *self._where(), "--quiet")]


def code_archive(path):
  """This checkout's tracked and untracked-but-not-ignored files as a .tar.gz."""
  files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=ROOT, check=True, capture_output=True).stdout.split(b"\0")
  with tarfile.open(path, "w:gz") as tar:
    for f in files:
      name = f.decode()
      if name and os.path.exists(os.path.join(ROOT, name)):
        tar.add(os.path.join(ROOT, name), arcname=name)
  return path


def execute(cmd, dry_run, out=sys.stdout):
  out.write(shlex.join(cmd) + "\n")
  out.flush()
  if not dry_run:
    subprocess.run(cmd, check=True)


def wait_active(plan, timeout_s, poll_s=30):
  """Polls a queued resource until ACTIVE; fails on a terminal state or the timeout."""
  deadline = time.time() + timeout_s
  while True:
    state = subprocess.run(plan.queued_state(), check=True, capture_output=True,
                           text=True).stdout.strip()
    print(f"[tpu_vm] queued resource {plan.a.name}: {state}", flush=True)
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      raise RuntimeError(f"queued resource {plan.a.name} is {state}")
    if time.time() > deadline:
      raise TimeoutError(f"queued resource {plan.a.name} not ACTIVE after {timeout_s}s")
    time.sleep(poll_s)


def launch(args, out=sys.stdout):
  plan = Plan(args)
  archive = os.path.join(tempfile.gettempdir(), f"{args.name}_{ARCHIVE}")
  try:
    for step in args.steps:
      if step == "create":
        for cmd in plan.create():
          execute(cmd, args.dry_run, out)
        if args.queued and args.dry_run:
          execute(plan.queued_state(), True, out)  # polled until ACTIVE
        elif args.queued:  # minutes to hours, for spot capacity
          wait_active(plan, args.queue_timeout_s)
      elif step == "ship":
        if args.ship == "scp" and not args.dry_run:
          code_archive(archive)
        for cmd in plan.ship(archive):
          execute(cmd, args.dry_run, out)
      else:
        for cmd in getattr(plan, step)():
          execute(cmd, args.dry_run, out)
  finally:
    if os.path.exists(archive):
      os.remove(archive)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              usage="%(prog)s [options] -- <--config.k=v overrides>")
  p.add_argument("--name", required=True, help="TPU VM / queued resource name")
  p.add_argument("--zone", required=True)
  p.add_argument("--project", default="", help="default: gcloud's configured project")
  p.add_argument("--accelerator_type", default="v5litepod-8",
                 help="e.g. v5litepod-256 (v5e), v5p-128, v4-32")
  p.add_argument("--version", default="v2-alpha-tpuv5-lite", help="TPU software version")
  p.add_argument("--spot", action="store_true", help="preemptible capacity")
  p.add_argument("--reserved", action="store_true", help="use the project's reservation")
  p.add_argument("--queued", action="store_true",
                 help="create through a queued resource (waits for capacity)")
  p.add_argument("--queue_timeout_s", type=float, default=6 * 3600)
  p.add_argument("--ship", choices=("scp", "git"), default="scp")
  p.add_argument("--git_url", default="")
  p.add_argument("--git_ref", default="main")
  p.add_argument("--config", default="configs/default.py")
  p.add_argument("--workdir", required=True, help="gs://bucket/run for multi-host slices")
  p.add_argument("--log_worker", default="0", help="worker whose log 'logs' follows")
  p.add_argument("--steps", default=",".join(STEPS[:-1]),
                 help=f"comma-separated subset of {','.join(STEPS)}, run in that order")
  p.add_argument("--dry_run", action="store_true", help="print the commands, run nothing")
  p.add_argument("overrides", nargs=argparse.REMAINDER)
  args = p.parse_args(argv)
  args.overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
  bad = [o for o in args.overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"arguments after -- must be --config.<field>=<value> overrides, got {bad}")
  args.steps = [s.strip() for s in args.steps.split(",") if s.strip()]
  unknown = [s for s in args.steps if s not in STEPS]
  if unknown:
    p.error(f"--steps: unknown {unknown}; choose from {STEPS}")
  args.steps = [s for s in STEPS if s in args.steps]
  if args.ship == "git" and not args.git_url:
    p.error("--ship=git needs --git_url")
  return args


def hosts(accelerator_type):
  """Worker VMs of a slice type ("v5litepod-256" -> 64): chips per host differ by family."""
  family, _, size = accelerator_type.rpartition("-")
  if not size.isdigit():
    raise ValueError(f"--accelerator_type={accelerator_type!r}: expected <family>-<size>")
  size = int(size)
  if family in ("v5litepod", "v5e", "v6e"):  # size counts chips, 4 per host (8 on -8 hosts)
    return max(1, size // 4) if size > 8 else 1
  # v2/v3/v4/v5p: size counts TensorCores, 8 per host (v4/v5p: 4 chips x 2 cores).
  return max(1, size // 8)


def main(argv=None):
  launch(parse_args(argv))


if __name__ == "__main__":
  main()
