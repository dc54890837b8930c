"""Entry point: python -m gemb.main --config=configs/tiny.py --workdir=/abs/dir [--config.k=v].

Rerunning the same command resumes from the latest checkpoint in --workdir.
"""

import difflib
import logging as py_logging
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags
from ml_collections.config_flags import config_path

from gemb.run.curriculum import SECTIONS

# New keys are accepted only inside a stage's sections: --config.stages[1].loss.kind=sigmoid
# sets loss.kind for that stage alone (curriculum checks such a key and its type against
# the top-level section). Every other override must name a key of the config file
# (check_overrides), so a typo still fails before any work.
_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/<name>.py).",
                                          lock_config=False, accept_new_attributes=True)
_STAGE_SECTION_KEY = re.compile(r"stages\[\d+\]\.(%s)\." % "|".join(SECTIONS))
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and eval results.")
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(py_logging.Filter):
  """Drops INFO chatter of orbax / TFDS / grain / jax (a line per checkpoint file and
  dataset read) so the console shows gemb's progress; their warnings still pass."""

  NOISY = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/", "/etils/")

  def filter(self, record):
    return record.levelno >= py_logging.WARNING or not any(
        n in record.pathname for n in self.NOISY)


def check_overrides(config_flag):
  """Raises app.UsageError naming an override that is no key of the config file."""
  schema = config_flag.parser.parse(config_flag.config_filename)  # before any override
  for path in config_flags.get_override_values(config_flag):
    if _STAGE_SECTION_KEY.match(path):
      continue
    try:
      config_path.get_value(path, schema)
    except (KeyError, AttributeError, IndexError):
      parent, _, key = path.rpartition(".")
      try:
        keys = list(config_path.get_value(parent, schema).keys()) if parent else list(schema)
      except (KeyError, AttributeError, IndexError, TypeError):
        keys = []
      close = difflib.get_close_matches(key, keys, n=1)
      hint = f"; did you mean {close[0]!r}?" if close else ""
      raise app.UsageError(f"--config.{path}: {config_flag.config_filename} has no key "
                           f"{path!r}{hint}") from None


def parse_flags(argv):
  """absl's flag parsing, with a message naming the flag when a --config override names a
  section a stage lacks (ml_collections raises a bare KeyError for it, e.g. for a stage
  written as a plain dict: configs.common.stage() gives every stage every section)."""
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:
    # KeyError('loss'), or ml_collections' AttributeError("'optimzer'\nDid you mean ...").
    message = str(e.args[0]) if e.args else ""
    quoted = re.search(r"'([^'\\]+)", message)
    key = quoted.group(1) if quoted else message.strip()
    bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")
           and re.search(r"\.%s[.=\[]" % re.escape(key), a)] or ["a --config override"]
    hint = (f": this stage has no {key!r} section (build stages with configs.common.stage(), "
            f"which gives each its {'/'.join(SECTIONS)} sections)"
            if bad[0].startswith("--config.stages[") else "")
    sys.stderr.write(f"FATAL Flags parsing error: {bad[0]}: the config has no key {key!r}"
                     f"{hint}\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  check_overrides(flags.FLAGS["config"])
  from gemb import distributed  # pylint: disable=g-import-not-at-top
  from gemb.train.loop import train_and_evaluate  # after absl parsed flags (grain workers)
  logging.set_verbosity(logging.INFO)
  logging.get_absl_handler().addFilter(_QuietLibraries())
  distributed.initialize(_CONFIG.value.distributed)  # before anything touches devices
  with distributed.stop_all_on_failure():
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
