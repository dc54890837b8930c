"""MTEB (mteb 2.x) for gemb serving bundles: an encoder over a bundle, gemb tasks as MTEB tasks.

    import mteb
    from gemb.integrations.mteb import GembEncoder
    model = GembEncoder("bundle/", prompts={"Retrieval": "wiki_description_to_extract"})
    results = mteb.evaluate(model, mteb.get_tasks(tasks=["NFCorpus", "SciFact"]))

``GembEncoder`` implements mteb's encoder protocol (mteb.models.EncoderProtocol, through
mteb.models.AbsEncoder) with the bundle's exported model (gemb.serving.Embedder: jax + numpy,
no training code): every batch mteb's DataLoader hands it becomes gemb items, one segment per
modality column (text, image, audio, video) in ``segment_order``, embedded through the same
preprocessing as training. Outputs are the L2-normalized Matryoshka prefix of ``embed_dim``
values (default: the full size), scored by cosine similarity.

Instructions: gemb prefixes *queries* with their task's instruction and never documents
(its training does the same). ``prompts`` maps mteb prompt keys to the bundle task whose
instruction a query gets, looked up in mteb's order of priority: "<task name>-query", "<task
name>", "<task type>-query", "<task type>", "query" (task type: "Retrieval",
"Any2AnyRetrieval", "STS", ...). An mteb task named like one of the bundle's tasks gets that
task's instruction without any mapping (``retrieval_task`` makes such tasks); any other
gets none.

``retrieval_task`` turns the eval split of a gemb task (built-in or custom) into a local
mteb retrieval task, exactly the corpus gemb.eval scores (same deduplication, same
relevance), read from the records without the Hugging Face hub.

Needs the ``mteb`` extra (``pip install -e ".[mteb]"``: mteb and its dependencies, CPU torch).
"""

import hashlib
import os
import typing

import numpy as np
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.retrieval_dataset_loaders import RetrievalSplitData
from mteb.abstasks.task_metadata import TaskCategory, TaskMetadata
from mteb.models.abs_encoder import AbsEncoder, get_prompt_name
from mteb.models.model_meta import ModelMeta, ScoringFunction
from mteb.types import PromptType

from gemb.serving import Embedder, InputError, matryoshka

# The order of one item's segments when a batch holds several modality columns: media, then
# text (an image and its caption or edit request, as gemb's interleaved tasks are written).
DEFAULT_SEGMENT_ORDER = ("image", "video", "audio", "text")
# mteb task categories name the query and document modalities by letter in this order
# ("it2t", "at2t", "va2t").
_CATEGORY_LETTERS = (("video", "v"), ("audio", "a"), ("image", "i"), ("text", "t"))


class GembEncoder(AbsEncoder):
  """An mteb encoder over a gemb serving bundle.

  Args:
    model_name: the bundle directory (mteb's model_name_or_path), or a loaded Embedder.
    revision: unused (the bundle's params hash is the revision mteb records).
    device: unused: jax runs the bundle on its default backend.
    embed_dim: Matryoshka output size (None: the bundle's full embed_dim).
    prompts: {mteb prompt key: bundle task name} (see the module docstring).
    segment_order: the order of an item's modality columns as segments.
    max_batch: the most items per call of the exported model (when loading a directory).
    name: the model name mteb records ("org/model"; default "gemb/<bundle directory name>").
  """

  def __init__(self, model_name, revision=None, *, device=None, embed_dim=None, prompts=None,
               segment_order=DEFAULT_SEGMENT_ORDER, max_batch=64, name=None):
    del revision, device
    self.model = (model_name if isinstance(model_name, Embedder)
                  else Embedder.load(model_name, max_batch=max_batch))
    self.dim = self.model.check_dim(embed_dim)
    self.model_prompts = dict(prompts or {})
    unknown = {k: v for k, v in self.model_prompts.items() if v not in self.model.tasks}
    if unknown:
      raise ValueError(f"prompts {unknown}: not tasks of bundle {model_name}; its tasks: "
                       f"{sorted(self.model.tasks)}")
    bad = sorted(set(segment_order) - set(DEFAULT_SEGMENT_ORDER))
    if bad or len(set(segment_order)) != len(segment_order):
      raise ValueError(f"segment_order={segment_order!r}: each of {DEFAULT_SEGMENT_ORDER} "
                       "at most once")
    self.segment_order = tuple(segment_order)
    self.mteb_model_meta = model_meta(self.model, dim=self.dim, name=name)

  def instruction_task(self, task_metadata, prompt_type):
    """The bundle task whose instruction prefixes these inputs, or None."""
    if prompt_type == PromptType.document:
      return None  # gemb never instructs documents
    key = get_prompt_name(self.model_prompts, task_metadata, prompt_type)
    if key is not None:
      return self.model_prompts[key]
    return task_metadata.name if task_metadata.name in self.model.tasks else None

  def encode(self, inputs, *, task_metadata, hf_split, hf_subset, prompt_type=None, **kwargs):
    """DataLoader batches of text / image / audio / video columns -> float32 [n, embed_dim]."""
    del hf_split, hf_subset
    precision = kwargs.get("precision")
    if precision not in (None, "float32"):
      raise ValueError(f"precision={precision!r}: gemb bundles give float32 embeddings")
    task = self.instruction_task(task_metadata, prompt_type)
    side = prompt_type.value if prompt_type else "inputs"
    out, row = [], 0
    for batch in inputs:
      items = self.items(batch, f"{task_metadata.name} {side}")
      prepared = [self.model.prepare(item, task, f"{task_metadata.name} {side}[{row + i}]")
                  for i, item in enumerate(items)]
      out.append(self.model.embed_prepared(prepared))
      row += len(items)
    if not out:
      return np.zeros((0, self.dim), np.float32)
    return matryoshka(np.concatenate(out), self.dim)

  def items(self, batch, where):
    """One collated mteb batch -> gemb items (a segment, or a list of them when the batch has
    several modality columns), row by row."""
    columns = [m for m in self.segment_order if batch.get(m) is not None]
    if not columns:
      raise InputError(f"{where}: a batch without a text, image, audio or video column "
                       f"(columns: {sorted(batch)})")
    rows = {len(batch[m]) for m in columns}
    if len(rows) != 1:
      raise InputError(f"{where}: columns {columns} have different lengths {sorted(rows)}")
    items = []
    for i in range(rows.pop()):
      segments = [_segment(m, batch[m][i], f"{where} {m}[{i}]") for m in columns]
      items.append(segments[0] if len(segments) == 1 else segments)
    return items


def _segment(modality, value, where):
  """One mteb column value -> a gemb segment (gemb/serving/inputs.py)."""
  if isinstance(value, dict) and value.get("bytes") is not None:
    return {modality: value["bytes"]}  # an undecoded datasets Image / Audio / Video value
  if modality == "text":
    return value
  if modality == "image":
    if hasattr(value, "mode"):  # a PIL image: decoded as gemb decodes the file it came from
      return {"image": value}
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (3, 4):
      array = array.transpose(1, 2, 0)  # torch's [C, H, W]
    if array.shape[-1] == 1:
      array = np.repeat(array, 3, axis=-1)
    return {"image": array}
  if modality == "audio":
    if hasattr(value, "get_all_samples"):  # a torchcodec AudioDecoder (datasets >= 4)
      samples = value.get_all_samples()
      array, rate = np.asarray(samples.data), samples.sample_rate
    else:
      try:
        array, rate = np.asarray(value["array"]), value["sampling_rate"]
      except (KeyError, TypeError, IndexError):
        raise InputError(f"{where}: expected {{'array', 'sampling_rate'}}, got "
                         f"{type(value).__name__}") from None
    # mteb's layout is [channels, samples]; float32, as the arrays datasets store.
    array = np.asarray(array, np.float32)
    if array.ndim == 2:
      array = array.mean(axis=0)
    return {"audio": array, "sample_rate": int(rate)}
  # Video: frames [T, H, W, 3] or torch's [T, 3, H, W] (uint8), or a list of frames.
  frames = np.asarray(value)
  if frames.ndim == 4 and frames.shape[1] == 3 and frames.shape[-1] != 3:
    frames = frames.transpose(0, 2, 3, 1)
  return {"video": list(frames) if frames.ndim == 4 else value}


def model_meta(model, *, dim=None, name=None):
  """The mteb ModelMeta of a loaded bundle (an Embedder). Its revision is a hash of the
  params file, so mteb's result cache tells different weights apart."""
  manifest = model.manifest
  params = manifest["files"][manifest["params"]["file"]]["sha256"]
  directory = os.path.basename(os.path.normpath(model.directory))
  dim = dim or model.embed_dim
  return ModelMeta(
      loader=_load, loader_kwargs={"bundle": model.directory},
      name=name or f"gemb/{directory}", revision=params[:12], release_date=None,
      languages=None, n_parameters=manifest["model"]["num_params"], memory_usage_mb=None,
      max_tokens=model.preprocessor.shapes.text_len, embed_dim=dim, license=None,
      open_weights=None, public_training_code=None, public_training_data=None,
      framework=["JAX"], similarity_fn_name=ScoringFunction.COSINE,
      use_instructions=bool(model.preprocessor.use_instructions), training_datasets=None,
      modalities=list(manifest["model"]["modalities"]),
      experiment_kwargs={"embed_dim": dim} if dim != model.embed_dim else None)


def _load(model_name, revision=None, *, bundle, **kwargs):
  """ModelMeta.load_model's loader: the meta's name is not a path, its loader_kwargs hold it."""
  return GembEncoder(bundle, revision, name=model_name, **kwargs)


# ---------------------------------------------------------------- gemb tasks as mteb tasks

def retrieval_task(source, task_name, *, tokenizer=None, split=None):
  """The ``split`` (default: its eval split) of gemb retrieval task ``task_name`` as a local
  mteb retrieval task named ``task_name`` (so a GembEncoder gives its queries the task's
  instruction).

  source: a bundle or run directory (its config.json and tokenizer.model), or a config with
  ``tokenizer``. The config's data_dir, builtin_config and custom_tasks say where the records
  are; the tokenizer decodes them as gemb.eval does (bad records are left out under
  data.on_bad_record="skip"). Queries are "q<id>", documents "d<id>", with gemb.eval's ids.
  Text, image and audio segments; at most one per modality on a side, in
  DEFAULT_SEGMENT_ORDER.
  """
  from gemb.data.media.audio import decode_audio
  from gemb.data.pipeline import get_tasks, open_split, retrieval_corpus
  from gemb.data.tasks import ClassificationSpec
  from gemb.data.tokenizer import Tokenizer
  from gemb.run.workdir import load_config

  if isinstance(source, (str, os.PathLike)):
    config = load_config(os.fspath(source))
    tokenizer = tokenizer or Tokenizer.load(os.path.join(source, "tokenizer.model"))
  elif tokenizer is None:
    raise ValueError("retrieval_task(config, ...) needs the run's tokenizer")
  else:
    config = source
  task = get_tasks(config, [task_name])[0]
  if isinstance(task, ClassificationSpec):
    raise ValueError(f"task {task_name!r} is a classification task; retrieval_task takes "
                     "retrieval tasks")
  split = split or task.eval_split
  sides = {"query": task.query, "candidate": task.candidate}
  for side, segments in sides.items():
    modalities = [s.modality for s in segments]
    order = [m for m in DEFAULT_SEGMENT_ORDER if m in modalities]
    if "video" in modalities or modalities != order:
      raise ValueError(f"task {task_name!r}: its {side} segments {modalities} are not text / "
                       f"image / audio segments, each at most once, in the order {order}")
  import datasets

  corpus = retrieval_corpus(config, task, tokenizer, split)
  source = open_split(config, task, split)

  def column(records, segment):
    values = [source[int(r)][segment.field] for r in records]
    if segment.modality == "text":
      return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values]
    if segment.modality == "image":
      return [{"bytes": v, "path": None} for v in values]
    decoded = [decode_audio(v) for v in values]  # the encoded file's own samples and rate
    return [{"array": a, "sampling_rate": int(rate)} for a, rate in decoded]

  def dataset(prefix, ids, records, segments):
    data = {"id": [f"{prefix}{i}" for i in ids]}
    data.update({s.modality: column(records, s) for s in segments})
    ds = datasets.Dataset.from_dict(data)
    return ds.cast_column("image", datasets.Image()) if "image" in data else ds

  queries = dataset("q", corpus["query_ids"], corpus["query_records"], task.query)
  documents = dataset("d", corpus["candidate_ids"], corpus["candidate_records"],
                      task.candidate)
  relevant = {f"q{q}": {f"d{corpus['candidate_ids'][j]}": 1 for j in rel}
              for q, rel in zip(corpus["query_ids"], corpus["qrels"])}
  data = RetrievalSplitData(queries=queries, corpus=documents, relevant_docs=relevant,
                            top_ranked=None)

  category = f"{_letters(task.query)}2{_letters(task.candidate)}"
  if category not in typing.get_args(TaskCategory):
    raise ValueError(f"task {task_name!r}: mteb has no task category {category!r}")
  modalities = sorted({s.modality for s in task.query + task.candidate})
  text_only = modalities == ["text"]
  # A stable revision of what the task holds: mteb's result cache keys on it.
  revision = hashlib.sha256(repr((task, split, sorted(relevant.items()))).encode()).hexdigest()
  metadata = TaskMetadata(
      name=task_name, description=task.description or f"gemb task {task_name}",
      dataset={"path": f"gemb/{task.dataset}", "revision": revision[:12]},
      type="Retrieval" if text_only else "Any2AnyRetrieval", category=category,
      modalities=modalities, eval_splits=[split], eval_langs=["eng-Latn"],
      main_score="ndcg_at_10", reference=None, date=None, domains=None, task_subtypes=None,
      license=None, annotations_creators=None, dialect=None, sample_creation=None,
      bibtex_citation="")

  def load_data(self, num_proc=None, **kwargs):
    self.dataset = {"default": {split: data}}
    self.data_loaded = True

  cls = type(f"GembRetrieval_{task_name}", (AbsTaskRetrieval,),
             {"metadata": metadata, "load_data": load_data})
  return cls()


def _letters(segments):
  modalities = {s.modality for s in segments}
  return "".join(letter for m, letter in _CATEGORY_LETTERS if m in modalities)
