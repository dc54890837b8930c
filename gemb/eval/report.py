"""The eval JSON (<workdir>/eval/step_<N>.json) and its human-readable tables.

This file owns the on-disk format of evaluation results, one of the stable interfaces of
DESIGN.md:

  {"step": N, "stage": "<name>",
   "tasks": {"<retrieval task>": {"R@1": f, "R@5": f, "R@10": f, "NDCG@10": f, "MRR@10": f,
                                  "num_queries": n, "num_candidates": m, "chance_R@1": f,
                                  "by_dim": {"<d>": {"R@1": f, ...}},
                                  "encode": {"queries": {"modalities": "image",
                                                         "num_items": n, "seconds": s,
                                                         "items_per_s": r},
                                             "candidates": {...}}},
             "<classification task>": {"accuracy": f, "top5_accuracy": f,
                                       "balanced_accuracy": f, "num_queries": n,
                                       "num_candidates": <classes>, "chance_accuracy": f,
                                       "by_dim": {...}, "encode": {...}}},
   "baseline": {"model": "<what the run started from>", "seed": 0, "tasks": {<the same format>}}}

"by_dim" (optional) holds the quality metrics (all but counts and chance levels) at each
evaluated Matryoshka output size; the top-level values are those of the largest size.
Metric values are fractions in [0, 1]; keys starting with "num_" are counts; "chance_<m>"
is the expected value of metric m for a random ranking; "num_skipped_records" (optional) is
how many bad records of the eval split data.on_bad_record=skip left out. "encode" (optional) is the
throughput of embedding each side (for classification the candidates are the class
prompts), timed without compilation. "baseline" (optional) holds the same tasks evaluated
with the params the run started from ("model" names them: "random_init", or the pretrained
backbone and towers): `python -m gemb.eval` always writes it; the trainer does when the
run starts from a pretrained backbone or init_from (config.eval.baseline), and writes the
start's own results to eval/baseline_<stage>.json.
Writes are atomic (a temp file in the same directory, then a rename), so a reader polling
the directory or a job killed mid-write never sees a truncated file.
"""
import collections
import json
import math
import numbers
import os
import tempfile

from gemb import paths

# Column order of markdown_table; metrics outside this list follow, sorted by name.
_COLUMNS = ("R@1", "R@5", "R@10", "NDCG@10", "MRR@10", "chance_R@1", "accuracy",
            "top5_accuracy", "balanced_accuracy", "chance_accuracy", "num_queries",
            "num_candidates")
_ENCODE_SIDES = ("queries", "candidates")
_ENCODE_KEYS = ("modalities", "num_items", "seconds", "items_per_s")


def headline_metric(metrics):
  """The metric a task is judged by: accuracy for classification, R@1 for retrieval."""
  return "accuracy" if "accuracy" in metrics else "R@1"


def quality_metrics(metrics):
  """The metrics that measure the model: all but counts, chance levels and nested blocks."""
  return {k: v for k, v in metrics.items()
          if not k.startswith(("num_", "chance_")) and not isinstance(v, dict)}


def _number(where, value, ok, expected):
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{where} must be a number, got {value!r}")
  if not ok(value):
    raise ValueError(f"{where} must be {expected}, got {value!r}")
  return value


def _clean_encode(task, encode):
  """Checks a task's "encode" block; returns it with JSON types."""
  if not isinstance(encode, dict) or set(encode) != set(_ENCODE_SIDES):
    raise ValueError(f"task {task!r}: encode must map {list(_ENCODE_SIDES)} to throughput, "
                     f"got {encode!r}")
  clean = {}
  for side, entry in encode.items():
    where = f"task {task!r}: encode.{side}"
    if not isinstance(entry, dict) or set(entry) != set(_ENCODE_KEYS):
      raise ValueError(f"{where} must have keys {list(_ENCODE_KEYS)}, got {entry!r}")
    if not isinstance(entry["modalities"], str) or not entry["modalities"]:
      raise ValueError(f"{where}.modalities must be a name, got {entry['modalities']!r}")
    count = _number(f"{where}.num_items", entry["num_items"],
                    lambda v: math.isfinite(v) and v == int(v) and v > 0, "a count > 0")
    positive = lambda v: math.isfinite(v) and v > 0  # noqa: E731
    clean[side] = {"modalities": entry["modalities"], "num_items": int(count),
                   "seconds": float(_number(f"{where}.seconds", entry["seconds"], positive,
                                            "a time > 0")),
                   "items_per_s": float(_number(f"{where}.items_per_s", entry["items_per_s"],
                                                positive, "a rate > 0"))}
  return clean


def _clean_tasks(tasks, allow_nested=True):
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
      if name == "by_dim" and allow_nested:
        if not isinstance(value, dict) or not all(str(d).isdigit() for d in value):
          raise ValueError(f"task {task!r}: by_dim must map dims to metrics, got {value!r}")
        clean[task][name] = _clean_tasks({str(d): m for d, m in value.items()},
                                         allow_nested=False)
      elif name == "encode" and allow_nested:
        clean[task][name] = _clean_encode(task, value)
      elif name.startswith("num_"):
        clean[task][name] = int(_number(
            f"task {task!r}: {name}", value,
            lambda v: math.isfinite(v) and v == int(v) and v >= 0, "a count >= 0"))
      else:
        clean[task][name] = float(_number(f"task {task!r}: {name}", value,
                                          lambda v: math.isfinite(v) and 0.0 <= v <= 1.0,
                                          "a fraction in [0, 1]"))
  return clean


def _clean_baseline(baseline):
  if not isinstance(baseline, dict) or set(baseline) != {"model", "seed", "tasks"}:
    raise ValueError("baseline must be {'model': name, 'seed': int, 'tasks': {...}}, got "
                     f"{baseline!r:.200}")
  if not isinstance(baseline["model"], str) or not baseline["model"]:
    raise ValueError(f"baseline model must be a name, got {baseline['model']!r}")
  if isinstance(baseline["seed"], bool) or not isinstance(baseline["seed"], numbers.Integral):
    raise ValueError(f"baseline seed must be an int, got {baseline['seed']!r}")
  try:
    tasks = _clean_tasks(baseline["tasks"])
  except ValueError as e:
    raise ValueError(f"baseline: {e}") from None
  return {"model": baseline["model"], "seed": int(baseline["seed"]), "tasks": tasks}


def eval_json_path(workdir, step):
  """<workdir>/eval/step_<step>.json."""
  return os.path.join(os.fspath(workdir), "eval", f"step_{int(step)}.json")


def write_eval_json(workdir, step, stage, tasks, *, baseline=None, name=None):
  """Writes the results of one evaluation to <workdir>/eval/step_<step>.json atomically
  (or to <workdir>/eval/<name>.json, e.g. "soup" for the model soup).

  Args:
    workdir: the run's working directory (local path or gs:// URL).
    step: the training step evaluated (int >= 0).
    stage: the curriculum stage name at that step.
    tasks: {task name: {metric name: value}}, as returned by gemb.eval.tasks.evaluate_dims.
    baseline: optional {"model": name, "seed": int, "tasks": {...}}, the same tasks
      evaluated with a reference model (e.g. the untrained one).

  Returns:
    The path written.
  """
  if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
    raise ValueError(f"step must be an int >= 0, got {step!r}")
  if not isinstance(stage, str):
    raise ValueError(f"stage must be a string, got {stage!r}")
  record = {"step": int(step), "stage": stage, "tasks": _clean_tasks(tasks)}
  if baseline is not None:
    record["baseline"] = _clean_baseline(baseline)
  name = f"step_{int(step)}" if name is None else name
  if paths.is_url(workdir):  # an object store writes whole objects: atomic already
    path = paths.Path(workdir) / "eval" / f"{name}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return str(path)
  path = os.path.join(os.fspath(workdir), "eval", f"{name}.json")
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
  """Reads and validates an eval JSON; returns {"step", "stage", "tasks"[, "baseline"]}."""
  record = json.loads(paths.Path(path).read_text())
  required = {"step", "stage", "tasks"}
  if not isinstance(record, dict) or not required <= set(record) <= required | {"baseline"}:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise ValueError(f"{path}: expected keys ['stage', 'step', 'tasks'] (and optionally "
                     f"'baseline'), got {keys}")
  if isinstance(record["step"], bool) or not isinstance(record["step"], int) \
      or record["step"] < 0:
    raise ValueError(f"{path}: step must be an int >= 0, got {record['step']!r}")
  if not isinstance(record["stage"], str):
    raise ValueError(f"{path}: stage must be a string, got {record['stage']!r}")
  try:
    record["tasks"] = _clean_tasks(record["tasks"])
    if "baseline" in record:
      record["baseline"] = _clean_baseline(record["baseline"])
  except ValueError as e:
    raise ValueError(f"{path}: {e}") from None
  return record


def _table(header, rows):
  lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
  return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows]) + "\n"


def markdown_table(tasks):
  """Markdown tables of the metrics: one per kind of task (retrieval, classification), one
  row per task (sorted by name), one column per metric.

  Fractions are printed with 4 decimals, counts as integers, missing metrics as "-".
  """
  tasks = _clean_tasks(tasks)
  kinds = collections.defaultdict(dict)
  for task, values in tasks.items():
    kinds[headline_metric(values)][task] = values
  fmt = lambda v: "-" if v is None else (str(v) if isinstance(v, int) else f"{v:.4f}")  # noqa: E731
  tables = []
  for _, group in sorted(kinds.items(), key=lambda kv: kv[0] != "R@1"):  # retrieval first
    names = {m for values in group.values() for m, v in values.items()
             if not isinstance(v, dict)}
    columns = [c for c in _COLUMNS if c in names] + sorted(names.difference(_COLUMNS))
    tables.append(_table(["task"] + columns, [[task] + [fmt(group[task].get(c)) for c in columns]
                                              for task in sorted(group)]))
  return "\n".join(tables)


def versus_table(tasks, other, other_name, dims=None):
  """Markdown: each task's headline metric (R@1, or accuracy for classification) next to
  ``other``'s on the same task (a baseline, say), at the top-level dim or at each of
  ``dims``, and the change at the top-level dim; tasks ``other`` lacks are left out."""
  tasks, other = _clean_tasks(tasks), _clean_tasks(other)
  columns = [None] if dims is None else [str(d) for d in dims]
  value = lambda values, metric, dim: (values if dim is None  # noqa: E731
                                       else values["by_dim"][dim])[metric]
  head = (["task", "metric"] + [("" if d is None else f"@{d} ") + f"trained / {other_name}"
                                for d in columns] + ["change"])
  rows, changes = [], []
  for task in sorted(set(tasks) & set(other)):
    metric = headline_metric(tasks[task])
    changes.append(tasks[task][metric] - other[task][metric])
    rows.append([task, metric] + [f"{value(tasks[task], metric, d):.4f} / "
                                  f"{value(other[task], metric, d):.4f}" for d in columns]
                + [f"{changes[-1]:+.4f}"])
  if rows:
    rows.append(["**mean**", ""] + [""] * len(columns) + [f"{sum(changes) / len(changes):+.4f}"])
  return _table(head, rows)


def encode_tables(tasks):
  """Markdown tables of encode throughput: per task and side, and per modality over tasks
  (total items / total seconds). Tasks without an "encode" block are left out."""
  tasks = {t: m for t, m in _clean_tasks(tasks).items() if "encode" in m}
  rows, totals = [], collections.defaultdict(lambda: [0, 0.0])
  for task in sorted(tasks):
    cells = [task]
    for side in _ENCODE_SIDES:
      e = tasks[task]["encode"][side]
      cells += [e["modalities"], str(e["num_items"]), f"{e['items_per_s']:.1f}"]
      totals[e["modalities"]][0] += e["num_items"]
      totals[e["modalities"]][1] += e["seconds"]
    rows.append(cells)
  per_task = _table(["task", "queries", "n", "queries/s", "candidates", "n", "candidates/s"],
                    rows)
  per_modality = _table(["modalities", "items", "seconds", "items/s"],
                        [[m, str(n), f"{s:.3f}", f"{n / s:.1f}"]
                         for m, (n, s) in sorted(totals.items())])
  return per_task + "\n" + per_modality


def metric_values(tasks, metric):
  """``metric`` of every task that reports it (classification tasks have accuracy, not R@K)."""
  return [values[metric] for values in tasks.values() if metric in values]


def eval_scalars(tasks):
  """TensorBoard scalars of eval results: eval/<task>/<metric>@<dim> for every by_dim entry,
  and eval/<task>/encode/<side>_per_s."""
  scalars = {f"eval/{name}/{k}@{d}": v for name, metrics in tasks.items()
             for d, ranking in metrics.get("by_dim", {}).items() for k, v in ranking.items()}
  scalars.update({f"eval/{name}/encode/{side}_per_s": e["items_per_s"]
                  for name, metrics in tasks.items()
                  for side, e in metrics.get("encode", {}).items()})
  return scalars
