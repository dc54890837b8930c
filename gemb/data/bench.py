"""Input-pipeline benchmark: records/s per task and batches/s of the configured mixture.

  python -m gemb.data.bench --config=configs/default.py [--records=200] [--batches=30]

Prints one JSON line per task (one process, one thread: decode + tokenize + pack of single
examples) and one for the whole mixture as the trainer reads it (batches of
data.batch_size, data.num_workers worker processes). Compare the mixture's examples/s with
the train step's train/examples_per_s (TensorBoard or the console of gemb.main): the input
must be faster than the step consumes it.
"""

import json
import time

from absl import app, flags
from ml_collections import config_flags

from gemb.data import pipeline
from gemb.data.tokenizer import Tokenizer

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_RECORDS = flags.DEFINE_integer("records", 200, "Records timed per task.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Mixture batches timed (after 3 warm-up).")
flags.mark_flags_as_required(["config"])


def task_rates(config, tokenizer, num_records):
  """Single-threaded examples/s of each task's loader over its first train records."""
  for task in pipeline.get_tasks(config, config.data.tasks):
    source = pipeline.open_split(config, task, task.train_split)
    n = min(num_records, len(source))
    loader = pipeline.make_loader(config, task, tokenizer, task.train_split, range(n), source)
    t0 = time.perf_counter()
    for position in range(n):
      loader(position)
    seconds = time.perf_counter() - t0
    yield {"task": task.name, "records": n, "records_per_s": n / seconds}


def mixture_rate(config, tokenizer, num_batches):
  it = iter(pipeline.train_dataset(config, tokenizer, seed=config.seed))
  for _ in range(3):  # start-up: worker processes, first reads
    next(it)
  t0 = time.perf_counter()
  for _ in range(num_batches):
    next(it)
  seconds = time.perf_counter() - t0
  return {"mixture": list(config.data.tasks), "batch_size": config.data.batch_size,
          "num_workers": config.data.num_workers, "batches_per_s": num_batches / seconds,
          "examples_per_s": num_batches * config.data.batch_size / seconds}


def main(argv):
  del argv
  config = _CONFIG.value
  tokenizer = Tokenizer.train(pipeline.tokenizer_corpus(config), config.data.vocab_size)
  for row in task_rates(config, tokenizer, _RECORDS.value):
    print(json.dumps(row), flush=True)
  print(json.dumps(mixture_rate(config, tokenizer, _BATCHES.value)), flush=True)


if __name__ == "__main__":
  app.run(main)
