"""Times the compiled train step and prints one JSON line.

  python -m gemb.bench --config=configs/bench.py [--config.bench.steps=20]

Random image -> text batches of the config's shapes (query = one image, candidate = one
text) are made once on the host and placed on the mesh, so the timing is the step alone.

Analytic FLOPs (the formula of ../shared/peers/open_clip_bench.py, so the two compare):
1 multiply-add = 2 FLOPs, matmul-like work only. A transformer pass over T tokens of
width W, depth L, MLP dim M costs L * (2*T*(4*W^2 + 2*W*M) + 4*T^2*W); the image side
adds its patch projection 2*(3*P*P)*W per patch, each side its head 2*W*E; the symmetric
InfoNCE logits cost 4*B*E per example per Matryoshka dim (E = that dim). A train step is
3x the forward (backward ~ 2x forward).
"""

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from gemb import parallel
from gemb.batch import IMAGE, TEXT
from gemb.train.state import create_train_state
from gemb.train.step import make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
flags.mark_flags_as_required(["config"])


def transformer_flops(tokens, m):
  per_token = 2 * (4 * m.width ** 2 + 2 * m.width * m.mlp_dim)
  return m.depth * (tokens * per_token + 4 * tokens ** 2 * m.width)


def flops_per_example(config):
  """Analytic forward and train FLOPs of one image -> text example (see module docstring)."""
  m, batch = config.model, config.data.batch_size
  patches = (m.image.size // m.image.patch) ** 2
  image = (2 * 3 * m.image.patch ** 2 * m.width * patches + transformer_flops(patches, m)
           + 2 * m.width * m.embed_dim)
  text = transformer_flops(m.text.max_len, m) + 2 * m.width * m.embed_dim
  logits = sum(4 * batch * d for d in config.loss.matryoshka_dims)
  forward = image + text + logits
  return forward, 3 * forward


def synthetic_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, m = config.data.batch_size, config.model
  return {
      "query": {"layout": np.full((b, 1), IMAGE, np.int32),
                "image": rng.uniform(-1, 1, (b, 1, m.image.size, m.image.size, 3)
                                     ).astype(np.float32)},
      "candidate": {"layout": np.full((b, 1), TEXT, np.int32),
                    "text": rng.integers(4, m.text.vocab_size, (b, 1, m.text.max_len), np.int32)},
      "query_id": np.arange(b, dtype=np.int32), "candidate_id": np.arange(b, dtype=np.int32),
  }


def run(config):
  mesh = parallel.make_mesh(config.mesh)
  graphdef, state, shardings, tx, schedule = create_train_state(config, mesh)
  step_fn = make_train_step(graphdef, tx, schedule, config, mesh, shardings)
  batch = parallel.host_to_global(synthetic_batch(config), mesh)
  with jax.set_mesh(mesh):
    for _ in range(config.bench.warmup):
      state, metrics = step_fn(state, batch)
    jax.block_until_ready(metrics)
    times = []
    for _ in range(config.bench.steps):
      t0 = time.perf_counter()
      state, metrics = step_fn(state, batch)
      jax.block_until_ready(metrics)  # per-step sync only to time each step
      times.append(time.perf_counter() - t0)
  median = statistics.median(times)
  forward, train = flops_per_example(config)
  per_s = config.data.batch_size / median
  return {"framework": "gemb", "jax": jax.__version__, "devices": jax.device_count(),
          "batch": config.data.batch_size, "steps": config.bench.steps,
          "step_s_median": median, "step_s_min": min(times), "step_s_max": max(times),
          "examples_per_s": per_s, "flops_per_example_fwd": forward,
          "flops_per_example_train": train, "achieved_gflops": train * per_s / 1e9,
          "loss": float(metrics["loss"])}


def main(argv):
  del argv
  print(json.dumps(run(_CONFIG.value)))


if __name__ == "__main__":
  app.run(main)
