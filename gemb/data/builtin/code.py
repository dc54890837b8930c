"""TFDS builder "gemb_code": Python standard library docstrings paired with their functions.

Owns finding the standard library's modules, extracting (docstring, code) pairs with `ast`,
deduplication and the split rule. Nothing is downloaded and nothing is installed: the source
is the standard library of the Python that runs the build (`sysconfig.get_paths()["stdlib"]`;
Python Software Foundation License, PSF-2.0), so a build records that Python's version in
its description and the records change with it.

Which code: every module under the stdlib directory except test code (directories `test`,
`tests`, `idle_test`, files `test_*.py`, the `__phello__` test package) and anything that
is not an importable module (site-packages, config-3.x-*: path parts that are not Python
identifiers). Which functions: every function and method, nested ones included, whose
docstring's first paragraph has >= MIN_DOCSTRING_CHARS characters and whose body has a
statement other than the docstring, `pass` and `...`.

Records: docstring (the first paragraph of the cleaned docstring, whitespace collapsed),
code (the function's source with its decorators, dedented, with every docstring in it
removed: its own and those of nested functions and classes; a docstring that shares a line
with other code makes the function fall back to `ast.unparse` of the tree without
docstrings, which drops comments), qualname (Python's: "Class.method",
"f.<locals>.g"), module ("json.decoder"), item_id (10,000 * the module's rank in sha256
order + the function's index in its module: stable across configs and builds).
Deduplication: modules are read in sha256 order ("order:" + name) and a function whose code
or docstring equals one kept before is dropped (abstract-method stubs, copied helpers, the
same docstring on overloads), so equal texts never carry different ids, also across splits.
Functions whose docstring paragraph still appears in their code (in a comment or message)
are dropped: string matching would solve them.

Splits are disjoint by module: a module goes to train / validation / test by the sha256 of
its dotted name (80 / 5 / 15 %), so test functions come from modules never seen in training.
Configs: "full" keeps everything; "small" reads modules in that order, skipping modules of
splits that have enough, until train / validation / test have 300 / 40 / 60 pairs.
Counts with Python 3.11.7 (6,378 usable functions in 732 modules before deduplication):
  full:  train 4,762, validation 147, test 1,037 (validation is small: a few large
         modules decide the split sizes). Build ~6 s of CPU (~15 s on this busy machine).
  small: train 326, validation 42, test 63 (~1 s).

Tasks (`TASKS`): code_docstring_to_code (docstring -> function) and code_code_to_docstring
(function -> docstring), item_id on both sides.
"""
import ast
import dataclasses
import os
import sys
import sysconfig
import tokenize

import numpy as np
import tensorflow_datasets as tfds

from gemb.data.builtin import base
from gemb.data.tasks import TaskSpec

MIN_DOCSTRING_CHARS = 20
TRAIN_PERCENT, VALIDATION_PERCENT = 80, 5  # Of modules; the rest is test.
SPLITS = ("train", "validation", "test")
_TEST_DIRS = frozenset({"test", "tests", "idle_test", "__phello__"})
_IDS_PER_MODULE = 10_000
_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)


@dataclasses.dataclass(frozen=True)
class Pair:
  """One function of the standard library with its docstring's first paragraph."""
  docstring: str
  code: str
  qualname: str
  module: str
  index: int  # Among the module's functions with a usable docstring, in source order.


def stdlib_dir() -> str:
  return sysconfig.get_paths()["stdlib"]


def split_of(module: str) -> str:
  """The split (train / validation / test) of a module, from a hash of its dotted name."""
  return base.hash_split(module, TRAIN_PERCENT, VALIDATION_PERCENT)


def find_modules(root: str) -> dict[str, str]:
  """Dotted module name -> file path of every non-test module under root."""
  modules = {}
  for dirpath, dirnames, filenames in os.walk(root):
    rel = os.path.relpath(dirpath, root)
    parts = [] if rel == "." else rel.split(os.sep)
    # Pruning in place stops os.walk from descending; sorting fixes the walk order.
    dirnames[:] = sorted(d for d in dirnames if d.isidentifier() and d not in _TEST_DIRS)
    for name in sorted(filenames):
      stem = name[:-3]
      if name.endswith(".py") and stem.isidentifier() and not stem.startswith("test_"):
        module = ".".join(parts + ([] if stem == "__init__" else [stem]))
        if module:
          modules[module] = os.path.join(dirpath, name)
  return modules


def module_order(modules) -> list[str]:
  """Modules in the order builds read them (dedup keeps the first; small takes a prefix)."""
  return sorted(modules, key=lambda m: (base.stable_int("order:" + m), m))


def first_paragraph(docstring: str) -> str:
  """The cleaned docstring's first paragraph on one line."""
  return " ".join(docstring.strip().split("\n\n", 1)[0].split())


def _docstring_node(node):
  """The docstring expression of a def/class/module, or None."""
  if node.body and isinstance(node.body[0], ast.Expr):
    value = node.body[0].value
    if isinstance(value, ast.Constant) and isinstance(value.value, str):
      return node.body[0]
  return None


def _has_real_body(node) -> bool:
  body = node.body[1:] if _docstring_node(node) else node.body
  return any(not (isinstance(s, ast.Pass) or (isinstance(s, ast.Expr)
                                              and isinstance(s.value, ast.Constant)
                                              and s.value.value is Ellipsis))
             for s in body)


def _unparse_without_docstrings(node) -> str:
  tree = ast.parse(ast.unparse(node))  # A copy, so the caller's tree stays intact.
  for n in ast.walk(tree):
    if isinstance(n, (*_DEFS, ast.ClassDef)) and _docstring_node(n):
      n.body = n.body[1:] or [ast.Pass()]
  return ast.unparse(tree)


def code_without_docstrings(lines: list[str], node) -> str:
  """Source of a function (decorators included, dedented) with all its docstrings removed.

  lines: the module's source lines (no line ends). Each docstring's lines are dropped, or
  replaced by `pass` where it was a body's only statement; if a docstring shares a line
  with other code, or the result does not parse, falls back to ast.unparse.
  """
  first = min([node.lineno] + [d.lineno for d in node.decorator_list])
  drop, passes = set(), {}
  for n in ast.walk(node):
    doc = _docstring_node(n) if isinstance(n, (*_DEFS, ast.ClassDef)) else None
    if doc is None:
      continue
    # ast offsets count UTF-8 bytes.
    before = lines[doc.lineno - 1].encode("utf-8")[:doc.col_offset].decode("utf-8", "replace")
    after = lines[doc.end_lineno - 1].encode("utf-8")[doc.end_col_offset:].decode(
        "utf-8", "replace")
    if before.strip() or (after.strip() and not after.strip().startswith("#")):
      return _unparse_without_docstrings(node)  # Shares a line with code.
    drop.update(range(doc.lineno, doc.end_lineno + 1))
    if len(n.body) == 1:
      passes[doc.lineno] = before + "pass"
  def_line = lines[node.lineno - 1]
  indent = len(def_line) - len(def_line.lstrip())
  out = []
  for number in range(first, node.end_lineno + 1):
    if number in drop and number not in passes:
      continue
    line = passes.get(number, lines[number - 1])
    strip = min(indent, len(line) - len(line.lstrip()))
    out.append(line[strip:].rstrip())
  code = "\n".join(out).strip("\n")
  try:
    ast.parse(code)
  except SyntaxError:  # E.g. a continuation line indented less than the def.
    return _unparse_without_docstrings(node)
  return code


def extract_pairs(source: str, module: str) -> list[Pair]:
  """The usable (docstring, code) pairs of one module's source, in source order."""
  tree = ast.parse(source)
  lines = source.splitlines()
  pairs = []

  def visit(body, prefix):
    for node in body:
      if isinstance(node, ast.ClassDef):
        visit(node.body, f"{prefix}{node.name}.")
      elif isinstance(node, _DEFS):
        qualname = prefix + node.name
        doc = ast.get_docstring(node, clean=True)
        paragraph = first_paragraph(doc) if doc else ""
        if len(paragraph) >= MIN_DOCSTRING_CHARS and _has_real_body(node):
          code = code_without_docstrings(lines, node)
          if paragraph not in " ".join(code.split()):
            pairs.append(Pair(paragraph, code, qualname, module, len(pairs)))
        visit(node.body, f"{qualname}.<locals>.")
      else:  # Functions defined under if / try / with at any level.
        for field in ("body", "orelse", "finalbody", "handlers"):
          visit(getattr(node, field, []), prefix)

  visit(tree.body, "")
  return pairs


def read_source(path: str) -> str:
  """A module's text, decoded as Python does (PEP 263 coding cookie, default UTF-8)."""
  with tokenize.open(path) as f:
    return f.read()


def collect_pairs(root: str, min_per_split: dict[str, int] | None = None):
  """Split name -> [(item_id, Pair)] over the stdlib at root, deduplicated.

  min_per_split: stop reading modules once every split has at least this many pairs, and
  skip modules of splits that have enough; None reads everything.
  """
  modules = find_modules(root)
  out = {split: [] for split in SPLITS}
  seen_code, seen_doc = set(), set()
  for rank, module in enumerate(module_order(modules)):
    split = split_of(module)
    if min_per_split is not None:
      if all(len(out[s]) >= min_per_split[s] for s in SPLITS):
        break
      if len(out[split]) >= min_per_split[split]:
        continue
    try:
      pairs = extract_pairs(read_source(modules[module]), module)
    except (SyntaxError, UnicodeDecodeError, ValueError):
      continue  # Files Python itself cannot compile (e.g. lib2to3 grammar fixtures).
    if len(pairs) >= _IDS_PER_MODULE:
      raise ValueError(f"{module} has {len(pairs)} functions: item ids would collide")
    for p in pairs:
      if p.code in seen_code or p.docstring in seen_doc:
        continue
      seen_code.add(p.code)
      seen_doc.add(p.docstring)
      out[split].append((rank * _IDS_PER_MODULE + p.index, p))
  return out


@dataclasses.dataclass
class CodeConfig(tfds.core.BuilderConfig):
  """min_per_split: see collect_pairs; None keeps the whole standard library."""
  min_per_split: dict[str, int] | None = None


class GembCode(base.GembBuilder):
  """Standard-library docstring <-> function pairs (module docstring has details)."""

  name = "gemb_code"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release: docstring first paragraphs and docstring-free function "
               "source of the Python standard library, split by module.",
  }
  BUILDER_CONFIGS = base.full_and_small(
      "Every usable function of the standard library.", "Small subset for tests.", CodeConfig,
      small_args=dict(min_per_split={"train": 300, "validation": 40, "test": 60}))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=(
            "Docstring <-> code pairs from the standard library of Python "
            f"{sys.version.split()[0]} ({stdlib_dir()}; PSF License), parsed with ast. "
            "Test packages and non-module paths are skipped. A function qualifies with a "
            f"docstring first paragraph of >= {MIN_DOCSTRING_CHARS} characters and a body "
            "beyond its docstring. docstring = that paragraph; code = the function's "
            "source (decorators included, dedented) with every docstring removed; "
            "functions are deduplicated by code and by docstring. item_id = 10000 * rank "
            "of the module in sha256 order + index in the module. Splits are disjoint by "
            f"module (sha256 of the dotted name: {TRAIN_PERCENT}% train, "
            f"{VALIDATION_PERCENT}% validation, rest test)."),
        features=tfds.features.FeaturesDict({
            "docstring": tfds.features.Text(),
            "code": tfds.features.Text(),
            "qualname": tfds.features.Text(),
            "module": tfds.features.Text(),
            "item_id": tfds.features.Scalar(np.int32),
        }),
        homepage="https://docs.python.org/3/library/",
        license="Python Software Foundation License (PSF-2.0)",
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The source is the running Python's standard library.
    root = stdlib_dir()
    if not os.path.isdir(root):
      raise FileNotFoundError(f"Python standard library directory {root} is missing")
    pairs = collect_pairs(root, self.builder_config.min_per_split)
    return {split: self._generate_examples(pairs[split]) for split in SPLITS}

  def _generate_examples(self, pairs):
    for item_id, p in pairs:
      yield item_id, {"docstring": p.docstring, "code": p.code, "qualname": p.qualname,
                      "module": p.module, "item_id": item_id}


TASKS = (
    TaskSpec(
        name="code_docstring_to_code", dataset="code",
        query=("text:docstring",), candidate=("text:code",),
        query_id="item_id", candidate_id="item_id",
        instruction="task: code retrieval | query: ",
        description="Python standard library: docstring first paragraph -> the function's "
                    "source without docstrings."),
    TaskSpec(
        name="code_code_to_docstring", dataset="code",
        query=("text:code",), candidate=("text:docstring",),
        query_id="item_id", candidate_id="item_id",
        instruction="task: code summarization | query: ",
        description="Python standard library: function source without docstrings -> its "
                    "docstring's first paragraph."),
)
