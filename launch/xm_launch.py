"""Launches gemb.main with XManager (PyPI `xmanager`) on Vertex AI or GKE TPU slices.

  python launch/xm_launch.py --platform=gke --accelerator=tpu_v5e --topology=16x16 \
      --workdir=gs://my-bucket/runs/sweep1 --config=configs/default.py \
      --sweep=optimizer.learning_rate=1e-3,3e-3 --sweep=loss.kind=infonce,sigmoid \
      -- --config.stages[0].steps=20000

One job per point of the sweep (the cartesian product of every --sweep), each with its own
workdir <workdir>/<trial name> and the common overrides after `--`. ``--dry_run`` prints the
job specs as JSON and needs neither xmanager nor credentials; the specs are plain data
(``job_specs``), turned into xmanager objects only at launch (``xm_jobs``).

xmanager pins protobuf<7 while gemb's stack pins protobuf 7, so it cannot share gemb's
environment: install the `xm` extra into a separate virtualenv used only for launching
(docs/runbook.md). The job itself runs gemb in a container built from this checkout.
"""

import argparse
import dataclasses
import itertools
import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PLATFORMS = ("vertex", "gke")
TPUS = ("tpu_v4", "tpu_v5e", "tpu_v5p", "tpu_v6e")
GPUS = ("a100", "a100_80gib", "h100")
DEFAULT_IMAGE = "python:3.11-slim"


@dataclasses.dataclass(frozen=True)
class JobSpec:
  """Everything one trial needs, as plain data."""
  name: str
  args: tuple  # command-line flags of gemb.main
  platform: str
  accelerator: str
  topology: str  # TPU slice topology ("16x16") or GPU count per host ("8")
  base_image: str
  tpu_runtime_version: str
  location: str


def parse_sweep(items):
  """["a.b=1,2", "c=x,y"] -> [{"a.b": "1", "c": "x"}, {"a.b": "1", "c": "y"}, ...]."""
  axes = []
  for item in items:
    key, sep, values = item.partition("=")
    if not sep or not key or not values:
      raise ValueError(f"--sweep={item!r}: expected <config field>=<v1>,<v2>,...")
    if key.startswith("--config."):
      key = key[len("--config."):]
    axes.append([(key, v) for v in values.split(",")])
  return [dict(point) for point in itertools.product(*axes)]


def trial_name(point):
  """A readable, path-safe name for one sweep point (each key's last part, "=", value)."""
  if not point:
    return "run"
  parts = [f"{k.rsplit('.', 1)[-1]}={v}" for k, v in point.items()]
  return re.sub(r"[^A-Za-z0-9_.,=-]+", "_", ",".join(parts))


def job_specs(args):
  """The jobs of one launch: one per sweep point."""
  specs = []
  for point in parse_sweep(args.sweep):
    name = trial_name(point)
    workdir = f"{args.workdir.rstrip('/')}/{name}"
    flags = (f"--config={args.config}", f"--workdir={workdir}", *args.overrides,
             *(f"--config.{k}={v}" for k, v in point.items()))
    specs.append(JobSpec(name=name, args=flags, platform=args.platform,
                         accelerator=args.accelerator, topology=args.topology,
                         base_image=args.base_image,
                         tpu_runtime_version=args.tpu_runtime_version,
                         location=args.location))
  names = [s.name for s in specs]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep points share trial names: {names}")
  return specs


def xm_jobs(specs, xm, xm_local):
  """(packageable, [(executor, args)]) for xmanager; builds objects only, contacts nothing."""
  spec0 = specs[0]
  executor_cls = xm_local.Vertex if spec0.platform == "vertex" else xm_local.Kubernetes
  packageable = xm.python_container(
      executor_spec=executor_cls.Spec(), path=ROOT, base_image=spec0.base_image,
      entrypoint=xm.ModuleName("gemb.main"),
      # The image installs gemb with the TPU and GCS extras; data packages via install.sh.
      docker_instructions=[
          f"COPY {os.path.basename(ROOT)}/ /gemb", "WORKDIR /gemb",
          "RUN apt-get update -qq && apt-get install -y -qq git",
          "RUN bash launch/install.sh && .venv/bin/pip install -q -e '.[tpu,gcp]'",
          "ENV PATH=/gemb/.venv/bin:$PATH"])
  jobs = []
  for spec in specs:
    requirements = xm.JobRequirements(**{spec.accelerator: spec.topology},
                                      **({"location": spec.location} if spec.location else {}))
    if spec.platform == "vertex":
      executor = xm_local.Vertex(requirements=requirements)
    else:
      executor = xm_local.Kubernetes(
          requirements=requirements,
          tpu_capability=(xm_local.TpuCapability(tpu_runtime_version=spec.tpu_runtime_version)
                          if spec.accelerator.startswith("tpu") else None))
    jobs.append((executor, list(spec.args)))
  return packageable, jobs


def launch(args, specs):
  from xmanager import xm, xm_local  # pylint: disable=g-import-not-at-top
  packageable, jobs = xm_jobs(specs, xm, xm_local)
  with xm_local.create_experiment(experiment_title=args.experiment_title) as experiment:
    [executable] = experiment.package([packageable])
    for (executor, flags), spec in zip(jobs, specs):
      experiment.add(xm.Job(executable, executor, args=flags, name=spec.name))


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              usage="%(prog)s [options] -- <--config.k=v overrides>")
  p.add_argument("--platform", choices=PLATFORMS, default="gke")
  p.add_argument("--accelerator", choices=TPUS + GPUS, default="tpu_v5e")
  p.add_argument("--topology", default="16x16",
                 help="TPU slice topology (v5e-256: 16x16; v5p-128: 4x4x4) or GPUs per host")
  p.add_argument("--tpu_runtime_version", default="v2-alpha-tpuv5-lite", help="GKE TPU image")
  p.add_argument("--location", default="", help="cluster / region; default: xmanager's")
  p.add_argument("--base_image", default=DEFAULT_IMAGE)
  p.add_argument("--config", default="configs/default.py")
  p.add_argument("--workdir", required=True, help="gs://bucket/experiment (shared by hosts)")
  p.add_argument("--experiment_title", default="gemb")
  p.add_argument("--sweep", action="append", default=[],
                 help="<config field>=<v1>,<v2>,...; repeat for a cartesian product")
  p.add_argument("--dry_run", action="store_true", help="print the job specs as JSON")
  p.add_argument("overrides", nargs=argparse.REMAINDER)
  args = p.parse_args(argv)
  args.overrides = args.overrides[1:] if args.overrides[:1] == ["--"] else args.overrides
  bad = [o for o in args.overrides if not o.startswith("--config.")]
  if bad:
    p.error(f"arguments after -- must be --config.<field>=<value> overrides, got {bad}")
  if not args.workdir.startswith("gs://"):
    p.error(f"--workdir={args.workdir}: cloud jobs need a gs:// workdir")
  return args


def main(argv=None, out=sys.stdout):
  args = parse_args(argv)
  specs = job_specs(args)
  if args.dry_run:
    json.dump([dataclasses.asdict(s) for s in specs], out, indent=2)
    out.write("\n")
    return
  launch(args, specs)


if __name__ == "__main__":
  main()
