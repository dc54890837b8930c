"""One process of the multi-process encode test (tests/test_eval_multiprocess.py).

    python tests/eval_encode_worker.py PROCESS_ID NUM_PROCESSES PORT OUT_DIR

Joins a jax.distributed job on 127.0.0.1:PORT with 2 CPU devices, embeds ``items()`` with
a random-init ``model_config()`` model through gemb.eval.tasks (global batches of
BATCH_SIZE over a mesh that spans both processes) and saves the embeddings and throughput
entry to OUT_DIR/process_<id>.npz.
"""

import sys

import numpy as np

NUM_ITEMS = 29  # not a multiple of the global batch: the last batch is padded
BATCH_SIZE = 8
# FSDP across the two processes (each holds one half of every batch and of the params),
# tensor parallelism inside each.
MESH = dict(data=1, fsdp=2, tensor=2)


def model_config():
  from configs import tiny
  cfg = tiny.get_config().model
  cfg.update(width=32, depth=1, heads=2, mlp_dim=64, embed_dim=16)
  return cfg


def items(n=NUM_ITEMS):
  """An interleaved [text, image] side of n examples, seeded."""
  rng = np.random.default_rng(0)
  text = rng.integers(4, 1024, size=(n, 1, 16)).astype(np.int32)
  text[np.arange(16)[None, None, :] >= rng.integers(1, 17, size=(n, 1, 1))] = 0  # padding
  return {"layout": np.tile(np.asarray([0, 1], np.int32), (n, 1)), "text": text,
          "image": rng.uniform(-1, 1, size=(n, 1, 32, 32, 3)).astype(np.float32)}


def main(process_id, num_processes, port, out_dir):
  import jax
  jax.config.update("jax_num_cpu_devices", 2)
  # Short timeouts: a crashed peer must end the test in seconds, not minutes.
  jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                             num_processes=num_processes, process_id=process_id,
                             heartbeat_timeout_seconds=10, shutdown_timeout_seconds=10,
                             initialization_timeout=60)
  from flax import nnx

  from gemb import parallel
  from gemb.eval.tasks import make_embed_fn, timed_encode
  from gemb.model.embedder_model import MultimodalEmbedder

  mesh = parallel.make_mesh(MESH)
  graphdef, params = parallel.create_sharded(
      lambda: MultimodalEmbedder(model_config(), rngs=nnx.Rngs(0)), mesh)
  embed = make_embed_fn(graphdef, params, mesh, BATCH_SIZE)
  embeddings, speed = timed_encode(embed, items(), BATCH_SIZE)
  np.savez(f"{out_dir}/process_{process_id}.npz", embeddings=embeddings,
           num_items=speed["num_items"], items_per_s=speed["items_per_s"],
           modalities=speed["modalities"])
  jax.distributed.shutdown()


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
