"""The console scripts: setup.py's entry points run, and their --help lists what the README's
"Commands" table says.

Each script runs in a child process as pip's generated wrapper runs it (argv[0] the script
name, then ``sys.exit(func())``), from this checkout: nothing is installed. When gemb is
installed editable from this checkout (CI: launch/install.sh), the installed entry points
must be setup.py's.
"""

import ast
import functools
import concurrent.futures
import importlib.metadata
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@functools.lru_cache(maxsize=None)
def setup_py_scripts():
  """{script: "module:function"} from setup.py's console_scripts (parsed, not run). Parsed
  once: run_script runs in threads, and concurrent ast.parse calls corrupt CPython 3.11.7's
  AST recursion counter (SystemError "AST constructor recursion depth mismatch", seen here
  once in a run of this file)."""
  tree = ast.parse(open(os.path.join(ROOT, "setup.py")).read())
  for node in ast.walk(tree):
    if isinstance(node, ast.Dict):
      for key, value in zip(node.keys, node.values):
        if isinstance(key, ast.Constant) and key.value == "console_scripts":
          entries = [e.value for e in value.elts]
          return {e.split("=")[0].strip(): e.split("=")[1].strip() for e in entries}
  raise AssertionError("setup.py declares no console_scripts")


def readme_commands():
  """{command: [backticked flag specs]} from the README's Commands table."""
  text = open(os.path.join(ROOT, "README.md")).read()
  section = text.split("\n## Commands\n", 1)[1].split("\n## ", 1)[0]
  rows = {}
  for line in section.splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 3 and cells[0].startswith("`gemb-"):
      rows[cells[0].strip("`")] = re.findall(r"`([^`]+)`", cells[2])
  return rows


def run_script(script, *args):
  module, function = setup_py_scripts()[script].split(":")
  code = (f"import sys; sys.argv[0] = {script!r}; from {module} import {function}; "
          f"sys.exit({function}())")
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc.returncode, proc.stdout + proc.stderr


def importable(module):
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # its package is missing
    return False


def flag_listed(name, help_text):
  # absl: "  --name: ..." / "  --[no]name: ..."; argparse: "  --name NAME".
  return re.search(rf"^\s+--(\[no\])?{re.escape(name)}\b", help_text, re.M) is not None


def test_readme_table_names_every_console_script():
  assert sorted(readme_commands()) == sorted(setup_py_scripts())


def test_help_of_every_script_lists_the_readme_flags():
  scripts = setup_py_scripts()
  available = {s for s, target in scripts.items() if importable(target.split(":")[0])}
  # gemb.pretrained arrives with branch `gemma`; until it is merged its script cannot run.
  missing = set(scripts) - available
  assert missing <= {"gemb-pretrained"}, missing
  calls = []
  for script, specs in readme_commands().items():
    if script not in available:
      continue
    calls.append((script, (), [w for s in specs for w in s.split() if w.startswith("--")
                               and "<" not in w and s.startswith("--")]))
    for spec in specs:  # subcommands: `fetch NAME --dir=DIR`
      words = spec.split()
      if not words[0].startswith("--"):
        calls.append((script, (words[0],), [w for w in words[1:] if w.startswith("--")]))
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda c: run_script(c[0], *c[1], "--help"), calls))
  for (script, sub, flags), (code, out) in zip(calls, results):
    # absl exits 1 after --help, argparse 0; anything else is a crash.
    assert code in (0, 1) and "Traceback" not in out, (script, sub, out[-2000:])
    for flag in flags:
      name = flag[2:].split("=")[0]
      assert flag_listed(name, out), f"{script} {' '.join(sub)} --help lacks {flag}:\n{out}"
    if not sub:
      for spec in readme_commands()[script]:
        if not spec.startswith("--"):
          assert re.search(rf"\b{spec.split()[0]}\b", out), (script, spec, out)


def test_a_bad_flag_value_is_named(tmp_path):
  code, out = run_script("gemb-eval", f"--workdir={tmp_path}/none")
  assert code == 1 and f"--workdir={tmp_path}/none: no such directory" in out, out


def test_installed_entry_points_are_setup_pys():
  try:
    dist = importlib.metadata.distribution("gemb")
  except importlib.metadata.PackageNotFoundError:
    pytest.skip("gemb is not installed")
  url = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
  if os.path.realpath(url.removeprefix("file://")) != os.path.realpath(ROOT):
    pytest.skip(f"the installed gemb is not this checkout ({url or 'not editable'})")
  installed = {e.name: e.value for e in dist.entry_points if e.group == "console_scripts"}
  assert installed == {k: v.replace(" ", "") for k, v in setup_py_scripts().items()}
