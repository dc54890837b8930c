"""Classification by prompts: prompt ensembles, metrics vs numpy/sklearn, corpora from manifests
and the built-in emoji groups, which tasks train and their train examples, and evaluate_dims
vs a plain model."""

import collections
import importlib
import io
import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from sklearn import metrics as skm

from configs import default, tiny
from gemb import parallel
from gemb.data import pipeline, sources
from gemb.data.examples import BadRecord
from gemb.data.tasks import ClassificationSpec
from gemb.data.tokenizer import Tokenizer
from gemb.eval import classification
from gemb.eval.tasks import evaluate_dims
from gemb.model.embedder_model import MultimodalEmbedder

COLORS = {"red": (220, 20, 20), "green": (20, 200, 40), "blue": (30, 40, 230),
          "yellow": (240, 230, 20), "black": (5, 5, 5), "white": (250, 250, 250),
          "purple": (140, 30, 160), "orange": (250, 140, 0)}
TEMPLATES = ("a {} square", "{}", "the colour {}")


def unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_class_embeddings_average_then_normalize():
  prompts = unit(np.random.default_rng(0).normal(size=(4 * 3, 5))).astype(np.float32)
  classes = classification.class_embeddings(prompts, 3)
  for c in range(4):
    expected = unit(prompts[3 * c] + prompts[3 * c + 1] + prompts[3 * c + 2])
    np.testing.assert_allclose(classes[c], expected, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match=r"must be \[num_classes \* 5, D\]"):
    classification.class_embeddings(prompts, 5)


@pytest.mark.filterwarnings("ignore:'k' .* greater than or equal to 'n_classes'")
@pytest.mark.parametrize("num_classes", [9, 3])  # 3 < 5: top-5 covers every class
def test_classification_metrics_vs_sklearn(num_classes):
  rng = np.random.default_rng(num_classes)
  class_emb = unit(rng.normal(size=(num_classes, 8)))
  labels = rng.integers(0, num_classes, size=50)
  queries = unit(class_emb[labels] + 1.2 * rng.normal(size=(50, 8)))
  result = classification.classification_metrics(queries, class_emb, labels)
  scores = queries @ class_emb.T
  every = np.arange(num_classes)
  assert result == pytest.approx({
      "accuracy": skm.accuracy_score(labels, scores.argmax(1)),
      "top5_accuracy": skm.top_k_accuracy_score(labels, scores, k=min(5, num_classes),
                                                labels=every),
      "balanced_accuracy": skm.balanced_accuracy_score(labels, scores.argmax(1)),
      "num_queries": 50, "num_candidates": num_classes, "chance_accuracy": 1 / num_classes})
  if num_classes == 9:
    assert 1 / 9 < result["accuracy"] < result["top5_accuracy"] < 1  # The case discriminates.


def test_classification_metrics_errors():
  q, c = unit(np.ones((2, 3))), unit(np.eye(3))
  with pytest.raises(ValueError, match=r"labels \[3\] out of range \[0, 3\)"):
    classification.classification_metrics(q, c, [0, 3])
  with pytest.raises(ValueError, match=r"labels must be \[N=2\]"):
    classification.classification_metrics(q, c, [0])


@pytest.mark.parametrize("kwargs, match", [
    (dict(templates=()), "needs prompt templates"),
    (dict(templates=("a photo",)), "template 'a photo' must contain '{}'"),
    (dict(templates=("{} {}",)), "exactly once"),
    (dict(classes=("a", "a")), "repeat a name"),
    (dict(query=()), "at least one segment"),
])
def test_spec_errors_name_the_field(kwargs, match):
  spec = dict(name="t", dataset="emoji", query=("image:image",), label="group",
              templates=("{}",))
  with pytest.raises(ValueError, match=match) as e:
    ClassificationSpec(**(spec | kwargs))
  assert "'t'" in str(e.value)


def test_prompts_keep_braces_and_lowercase():
  spec = ClassificationSpec(name="t", dataset="emoji", query=("image:image",), label="g",
                            templates=("an emoji of {}", "{} emoji"), lowercase=True)
  assert spec.prompts("Food & {Drink}") == ["an emoji of food & {drink}", "food & {drink} emoji"]
  assert spec.modalities() == ["image", "text"]


# ---------------------------------------------------------------------------------------
# A manifest dataset: coloured squares labelled with their colour name.

def png(rgb):
  buf = io.BytesIO()
  Image.new("RGB", (24, 24), rgb).save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def colors_dir(tmp_path_factory):
  """colors_test.jsonl: 40 squares, 5 per colour, with jittered shades."""
  root = tmp_path_factory.mktemp("colors")
  (root / "img").mkdir()
  rng = np.random.default_rng(0)
  lines = []
  for i in range(40):
    name = list(COLORS)[i % len(COLORS)]
    rgb = np.clip(np.array(COLORS[name]) + rng.integers(-15, 16, 3), 0, 255)
    (root / "img" / f"{i}.png").write_bytes(png(tuple(int(v) for v in rgb)))
    lines.append({"id": i, "image": {"path": f"img/{i}.png"}, "color": name})
  (root / "colors_test.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  return root


def colors_config(root, **task):
  c = tiny.get_config()
  c.model.update(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=32)
  c.data.custom_tasks = {"colors": dict(
      kind="classification", dataset=f"manifest:{root}/colors_{{split}}.jsonl",
      query=("image:image",), label="color", templates=TEMPLATES, **task)}
  c.eval.tasks = ("colors",)
  return c


@pytest.fixture(scope="module")
def tokenizer(colors_dir):
  texts = [p for name in COLORS for p in ClassificationSpec(
      name="x", dataset="x", query=("image:image",), label="c", templates=TEMPLATES).prompts(name)]
  return Tokenizer.train(texts, 64)


def test_custom_classification_task_from_config(colors_dir, tokenizer):
  c = colors_config(colors_dir)
  (task,) = pipeline.get_tasks(c, ["colors"])
  assert isinstance(task, ClassificationSpec) and task.templates == TEMPLATES
  corpus = pipeline.classification_corpus(c, task, tokenizer)
  assert corpus["classes"] == tuple(sorted(COLORS))
  np.testing.assert_array_equal(
      corpus["labels"], [sorted(COLORS).index(list(COLORS)[i % 8]) for i in range(40)])
  assert corpus["queries"]["image"].shape == (40, 1, 32, 32, 3)
  # Prompts: class after class, templates in order, tokenized like any text segment.
  assert corpus["num_templates"] == 3 and corpus["prompts"]["text"].shape == (24, 1, 16)
  expected = tokenizer.encode(["a black square", "black", "the colour black"], 16)
  np.testing.assert_array_equal(corpus["prompts"]["text"][:3, 0], expected)
  # The tokenizer corpus of a run holds the prompts, never the eval queries.
  assert pipeline.tokenizer_corpus(c, ["colors"]) == [p for name in sorted(COLORS)
                                                      for p in task.prompts(name)]


def test_declared_classes_order_and_unknown_labels(colors_dir, tokenizer):
  c = colors_config(colors_dir, classes=tuple(reversed(sorted(COLORS))) + ("grey",))
  corpus = pipeline.classification_corpus(c, pipeline.get_tasks(c, ["colors"])[0], tokenizer)
  assert corpus["classes"][0] == "yellow" and len(corpus["classes"]) == 9  # "grey": no query
  assert corpus["labels"][0] == corpus["classes"].index("red")
  c = colors_config(colors_dir, classes=("red", "green"))
  with pytest.raises(BadRecord, match=r"'colors'.*labels \['black', 'blue'.*field 'color'"):
    pipeline.classification_corpus(c, pipeline.get_tasks(c, ["colors"])[0], tokenizer)


def test_bad_records_and_kinds_are_named(tmp_path, tokenizer):
  lines = [{"image": {"bytes_b64": ""}, "color": "red"}, {"image": "x", "color": ""}]
  (tmp_path / "bad_test.jsonl").write_text("\n".join(json.dumps(x) for x in lines))
  c = colors_config(tmp_path)
  c.data.custom_tasks.colors.dataset = f"manifest:{tmp_path}/bad_{{split}}.jsonl"
  task = pipeline.get_tasks(c, ["colors"])[0]
  with pytest.raises(BadRecord, match=r"bad_{split}.jsonl.*record 0, field 'image'"):
    pipeline.classification_corpus(c, task, tokenizer)
  c.data.on_bad_record = "skip"
  with pytest.raises(ValueError, match="'colors' split 'test' has no usable records"):
    pipeline.classification_corpus(c, task, tokenizer)
  c.data.custom_tasks.colors.kind = "ranking"
  with pytest.raises(ValueError, match=r"custom_tasks.colors.kind='ranking'.*'classification'"):
    pipeline.get_tasks(c, ["colors"])
  c.data.custom_tasks.colors.kind = "classification"
  c.data.custom_tasks.colors.candidate = ("text:color",)
  with pytest.raises(ValueError, match=r"custom_tasks.colors \(classification\).*candidate"):
    pipeline.get_tasks(c, ["colors"])


def test_which_classification_tasks_train(colors_dir, tokenizer):
  """Zero-shot classification (no train_split) is eval only; with a train_split it trains."""
  assert isinstance(sources.BUILTIN_TASKS["emoji_group_zero_shot"], ClassificationSpec)
  assert sources.EVAL_ONLY_TASKS == {"emoji_group_zero_shot", "wiki_topic_zero_shot"}
  assert set(sources.TRAIN_TASKS) == set(sources.BUILTIN_TASKS) - sources.EVAL_ONLY_TASKS
  c = default.get_config()
  assert c.data.tasks == default.TRAIN_TASKS and len(c.data.weights) == len(c.data.tasks)
  assert set(c.data.tasks) == set(sources.TRAIN_TASKS)  # every train task
  assert "emoji_group_zero_shot" in c.eval.tasks
  c = colors_config(colors_dir)
  c.data.tasks, c.data.weights = ("emoji_image_to_name", "colors"), (1.0, 1.0)
  with pytest.raises(ValueError, match=r"\['colors'\] are zero-shot classification tasks"):
    pipeline.train_dataset(c, tokenizer, seed=0)
  c = colors_config(colors_dir, train_split="test")
  c.data.tasks, c.data.weights, c.data.batch_size = ("colors",), (1.0,), 8
  assert next(iter(pipeline.train_dataset(c, tokenizer, seed=0)))["query"]["image"].shape[0] == 8


def test_classification_trains_on_prompts_of_its_class(colors_dir, tokenizer):
  """Each train record is paired with prompt (index % templates) of its own class, and both
  ids are the class index; the mixture batches such examples."""
  c = colors_config(colors_dir, train_split="test")  # the manifest's one split
  c.data.tasks, c.data.weights, c.data.batch_size = ("colors",), (1.0,), 8
  (task,) = pipeline.get_tasks(c, ["colors"])
  source = pipeline.open_split(c, task, "test")
  loader = pipeline.make_loader(c, task, tokenizer, "test", np.arange(40), source)
  classes = sorted(COLORS)
  prompt_ids = {}
  for i in range(40):
    label = list(COLORS)[i % 8]
    prompt = task.prompts(label)[i % 3]
    example = loader.load(i)
    np.testing.assert_array_equal(example["candidate"]["text"][0],
                                  tokenizer.encode([prompt], 16)[0])
    assert example["query_id"] == example["candidate_id"] == classes.index(label)
    prompt_ids[tuple(example["candidate"]["text"][0])] = classes.index(label)
  assert len(prompt_ids) == 24  # every prompt of every class is used
  batch = next(iter(pipeline.train_dataset(c, tokenizer, seed=0)))
  assert batch["candidate"]["text"].shape == (8, 1, 16)
  np.testing.assert_array_equal(batch["query_id"], batch["candidate_id"])
  assert [prompt_ids[tuple(t[0])] for t in batch["candidate"]["text"]] == list(
      batch["candidate_id"])
  # A train label outside the declared classes is a bad record, named.
  c = colors_config(colors_dir, train_split="test", classes=("red", "green"))
  loader = pipeline.make_loader(c, pipeline.get_tasks(c, ["colors"])[0], tokenizer, "test",
                                np.arange(40), source)
  with pytest.raises(BadRecord, match=r"record 4: label 'black' in field 'color' is not"):
    loader.load(4)


def test_training_on_a_classification_task_learns_it(colors_dir, tmp_path):
  """End to end through the trainer: 40 steps on the colours' prompts take accuracy from
  about chance to (near) perfect."""
  from configs.common import stage
  from gemb.train.loop import train_and_evaluate
  c = colors_config(colors_dir, train_split="test")
  c.data.update(tasks=("colors",), weights=(1.0,), batch_size=16, vocab_size=64)
  c.loss.update(matryoshka_dims=(32,), matryoshka_weights=(1.0,))
  c.optimizer.warmup_steps = 5
  c.eval.dims = (32,)
  c.stages = [stage("fit", 40)]
  c.train.checkpoint_every = 40  # keep_best=1: a classification-only eval ranks nothing
  c.soup.kind = "none"
  by_trainer = train_and_evaluate(c, str(tmp_path))
  trained, random_init, _ = importlib.import_module("gemb.eval.__main__").run(str(tmp_path))
  assert trained["colors"]["accuracy"] == by_trainer["colors"]["accuracy"] >= 0.9
  assert random_init["colors"]["accuracy"] < 0.5


def test_evaluate_dims_equals_a_plain_model(colors_dir, tokenizer):
  """Sharded, batched, padded encode + prompt ensembles vs one unsharded model call and
  numpy, at every dim."""
  c = colors_config(colors_dir)
  corpus = pipeline.classification_corpus(c, pipeline.get_tasks(c, ["colors"])[0], tokenizer)
  mesh = parallel.make_mesh(c.mesh)
  graphdef, params = parallel.create_sharded(
      lambda: MultimodalEmbedder(c.model, rngs=nnx.Rngs(3)), mesh)
  results = evaluate_dims(graphdef, params, mesh, {"colors": corpus}, (8, 32), batch_size=16)

  # One jitted call per side on one device, every item at once: no mesh, batches or padding.
  plain = jax.jit(lambda p, side: nnx.merge(graphdef, p)(side))
  host_params = jax.device_get(params)
  raw_q = np.asarray(plain(host_params, corpus["queries"]), np.float64)
  raw_p = np.asarray(plain(host_params, corpus["prompts"]), np.float64)
  labels = corpus["labels"]
  for dim in (8, 32):
    prompts = unit(raw_p[:, :dim]).reshape(8, 3, dim)
    scores = unit(raw_q[:, :dim]) @ unit(prompts.mean(1)).T
    got = results["colors"]["by_dim"][str(dim)]
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(labels, scores.argmax(1)))
    assert got["top5_accuracy"] == pytest.approx(
        skm.top_k_accuracy_score(labels, scores, k=5, labels=np.arange(8)))
  top = results["colors"]
  assert top["accuracy"] == top["by_dim"]["32"]["accuracy"]
  assert (top["num_queries"], top["num_candidates"], top["chance_accuracy"]) == (40, 8, 1 / 8)
  assert top["encode"]["queries"]["modalities"] == "image"
  assert top["encode"]["candidates"]["modalities"] == "text"
  assert top["encode"]["candidates"]["num_items"] == 24  # 8 classes x 3 templates


def test_emoji_groups(tmp_path):
  """The built-in task on the small emoji build: one query per test image, its group."""
  c = tiny.get_config()
  c.data.data_dir, c.data.builtin_config = str(tmp_path), "small"
  task = sources.BUILTIN_TASKS["emoji_group_zero_shot"]
  records = sources.builtin_source("emoji", "test", str(tmp_path), config="small")
  counts = collections.Counter(records[i]["group"].decode() for i in range(len(records)))
  assert len(counts) > 5  # (the full test split: 518 images, all 9 groups)
  tok = Tokenizer.train(pipeline.tokenizer_corpus(c, ["emoji_group_zero_shot"]), 256)
  corpus = pipeline.classification_corpus(c, task, tok)
  assert corpus["classes"] == tuple(sorted(counts))
  assert collections.Counter(corpus["classes"][i] for i in corpus["labels"]) == counts
  assert corpus["prompts"]["text"].shape[0] == len(counts) * len(task.templates)
  assert corpus["queries"]["image"].shape == (len(records), 1, 32, 32, 3)
  assert tok.encode(["an emoji of flags"], 16)[0].tolist() == corpus["prompts"]["text"][
      corpus["classes"].index("Flags") * len(task.templates) + 1, 0].tolist()
