"""The package import graph of gemb/ against the layering that gemb/__init__.py describes.

Reads every module with ast (nothing is imported, so it takes a second), counting imports
inside functions too: a lazy import is still a dependency. Run as a script to print the
graph between gemb's parts: python tests/test_import_graph.py
"""

import ast
import collections
import pathlib
import shutil
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1] / "gemb"

# part -> the parts it may import (a part is a subpackage of gemb or a top-level module;
# every part may import itself). The order is that of the layers in gemb/__init__.py.
ALLOWED = {
    "batch": set(), "paths": set(), "trees": set(), "parallel": set(), "distributed": set(),
    "model": {"batch", "parallel", "trees"},
    "data": {"batch"},
    "losses": {"model", "parallel"},
    "run": {"model", "parallel", "paths", "trees"},
    "eval": {"data", "model", "run", "batch", "parallel", "paths"},
    "train": {"data", "model", "losses", "run", "eval", "batch", "parallel", "paths", "trees"},
    "serving": {"batch", "data"},
    "export": {"data", "model", "run", "serving", "batch", "trees", "pretrained"},
    "main": {"run", "train", "distributed"},
    "bench": {"batch", "data", "eval", "model", "parallel", "run", "train"},
    "embed": {"serving"},
    "serve": {"serving", "batch"},
    "pretrained": set(),
    "integrations": {"data", "run", "serving"},
    "cli": set(),
}
# Serving runs with jax + numpy only: none of these may be imported by gemb.serving or by any
# gemb module it imports, directly or not.
SERVING_BANNED = ("flax", "optax", "orbax", "grain", "tensorflow_datasets", "clu")
# The part of gemb.data that serving may use: decoding and packing one input.
SERVING_DATA = {"gemb.data", "gemb.data.examples", "gemb.data.bad_records", "gemb.data.tokenizer",
                "gemb.data.media", "gemb.data.media.audio", "gemb.data.media.image", "gemb.data.media.video"}


def module_name(path):
  parts = path.relative_to(ROOT.parent).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name):
  path = ROOT.parent.joinpath(*name.split("."))
  return path.with_suffix(".py").exists() or (path / "__init__.py").exists()


def imports(path):
  """(gemb modules, top-level third-party packages) that the file at ``path`` imports."""
  name = module_name(path)
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  ours, theirs = set(), set()
  for node in ast.walk(ast.parse(path.read_text(), str(path))):
    if isinstance(node, ast.Import):
      targets = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      # `from gemb.data import examples` depends on the module gemb.data.examples.
      targets = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}") else base
                 for a in node.names]
    else:
      continue
    for target in targets:
      (ours if target.split(".")[0] == "gemb" else theirs).add(
          target if target.split(".")[0] == "gemb" else target.split(".")[0])
  return ours, theirs


def graph():
  return {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def part(module):
  """gemb.data.media.audio -> "data"; gemb.losses -> "losses"; gemb -> "" (the package)."""
  return module.split(".")[1] if "." in module else ""


def test_every_part_has_a_rule():
  assert {part(m) for m in graph()} - {""} == set(ALLOWED)


def test_imports_follow_the_layers():
  bad = [f"{m} imports {target}" for m, (ours, _) in graph().items() for target in sorted(ours)
         if part(target) and part(target) != part(m) and part(target) not in ALLOWED[part(m)]]
  assert not bad, "imports against the layering of gemb/__init__.py:\n" + "\n".join(bad)


def test_eval_never_imports_train_and_model_imports_no_data():
  # The two rules the layering exists for, spelled out.
  modules = graph()
  for m, (ours, _) in modules.items():
    if part(m) == "eval":
      assert not {t for t in ours if part(t) == "train"}, m
    if part(m) in ("model", "run"):
      assert not {t for t in ours if part(t) in ("train", "eval", "data")}, m


def serving_closure(modules):
  seen, todo = set(), [m for m in modules if part(m) == "serving"]
  while todo:
    m = todo.pop()
    if m in seen:
      continue
    seen.add(m)
    todo.extend(t for t in modules[m][0] if t in modules)
  return seen


def test_serving_needs_no_training_stack():
  modules = graph()
  closure = serving_closure(modules)
  outside = sorted(m for m in closure if part(m) not in ("", "serving", "batch")
                   and m not in SERVING_DATA)
  assert not outside, f"gemb.serving reaches {outside}"
  banned = sorted((m, t) for m in closure for t in modules[m][1] if t in SERVING_BANNED)
  assert not banned, f"gemb.serving reaches training libraries: {banned}"


@pytest.mark.parametrize("source, target", [("gemb.eval.tasks", "gemb.train.loop"),
                                            ("gemb.model.layers", "gemb.data.pipeline")])
def test_a_forbidden_import_is_caught(tmp_path, monkeypatch, source, target):
  # The check itself can fail: a copy of the tree with one forbidden import added.
  copy = tmp_path / "gemb"
  shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
  path = copy.joinpath(*source.split(".")[1:]).with_suffix(".py")
  path.write_text(path.read_text() + f"\n\ndef _late():\n  import {target}  # noqa\n")
  monkeypatch.setattr(sys.modules[__name__], "ROOT", copy)
  with pytest.raises(AssertionError, match=f"{source} imports {target}"):
    test_imports_follow_the_layers()


if __name__ == "__main__":
  edges = collections.defaultdict(set)
  for m, (ours, _) in graph().items():
    edges[part(m) or "gemb"].update(part(t) for t in ours if part(t) and part(t) != part(m))
  for source in sorted(edges):
    print(f"{source:12s} -> {', '.join(sorted(edges[source])) or '-'}")
