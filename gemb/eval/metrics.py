"""Ranking metrics for retrieval evaluation, in plain numpy.

This file owns the definitions of every number in an eval report: R@K, NDCG@K, MRR@K,
zero-shot (top-k) accuracy and the chance level of R@1. Inputs are a ranking and
graded relevance judgments (classification: a ranking of classes and a label per example):

  ranked: int [Q, K]   the top-K candidate indices of each query, best first (the output of
                       ``gemb.eval.retrieval.top_k``). Entries < 0 are "no candidate" and never
                       relevant.
  qrels:  list of Q dicts {candidate_index: grade}, grade > 0. A query may have several
                       relevant candidates with different grades; every grade > 0 counts as
                       relevant for the binary metrics (recall, MRR).

Every query must have at least one relevant candidate: a query with none has no defined
recall or NDCG, and silently scoring it 0 (or dropping it) would skew the mean, so the caller
must filter such queries out first. A cutoff k may not exceed K, because the metric would then
depend on candidates that were never ranked.

Per-query values are averaged uniformly over queries (macro average).
"""
import numpy as np


def _check_ranking(ranked, qrels, k):
  """Validates the common inputs; returns ranked[:, :k] as an int64 array."""
  ranked = np.asarray(ranked)
  if ranked.ndim != 2:
    raise ValueError(f"ranked must be [Q, K], got shape {ranked.shape}")
  if not np.issubdtype(ranked.dtype, np.integer):
    raise ValueError(f"ranked must hold integer candidate indices, got dtype {ranked.dtype}")
  if len(qrels) != ranked.shape[0]:
    raise ValueError(f"qrels has {len(qrels)} queries but ranked has {ranked.shape[0]} rows")
  if ranked.shape[0] == 0:
    raise ValueError("ranked has no queries (Q=0); the mean over queries is undefined")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise ValueError(f"k must be a positive int, got {k!r}")
  if k > ranked.shape[1]:
    raise ValueError(f"k={k} exceeds the {ranked.shape[1]} ranked candidates per query")
  for q, rel in enumerate(qrels):
    if not rel:
      raise ValueError(f"query {q} has no relevant candidates; drop it before evaluating")
    for c, g in rel.items():
      if not g > 0:
        raise ValueError(f"query {q}: grade of candidate {c} must be > 0, got {g!r}")
  return ranked[:, :k].astype(np.int64)


def _hits(top, qrels):
  """bool [Q, k]: whether each ranked candidate is relevant to its query."""
  return np.array([[int(c) in rel for c in row] for row, rel in zip(top, qrels)], dtype=bool)


def recall_at_k(ranked, qrels, k):
  """Fraction of queries with at least one relevant candidate in their top k.

  This is the R@K of cross-modal retrieval papers (COCO/Flickr image-text retrieval, CLIP):
  a hit rate, 1 if any relevant item is ranked in the top k, else 0, averaged over queries.
  It is NOT the IR recall |relevant in top k| / |relevant|, which differs when a query has
  several relevant candidates (e.g. an image with five captions).
  """
  top = _check_ranking(ranked, qrels, k)
  return float(_hits(top, qrels).any(axis=1).mean())


def _gain(grades, gain):
  grades = np.asarray(grades, dtype=np.float64)
  if gain == "linear":
    return grades
  if gain == "exponential":
    return 2.0 ** grades - 1.0
  raise ValueError(f"gain must be 'linear' or 'exponential', got {gain!r}")


def ndcg_at_k(ranked, qrels, k, *, gain="linear"):
  """Normalized discounted cumulative gain at k, averaged over queries.

    DCG@k  = sum_{i=1..k} g(rel_i) / log2(i + 1),   rel_i = grade of the i-th ranked candidate
                                                    (0 if not in qrels)
    IDCG@k = the DCG@k of the ideal ranking: all judged grades of the query, sorted
             descending, taken from the qrels (not only from the retrieved items), so a
             relevant candidate missing from the top k lowers the score.
    NDCG@k = DCG@k / IDCG@k

  g is the linear gain g(rel) = rel by default (as trec_eval, pytrec_eval/BEIR, MTEB and
  sklearn.metrics.ndcg_score); gain="exponential" uses g(rel) = 2^rel - 1 (Burges et al.).
  Both agree for binary relevance.
  """
  top = _check_ranking(ranked, qrels, k)
  discounts = 1.0 / np.log2(np.arange(2, k + 2))
  scores = []
  for row, rel in zip(top, qrels):
    dcg = np.sum(_gain([rel.get(int(c), 0) for c in row], gain) * discounts)
    ideal = np.sort(_gain(list(rel.values()), gain))[::-1][:k]
    idcg = np.sum(ideal * discounts[:len(ideal)])
    scores.append(dcg / idcg)
  return float(np.mean(scores))


def mrr_at_k(ranked, qrels, k):
  """Mean reciprocal rank at k: mean over queries of 1 / (rank of the first relevant
  candidate), ranks counted from 1, and 0 when no relevant candidate is in the top k."""
  top = _check_ranking(ranked, qrels, k)
  hits = _hits(top, qrels)
  first = hits.argmax(axis=1)
  rr = np.where(hits.any(axis=1), 1.0 / (first + 1), 0.0)
  return float(rr.mean())


def zero_shot_accuracy(pred, labels):
  """Fraction of examples whose predicted class equals the label.

  pred is either int [N] predicted class ids, or float [N, num_classes] scores (e.g. the
  similarity of each example to each class-prompt embedding), whose argmax is the prediction;
  ties go to the lower class id.
  """
  pred = np.asarray(pred)
  labels = np.asarray(labels)
  if pred.ndim == 2:
    pred = pred.argmax(axis=1)
  elif pred.ndim != 1 or (pred.size and not np.issubdtype(pred.dtype, np.integer)):
    raise ValueError(
        f"pred must be int class ids [N] or scores [N, num_classes], got {pred.dtype} "
        f"{pred.shape}")
  if labels.ndim != 1 or labels.shape[0] != pred.shape[0]:
    raise ValueError(f"labels must be [N] with N={pred.shape[0]}, got shape {labels.shape}")
  if labels.shape[0] == 0:
    raise ValueError("zero_shot_accuracy of an empty set is undefined (N=0)")
  return float(np.mean(pred == labels))


def top_k_accuracy(ranked, labels, k):
  """Fraction of examples whose label is among the top k ranked classes.

  ranked is int [N, K] class ids best first (the ``top_k`` of examples against class
  embeddings), labels int [N]; k <= K. k=1 is the zero-shot accuracy of CLIP, k=5 its
  top-5 accuracy (sklearn.metrics.top_k_accuracy_score on the scores behind the ranking).
  """
  ranked, labels = np.asarray(ranked), np.asarray(labels)
  if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
    raise ValueError(f"ranked must be int class ids [N, K], got {ranked.dtype} {ranked.shape}")
  if labels.shape != ranked.shape[:1]:
    raise ValueError(f"labels must be [N] with N={ranked.shape[0]}, got shape {labels.shape}")
  if ranked.shape[0] == 0:
    raise ValueError("top_k_accuracy of an empty set is undefined (N=0)")
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= ranked.shape[1]:
    raise ValueError(f"k must be an int in [1, {ranked.shape[1]}] (the ranked classes), "
                     f"got {k!r}")
  return float(np.mean(np.any(ranked[:, :k] == labels[:, None], axis=1)))


def balanced_accuracy(pred, labels):
  """Mean over the classes present in labels of the fraction of their examples predicted
  right (recall per class). Unlike accuracy it is not inflated by a majority class: always
  predicting one class scores 1 / (number of classes present).
  """
  pred, labels = np.asarray(pred), np.asarray(labels)
  if pred.ndim != 1 or pred.shape != labels.shape or pred.size == 0:
    raise ValueError(f"pred and labels must be non-empty [N], got shapes {pred.shape} and "
                     f"{labels.shape}")
  return float(np.mean([np.mean(pred[labels == c] == c) for c in np.unique(labels)]))


def chance_recall_at_1(qrels, num_candidates):
  """Expected R@1 of a uniformly random ranking: mean over queries of |R_q| / num_candidates.

  The floor to compare R@1 against; tasks differ a lot in it (1/5000 for COCO text->image,
  5/25000 for image->text with five captions each).
  """
  if isinstance(num_candidates, bool) or not isinstance(num_candidates, (int, np.integer)) \
      or num_candidates < 1:
    raise ValueError(f"num_candidates must be a positive int, got {num_candidates!r}")
  if len(qrels) == 0:
    raise ValueError("qrels has no queries; chance R@1 is undefined")
  fractions = []
  for q, rel in enumerate(qrels):
    if not rel:
      raise ValueError(f"query {q} has no relevant candidates; drop it before evaluating")
    bad = [c for c in rel if not 0 <= c < num_candidates]
    if bad:
      raise ValueError(
          f"query {q}: candidate indices {bad} out of range [0, {num_candidates})")
    fractions.append(len(rel) / num_candidates)
  return float(np.mean(fractions))
