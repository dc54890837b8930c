"""Stages resolved from config, the run-wide learning-rate schedule, freezing, config checks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default, embeddinggemma, tiny
from configs.common import stage
from gemb.eval import retrieval
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
    (lambda c: c.data.update(text_len_by_task={"no_such_task": 8}),
     r"data.text_len_by_task: 'no_such_task' is not one of the run's tasks"),
    (lambda c: c.data.update(text_len_by_task={c.data.tasks[0]: 0}),
     r"data.text_len_by_task.\w+: must be a positive int, got 0"),
    (lambda c: c.data.update(text_len_by_task={c.data.tasks[0]: 8}, mixing="example"),
     "data.text_len_by_task: needs data.mixing='task'"),
    (lambda c: c.data.update(tasks=("labels",), weights=(1.0,), custom_tasks={"labels": dict(
        kind="classification", dataset="emoji", query=("image:image",), label="group",
        templates=("{}",))}), r"data.tasks: \['labels'\] are zero-shot"),
])
def test_validate_names_the_bad_key(override, key):
  c = tiny.get_config()
  override(c)
  with pytest.raises(ValueError, match=key):
    config_check.validate(c)


def test_text_len_by_task_may_name_a_later_stages_task():
  """One data.text_len_by_task for the whole run: tiny's align stage trains only image ->
  name, its finetune stage also name -> image, which the run-level dict may name."""
  c = tiny.get_config()
  c.eval.tasks = ("emoji_image_to_name",)
  c.data.text_len_by_task = {"emoji_name_to_image": 8}
  stages = config_check.validate(c)
  first = stages[0].config
  assert "emoji_name_to_image" not in (*first.data.tasks, *first.eval.tasks)
  assert stages[1].config.data.text_len_by_task["emoji_name_to_image"] == 8


def test_every_allowed_best_metric_is_one_an_eval_reports():
  """train.best_metric ranks checkpoints by a metric of the eval results, so each allowed
  value must be a key of what a retrieval eval computes (gemb/eval/tasks.py calls
  retrieval_metrics with its default cutoffs); one that no eval reports (mAP) is refused."""
  emb = np.eye(12, dtype=np.float32)
  reported = retrieval.retrieval_metrics(emb, emb, [{i: 1} for i in range(12)])
  c = tiny.get_config()
  for metric in config_check.BEST_METRICS:
    assert reported[metric] == 1.0, metric  # reported, and higher is better
    c.train.best_metric = metric
    config_check.validate(c)
  c.train.best_metric = "mAP"
  with pytest.raises(ValueError, match=r"train.best_metric: 'mAP' is not a retrieval metric"):
    config_check.validate(c)


def test_shipped_configs_validate():
  for config in (tiny.get_config(), default.get_config(), embeddinggemma.get_config(),
                 embeddinggemma.get_config("cpu")):
    stages = config_check.validate(config)
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
  """A finetune stage that turns instructions on (as the recipes' do) must not reuse the
  align stage's eval corpora (built without them), and a stage with the same settings must."""
  built = []

  def fake_load_tasks(config, tokenizer, names):
    built.append((tuple(names), config.data.instructions))
    return {t: (t, config.data.instructions) for t in names}

  monkeypatch.setattr(loop, "load_tasks", fake_load_tasks)
  evaluator = loop.Evaluator("/unused", None, None, None, None)
  c = tiny.get_config()
  c.stages = [stage("align", 2, data=dict(instructions=False)),
              stage("finetune", 2, data=dict(instructions=True))]
  align, finetune = (s.config for s in curriculum.resolve_stages(c))
  assert not align.data.instructions and finetune.data.instructions
  tasks = tuple(align.eval.tasks)
  assert set(evaluator.corpora_for(align).values()) == {(t, False) for t in tasks}
  assert set(evaluator.corpora_for(finetune).values()) == {(t, True) for t in tasks}
  assert set(evaluator.corpora_for(align).values()) == {(t, False) for t in tasks}
  assert built == [(tasks, False), (tasks, True)]  # each built once


def test_the_start_is_evaluated_once_per_corpus_and_listed_in_every_report(tmp_path,
                                                                           monkeypatch):
  """Evaluator.baselines_of_start: one evaluation of the start per distinct eval corpus,
  eval/baseline_<stage>.json, a "baseline" entry in the stage's reports and the soup's, read
  back by a resumed run; stages without eval tasks are skipped."""
  from gemb.eval import report
  calls = []

  def fake_evaluate(graphdef, params, mesh, corpora, dims, batch_size):
    calls.append((params, tuple(sorted(corpora))))
    return {t: {"R@1": 0.25 if params == "start" else 0.5, "num_queries": 4,
                "num_candidates": 4, "chance_R@1": 0.25} for t in corpora}

  monkeypatch.setattr(loop, "evaluate_dims", fake_evaluate)
  monkeypatch.setattr(loop, "load_tasks", lambda config, tok, names: {t: t for t in names})
  c = tiny.get_config()
  c.stages = [stage("align", 2, eval=dict(tasks=())),
              stage("finetune", 2, data=dict(instructions=True)),
              stage("more", 2, data=dict(instructions=True))]
  stages = curriculum.resolve_stages(c)

  class Writer:
    def scalars(self, step, scalars):
      pass

  evaluator = loop.Evaluator(str(tmp_path), None, None, None, Writer())
  evaluator.baselines_of_start(stages, "start", "backbone X, the rest random", 0)
  assert calls == [("start", tuple(sorted(c.eval.tasks)))]  # finetune and more share it
  for name in ("finetune", "more"):
    record = report.read_eval_json(tmp_path / "eval" / f"baseline_{name}.json")
    assert record["step"] == 0 and record["baseline"]["model"] == "backbone X, the rest random"
  assert not (tmp_path / "eval" / "baseline_align.json").exists()

  results, _ = evaluator(stages[1].config, 4, "finetune", "trained")
  saved = report.read_eval_json(tmp_path / "eval" / "step_4.json")
  assert saved["tasks"] == results and saved["baseline"]["tasks"] == {
      t: {"R@1": 0.25, "num_queries": 4, "num_candidates": 4, "chance_R@1": 0.25}
      for t in c.eval.tasks}
  evaluator(stages[2].config, 6, "soup", "trained", name="soup")
  assert report.read_eval_json(tmp_path / "eval" / "soup.json")["baseline"] == saved["baseline"]

  resumed = loop.Evaluator(str(tmp_path), None, None, None, Writer())
  resumed.baselines_of_start(stages, None, "unused", 0)  # a resumed run reads them back
  assert len(calls) == 3 and resumed.baselines["finetune"] == saved["baseline"]


def test_versus_table_lists_each_task_next_to_the_baseline():
  from gemb.eval import report
  trained = {"a": {"R@1": 0.5, "by_dim": {"8": {"R@1": 0.4}}},
             "b": {"accuracy": 0.9, "by_dim": {"8": {"accuracy": 0.7}}}, "c": {"R@1": 0.1}}
  start = {"a": {"R@1": 0.25, "by_dim": {"8": {"R@1": 0.125}}},
           "b": {"accuracy": 0.6, "by_dim": {"8": {"accuracy": 0.5}}}}
  assert report.versus_table(trained, start, "start").splitlines() == [
      "| task | metric | trained / start | change |", "|---|---:|---:|---:|",
      "| a | R@1 | 0.5000 / 0.2500 | +0.2500 |",
      "| b | accuracy | 0.9000 / 0.6000 | +0.3000 |", "| **mean** |  |  | +0.2750 |"]
  by_dim = report.versus_table(trained, start, "start", dims=(8,)).splitlines()
  assert by_dim[2] == "| a | R@1 | 0.4000 / 0.1250 | +0.2500 |"


def test_describe_start_names_what_is_pretrained(tmp_path):
  from gemb.run.init_params import describe_start, starts_pretrained
  c = tiny.get_config()
  assert describe_start(c) == "random_init" and not starts_pretrained(c)
  c.init_from = str(tmp_path)
  assert describe_start(c) == f"init_from {tmp_path} (.*), the rest random"
  assert starts_pretrained(c)
  d = default.get_config()
  assert describe_start(d).startswith(f"backbone {d.model.backbone.checkpoint} + pretrained "
                                      "efficientnet_lite0, whisper")


def test_negative_eval_max_records_is_refused():
  c = tiny.get_config()
  c.eval.max_records = -1
  with pytest.raises(ValueError, match=r"eval.max_records: must be >= 0"):
    config_check.validate(c)


def test_fast_params_learn_faster_by_their_multiplier():
  """optimizer.fast_params / fast_lr_multiplier: the matching parameters' AdamW updates are
  the multiplier times the others' (same gradients), and the optimizer state is the same
  with and without them (stages may differ in them)."""
  from gemb.run.optimizer import make_optimizer
  c = tiny.get_config().optimizer
  c.weight_decay = 0.0
  params = {"image": {"proj": {"kernel": jnp.ones((2, 3))}}, "encoder": {"w": jnp.ones((2, 3))}}
  grads = jax.tree.map(lambda p: jnp.full_like(p, 0.5), params)
  plain = make_optimizer(c, lambda step: 1e-3)
  c.fast_params, c.fast_lr_multiplier = r"^image/proj/", 20.0
  fast = make_optimizer(c, lambda step: 1e-3)
  state = fast.init(params)
  assert jax.tree.structure(state) == jax.tree.structure(plain.init(params))
  updates, _ = fast.update(grads, state, params)
  slow_update, _ = plain.update(grads, plain.init(params), params)
  np.testing.assert_allclose(updates["image"]["proj"]["kernel"],
                             20.0 * slow_update["image"]["proj"]["kernel"], rtol=1e-6)
  np.testing.assert_allclose(updates["encoder"]["w"], slow_update["encoder"]["w"], rtol=1e-6)
  bad = tiny.get_config()
  bad.optimizer.fast_params = "(["
  with pytest.raises(ValueError, match=r"optimizer.fast_params"):
    config_check.validate(bad)
