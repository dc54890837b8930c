"""Ranking metrics vs sklearn, brute-force loops and hand-computed cases; the eval JSON."""
import json
import math
import os

import numpy as np
import pytest
from sklearn import metrics as skm

from gemb.eval import metrics
from gemb.eval import report


def random_case(seed, num_q=20, num_c=15, max_grade=3):
  """Random graded qrels and the full score matrix a ranking was made from."""
  rng = np.random.default_rng(seed)
  qrels = []
  for _ in range(num_q):
    n = rng.integers(1, 5)
    cands = rng.choice(num_c, size=n, replace=False)
    qrels.append({int(c): int(rng.integers(1, max_grade + 1)) for c in cands})
  scores = rng.normal(size=(num_q, num_c))  # Continuous: no ties.
  ranked = np.argsort(-scores, axis=1)
  grades = np.zeros((num_q, num_c))
  for q, rel in enumerate(qrels):
    for c, g in rel.items():
      grades[q, c] = g
  return qrels, scores, ranked, grades


# A hand-computed case: 3 queries, candidates 0..5.
HAND_RANKED = np.array([[3, 1, 2, 0],
                        [0, 2, 1, 4],
                        [5, 4, 3, 2]])
HAND_QRELS = [{1: 1},          # first relevant at rank 2
              {0: 2, 1: 1},    # ranks 1 and 3
              {0: 1}]          # not retrieved at all


def test_hand_computed():
  assert metrics.recall_at_k(HAND_RANKED, HAND_QRELS, 1) == pytest.approx(1 / 3)
  assert metrics.recall_at_k(HAND_RANKED, HAND_QRELS, 2) == pytest.approx(2 / 3)
  assert metrics.recall_at_k(HAND_RANKED, HAND_QRELS, 4) == pytest.approx(2 / 3)
  assert metrics.mrr_at_k(HAND_RANKED, HAND_QRELS, 1) == pytest.approx(1 / 3)
  assert metrics.mrr_at_k(HAND_RANKED, HAND_QRELS, 4) == pytest.approx((1 / 2 + 1 + 0) / 3)
  # NDCG@4, linear gain. q0: 1/log2(3) over ideal 1. q1: (2 + 1/log2(4)) / (2 + 1/log2(3)).
  q0 = 1 / math.log2(3)
  q1 = (2 + 0.5) / (2 + 1 / math.log2(3))
  assert metrics.ndcg_at_k(HAND_RANKED, HAND_QRELS, 4) == pytest.approx((q0 + q1 + 0) / 3)
  # Exponential gain: grade 2 -> 3, grade 1 -> 1.
  q1_exp = (3 + 0.5) / (3 + 1 / math.log2(3))
  assert metrics.ndcg_at_k(HAND_RANKED, HAND_QRELS, 4, gain="exponential") == pytest.approx(
      (q0 + q1_exp) / 3)


def test_recall_is_hit_rate_not_ir_recall():
  # 2 of 4 relevant retrieved in the top 2: the IR recall would be 0.5, R@K is 1.
  assert metrics.recall_at_k([[0, 1, 9]], [{0: 1, 1: 1, 2: 1, 3: 1}], 2) == 1.0


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 3, 10])
def test_recall_and_mrr_vs_loops(seed, k):
  qrels, _, ranked, _ = random_case(seed)
  hit, rr = [], []
  for q in range(len(qrels)):
    found = [i for i in range(k) if ranked[q, i] in qrels[q]]
    hit.append(1.0 if found else 0.0)
    rr.append(1.0 / (found[0] + 1) if found else 0.0)
  assert metrics.recall_at_k(ranked, qrels, k) == pytest.approx(np.mean(hit))
  assert metrics.mrr_at_k(ranked, qrels, k) == pytest.approx(np.mean(rr))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [1, 3, 5, 15])
def test_ndcg_vs_sklearn(seed, k):
  qrels, scores, ranked, grades = random_case(seed)
  expected = skm.ndcg_score(grades, scores, k=k)  # Linear gains, ideal from all grades.
  assert metrics.ndcg_at_k(ranked, qrels, k) == pytest.approx(expected, abs=1e-12)
  # Only the top K=k columns are needed: the ideal DCG still comes from the qrels.
  assert metrics.ndcg_at_k(ranked[:, :k], qrels, k) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("k", [1, 4, 15])
def test_ndcg_exponential_vs_loop(k):
  qrels, _, ranked, _ = random_case(7)
  per_query = []
  for q, rel in enumerate(qrels):
    dcg = sum((2 ** rel.get(int(ranked[q, i]), 0) - 1) / math.log2(i + 2) for i in range(k))
    ideal = sorted(rel.values(), reverse=True)
    idcg = sum((2 ** g - 1) / math.log2(i + 2) for i, g in enumerate(ideal) if i < k)
    per_query.append(dcg / idcg)
  assert metrics.ndcg_at_k(ranked, qrels, k, gain="exponential") == pytest.approx(
      np.mean(per_query))


def test_ndcg_counts_unretrieved_relevant_in_ideal():
  # One of two equally relevant items retrieved at rank 1: DCG = 1, IDCG = 1 + 1/log2(3).
  value = metrics.ndcg_at_k([[0, 5]], [{0: 1, 7: 1}], 2)
  assert value == pytest.approx(1 / (1 + 1 / math.log2(3)))


def test_negative_ranked_entries_never_relevant():
  assert metrics.recall_at_k([[-1, 2]], [{2: 1}], 1) == 0.0
  assert metrics.mrr_at_k([[-1, 2]], [{2: 1}], 2) == 0.5


def test_zero_shot_accuracy():
  labels = np.array([0, 2, 1, 1])
  assert metrics.zero_shot_accuracy(np.array([0, 2, 2, 1]), labels) == 0.75
  scores = np.array([[0.9, 0.1, 0.0],
                     [0.0, 0.2, 0.7],
                     [0.5, 0.5, 0.1],   # tie between 0 and 1 -> class 0 (wrong)
                     [0.1, 0.8, 0.8]])  # tie between 1 and 2 -> class 1 (right)
  assert metrics.zero_shot_accuracy(scores, labels) == 0.75
  rng = np.random.default_rng(0)
  scores = rng.normal(size=(50, 7))
  labels = rng.integers(0, 7, size=50)
  assert metrics.zero_shot_accuracy(scores, labels) == pytest.approx(
      skm.accuracy_score(labels, scores.argmax(1)))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 2, 5])
def test_top_k_accuracy_vs_sklearn(seed, k):
  rng = np.random.default_rng(seed)
  scores = rng.normal(size=(40, 7))  # Continuous: no ties.
  labels = rng.integers(0, 7, size=40)
  ranked = np.argsort(-scores, axis=1)[:, :5]
  assert metrics.top_k_accuracy(ranked, labels, k) == pytest.approx(
      skm.top_k_accuracy_score(labels, scores, k=k, labels=np.arange(7)))
  if k == 1:
    assert metrics.top_k_accuracy(ranked, labels, 1) == metrics.zero_shot_accuracy(scores, labels)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_balanced_accuracy_vs_sklearn():
  rng = np.random.default_rng(3)
  labels = rng.choice(5, size=60, p=[0.6, 0.2, 0.1, 0.05, 0.05])
  pred = np.where(rng.random(60) < 0.5, labels, rng.integers(0, 6, size=60))
  assert metrics.balanced_accuracy(pred, labels) == pytest.approx(
      skm.balanced_accuracy_score(labels, pred))
  # A majority-class guess: high accuracy, balanced accuracy 1 / (classes present).
  majority = np.zeros_like(labels)
  assert metrics.balanced_accuracy(majority, labels) == pytest.approx(1 / len(set(labels)))


def test_chance_recall_at_1_is_expected_random_r1():
  qrels, _, _, _ = random_case(4, num_c=9)
  # Exact expectation over a uniformly random top-1: average R@1 over every possible top-1.
  per_top1 = [metrics.recall_at_k(np.full((len(qrels), 1), c), qrels, 1) for c in range(9)]
  assert metrics.chance_recall_at_1(qrels, 9) == pytest.approx(np.mean(per_top1))
  assert metrics.chance_recall_at_1([{0: 1}, {1: 1, 2: 1}], 4) == pytest.approx(3 / 8)


@pytest.mark.parametrize("call, match", [
    (lambda: metrics.recall_at_k(HAND_RANKED, HAND_QRELS, 5), "k=5 exceeds the 4"),
    (lambda: metrics.recall_at_k(HAND_RANKED, HAND_QRELS, 0), "k must be a positive int"),
    (lambda: metrics.recall_at_k(HAND_RANKED, HAND_QRELS[:2], 1), "qrels has 2 queries"),
    (lambda: metrics.ndcg_at_k(HAND_RANKED, [{1: 1}, {}, {0: 1}], 1), "query 1 has no relevant"),
    (lambda: metrics.mrr_at_k(HAND_RANKED, [{1: 0}, {0: 1}, {0: 1}], 1), "grade of candidate 1"),
    (lambda: metrics.ndcg_at_k(HAND_RANKED, HAND_QRELS, 2, gain="log"), "'log'"),
    (lambda: metrics.recall_at_k(np.zeros((2, 2)), [{0: 1}] * 2, 1), "integer candidate"),
    (lambda: metrics.recall_at_k([1, 2], [{0: 1}] * 2, 1), r"ranked must be \[Q, K\]"),
    (lambda: metrics.chance_recall_at_1([{4: 1}], 4), r"\[4\] out of range"),
    (lambda: metrics.zero_shot_accuracy([0, 1], [0]), "labels must be"),
    (lambda: metrics.top_k_accuracy([[0, 1]], [0], 3), r"k must be an int in \[1, 2\].*got 3"),
    (lambda: metrics.top_k_accuracy([[0, 1]], [0, 1], 1), r"labels must be \[N\] with N=1"),
    (lambda: metrics.top_k_accuracy(np.zeros((1, 2)), [0], 1), "int class ids"),
    (lambda: metrics.balanced_accuracy([0, 1], [0]), "pred and labels must be"),
])
def test_errors_name_the_bad_value(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ----------------------------------------------------------------------------- eval JSON

TASKS = {
    "coco_t2i": {"R@1": 0.25, "R@5": np.float32(0.5), "R@10": 0.75, "NDCG@10": 0.4,
                 "MRR@10": 0.35, "num_queries": np.int64(8), "num_candidates": 4,
                 "chance_R@1": 0.25},
    "audiocaps_a2t": {"R@1": 0.0, "R@5": 1.0, "R@10": 1.0, "NDCG@10": 0.5, "MRR@10": 0.2,
                      "num_queries": 3, "num_candidates": 3, "chance_R@1": 1 / 3},
}


def test_eval_json_roundtrip(tmp_path):
  path = report.write_eval_json(str(tmp_path), 120, "stage1", TASKS)
  assert path == os.path.join(str(tmp_path), "eval", "step_120.json")
  assert os.listdir(tmp_path / "eval") == ["step_120.json"]  # No temp file left behind.
  with open(path) as f:
    raw = json.load(f)
  assert list(raw) == ["step", "stage", "tasks"]
  assert raw["step"] == 120 and raw["stage"] == "stage1"
  assert raw["tasks"]["coco_t2i"]["R@5"] == 0.5
  assert isinstance(raw["tasks"]["coco_t2i"]["num_queries"], int)
  assert report.read_eval_json(path) == raw
  # Rewriting the same step replaces the file.
  report.write_eval_json(tmp_path, 120, "stage2", {"t": {"R@1": 1.0}})
  assert report.read_eval_json(path)["stage"] == "stage2"


@pytest.mark.parametrize("tasks, match", [
    ({"t": {"R@1": 1.5}}, "R@1 must be a fraction in \\[0, 1\\], got 1.5"),
    ({"t": {"R@1": float("nan")}}, "R@1 must be a fraction"),
    ({"t": {"num_queries": 2.5}}, "num_queries must be a count"),
    ({"t": {"R@1": "high"}}, "R@1 must be a number, got 'high'"),
    ({"t": [0.5]}, "task 't': metrics must be a dict"),
])
def test_eval_json_rejects_bad_values(tmp_path, tasks, match):
  with pytest.raises(ValueError, match=match):
    report.write_eval_json(tmp_path, 1, "s", tasks)
  assert not os.path.exists(report.eval_json_path(tmp_path, 1))


def test_read_eval_json_rejects_other_formats(tmp_path):
  path = tmp_path / "x.json"
  path.write_text(json.dumps({"step": 1, "tasks": {}}))
  with pytest.raises(ValueError, match="expected keys"):
    report.read_eval_json(path)
  path.write_text(json.dumps({"step": 1, "stage": "s", "tasks": {"t": {"R@1": 2}}}))
  with pytest.raises(ValueError, match="R@1 must be a fraction"):
    report.read_eval_json(path)


def test_markdown_table():
  table = report.markdown_table({"b": {"R@1": 0.5, "num_queries": 10, "zz": 0.125},
                                 "a": {"R@1": 0.25, "R@5": 1.0}})
  assert table == (
      "| task | R@1 | R@5 | num_queries | zz |\n"
      "|---|---:|---:|---:|---:|\n"
      "| a | 0.2500 | 1.0000 | - | - |\n"
      "| b | 0.5000 | - | 10 | 0.1250 |\n")


def test_markdown_table_one_table_per_kind():
  tables = report.markdown_table({
      "zs": {"accuracy": 0.5, "top5_accuracy": 1.0, "chance_accuracy": 0.25, "num_queries": 4,
             "by_dim": {"8": {"accuracy": 0.25}}},
      "ret": {"R@1": 0.125, "num_queries": 8}})
  assert tables == (
      "| task | R@1 | num_queries |\n"
      "|---|---:|---:|\n"
      "| ret | 0.1250 | 8 |\n"
      "\n"
      "| task | accuracy | top5_accuracy | chance_accuracy | num_queries |\n"
      "|---|---:|---:|---:|---:|\n"
      "| zs | 0.5000 | 1.0000 | 0.2500 | 4 |\n")


def encode_entry(modalities, n, seconds):
  return {"modalities": modalities, "num_items": n, "seconds": seconds,
          "items_per_s": n / seconds}


WITH_ENCODE = {
    "a": {"R@1": 0.5, "encode": {"queries": encode_entry("image", 100, 0.5),
                                 "candidates": encode_entry("text", 300, 0.25)}},
    "b": {"accuracy": 0.5, "encode": {"queries": encode_entry("image", 60, 0.5),
                                      "candidates": encode_entry("text", 20, 0.25)}},
}


def test_encode_block_roundtrip_tables_and_scalars(tmp_path):
  path = report.write_eval_json(tmp_path, 3, "s", WITH_ENCODE)
  assert report.read_eval_json(path)["tasks"] == WITH_ENCODE
  tables = report.encode_tables(WITH_ENCODE)
  assert "| a | image | 100 | 200.0 | text | 300 | 1200.0 |" in tables
  # Per modality over tasks: total items / total seconds.
  assert "| image | 160 | 1.000 | 160.0 |" in tables
  assert "| text | 320 | 0.500 | 640.0 |" in tables
  scalars = report.eval_scalars(WITH_ENCODE)
  assert scalars["eval/a/encode/candidates_per_s"] == 1200.0
  assert "encode" not in report.markdown_table(WITH_ENCODE)


@pytest.mark.parametrize("encode, match", [
    ({"queries": encode_entry("image", 1, 1.0)}, "encode must map"),
    ({"queries": encode_entry("image", 1, 1.0),
      "candidates": dict(encode_entry("text", 1, 1.0), items_per_s=-1.0)},
     "encode.candidates.items_per_s must be a rate > 0, got -1.0"),
    ({"queries": encode_entry("", 1, 1.0), "candidates": encode_entry("text", 1, 1.0)},
     "encode.queries.modalities must be a name"),
    ({"queries": {"num_items": 1}, "candidates": encode_entry("text", 1, 1.0)},
     "encode.queries must have keys"),
])
def test_encode_block_rejects_bad_values(tmp_path, encode, match):
  with pytest.raises(ValueError, match=match):
    report.write_eval_json(tmp_path, 1, "s", {"t": {"R@1": 0.5, "encode": encode}})


def test_baseline_next_to_tasks(tmp_path):
  baseline = {"model": "random_init", "seed": 7, "tasks": {"coco_t2i": {"R@1": 0.0}}}
  path = report.write_eval_json(tmp_path, 5, "s", TASKS, baseline=baseline)
  with open(path) as f:
    raw = json.load(f)
  assert list(raw) == ["step", "stage", "tasks", "baseline"]
  assert raw["tasks"]["coco_t2i"]["R@1"] == 0.25  # The trainer's format is untouched.
  assert report.read_eval_json(path)["baseline"] == baseline
  with pytest.raises(ValueError, match=r"baseline: task 'coco_t2i': R@1 must be a fraction"):
    report.write_eval_json(tmp_path, 5, "s", TASKS,
                           baseline=dict(baseline, tasks={"coco_t2i": {"R@1": 2.0}}))
  with pytest.raises(ValueError, match="baseline seed must be an int"):
    report.write_eval_json(tmp_path, 5, "s", TASKS, baseline=dict(baseline, seed="x"))


def test_quality_metrics_and_headline():
  m = {"R@1": 0.5, "num_queries": 3, "chance_R@1": 0.1, "by_dim": {}, "encode": {}}
  assert report.quality_metrics(m) == {"R@1": 0.5}
  assert report.headline_metric(m) == "R@1"
  assert report.headline_metric({"accuracy": 0.5}) == "accuracy"
