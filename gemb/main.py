"""Entry point: python -m gemb.main --config=configs/tiny.py --workdir=/abs/dir [--config.k=v].

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval results.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  from gemb.train.loop import train_and_evaluate  # after absl parsed flags (grain workers)
  logging.set_verbosity(logging.INFO)
  train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
