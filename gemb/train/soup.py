"""The trainer's end-of-run model soup (gemb/run/soup.py averages the checkpoints): the last
``soup.num`` checkpoints (``soup.kind="last"``) or each stage's final checkpoint
(``"stages"``). The run evaluates it on the last stage's eval tasks and compares it with its
best single checkpoint: eval/soup.json (same format as eval/step_<N>.json) and
eval/soup_vs_best.md.
"""

import jax
import numpy as np
from absl import logging

from gemb import paths
from gemb.eval import report
from gemb.run.soup import soup_of_checkpoints

KINDS = ("last", "stages", "none")  # config.soup.kind

def soup_steps(config, stages, ckpt):
  """Which checkpoints config.soup averages (stage ends are pinned when kind="stages")."""
  if config.soup.kind == "stages":
    return [s.end for s in stages]
  return ckpt.all_steps()[-config.soup.num:]


def best_checkpoint(workdir, kept_steps, config):
  """(step, results) of the kept checkpoint with the best eval score on ``config``'s tasks."""
  best = None
  for path in (paths.Path(workdir) / "eval").glob("step_*.json"):
    record = report.read_eval_json(path)
    tasks = record["tasks"]
    if record["step"] not in kept_steps or not set(config.eval.tasks) <= set(tasks):
      continue
    score = np.mean(report.metric_values({t: tasks[t] for t in config.eval.tasks},
                                  config.train.best_metric))
    if best is None or score > best[0]:
      best = (score, record["step"], tasks)
  return (None, None) if best is None else best[1:]


def soup_and_compare(config, stages, ckpt, params_like, evaluator, workdir):
  """Evaluates the soup and writes its comparison with the best single checkpoint."""
  final = stages[-1]
  steps = soup_steps(config, stages, ckpt)
  soup = soup_of_checkpoints(ckpt, steps, params_like)
  soup_results, soup_score = evaluator(final.config, final.end, "soup", soup, name="soup")
  best_step, best = best_checkpoint(workdir, set(ckpt.all_steps()), final.config)
  if best is None or jax.process_index() != 0:
    return soup_results
  metric = final.config.train.best_metric
  # The run's start, when it was evaluated (a pretrained backbone: config.eval.baseline).
  start = (evaluator.baselines.get("soup") or {}).get("tasks", {})
  lines = [f"# Soup of steps {steps} vs best checkpoint (step {best_step}), {metric}", "",
           f"| task | best (step {best_step}) | soup | soup - best |"
           + (" start | soup - start |" if start else ""),
           "|---|---:|---:|---:|" + ("---:|---:|" if start else "")]
  tasks = final.config.eval.tasks
  for task in tasks:
    key = metric if metric in best[task] else "accuracy"  # zero-shot classification tasks
    b, s = best[task][key], soup_results[task][key]
    row = f"| {task} ({key}) | {b:.4f} | {s:.4f} | {s - b:+.4f} |"
    if start:
      row += f" {start[task][key]:.4f} | {s - start[task][key]:+.4f} |"
    lines.append(row)
  best_score = np.mean(report.metric_values({t: best[t] for t in tasks}, metric))
  row = f"| **mean** | {best_score:.4f} | {soup_score:.4f} | {soup_score - best_score:+.4f} |"
  if start:
    start_score = np.mean(report.metric_values({t: start[t] for t in tasks}, metric))
    row += f" {start_score:.4f} | {soup_score - start_score:+.4f} |"
  lines.append(row)
  text = "\n".join(lines) + "\n"
  (paths.Path(workdir) / "eval" / "soup_vs_best.md").write_text(text)
  logging.info("model soup:\n%s", text)
  return soup_results
