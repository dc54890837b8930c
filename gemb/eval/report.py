"""The eval JSON (<workdir>/eval/step_<N>.json) and its human-readable table.

This file owns the on-disk format of evaluation results, one of the stable interfaces of
DESIGN.md:

  {"step": N, "stage": "<name>",
   "tasks": {"<task>": {"R@1": f, "R@5": f, "R@10": f, "NDCG@10": f, "MRR@10": f,
                        "num_queries": n, "num_candidates": m, "chance_R@1": f,
                        "by_dim": {"<d>": {"R@1": f, ...}}}}}

"by_dim" (optional) holds the same metrics at each evaluated Matryoshka output size; the
top-level values are those of the largest size. Metric values are fractions in [0, 1];
keys starting with "num_" are counts. Writes are atomic (a temp file in the same
directory, then a rename), so a reader polling the directory
or a job killed mid-write never sees a truncated file.
"""
import json
import math
import numbers
import os
import tempfile

from gemb import paths

# Column order of markdown_table; metrics outside this list follow, sorted by name.
_COLUMNS = ("R@1", "R@5", "R@10", "NDCG@10", "MRR@10", "chance_R@1", "num_queries",
            "num_candidates")


def _clean_tasks(tasks, allow_by_dim=True):
  """Checks tasks against the format and converts values (numpy scalars too) to JSON types."""
  if not isinstance(tasks, dict):
    raise ValueError(f"tasks must be a dict of task name -> metrics dict, got {type(tasks)}")
  clean = {}
  for task, values in tasks.items():
    if not isinstance(task, str) or not task:
      raise ValueError(f"task names must be non-empty strings, got {task!r}")
    if not isinstance(values, dict):
      raise ValueError(f"task {task!r}: metrics must be a dict, got {type(values)}")
    clean[task] = {}
    for name, value in values.items():
      if not isinstance(name, str):
        raise ValueError(f"task {task!r}: metric names must be strings, got {name!r}")
      if name == "by_dim" and allow_by_dim:
        if not isinstance(value, dict) or not all(str(d).isdigit() for d in value):
          raise ValueError(f"task {task!r}: by_dim must map dims to metrics, got {value!r}")
        clean[task][name] = _clean_tasks({str(d): m for d, m in value.items()},
                                         allow_by_dim=False)
        continue
      if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"task {task!r}: {name} must be a number, got {value!r}")
      if name.startswith("num_"):
        if not math.isfinite(value) or value != int(value) or value < 0:
          raise ValueError(f"task {task!r}: {name} must be a count >= 0, got {value!r}")
        clean[task][name] = int(value)
      else:
        value = float(value)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
          raise ValueError(
              f"task {task!r}: {name} must be a fraction in [0, 1], got {value!r}")
        clean[task][name] = value
  return clean


def eval_json_path(workdir, step):
  """<workdir>/eval/step_<step>.json."""
  return os.path.join(os.fspath(workdir), "eval", f"step_{int(step)}.json")


def write_eval_json(workdir, step, stage, tasks):
  """Writes the results of one evaluation to <workdir>/eval/step_<step>.json atomically.

  Args:
    workdir: the run's working directory (local path or gs:// URL).
    step: the training step evaluated (int >= 0).
    stage: the curriculum stage name at that step.
    tasks: {task name: {metric name: value}}, as returned by retrieval_metrics.

  Returns:
    The path written.
  """
  if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
    raise ValueError(f"step must be an int >= 0, got {step!r}")
  if not isinstance(stage, str):
    raise ValueError(f"stage must be a string, got {stage!r}")
  record = {"step": int(step), "stage": stage, "tasks": _clean_tasks(tasks)}
  if paths.is_url(workdir):  # an object store writes whole objects: atomic already
    path = paths.Path(workdir) / "eval" / f"step_{int(step)}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return str(path)
  path = eval_json_path(workdir, step)
  directory = os.path.dirname(path)
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path), suffix=".tmp")
  try:
    # mkstemp makes the file private (0600); the report is meant to be read by others.
    os.fchmod(fd, 0o644)
    with os.fdopen(fd, "w") as f:
      json.dump(record, f, indent=2)
      f.write("\n")
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def read_eval_json(path):
  """Reads and validates an eval JSON; returns {"step": int, "stage": str, "tasks": {...}}."""
  with open(path) as f:
    record = json.load(f)
  if not isinstance(record, dict) or set(record) != {"step", "stage", "tasks"}:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"{path}: expected keys ['stage', 'step', 'tasks'], got {keys}")
  if isinstance(record["step"], bool) or not isinstance(record["step"], int) \
      or record["step"] < 0:
    raise ValueError(f"{path}: step must be an int >= 0, got {record['step']!r}")
  if not isinstance(record["stage"], str):
    raise ValueError(f"{path}: stage must be a string, got {record['stage']!r}")
  try:
    record["tasks"] = _clean_tasks(record["tasks"])
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return record


def markdown_table(tasks):
  """A markdown table with one row per task (sorted by name) and one column per metric.

  Fractions are printed with 4 decimals, counts as integers, missing metrics as "-".
  """
  tasks = _clean_tasks(tasks)
  names = {m for values in tasks.values() for m in values if m != "by_dim"}
  columns = [c for c in _COLUMNS if c in names] + sorted(names.difference(_COLUMNS))
  fmt = lambda v: "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}")
  lines = ["| task | " + " | ".join(columns) + " |",
           "|---|" + "---:|" * len(columns)]
  for task in sorted(tasks):
    cells = [fmt(tasks[task].get(c)) for c in columns]
    lines.append(f"| {task} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def eval_scalars(tasks):
  """TensorBoard scalars of eval results: eval/<task>/<metric>@<dim> for every by_dim entry."""
  return {f"eval/{name}/{k}@{d}": v for name, metrics in tasks.items()
          for d, ranking in metrics.get("by_dim", {}).items() for k, v in ranking.items()}
