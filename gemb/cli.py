"""The console scripts of setup.py: each runs a gemb module exactly as ``python -m`` does.

    gemb-train    python -m gemb.main     train a run (rerun: resume it)
    gemb-eval     python -m gemb.eval     evaluate a run's checkpoint
    gemb-export   python -m gemb.export   export a run to a serving bundle
    gemb-embed    python -m gemb.embed    embed a JSONL file with a bundle
    gemb-serve    python -m gemb.serve    serve a bundle over HTTP
    gemb-bench    python -m gemb.bench    benchmark the train step or the encoder

(gemb-pretrained is gemb.pretrained.__main__:main itself.) Flags are absl's,
``--flag=value``, the same for both spellings; ``--help`` lists each command's own.
"""

import runpy


def _run(module):
  # As `python -m`: the module's code runs as __main__ (some define their flags under
  # `if __name__ == "__main__":`), with this process's argv.
  runpy.run_module(module, run_name="__main__", alter_sys=True)


def train():
  _run("gemb.main")


def evaluate():
  _run("gemb.eval")


def export():
  _run("gemb.export")


def embed():
  _run("gemb.embed")


def serve():
  _run("gemb.serve")


def bench():
  _run("gemb.bench")
