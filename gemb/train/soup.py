"""Parameters from elsewhere: model soups of checkpoints, and ``init_from`` another run.

Soup (Wortsman et al. 2022, as in the Gemini Embedding recipe): the uniform average of the
parameters of several checkpoints of one run: the last ``soup.num`` checkpoints
(``soup.kind="last"``) or each stage's final checkpoint (``"stages"``). The run evaluates it
on the last stage's eval tasks and compares it with its best single checkpoint:
eval/soup.json (same format as eval/step_<N>.json) and eval/soup_vs_best.md.
"""

import glob
import os
import re

import jax
import numpy as np
from absl import logging

from gemb.eval import report
from gemb.train.checkpoint import Checkpointer
from gemb.train.curriculum import param_path


def uniform_soup(param_trees):
  """The element-wise mean of parameter pytrees of one structure (kept on their devices)."""
  if not param_trees:
    raise ValueError("a soup needs at least one parameter tree")
  n = len(param_trees)
  return jax.tree.map(lambda *xs: sum(xs[1:], xs[0]) / n, *param_trees)


def load_init_params(path, pattern, params):
  """``params`` with the leaves whose path matches ``pattern`` replaced by those of the
  latest checkpoint under ``path`` (another run's workdir or checkpoints directory); its
  optimizer state is not read. Restored onto ``params``' shardings, whatever mesh saved it."""
  source = Checkpointer(path, read_only=True, async_save=False)
  step = source.latest_step()
  if step is None:
    raise ValueError(f"init_from={path!r}: no checkpoint there")
  regex = re.compile(pattern)
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  chosen = {param_path(p): x for p, x in flat if regex.search(param_path(p))}
  if not chosen:
    raise ValueError(f"init_params={pattern!r} matches no parameter")
  restored = source.restore_params(step, _nest(chosen))
  source.close()
  restored = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(restored)[0]}
  logging.info("init_from %s step %d: %d of %d parameter arrays", path, step, len(restored),
               len(flat))
  return jax.tree_util.tree_map_with_path(
      lambda p, x: restored.get(param_path(p), x), params)


def _nest(flat):
  """{'a/b/c': x} -> {'a': {'b': {'c': x}}} (numeric keys back to ints, as nnx uses them)."""
  tree = {}
  for path, x in flat.items():
    node, keys = tree, [int(k) if k.isdigit() else k for k in path.split("/")]
    for k in keys[:-1]:
      node = node.setdefault(k, {})
    node[keys[-1]] = x
  return tree


def soup_steps(config, stages, ckpt):
  kept = ckpt.all_steps()
  if config.soup.kind == "stages":
    steps = [s.end for s in stages]
  else:
    steps = kept[-config.soup.num:]
  missing = sorted(set(steps) - set(kept))
  if missing:
    raise ValueError(f"soup.kind={config.soup.kind!r} needs checkpoints {missing}, which "
                     f"are not kept (kept: {kept}); raise train.keep_checkpoints")
  return steps


def best_checkpoint(workdir, kept_steps, config):
  """(step, results) of the kept checkpoint with the best eval score on ``config``'s tasks."""
  best = None
  for path in glob.glob(os.path.join(workdir, "eval", "step_*.json")):
    record = report.read_eval_json(path)
    tasks = record["tasks"]
    if record["step"] not in kept_steps or not set(config.eval.tasks) <= set(tasks):
      continue
    score = np.mean([tasks[t][config.train.best_metric] for t in config.eval.tasks])
    if best is None or score > best[0]:
      best = (score, record["step"], tasks)
  return (None, None) if best is None else best[1:]


def soup_and_compare(config, stages, ckpt, params_like, evaluator, workdir):
  """Evaluates the soup and writes its comparison with the best single checkpoint."""
  final = stages[-1]
  steps = soup_steps(config, stages, ckpt)
  soup = uniform_soup([ckpt.restore_params(s, params_like) for s in steps])
  soup_results, soup_score = evaluator(final.config, final.end, "soup", soup, name="soup")
  best_step, best = best_checkpoint(workdir, set(ckpt.all_steps()), final.config)
  if best is None or jax.process_index() != 0:
    return soup_results
  metric = final.config.train.best_metric
  lines = [f"# Soup of steps {steps} vs best checkpoint (step {best_step}), {metric}", "",
           f"| task | best (step {best_step}) | soup | soup - best |", "|---|---:|---:|---:|"]
  for task in final.config.eval.tasks:
    b, s = best[task][metric], soup_results[task][metric]
    lines.append(f"| {task} | {b:.4f} | {s:.4f} | {s - b:+.4f} |")
  best_score = np.mean([best[t][metric] for t in final.config.eval.tasks])
  lines.append(f"| **mean** | {best_score:.4f} | {soup_score:.4f} | "
               f"{soup_score - best_score:+.4f} |")
  text = "\n".join(lines) + "\n"
  with open(os.path.join(workdir, "eval", "soup_vs_best.md"), "w") as f:
    f.write(text)
  logging.info("model soup:\n%s", text)
  return soup_results
