"""Input pipelines: mixtures of tasks as train streams, whole splits as retrieval corpora
(or classification sets).

Owns which records each process reads, seeded shuffling that changes every epoch,
batching, the weighted mixture of a stage's tasks, worker processes and resumable
iterators. Every process walks the same global stream of global batches and loads only its
own contiguous block of each (process p of n: examples [p*b, (p+1)*b) of every global batch
of n*b): the processes read disjoint examples, the global batch they assemble is exactly
the one a single process would read, and an iterator's position counts global batches,
so a checkpoint resumes under any process count. Per-record work (decode, tokenize,
pack) is gemb/data/examples.py; record sources are gemb/data/sources.py.

Mixing (``data.mixing``):
  "task"     each batch comes from ONE task, tasks drawn by weight (as Gemini Embedding
             trains): the step compiles once per task structure, and in-batch negatives
             are from the same task, so they are hard and meaningful.
  "example"  every batch mixes tasks by weight; all tasks must share one batch structure.

Config fields read here (config.data): tasks, weights, mixing, batch_size (GLOBAL),
builtin_config, num_negatives, instructions (prefix task instructions), on_bad_record
("error" | "skip"), num_workers, read_threads, data_dir, custom_tasks, max_text_chars /
max_audio_seconds / max_video_frames (bad-input bounds), tokenizer_texts.
Input shapes come from config.model (text.max_len, image.size, audio, video); a task's text
length may differ (data.text_len_by_task).
"""

import dataclasses

from absl import logging
import grain
import numpy as np

from gemb.data import sources
from gemb.data.bad_records import BadRecord, describe, kind_of, kind_vector
from gemb.data.examples import (ExampleLoader, InputShapes, PromptExampleLoader, check_text,
                                label_text, read_record, record_where, side_slots)
from gemb.data.media import MediaError
from gemb.data.tasks import ClassificationSpec, Segment, TaskSpec, is_zero_shot

# Records read ahead per process: enough to hide decode latency, small enough that large
# media do not pile up in memory.
_MAX_PREFETCH = 512


# config.data.custom_tasks[name]["kind"] -> the spec class of the task.
TASK_KINDS = {"retrieval": TaskSpec, "classification": ClassificationSpec}
MIXINGS = ("task", "example")  # config.data.mixing (module docstring)


def task_registry(config):
  """name -> TaskSpec / ClassificationSpec: the built-in tasks plus ``config.data.custom_tasks``
  (each the spec's fields, plus "kind": "retrieval" (default) or "classification")."""
  tasks = dict(sources.BUILTIN_TASKS)
  for name, spec in (config.data.get("custom_tasks") or {}).items():
    spec = dict(spec)
    kind = spec.pop("kind", "retrieval")
    if kind not in TASK_KINDS:
      raise ValueError(f"data.custom_tasks.{name}.kind={kind!r}; choose one of "
                       f"{sorted(TASK_KINDS)}")
    fields = spec.pop("fields", None)
    fields = tuple(sorted(dict(fields).items())) if fields else None
    try:
      tasks[name] = TASK_KINDS[kind](name=name, fields=fields, **spec)
    except TypeError as e:  # an unknown or missing field
      raise ValueError(f"data.custom_tasks.{name} ({kind}): {e}") from None
  return tasks


def get_tasks(config, names):
  registry = task_registry(config)
  unknown = [n for n in names if n not in registry]
  if unknown:
    raise ValueError(f"unknown task(s) {unknown}; known: {sorted(registry)}")
  tasks = [registry[n] for n in names]
  for t in tasks:
    missing = set(t.modalities()) - set(config.model.modalities)
    if missing:
      raise ValueError(f"task {t.name!r} needs modalities {sorted(missing)} that "
                       f"model.modalities={tuple(config.model.modalities)} lacks")
  return tasks


def check_trainable(tasks):
  """Raises naming the zero-shot classification tasks (no train_split) among ``tasks``."""
  zero_shot = [t.name for t in tasks if is_zero_shot(t)]
  if zero_shot:
    raise ValueError(f"{zero_shot} are zero-shot classification tasks (no train_split), for "
                     "evaluation only (put them in eval.tasks)")


def open_split(config, task, split):
  return sources.open_source(task, split, config.data.data_dir, config.data.builtin_config)


def record_order(num_records, seed):
  """Infinite sequence of record positions: each epoch a new permutation."""
  # Shuffle before repeat: grain folds the epoch number into the seed of each pass.
  return grain.MapDataset.range(num_records).shuffle(seed).repeat()


def process_block(examples, local_batch, process_index, process_count):
  """This process's block of every global batch of ``examples`` (a MapDataset), batched.

  MapDataset.batch is lazy, so slicing every n-th local-sized batch loads only this
  process's examples; element j is process p's part of global batch j.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  return examples.batch(local_batch, drop_remainder=True)[process_index::process_count]


def make_loader(config, task, tokenizer, split, records, source, *, task_index=0, train=True):
  """The example loader of a retrieval task, or of a classification task's train records."""
  d = config.data
  options = dict(split=split, num_negatives=d.num_negatives if train else 0,
                 on_bad_record=d.on_bad_record, task_index=task_index,
                 instructions=d.instructions)
  shapes = InputShapes.from_config(config)
  shapes = dataclasses.replace(shapes, text_len=d.get("text_len_by_task", {}).get(
      task.name, shapes.text_len))
  if isinstance(task, ClassificationSpec):
    return PromptExampleLoader(task, source, records, tokenizer, shapes,
                               classes=class_names(config, task), **options)
  return ExampleLoader(task, source, records, tokenizer, shapes, **options)


def _task_examples(config, task, tokenizer, *, seed, task_index):
  """The global example stream of one task (every process builds the same one)."""
  source = open_split(config, task, task.train_split)
  if len(source) < config.data.batch_size:
    raise ValueError(f"task {task.name!r} has {len(source)} {task.train_split!r} records, "
                     f"fewer than data.batch_size={config.data.batch_size}")
  loader = make_loader(config, task, tokenizer, task.train_split, np.arange(len(source)),
                       source, task_index=task_index)
  return record_order(len(source), seed + 7919 * task_index).map(loader)


def batch_structure(config, task):
  """What decides a batch's shapes: slot counts per side and the hard negatives."""
  if isinstance(task, ClassificationSpec):
    task = task.query_task()  # candidate: one text, the prompt
  negatives = config.data.num_negatives if task.negatives else 0
  return (tuple(side_slots(task.query, bool(task.instruction and config.data.instructions)
                           ).items()),
          tuple(side_slots(task.candidate, False).items()), negatives)


def train_dataset(config, tokenizer, *, seed, process_index=0, process_count=1):
  """Infinite stream of this process's batches of the configured task mixture.

  Each batch is this process's block of data.batch_size // process_count examples of a
  global batch, in the batch format of gemb/batch.py plus "task_index" [b] (which
  task) and "skipped" [b, len(gemb.data.bad_records.KINDS)] (bad records replaced under
  on_bad_record="skip", per kind); the loop pops both before the step. The global stream depends only on the seed; iter(ds).get_state()
  counts global batches, the same in every process, and set_state() resumes it exactly
  (also with worker processes, and under another process count).
  """
  d = config.data
  if d.batch_size % process_count:
    raise ValueError(f"data.batch_size={d.batch_size} is not divisible by "
                     f"process_count={process_count}")
  names, weights = tuple(d.tasks), tuple(d.weights) if d.weights else (1.0,) * len(d.tasks)
  if not names or len(weights) != len(names) or min(weights) <= 0:
    raise ValueError(f"data.tasks={names} needs as many positive data.weights, got {weights}")
  if d.mixing not in MIXINGS:
    raise ValueError(f"data.mixing={d.mixing!r}; choose 'task' or 'example'")
  tasks = get_tasks(config, names)
  try:
    check_trainable(tasks)
  except ValueError as e:
    raise ValueError(f"data.tasks: {e}") from None
  local_batch = d.batch_size // process_count
  per_task = [_task_examples(config, t, tokenizer, seed=seed, task_index=i)
              for i, t in enumerate(tasks)]
  block = lambda examples: process_block(examples, local_batch, process_index,  # noqa: E731
                                         process_count)
  # Decoding holds the GIL, so read threads mostly contend on a CPU host (measured: 0
  # threads 605 examples/s, 2 threads 387 on the default mixture); worker processes
  # (data.num_workers) are what scales per-record work. Threads help I/O-bound sources.
  # Elements are whole batches here: read ahead about _MAX_PREFETCH records' worth.
  read = grain.ReadOptions(num_threads=d.read_threads,
                           prefetch_buffer_size=max(1, min(2, _MAX_PREFETCH // local_batch)))
  if d.mixing == "task":
    batched = [block(ds).to_iter_dataset(read) for ds in per_task]
    ds = batched[0] if len(batched) == 1 else grain.IterDataset.mix(batched, list(weights))
  else:
    structures = {batch_structure(config, t) for t in tasks}
    if len(structures) > 1:
      raise ValueError(f"data.mixing='example' needs tasks with one batch structure; "
                       f"{names} differ (use data.mixing='task')")
    mixed = per_task[0] if len(per_task) == 1 else grain.MapDataset.mix(per_task, list(weights))
    ds = block(mixed).to_iter_dataset(read)
  if d.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=d.num_workers))
  return ds


def eval_records(config, num_records):
  """The record indices of an eval split that an eval corpus reads: all of them, or with
  ``eval.max_records`` = N > 0 a fixed sample of N (the same for every model and run: a
  seeded permutation of the split's size), in split order. Small CPU evals keep each task
  to its first few hundred records (a corpus of N queries and at most N candidates)."""
  limit = int(config.eval.get("max_records", 0)) if "eval" in config else 0
  if not 0 < limit < num_records:
    return np.arange(num_records)
  return np.sort(np.random.default_rng(0).permutation(num_records)[:limit])


def _usable_examples(loader, on_bad_record, skipped, indices=None):
  """(record index, example) of every record of the loader's source (or of ``indices``), in
  order; a bad record raises, or with on_bad_record="skip" is left out and its kind
  appended to ``skipped``."""
  for index in range(len(loader.source)) if indices is None else indices:
    index = int(index)
    try:
      example = loader.load(index)
    except BadRecord as e:
      if on_bad_record != "skip":
        raise
      skipped.append(e.kind)
      continue
    yield index, example


def _report_skipped(what, task, split, skipped, num_records):
  """Logs how many of a split's records ``what`` (an eval corpus, the tokenizer corpus)
  left out, by kind; -> that number."""
  if skipped:
    logging.warning("%s: data.on_bad_record=skip left out %d of %d records of %s (%s)", what,
                    len(skipped), num_records, record_where(task, split),
                    describe(kind_vector(skipped)))
  return len(skipped)


def _no_usable_records(task, split, skipped):
  kinds = f": all bad ({describe(kind_vector(skipped))})" if skipped else ""
  return ValueError(f"task {task.name!r} split {split!r} has no usable records{kinds}")


def retrieval_corpus(config, task, tokenizer, split=None):
  """A whole split as a retrieval problem: unique queries, unique candidates, relevance.

  Returns {"queries": side [n, ...], "candidates": side [m, ...], "qrels": list (len n) of
  {candidate index: 1}, "query_ids": int32 [n], "candidate_ids": int32 [m],
  "num_skipped_records": bad records left out (on_bad_record="skip"), "query_records":
  int64 [n], "candidate_records": int64 [m]}. Queries and candidates are deduplicated by id
  (first record wins; *_records: the index in the split of that record, so the raw values can
  be read back, as gemb.integrations.mteb does); a query is relevant to every candidate id it
  is paired with in any record (many-to-many).
  """
  split = split or task.eval_split
  source = open_split(config, task, split)
  loader = make_loader(config, task, tokenizer, split, np.arange(len(source)), source,
                       train=False)
  queries, candidates, pairs, skipped = {}, {}, set(), []
  for index, example in _usable_examples(loader, config.data.on_bad_record, skipped,
                                         eval_records(config, len(source))):
    q, c = int(example["query_id"]), int(example["candidate_id"])
    queries.setdefault(q, (index, example["query"]))
    candidates.setdefault(c, (index, example["candidate"]))
    pairs.add((q, c))
  if not queries:
    raise _no_usable_records(task, split, skipped)
  query_ids, candidate_ids = sorted(queries), sorted(candidates)
  position = {c: j for j, c in enumerate(candidate_ids)}
  qrels = [dict() for _ in query_ids]
  row = {q: i for i, q in enumerate(query_ids)}
  for q, c in pairs:
    qrels[row[q]][position[c]] = 1
  return {"queries": _stack([queries[q][1] for q in query_ids]),
          "candidates": _stack([candidates[c][1] for c in candidate_ids]),
          "qrels": qrels, "query_ids": np.asarray(query_ids, np.int32),
          "candidate_ids": np.asarray(candidate_ids, np.int32),
          "num_skipped_records": _report_skipped("eval corpus", task, split, skipped,
                                                 len(source)),
          "query_records": np.asarray([queries[q][0] for q in query_ids], np.int64),
          "candidate_records": np.asarray([candidates[c][0] for c in candidate_ids], np.int64)}


def classification_corpus(config, task, tokenizer, split=None):
  """A whole split as zero-shot classification: every record a query, every class its prompts.

  Returns {"queries": side [n, ...], "labels": int32 [n] (index into classes), "classes":
  tuple of the class names, "prompts": text side [num_classes * num_templates, ...], class
  after class, each class's prompts in template order, "num_templates": int,
  "num_skipped_records": bad records left out (on_bad_record="skip")}. With declared
  classes, a record whose label is none of them is a bad record.
  """
  split = split or task.eval_split
  source = open_split(config, task, split)
  # The query task's candidate is the label as text: the loader rejects empty labels.
  loader = make_loader(config, task.query_task(), tokenizer, split, np.arange(len(source)),
                       source, train=False)
  queries, names, skipped = [], [], []
  for index, example in _usable_examples(loader, config.data.on_bad_record, skipped,
                                         eval_records(config, len(source))):
    queries.append(example["query"])
    names.append(label_text(loader.read(index)[task.label]))
  classes = _classes(task, names)
  position = {c: i for i, c in enumerate(classes)}
  unknown = sorted(set(names) - set(position))
  if unknown and config.data.on_bad_record != "skip":
    raise BadRecord(f"task {task.name!r} split {split!r}: labels {unknown[:5]} in field "
                    f"{task.label!r} are not among the task's classes {classes}", "bad_value")
  known = [i for i, n in enumerate(names) if n in position]
  skipped += ["bad_value"] * (len(names) - len(known))
  queries, names = [queries[i] for i in known], [names[i] for i in known]
  if not queries:
    raise _no_usable_records(task, split, skipped)
  prompts = []
  for c in classes:
    for p in task.prompts(c):
      try:
        prompts.append(loader.side({"prompt": p}, None, (Segment("text", "prompt"),), None))
      except BadRecord as e:
        raise ValueError(f"task {task.name!r}: prompt {p!r} of class {c!r}: {e}") from None
  return {"queries": _stack(queries), "labels": np.asarray([position[n] for n in names],
                                                           np.int32),
          "classes": classes, "prompts": _stack(prompts), "num_templates": len(task.templates),
          "num_skipped_records": _report_skipped("eval corpus", task, split, skipped,
                                                 len(source))}


def class_names(config, task):
  """The classes of a classification task, in order (see ClassificationSpec.classes)."""
  if task.classes:
    return task.classes
  split = task.eval_split
  source = open_split(config, task, split)
  labels = []
  for i in range(len(source)):
    try:
      record = read_record(task, split, source, i)
    except BadRecord:
      continue  # left to classification_corpus, which names (or skips and counts) it
    # Records without a label are left to classification_corpus too.
    if task.label in record:
      labels.append(label_text(record[task.label]))
  return _classes(task, labels)


def _classes(task, labels):
  return task.classes or tuple(sorted(set(labels)))


def _stack(sides):
  """A list of equally-shaped sides -> one side with a leading example dim."""
  return {k: np.stack([s[k] for s in sides]) for k in sides[0]}


def tokenizer_corpus(config, names=None):
  """Texts to train the run's sentencepiece model on: the text fields of every configured
  task's train split (evenly sampled, at most data.tokenizer_texts per task), plus the
  task instructions. A bad record among them raises, or with on_bad_record="skip" is left
  out and counted in the log; a task whose every sampled record is bad stops the run."""
  names = names or tuple(config.data.tasks) + tuple(config.eval.tasks)
  texts, reads = [], {}  # tasks on one split (e.g. both WordNet tasks) read it once
  for task in get_tasks(config, dict.fromkeys(names)):
    if isinstance(task, ClassificationSpec):
      # Its prompts (the task's definition), never its queries (the eval data); training
      # on it adds no other text.
      texts.extend([task.instruction] + [p for c in class_names(config, task)
                                         for p in task.prompts(c)])
      continue
    fields = [s.field for s in task.query + task.candidate if s.modality == "text"]
    if task.negatives is not None and task.negatives.modality == "text":
      fields.append(task.negatives.field)
    if task.instruction:
      texts.append(task.instruction)
    if not fields:
      continue
    split = (task.dataset, task.fields, task.train_split)
    if split not in reads:
      source = open_split(config, task, task.train_split)
      count = min(len(source), config.data.tokenizer_texts)
      reads[split] = _read_sampled(
          source, [int(i) for i in np.linspace(0, len(source) - 1, count).astype(int)])
    skipped, first = [], None
    for index, record in reads[split]:
      try:
        texts.extend(_record_texts(task, index, record, fields, config.data.max_text_chars))
      except BadRecord as e:
        if config.data.on_bad_record != "skip":
          raise
        skipped.append(e.kind)
        first = first or e
    if skipped and len(skipped) == len(reads[split]):
      raise BadRecord(f"{record_where(task, task.train_split)}: all {len(skipped)} records "
                      f"sampled for the tokenizer are bad ({describe(kind_vector(skipped))}), "
                      f"so data.on_bad_record=skip has nothing to train on. The first: {first}",
                      first.kind)
    _report_skipped("tokenizer corpus", task, task.train_split, skipped, len(reads[split]))
  return [t for t in dict.fromkeys(t.strip() for t in texts) if t]


def _read_sampled(source, indices):
  """[(index, record, or the error reading it raised)] of the records at ``indices``."""
  if hasattr(source, "__getitems__"):
    # One batched read (ArrayRecord sources): ~4x faster than record by record.
    try:
      return list(zip(indices, source.__getitems__(indices)))
    except (OSError, ValueError, KeyError):
      pass  # a bad record among them: read one by one to tell which
  out = []
  for i in indices:
    try:
      out.append((i, source[i]))
    except (OSError, ValueError, KeyError) as e:
      out.append((i, e))
  return out


def _record_texts(task, index, record, fields, max_chars):
  """The texts in ``fields`` of record ``index`` of the task's train split (a record read
  by _read_sampled), or a BadRecord naming the record and field: a record that training
  would skip as bad for its texts is left out here too."""
  where = record_where(task, task.train_split, index)
  if isinstance(record, Exception):
    raise BadRecord(f"{where}: cannot read the record: {record}", kind_of(record)) from record
  texts = []
  for f in fields:
    if f not in record:
      raise BadRecord(f"{where}: no field {f!r}; fields: {sorted(record)}", "missing_field")
    values = [record[f]]
    if task.negatives is not None and f == task.negatives.field:  # a list of texts
      values = record[f]
      if not isinstance(values, (list, tuple, np.ndarray)):
        raise BadRecord(f"{where}: field {f!r} (hard negatives) must be a list, got "
                        f"{type(values).__name__}", "bad_value")
    for v in values:
      try:
        texts.append(check_text(v, max_chars))
      except MediaError as e:
        raise BadRecord(f"{where}, field {f!r} (text): {e}", "bad_text") from e
  return texts
