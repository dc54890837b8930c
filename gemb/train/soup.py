"""Parameters from elsewhere: model soups of checkpoints, ``init_from`` another run, and
pretrained towers (a Whisper audio encoder, an EfficientNet-Lite0 image encoder) copied into a
fresh model.

Soup (Wortsman et al. 2022, as in the Gemini Embedding recipe): the uniform average of the
parameters of several checkpoints of one run: the last ``soup.num`` checkpoints
(``soup.kind="last"``) or each stage's final checkpoint (``"stages"``). The run evaluates it
on the last stage's eval tasks and compares it with its best single checkpoint:
eval/soup.json (same format as eval/step_<N>.json) and eval/soup_vs_best.md.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from gemb import paths
from gemb.eval import report
from gemb.model import efficientnet, whisper
from gemb.model.embedders import encoder_name
from gemb.train.checkpoint import Checkpointer
from gemb.train.curriculum import param_path


def uniform_soup(param_trees):
  """Leaf-wise mean of an iterable of same-structure pytrees, in each leaf's dtype.

  Works on numpy trees and on global jax.Arrays (whose shardings it keeps). Sums in float32
  (at least), one tree at a time, so a generator of restored checkpoints never holds more
  than the running sum and one checkpoint in memory.
  """
  total, count = None, 0
  for tree in param_trees:
    if total is None:
      dtypes = jax.tree.map(lambda x: x.dtype, tree)
      total = jax.tree.map(lambda x: jnp.asarray(x, jnp.promote_types(x.dtype, jnp.float32)),
                           tree)
    else:
      if jax.tree.structure(tree) != jax.tree.structure(total):
        raise ValueError(f"checkpoint {count} has another parameter structure than checkpoint 0")
      total = jax.tree.map(jnp.add, total, tree)
    count += 1
  if not count:
    raise ValueError("uniform_soup needs at least one parameter tree")
  return jax.tree.map(lambda s, dtype: (s / count).astype(dtype), total, dtypes)


def soup_of_checkpoints(checkpointer, steps, params_like):
  """Uniform soup of the params of checkpoint ``steps``, restored one at a time onto
  ``params_like``'s shardings (the trainer's end-of-run soup and gemb.export --soup)."""
  if not steps:
    raise ValueError("a soup needs at least one checkpoint step")
  available = set(checkpointer.all_steps())
  missing = [s for s in steps if s not in available]
  if missing:
    raise ValueError(f"no checkpoint for step(s) {missing}; available: {sorted(available)}")
  return uniform_soup(checkpointer.restore_params(s, params_like) for s in steps)


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


def pretrained_params(model_cfg):
  """'path/of/param' -> numpy array of every pretrained part that ``model_cfg`` asks for."""
  parts = {}  # the model's path of a pretrained part -> its parameter tree
  if "audio" in model_cfg.modalities and encoder_name(model_cfg.audio) == "whisper":
    parts["audio/whisper"] = whisper.load_pretrained(model_cfg.audio.whisper_checkpoint)
  image = model_cfg.image
  if "image" in model_cfg.modalities and encoder_name(image) == "efficientnet_lite0":
    parts["image/efficientnet"] = efficientnet.load_pretrained(
        image.efficientnet_checkpoint, image.efficientnet_blocks)
  return {f"{prefix}/{param_path(p)}": x for prefix, tree in parts.items()
          for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def load_pretrained_params(model_cfg, params):
  """``params`` (a fresh model's) with the pretrained parts of ``model_cfg`` copied in, each
  laid out on its parameter's sharding."""
  pretrained = pretrained_params(model_cfg)
  if not pretrained:
    return params
  flat = {param_path(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
  for path, value in pretrained.items():
    if path not in flat:
      raise ValueError(f"pretrained parameter {path} has no place in the model")
    if value.shape != flat[path].shape:
      raise ValueError(f"pretrained parameter {path} has shape {value.shape}, the model "
                       f"{flat[path].shape}")
  logging.info("pretrained: %d parameter arrays (%s)", len(pretrained),
               ", ".join(sorted({"/".join(p.split("/")[:2]) for p in pretrained})))

  def place(path, x):
    value = pretrained.get(param_path(path))
    if value is None:
      return x
    value = value.astype(x.dtype)
    return jax.make_array_from_callback(x.shape, x.sharding, lambda index: value[index])
  return jax.tree_util.tree_map_with_path(place, params)


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
  lines = [f"# Soup of steps {steps} vs best checkpoint (step {best_step}), {metric}", "",
           f"| task | best (step {best_step}) | soup | soup - best |", "|---|---:|---:|---:|"]
  for task in final.config.eval.tasks:
    key = metric if metric in best[task] else "accuracy"  # zero-shot classification tasks
    b, s = best[task][key], soup_results[task][key]
    lines.append(f"| {task} ({key}) | {b:.4f} | {s:.4f} | {s - b:+.4f} |")
  best_score = np.mean(report.metric_values({t: best[t] for t in final.config.eval.tasks}, metric))
  lines.append(f"| **mean** | {best_score:.4f} | {soup_score:.4f} | "
               f"{soup_score - best_score:+.4f} |")
  text = "\n".join(lines) + "\n"
  (paths.Path(workdir) / "eval" / "soup_vs_best.md").write_text(text)
  logging.info("model soup:\n%s", text)
  return soup_results
