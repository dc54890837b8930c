"""Stages resolved from config, the run-wide learning-rate schedule, freezing, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, tiny
from configs.common import stage
from gemb.run import curriculum
from gemb.train import config_check, loop


def two_stage_config():
  c = tiny.get_config()
  c.optimizer.learning_rate = 1e-2
  c.optimizer.warmup_steps = 10
  c.stages = [
      stage("align", 100, data=dict(batch_size=32)),
      stage("finetune", 50, data=dict(num_negatives=2),
            loss=dict(kind="sigmoid", matryoshka_dims=(128,), matryoshka_weights=(1.0,)),
            optimizer=dict(learning_rate=1e-3, warmup_steps=5), freeze="^image/",
            eval=dict(every=10, tasks=("emoji_name_to_image",))),
      stage("polish", 30, optimizer=dict(schedule="continue")),
  ]
  return c


def test_stages_override_only_their_keys():
  c = two_stage_config()
  align, finetune, polish = curriculum.resolve_stages(c)
  assert [(s.start, s.end) for s in (align, finetune, polish)] == [(0, 100), (100, 150),
                                                                  (150, 180)]
  assert align.config.data.batch_size == 32 and finetune.config.data.batch_size == 128
  assert finetune.config.data.num_negatives == 2 and align.config.data.num_negatives == 0
  assert finetune.config.loss.kind == "sigmoid" and finetune.config.loss.symmetric  # inherited
  assert align.config.loss.kind == "infonce" and polish.config.loss.kind == "infonce"
  assert finetune.config.eval.tasks == ("emoji_name_to_image",)
  assert finetune.config.eval.dims == c.eval.dims
  assert finetune.freeze == "^image/" and align.freeze == ""
  assert c.data.batch_size == 128  # the top level is untouched
  assert curriculum.stage_at([align, finetune, polish], 100) is finetune
  assert curriculum.stage_at([align, finetune, polish], 10**6) is polish


def reference_lr(step):
  """The schedule written out by hand: stage 1 warmup 10 -> 1e-2, cosine to 0 at 100;
  stages 2+3 one segment: warmup 5 -> 1e-3, cosine to 0 at 150 + 30."""
  def segment(t, peak, warmup, length):
    if t < warmup:
      return peak * t / warmup
    return peak * 0.5 * (1 + np.cos(np.pi * (t - warmup) / (length - warmup)))
  return segment(step, 1e-2, 10, 100) if step < 100 else segment(step - 100, 1e-3, 5, 80)


def test_learning_rate_spans_stages_with_new_and_continued_segments():
  schedule = curriculum.learning_rate(curriculum.resolve_stages(two_stage_config()))
  for step in (0, 5, 10, 50, 99, 100, 102, 105, 140, 150, 160, 179):
    np.testing.assert_allclose(float(schedule(step)), reference_lr(step), rtol=1e-5,
                               atol=1e-9, err_msg=f"step {step}")


@pytest.mark.parametrize("bad, message", [
    (dict(data=dict(batch_sise=3)), "unknown key data.batch_sise"),
    (dict(loss=dict(kind=3)), "loss.kind=3 has type int"),
    (dict(optimizer=dict(warmup_steps=0.5)), "optimizer.warmup_steps=0.5 has type float"),
    (dict(stepz=3), "unknown key(s) ['stepz']"),
    (dict(freeze="(unclosed"), "is not a regex"),
])
def test_stage_typos_and_wrong_types_name_the_stage_and_key(bad, message):
  c = tiny.get_config()
  fields = dict(name="align", steps=10) | bad
  c.stages = [stage(**fields) if "stepz" not in bad else fields]
  with pytest.raises(ValueError, match=r"stages\[0\] \('align'\)") as e:
    curriculum.resolve_stages(c)
  assert message in str(e.value)


def test_first_stage_cannot_continue_and_names_must_be_unique():
  c = tiny.get_config()
  c.stages = [stage("a", 5, optimizer=dict(schedule="continue"))]
  with pytest.raises(ValueError, match="'continue' needs a previous stage"):
    curriculum.resolve_stages(c)
  c.stages = [stage("a", 5), stage("a", 5)]
  with pytest.raises(ValueError, match="unique"):
    curriculum.resolve_stages(c)
  c.stages = [stage("a", 0)]
  with pytest.raises(ValueError, match="positive int"):
    curriculum.resolve_stages(c)


@pytest.mark.parametrize("override, key", [
    (lambda c: c.stages[1].data.update(mixing="exemple"), r"stages\[1\] \('finetune'\).data.mixing"),
    (lambda c: setattr(c.eval, "dims", (32, 999)), "eval.dims"),
    (lambda c: setattr(c.loss, "matryoshka_weights", (1.0,)), "loss.matryoshka_weights"),
    (lambda c: setattr(c.eval, "tasks", ("no_such_task",)), "no_such_task"),
    (lambda c: setattr(c.soup, "num", 5), "soup.num"),
    (lambda c: setattr(c.train, "log_every", 0), "train.log_every"),
    (lambda c: setattr(c.train, "best_metric", "accuracy"), "train.best_metric"),
    (lambda c: c.data.update(tasks=("labels",), weights=(1.0,), custom_tasks={"labels": dict(
        kind="classification", dataset="emoji", query=("image:image",), label="group",
        templates=("{}",))}), r"data.tasks: \['labels'\] are zero-shot"),
])
def test_validate_names_the_bad_key(override, key):
  c = tiny.get_config()
  override(c)
  with pytest.raises(ValueError, match=key):
    config_check.validate(c)


def test_shipped_configs_validate():
  for module in (tiny, default):
    stages = config_check.validate(module.get_config())
    assert len(stages) >= 2


def test_frozen_mask_matches_paths():
  params = {"image": {"proj": {"kernel": jnp.ones((2, 2))}}, "text": {"table": jnp.ones(3)},
            "encoder": {"blocks": {"norm1": {"scale": jnp.ones((2, 4))}}}}
  mask = curriculum.frozen_mask(params, "^image/")
  assert mask == {"image": {"proj": {"kernel": True}}, "text": {"table": False},
                  "encoder": {"blocks": {"norm1": {"scale": False}}}}
  assert not any(jax.tree.leaves(curriculum.frozen_mask(params, "")))
  with pytest.raises(ValueError, match="matches no parameter"):
    curriculum.frozen_mask(params, "^audio/")


def test_each_stage_evaluates_on_inputs_built_with_its_own_data_settings(monkeypatch):
  """The default recipe's finetune stage turns instructions on: its eval must not reuse the
  align stage's corpora (built without them), and a stage with the same settings must."""
  built = []

  def fake_load_tasks(config, tokenizer, names):
    built.append((tuple(names), config.data.instructions))
    return {t: (t, config.data.instructions) for t in names}

  monkeypatch.setattr(loop, "load_tasks", fake_load_tasks)
  evaluator = loop.Evaluator("/unused", None, None, None, None)
  align, finetune = (s.config for s in curriculum.resolve_stages(default.get_config()))
  assert not align.data.instructions and finetune.data.instructions
  tasks = tuple(align.eval.tasks)
  assert set(evaluator.corpora_for(align).values()) == {(t, False) for t in tasks}
  assert set(evaluator.corpora_for(finetune).values()) == {(t, True) for t in tasks}
  assert set(evaluator.corpora_for(align).values()) == {(t, False) for t in tasks}
  assert built == [(tasks, False), (tasks, True)]  # each built once
