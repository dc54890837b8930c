"""Entry point: python -m gemb.main --config=configs/tiny.py --workdir=/abs/dir [--config.k=v].

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Drops INFO chatter of orbax / TFDS / grain / jax (a line per checkpoint file and
  dataset read) so the console shows gemb's progress; their warnings still pass."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/", "/etils/")

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from gemb import distributed  # pylint: disable=g-import-not-at-top
  from gemb.train.loop import train_and_evaluate  # after absl parsed flags (grain workers)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  distributed.initialize(_CONFIG.value.distributed)  # before anything touches devices
  with distributed.stop_all_on_failure():
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
