"""Encoding an eval corpus with a real 2-process jax.distributed job on 127.0.0.1 gives the
embeddings of one plain single-device model call, in both processes."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
from flax import nnx

import eval_encode_worker as worker
from gemb.model.embedder_model import MultimodalEmbedder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def run_processes(num, out_dir, timeout=240):
  """Runs the worker as `num` processes; returns their (returncode, output)."""
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  env.pop("XLA_FLAGS", None)  # the workers set their own device count
  port = free_port()
  procs = [subprocess.Popen([sys.executable, os.path.join(ROOT, "tests", "eval_encode_worker.py"),
                             str(i), str(num), str(port), str(out_dir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
           for i in range(num)]
  results = []
  try:
    for p in procs:
      out, _ = p.communicate(timeout=timeout)
      results.append((p.returncode, out))
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
  return results


def reference_embeddings():
  """Every item in one jitted call on one device: no mesh, batches, padding or processes."""
  make = lambda: MultimodalEmbedder(worker.model_config(), rngs=nnx.Rngs(0))  # noqa: E731
  graphdef, _ = nnx.split(nnx.eval_shape(make))
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(make())))()
  return np.asarray(jax.jit(lambda p, s: nnx.merge(graphdef, p)(s))(params, worker.items()))


def test_two_process_encode_equals_a_plain_model(tmp_path):
  results = run_processes(2, tmp_path)
  for i, (code, out) in enumerate(results):
    assert code == 0, f"process {i} exited with {code}:\n{out[-3000:]}"
  outs = [np.load(tmp_path / f"process_{i}.npz") for i in range(2)]
  expected = reference_embeddings()
  assert expected.shape == (worker.NUM_ITEMS, 16)
  for out in outs:
    np.testing.assert_allclose(out["embeddings"], expected, rtol=1e-4, atol=1e-5)
    assert int(out["num_items"]) == worker.NUM_ITEMS and float(out["items_per_s"]) > 0
    assert str(out["modalities"]) == "text+image"
  # Both processes got the whole result, identically.
  np.testing.assert_array_equal(outs[0]["embeddings"], outs[1]["embeddings"])
