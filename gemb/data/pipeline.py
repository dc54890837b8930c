"""Input pipelines: the train stream of contrastive batches and whole splits for evaluation.

Owns sharding across processes, shuffling, batching, worker processes and resumable
iterators. Records come from a built-in TFDS dataset (gemb/data/sources.py, whose builders
name their source assets and licenses); per-record work is in gemb/data/preprocess.py.
Today's task is image -> name retrieval on the emoji dataset: query = the rendered image,
candidate = the emoji's name.

data_config fields read here:
  dataset      str   built-in dataset name, a key of sources.BUILDERS ("emoji").
  data_dir     str   where datasets are built and read; "" = ~/.cache/gemb/tfds.
  image_size   int   images are resized to image_size x image_size.
  text_max_len int   token ids per text, truncated / padded with 0.
  batch_size   int   GLOBAL batch size, split evenly over processes.
  num_workers  int   grain worker processes per process; 0 = decode in-process.
  vocab_size   int   upper bound of the tokenizer vocabulary (used by whoever trains it on
                     tokenizer_corpus()).
"""
import functools

import grain
import numpy as np
import tensorflow_datasets as tfds

from gemb.data import preprocess
from gemb.data import sources
from gemb.model import batch

IMAGE_KEY, TEXT_KEY, ID_KEY = "image", "name", "item_id"
# Records read ahead per process; enough to hide decode latency, small enough that large
# images do not pile up in memory.
_MAX_PREFETCH = 512


def _source(data_config, split):
  # Images stay PNG bytes here and are decoded by the DecodeImage map, i.e. in grain's
  # worker processes when there are any.
  return sources.builtin_source(data_config.dataset, split, data_config.data_dir,
                                decoders={IMAGE_KEY: tfds.decode.SkipDecoding()})


def _split_index(data_config, split):
  """(item id per record, text per record) of a split."""
  return _read_index(data_config.dataset, sources.resolve_data_dir(data_config.data_dir),
                     split)


@functools.lru_cache(maxsize=16)
def _read_index(dataset: str, data_dir: str, split: str):
  # One pass over the split (~1.5 s for 12k records), remembered for the process's lifetime.
  source = sources.builtin_source(dataset, split, data_dir,
                                  decoders={IMAGE_KEY: tfds.decode.SkipDecoding()})
  item_ids, texts = np.empty(len(source), np.int32), []
  for i in range(len(source)):
    record = source[i]
    item_ids[i] = record[ID_KEY]
    texts.append(record[TEXT_KEY].decode("utf-8"))
  item_ids.flags.writeable = False  # Shared by every caller.
  return item_ids, tuple(texts)


def tokenizer_corpus(data_config) -> list[str]:
  """The distinct texts of the train split, by item id: the tokenizer's training corpus."""
  item_ids, texts = _split_index(data_config, "train")
  by_item = dict(zip(item_ids.tolist(), texts))
  return [by_item[i] for i in sorted(by_item)]


def shard_records(item_ids: np.ndarray, process_index: int, process_count: int) -> np.ndarray:
  """Indices of the records a process reads: those whose item id % process_count is its own.

  Sharding by item (not by record) keeps all renderings of an item on one process, so the
  processes' data are disjoint in items.
  """
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  return np.flatnonzero(np.asarray(item_ids) % process_count == process_index)


def record_order(records: np.ndarray, seed: int) -> grain.MapDataset:
  """Infinite sequence of record indices: each epoch a new permutation of `records`."""
  # Shuffle before repeat: grain folds the epoch number into the seed of each pass.
  return grain.MapDataset.source(np.asarray(records)).shuffle(seed).repeat()


class _ReadRecord(grain.transforms.Map):
  """Record index -> record of `source` (a picklable random-access source)."""

  def __init__(self, source):
    self._source = source

  def map(self, index):
    return self._source[int(index)]


def train_dataset(data_config, tokenizer, *, seed: int, process_index: int = 0,
                  process_count: int = 1) -> grain.IterDataset:
  """Infinite stream of this process's batches of (image query, name candidate) pairs.

  Each batch has data_config.batch_size // process_count examples:
    {"query": {"layout": int32[b, 1] (IMAGE), "image": float32[b, 1, H, W, 3]},
     "candidate": {"layout": int32[b, 1] (TEXT), "text": int32[b, 1, L]},
     "query_id": int32[b], "candidate_id": int32[b]}   (both the item id)
  Records are shuffled with `seed`, differently each epoch; the stream depends only on the
  seed and the sharding, and iter(ds).get_state()/set_state() resume it exactly.
  num_workers > 0 starts grain worker processes (spawn): they need parsed absl flags, i.e.
  a program run under absl.app, and a `__main__` guard in the calling script.
  """
  if data_config.batch_size % process_count:
    raise ValueError(f"batch_size={data_config.batch_size} is not divisible by "
                     f"process_count={process_count}")
  local_batch = data_config.batch_size // process_count
  item_ids, _ = _split_index(data_config, "train")
  records = shard_records(item_ids, process_index, process_count)
  if len(records) < local_batch:
    raise ValueError(f"process {process_index} of {process_count} has {len(records)} train "
                     f"records, fewer than its batch of {local_batch}")
  ds = (record_order(records, seed)
        .map(_ReadRecord(_source(data_config, "train")))
        .map(preprocess.DecodeImage(data_config.image_size, IMAGE_KEY))
        .map(preprocess.Tokenize(tokenizer, data_config.text_max_len, TEXT_KEY))
        .map(preprocess.ImageTextPair(IMAGE_KEY, "tokens", ID_KEY)))
  # Decoding holds the GIL, so more threads only contend; worker processes
  # (num_workers) are what scales the per-record work. Threads keep the output order.
  read = grain.ReadOptions(num_threads=2,
                           prefetch_buffer_size=min(2 * local_batch, _MAX_PREFETCH))
  ds = ds.to_iter_dataset(read).batch(local_batch, drop_remainder=True)
  if data_config.num_workers > 0:
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=data_config.num_workers))
  return ds


def retrieval_split(data_config, tokenizer, split: str) -> dict:
  """A whole split as retrieval corpora: every image, and every distinct text once.

    {"images": {"layout": int32[n, 1], "image": float32[n, 1, H, W, 3]},
     "texts": {"layout": int32[m, 1], "text": int32[m, 1, L]},
     "image_ids": int32[n], "text_ids": int32[m]}

  Image i and text j are relevant iff image_ids[i] == text_ids[j]. Both are sorted by id
  (images of one item keep record order). Here each item has one name, so relevance is
  one-to-one in validation/test (one rendering per item) and many-to-one in train.
  """
  source = _source(data_config, split)
  item_ids, texts = _split_index(data_config, split)
  order = np.argsort(item_ids, kind="stable")
  decode = preprocess.DecodeImage(data_config.image_size, IMAGE_KEY)
  images = np.stack([decode.map(source[int(i)])[IMAGE_KEY] for i in order])
  text_ids, first = np.unique(item_ids, return_index=True)
  tokens = tokenizer.encode([texts[i] for i in first], data_config.text_max_len)
  return {
      "images": {"layout": np.full((len(images), 1), batch.IMAGE, np.int32),
                 "image": images[:, None]},
      "texts": {"layout": np.full((len(tokens), 1), batch.TEXT, np.int32),
                "text": tokens[:, None]},
      "image_ids": item_ids[order],
      "text_ids": text_ids.astype(np.int32),
  }
