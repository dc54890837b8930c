"""The curriculum: ``config.stages`` resolved into stages that run in order in one job.

A stage is a dict in the config:

  dict(name="finetune", steps=400,
       data=dict(tasks=..., weights=..., batch_size=64, num_negatives=2, instructions=True),
       loss=dict(kind="infonce", matryoshka_dims=...),      # any key of config.loss
       optimizer=dict(schedule="continue"),                   # any key of config.optimizer
       freeze="",                                             # regex over parameter paths
       eval=dict(every=100, tasks=...))                       # any key of config.eval

Each of ``data`` / ``loss`` / ``optimizer`` / ``eval`` overrides the config's top-level
section of the same name for that stage only, so the top level holds the defaults that
stages share. A stage's resolved config is a full copy of the config with those sections
replaced: everything downstream (pipeline, loss, step, eval) reads ``config.data`` etc.
and never needs to know about stages.

Learning rate: ``optimizer.schedule="new"`` (the default) starts a fresh warmup + cosine
decay for the stage (its own ``learning_rate`` peak, ``warmup_steps`` and
``end_lr_fraction``); ``"continue"`` extends the previous stage's decay over this stage
too. The schedule is one function of the global step, so Adam's state carries over
stage boundaries unchanged and a resumed run lands at the same point of it.

``freeze`` names parameters (paths like ``image/proj/kernel``, gemb/trees.py) that the stage
does not update (LiT-style: e.g. ``"^image/"`` keeps the image tower fixed); with LoRA, the
adapters of the kernels it names too.
"""

import dataclasses
import re

import jax
import ml_collections
import optax

from gemb.run.optimizer import learning_rate_schedule
from gemb.trees import param_path

SECTIONS = ("data", "loss", "optimizer", "eval")
STAGE_KEYS = ("name", "steps", "freeze") + SECTIONS
SCHEDULES = ("new", "continue")


@dataclasses.dataclass(frozen=True)
class Stage:
  index: int
  name: str
  start: int                          # global step at which the stage begins
  end: int                            # global step at which it ends (exclusive)
  config: ml_collections.ConfigDict   # the whole config with this stage's sections
  freeze: str

  @property
  def steps(self):
    return self.end - self.start


def _stage_error(i, stage, message):
  name = stage.get("name", "?") if hasattr(stage, "get") else "?"
  return ValueError(f"config.stages[{i}] ({name!r}): {message}")


def _check_override(i, stage, section, base, override, prefix):
  """Every overridden key must exist in the top-level section, with a compatible type."""
  for key, value in override.items():
    path = f"{prefix}.{key}"
    if key not in base:
      raise _stage_error(i, stage, f"unknown key {section}{path} (not in config.{section}; "
                         f"known: {sorted(base.keys())})")
    default = base[key]
    if isinstance(default, (dict, ml_collections.ConfigDict)):
      if not isinstance(value, (dict, ml_collections.ConfigDict)):
        raise _stage_error(i, stage, f"{section}{path} must be a dict, got {value!r}")
      _check_override(i, stage, section, default, value, path)
    elif default is not None and value is not None and not _same_kind(default, value):
      raise _stage_error(i, stage, f"{section}{path}={value!r} has type "
                         f"{type(value).__name__}; config.{section}{path} is "
                         f"{type(default).__name__}")


def _same_kind(default, value):
  number = (int, float)
  if isinstance(default, bool) or isinstance(value, bool):
    return isinstance(default, bool) and isinstance(value, bool)
  if isinstance(default, number):
    return isinstance(value, number) and (isinstance(default, float) or isinstance(value, int))
  if isinstance(default, (tuple, list)):
    return isinstance(value, (tuple, list))
  return isinstance(value, type(default))


def resolve_stages(config):
  """config -> [Stage] in run order; raises ValueError naming the bad stage and key."""
  raw = list(config.get("stages") or [])
  if not raw:
    raise ValueError("config.stages is empty: a run needs at least one stage")
  stages, start, names = [], 0, set()
  for i, stage in enumerate(raw):
    if not isinstance(stage, (dict, ml_collections.ConfigDict)):
      raise ValueError(f"config.stages[{i}] must be a dict, got {type(stage).__name__}")
    unknown = set(stage.keys()) - set(STAGE_KEYS)
    if unknown:
      raise _stage_error(i, stage, f"unknown key(s) {sorted(unknown)}; a stage has "
                         f"{STAGE_KEYS}")
    name, steps = stage.get("name"), stage.get("steps")
    if not isinstance(name, str) or not name or name in names:
      raise _stage_error(i, stage, f"needs a unique non-empty name, got {name!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps <= 0:
      raise _stage_error(i, stage, f"steps must be a positive int, got {steps!r}")
    names.add(name)
    resolved = ml_collections.ConfigDict(config.to_dict())  # a full, independent copy
    for section in SECTIONS:
      override = stage.get(section) or {}
      _check_override(i, stage, section, config[section], override, "")
      resolved[section].update(dict(override))
    schedule = resolved.optimizer.get("schedule", "new")
    if schedule not in SCHEDULES or (schedule == "continue" and i == 0):
      raise _stage_error(i, stage, f"optimizer.schedule={schedule!r}; choose one of "
                         f"{SCHEDULES} ('continue' needs a previous stage)")
    freeze = stage.get("freeze") or ""
    try:
      re.compile(freeze)
    except re.error as e:
      raise _stage_error(i, stage, f"freeze={freeze!r} is not a regex: {e}") from None
    stages.append(Stage(i, name, start, start + steps, resolved, freeze))
    start += steps
  return stages


def learning_rate(stages):
  """One schedule over the whole run: a warmup + cosine segment per "new" stage, stretched
  over the "continue" stages that follow it."""
  segments = []  # [first stage, length]
  for stage in stages:
    if stage.config.optimizer.get("schedule", "new") == "continue":
      segments[-1][1] += stage.steps
    else:
      segments.append([stage, stage.steps])
  schedules = [learning_rate_schedule(first.config.optimizer, length)
               for first, length in segments]
  boundaries = [first.start for first, _ in segments[1:]]
  return schedules[0] if not boundaries else optax.join_schedules(schedules, boundaries)


def frozen_mask(params, pattern):
  """Pytree of bools: True where the parameter's path matches ``pattern``."""
  if not pattern:
    return jax.tree.map(lambda _: False, params)
  regex = re.compile(pattern)
  mask = jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(param_path(p))),
                                          params)
  if not any(jax.tree.leaves(mask)):
    raise ValueError(f"freeze={pattern!r} matches no parameter; paths look like "
                     f"{param_path(jax.tree_util.tree_flatten_with_path(params)[0][0][0])!r}")
  return mask
