"""Zero-shot classification: class embeddings from prompt ensembles, scored by top-k accuracy.

A class's embedding is the mean of the unit-norm embeddings of its prompts ("an emoji of
{}", "a {} emoji", ...), renormalized: CLIP's prompt ensembling, which averages away the
wording of any one template. Each query ranks the classes by dot product with the exact
top-k of gemb.eval.retrieval (ties go to the lower class id).
"""
import numpy as np

from gemb.eval import metrics
from gemb.eval.retrieval import top_k

TOP = 5  # The eval JSON reports accuracy (top-1) and top5_accuracy.


def class_embeddings(prompt_emb, num_templates):
  """[C * T, D] unit-norm prompt embeddings, class after class -> [C, D] unit-norm classes."""
  prompt_emb = np.asarray(prompt_emb, np.float32)
  if prompt_emb.ndim != 2 or num_templates < 1 or len(prompt_emb) % num_templates:
    raise ValueError(f"prompt_emb {prompt_emb.shape} must be [num_classes * {num_templates}, D]")
  mean = prompt_emb.reshape(-1, num_templates, prompt_emb.shape[1]).mean(axis=1)
  # The floor keeps a degenerate all-zero mean finite (it then scores 0 against everything).
  return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def classification_metrics(query_emb, class_emb, labels):
  """The eval-JSON metrics of one zero-shot classification task.

  Args:
    query_emb: float [N, D] unit-norm query embeddings.
    class_emb: float [C, D] unit-norm class embeddings (class_embeddings).
    labels: int [N], each query's class index in [0, C).

  Returns:
    {"accuracy": top-1, "top5_accuracy": label among the 5 best classes (all C if C < 5),
    "balanced_accuracy": top-1 averaged per class (test sets are often dominated by one
    class), "num_queries": N, "num_candidates": C, "chance_accuracy": 1 / C (the expected
    accuracy, and balanced accuracy, of a uniform guess)}.
  """
  labels = np.asarray(labels)
  num_q, num_c = np.shape(query_emb)[0], np.shape(class_emb)[0]
  if labels.shape != (num_q,):
    raise ValueError(f"labels must be [N={num_q}], got shape {labels.shape}")
  bad = sorted(set(labels[(labels < 0) | (labels >= num_c)].tolist()))
  if bad:
    raise ValueError(f"labels {bad[:5]} out of range [0, {num_c}) (the classes)")
  _, ranked = top_k(query_emb, class_emb, min(TOP, num_c))
  ranked = np.asarray(ranked)
  return {"accuracy": metrics.top_k_accuracy(ranked, labels, 1),
          f"top{TOP}_accuracy": metrics.top_k_accuracy(ranked, labels, ranked.shape[1]),
          "balanced_accuracy": metrics.balanced_accuracy(ranked[:, 0], labels),
          "num_queries": int(num_q), "num_candidates": int(num_c),
          "chance_accuracy": 1.0 / num_c}
