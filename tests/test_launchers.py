"""Launchers: local multi-process failure handling, and the exact TPU VM / xmanager jobs."""

import io
import json
import os
import shlex
import subprocess
import sys
import textwrap
import time

import pytest

from launch import local, tpu_vm, xm_launch

# A stand-in for gemb.main: reports what launch/local.py gave it, then process 1 fails
# while the others would run for a minute.
PROBE = textwrap.dedent("""
    import os, sys, time
    pid = int(os.environ["JAX_PROCESS_ID"])
    print("process", pid, "of", os.environ["JAX_NUM_PROCESSES"], "at",
          os.environ["JAX_COORDINATOR_ADDRESS"], os.environ["XLA_FLAGS"], sys.argv[1:],
          flush=True)
    if pid == 1:
        time.sleep(1)
        print("process 1 gives up", flush=True)
        sys.exit(7)
    time.sleep(60)
""")


@pytest.fixture()
def probe_env(tmp_path):
  (tmp_path / "launch_probe.py").write_text(PROBE)
  env = dict(os.environ, PYTHONPATH=str(tmp_path))
  env.pop("XLA_FLAGS", None)
  return env


def test_local_launcher_prefixes_logs_and_stops_all_when_one_fails(probe_env):
  out = io.StringIO()
  start = time.time()
  status = local.run(["--config.x=1"], num_processes=3, devices_per_process=2,
                     module="launch_probe", env=probe_env, out=out, grace_s=5)
  log = out.getvalue()
  assert time.time() - start < 30, "the healthy processes were not stopped"
  assert status == 7, log
  lines = log.splitlines()
  for i in range(3):
    [hello] = [line for line in lines if line.startswith(f"[p{i}] process {i} of 3 at ")]
    assert "--xla_force_host_platform_device_count=2" in hello and "'--config.x=1'" in hello
  assert "[p1] process 1 gives up" in lines
  assert "[launch] p1 exited with code 7; stopping the other processes" in lines


def test_local_launcher_cli_reports_success(probe_env, tmp_path):
  (tmp_path / "ok_probe.py").write_text("import os; print('ok', os.environ['JAX_PROCESS_ID'])")
  out = subprocess.run([sys.executable, local.__file__, "--num_processes=2", "--module=ok_probe",
                        "--", "--flag"], env=probe_env, capture_output=True, text=True,
                       timeout=60)
  assert out.returncode == 0, out.stdout + out.stderr
  assert "[p0] ok 0" in out.stdout and "[p1] ok 1" in out.stdout
  assert "[launch] all processes finished" in out.stdout


def dry_run(argv):
  out = io.StringIO()
  tpu_vm.launch(tpu_vm.parse_args(["--dry_run", *argv]), out=out)
  return [shlex.split(line) for line in out.getvalue().splitlines()]


def test_tpu_vm_dry_run_of_a_spot_queued_pod_slice():
  cmds = dry_run(["--name=gemb-pod", "--zone=us-west4-a", "--project=proj",
                  "--accelerator_type=v5litepod-256", "--spot", "--queued",
                  "--workdir=gs://bucket/runs/a", "--config=configs/default.py",
                  "--steps=create,ship,install,run,logs,delete", "--",
                  "--config.train.steps=100", "--config.eval.tasks=('emoji_image_to_name',)"])
  where = ["--zone=us-west4-a", "--project=proj"]
  assert cmds[0] == ["gcloud", "compute", "tpus", "queued-resources", "create", "gemb-pod",
                     "--node-id=gemb-pod", *where, "--accelerator-type=v5litepod-256",
                     "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]
  assert cmds[1] == ["gcloud", "compute", "tpus", "queued-resources", "describe", "gemb-pod",
                     *where, "--format=value(state.state)"]
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gemb-pod", *where, "--worker=all"]
  scp = cmds[2]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"]
  assert scp[5].endswith("gemb-pod_gemb_code.tar.gz")
  assert scp[6:] == ["gemb-pod:~/gemb_code.tar.gz", *where, "--worker=all"]
  assert cmds[3] == ssh + ["--command=rm -rf ~/gemb && mkdir -p ~/gemb && "
                           "tar xzf ~/gemb_code.tar.gz -C ~/gemb"]
  assert cmds[4][:-1] == ssh and "bash launch/install.sh" in cmds[4][-1]
  assert ".[tpu,gcp]" in cmds[4][-1]
  # The training command, as every worker's shell will split it.
  assert cmds[5][:-1] == ssh
  remote = cmds[5][-1][len("--command="):]
  main = shlex.split(remote.split("setsid nohup ", 1)[1].split(" > ", 1)[0])
  assert main == [".venv/bin/python", "-m", "gemb.main", "--config=configs/default.py",
                  "--workdir=gs://bucket/runs/a", "--config.train.steps=100",
                  "--config.eval.tasks=('emoji_image_to_name',)"]
  assert remote.endswith("> ~/gemb_run.log 2>&1 < /dev/null &")
  assert cmds[6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "gemb-pod", *where,
                     "--worker=0", "--command=tail -n +1 -F ~/gemb_run.log"]
  assert cmds[7] == ["gcloud", "compute", "tpus", "queued-resources", "delete", "gemb-pod",
                     *where, "--force", "--quiet"]
  assert len(cmds) == 8


def test_tpu_vm_dry_run_of_a_single_vm_shipped_with_git():
  cmds = dry_run(["--name=v", "--zone=z", "--accelerator_type=v5litepod-8",
                  "--workdir=/home/me/run", "--ship=git", "--git_url=https://x/gemb.git",
                  "--git_ref=abc123", "--steps=create,ship,run"])
  assert cmds[0] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "v", "--zone=z",
                     "--accelerator-type=v5litepod-8", "--version=v2-alpha-tpuv5-lite"]
  assert cmds[1][-1] == ("--command=rm -rf ~/gemb && git clone -q https://x/gemb.git ~/gemb "
                         "&& git -C ~/gemb checkout -q abc123")
  assert "--workdir=/home/me/run" in cmds[2][-1]
  assert len(cmds) == 3


def test_tpu_vm_refuses_what_cannot_work():
  with pytest.raises(ValueError, match="gs://"):  # 64 hosts cannot share a local directory
    dry_run(["--name=p", "--zone=z", "--accelerator_type=v5p-128", "--workdir=/tmp/run"])
  with pytest.raises(SystemExit):
    tpu_vm.parse_args(["--name=p", "--zone=z", "--workdir=gs://b/r", "--", "--steps=3"])
  assert [tpu_vm.hosts(t) for t in ("v5litepod-8", "v5litepod-256", "v5p-128", "v4-32")] == \
      [1, 64, 16, 4]


def test_xm_job_specs_for_a_sweep():
  out = io.StringIO()
  xm_launch.main(["--platform=gke", "--accelerator=tpu_v5p", "--topology=4x4x4",
                  "--workdir=gs://b/exp/", "--config=configs/default.py",
                  "--sweep=optimizer.learning_rate=1e-3,3e-3", "--sweep=loss.kind=infonce,sigmoid",
                  "--dry_run", "--", "--config.train.steps=500"], out=out)
  specs = json.loads(out.getvalue())
  assert [s["name"] for s in specs] == [
      "learning_rate=1e-3,kind=infonce", "learning_rate=1e-3,kind=sigmoid",
      "learning_rate=3e-3,kind=infonce", "learning_rate=3e-3,kind=sigmoid"]
  assert specs[1]["args"] == [
      "--config=configs/default.py", "--workdir=gs://b/exp/learning_rate=1e-3,kind=sigmoid",
      "--config.train.steps=500", "--config.optimizer.learning_rate=1e-3",
      "--config.loss.kind=sigmoid"]
  assert {(s["platform"], s["accelerator"], s["topology"]) for s in specs} == {
      ("gke", "tpu_v5p", "4x4x4")}
  with pytest.raises(ValueError, match="--sweep"):
    xm_launch.parse_sweep(["optimizer.learning_rate"])
  with pytest.raises(SystemExit):  # cloud hosts cannot share a local workdir
    xm_launch.parse_args(["--workdir=/tmp/x"])


def test_xm_jobs_build_real_xmanager_objects():
  xm_pkg = pytest.importorskip("xmanager", reason="the `xm` extra lives in its own venv "
                               "(protobuf<7); see docs/runbook.md")
  from xmanager import xm, xm_local  # pylint: disable=g-import-not-at-top
  del xm_pkg
  args = xm_launch.parse_args(["--platform=vertex", "--accelerator=tpu_v5e", "--topology=4x4",
                               "--workdir=gs://b/e", "--sweep=seed=0,1"])
  packageable, jobs = xm_launch.xm_jobs(xm_launch.job_specs(args), xm, xm_local)
  assert packageable.executable_spec.entrypoint.module_name == "gemb.main"
  assert [flags[-1] for _, flags in jobs] == ["--config.seed=0", "--config.seed=1"]
  assert all(isinstance(e, xm_local.Vertex) for e, _ in jobs)
