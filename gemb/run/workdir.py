"""A run's directory, as the trainer (gemb/train/loop.py) leaves it:

  config.json        the resolved config
  tokenizer.model    the SentencePiece model trained at start-up, or
  tokenizer.json     a pretrained backbone's own tokenizer (model.backbone)
  checkpoints/<N>/   orbax checkpoints (gemb/run/checkpoint.py)
  eval/              step_<N>.json / .md / .png, soup.json, soup_vs_best.md (gemb/eval/report.py)
  tensorboard/       event files (gemb/run/summary.py)

The checks here are those of the tools that read a finished run (gemb.eval, gemb.export):
each names the workdir and the missing file, as a usage error of the command line.
"""

import json
import os

from absl import app

from gemb.run.checkpoint import Checkpointer


def _tuples(value):
  """JSON turns the config's tuples into lists; turn them back (the model hashes some)."""
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def load_config(workdir):
  """The run's resolved config (config.json) as a ConfigDict."""
  import ml_collections
  path = os.path.join(workdir, "config.json")
  if not os.path.isdir(workdir):
    raise app.UsageError(f"--workdir={workdir}: no such directory")
  if not os.path.exists(path):
    raise app.UsageError(f"--workdir={workdir}: no config.json (not a gemb run directory?)")
  with open(path) as f:
    return ml_collections.ConfigDict(_tuples(json.load(f)))


def tokenizer_path(workdir):
  """The path of the run's tokenizer (which must exist): tokenizer.json, a pretrained
  backbone's own, or tokenizer.model, the SentencePiece model the run trained."""
  for name in ("tokenizer.json", "tokenizer.model"):
    path = os.path.join(workdir, name)
    if os.path.exists(path):
      return path
  raise app.UsageError(f"--workdir={workdir}: no tokenizer.model (nor the tokenizer.json of "
                       "a run on a pretrained backbone)")


def checkpoint_steps(workdir):
  """The sorted steps of the run's checkpoints (at least one)."""
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise app.UsageError(f"--workdir={workdir}: no checkpoints/ directory")
  ckpt = Checkpointer(workdir, async_save=False)
  try:
    available = ckpt.all_steps()
  finally:
    ckpt.close()
  if not available:
    raise app.UsageError(f"--workdir={workdir}: no checkpoint in {ckpt_dir}")
  return available
