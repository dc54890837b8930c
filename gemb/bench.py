"""Times the compiled train step or the eval encoder (one JSON line), or builds the memory /
scale table.

  python -m gemb.bench --config=configs/bench.py [--config.bench.steps=20]
  python -m gemb.bench --config=configs/bench.py --config.bench.mode=embed
  python -m gemb.bench --config=configs/bench.py --table [--table_out=/tmp/perf.md]

Random image -> text batches of the config's shapes (query = one image, candidate = one
text) are made once on the host and placed on the mesh, so the timing is the step alone.
Each run also reports the step's per-device memory from XLA's compiled memory analysis
(temp + arguments + outputs - donated aliases) and the process's peak RSS. With
`--config.bench.compile_only=True` the step is compiled for its memory analysis but not run
(big batches that would take too long on a CPU). `--config.bench.devices=N` simulates N CPU
devices (the mesh then splits the batch over them).

`--config.bench.mode=embed` times forward-only embedding instead, through the evaluation's
encoder (gemb.eval.tasks.make_embed_fn: host batch in, float32 embeddings out) at
`bench.embed_batch` examples: each timed step embeds one image batch and one text batch, as
open_clip_bench.py --eval-only does (encode_image + encode_text).

`--table` runs one child process per row (a fresh process per device count, and an honest
peak RSS per row) and prints a Markdown table: memory and step time vs global batch and vs
device count, plain / GradCache (`loss.cache_chunk`) / GradCache + chunked loss
(`loss.score_block`), then the GradCache demonstration: under a per-device memory cap
(`bench.table.cap_mib`), the largest power-of-2 batch the plain step fits, and 16x that batch
trained with GradCache, with both per-example step times (on the `:small` model so it runs in
minutes).

Analytic FLOPs (the formula of ../shared/peers/open_clip_bench.py, so the two compare):
1 multiply-add = 2 FLOPs, matmul-like work only. A transformer pass over T tokens of
width W, depth L, MLP dim M costs L * (2*T*(4*W^2 + 2*W*M) + 4*T^2*W); the image side
adds its patch projection 2*(3*P*P)*W per patch, each side its head 2*W*E; the symmetric
InfoNCE logits cost 4*B*E per example per Matryoshka dim (E = that dim). A train step is
3x the forward (backward ~ 2x forward); GradCache adds one forward, which is not counted.
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time
import types

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from gemb import parallel
from gemb.batch import IMAGE, TEXT
from gemb.eval.tasks import make_embed_fn
from gemb.model import backbone
from gemb.run.state import create_train_state
from gemb.train.step import make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file.", lock_config=True)
_TABLE = flags.DEFINE_bool("table", False, "Build the memory / scale table (child processes).")
_TABLE_OUT = flags.DEFINE_string("table_out", "", "Also write the table to this file.")
flags.mark_flags_as_required(["config"])

MIB = 2 ** 20


def transformer_flops(tokens, m):
  per_token = 2 * (4 * m.width ** 2 + 2 * m.width * m.mlp_dim)
  return m.depth * (tokens * per_token + 4 * tokens ** 2 * m.width)


def text_only(config):
  """A text-only model (a pretrained text backbone): its batches are text -> text pairs."""
  return "image" not in config.model.modalities


def shared_sizes(config):
  """(width / depth / mlp_dim of the shared transformer, FLOPs of the head per example):
  gemb's own, or a pretrained backbone's from its config.json (the formula counts a plain
  MLP: Gemma's gated one does 1.5x that)."""
  m = config.model
  checkpoint = backbone.resolve(m)
  if checkpoint is None:
    return m, 2 * m.width * m.embed_dim
  c = checkpoint.hf_config
  sizes = types.SimpleNamespace(width=c["hidden_size"], depth=c["num_hidden_layers"],
                                mlp_dim=c["intermediate_size"])
  head = (sum(2 * d.in_features * d.out_features for d in checkpoint.dense)
          if m.backbone.head == "st" else 2 * sizes.width * m.embed_dim)
  return sizes, head


def embed_flops_per_example(config):
  """Analytic FLOPs of embedding one image and one text (no loss); two texts for a
  text-only model."""
  m = config.model
  sizes, head = shared_sizes(config)
  text = transformer_flops(m.text.max_len, sizes) + head
  if text_only(config):
    return 2 * text
  if m.image.encoder != "patches":
    raise ValueError(f"the analytic FLOPs count the 'patches' image encoder; "
                     f"model.image.encoder={m.image.encoder!r}")
  patches = (m.image.size // m.image.patch) ** 2
  image = (2 * 3 * m.image.patch ** 2 * sizes.width * patches
           + transformer_flops(patches, sizes) + head)
  return image + text


def flops_per_example(config):
  """Analytic forward and train FLOPs of one image -> text example (see module docstring)."""
  logits = sum(4 * config.data.batch_size * d for d in config.loss.matryoshka_dims)
  forward = embed_flops_per_example(config) + logits
  return forward, 3 * forward


def synthetic_batch(config, seed=0, batch_size=None):
  """Image -> text pairs (text -> text for a text-only model), every text token valid."""
  rng = np.random.default_rng(seed)
  b, m = batch_size or config.data.batch_size, config.model

  def texts():
    return {"layout": np.full((b, 1), TEXT, np.int32),
            "text": rng.integers(4, m.text.vocab_size, (b, 1, m.text.max_len), np.int32)}
  query = texts() if text_only(config) else {
      "layout": np.full((b, 1), IMAGE, np.int32),
      "image": rng.uniform(-1, 1, (b, 1, m.image.size, m.image.size, 3)).astype(np.float32)}
  return {"query": query, "candidate": texts(),
          "query_id": np.arange(b, dtype=np.int32), "candidate_id": np.arange(b, dtype=np.int32)}


def abstract_batch(config, mesh):
  """The batch as sharded ShapeDtypeStructs: compiling a big batch allocates nothing."""
  one = synthetic_batch(config, batch_size=1)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      (config.data.batch_size,) + x.shape[1:], x.dtype,
      sharding=parallel.batch_sharding(mesh, x.ndim)), one)


def memory(compiled):
  """Per-device bytes of a compiled step from XLA's memory analysis."""
  a = compiled.memory_analysis()
  out = {"temp": a.temp_size_in_bytes, "arguments": a.argument_size_in_bytes,
         "outputs": a.output_size_in_bytes, "aliased": a.alias_size_in_bytes}
  out["total"] = out["temp"] + out["arguments"] + out["outputs"] - out["aliased"]
  return out


# Dense bf16 peak FLOP/s by device_kind substring (NVIDIA datasheets, SXM parts).
BF16_PEAK_FLOPS = (("H200", 989e12), ("H100", 989e12), ("A100", 312e12))


def bf16_peak(device_kind):
  return next((peak for name, peak in BF16_PEAK_FLOPS if name in device_kind), None)


def peak_rss_mib():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def timed(fn, warmup, steps):
  """Seconds of each of ``steps`` calls of ``fn`` (which blocks on its result) after warm-up."""
  for _ in range(warmup):
    fn()
  times = []
  for _ in range(steps):
    t0 = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t0)
  return times


def run_embed(config):
  """Forward-only embedding throughput through the evaluation's encoder."""
  mesh = parallel.make_mesh(config.mesh, devices=jax.devices()[:config.bench.devices or None])
  setup, state = create_train_state(config, mesh)
  batch_size = config.bench.embed_batch
  embed = make_embed_fn(setup.graphdef, state["params"], mesh, batch_size)
  batch = synthetic_batch(config, batch_size=batch_size)
  # One image batch and one text batch; a text-only model: one text batch.
  sides = (batch["candidate"],) if text_only(config) else (batch["query"], batch["candidate"])
  times = timed(lambda: jax.block_until_ready([embed(side) for side in sides]),
                config.bench.warmup, config.bench.steps)
  median = statistics.median(times)
  per_example = embed_flops_per_example(config) / (2 if text_only(config) else 1)
  return {"framework": "gemb", "mode": "embed", "jax": jax.__version__, "devices": mesh.size,
          "batch": batch_size, "device_kind": jax.devices()[0].device_kind,
          "dtype": config.model.get("dtype", "float32"), "steps": config.bench.steps,
          "step_s_median": median,
          "step_s_min": min(times), "step_s_max": max(times),
          "examples_per_s": batch_size / median, "flops_per_example_fwd": per_example,
          "achieved_gflops": per_example * batch_size / median / 1e9,
          "peak_rss_mib": peak_rss_mib()}


def run(config):
  mode = config.bench.get("mode", "train")
  if mode not in ("train", "embed"):
    raise ValueError(f"bench.mode={mode!r}; choose 'train' or 'embed'")
  if mode == "embed":
    return run_embed(config)
  mesh = parallel.make_mesh(config.mesh, devices=jax.devices()[:config.bench.devices or None])
  setup, state = create_train_state(config, mesh)
  step_fn = make_train_step(setup.graphdef, setup.tx, setup.schedule, config, mesh,
                            setup.shardings)
  with jax.set_mesh(mesh):
    t0 = time.perf_counter()
    compiled = step_fn.lower(state, abstract_batch(config, mesh)).compile()
    compile_s = time.perf_counter() - t0
  result = {"framework": "gemb", "jax": jax.__version__, "devices": mesh.size,
            "batch": config.data.batch_size, "cache_chunk": config.loss.get("cache_chunk", 0),
            "score_block": config.loss.get("score_block", 0), "compile_s": compile_s,
            "memory_bytes": memory(compiled)}
  if config.bench.compile_only:
    return dict(result, ran=False, peak_rss_mib=peak_rss_mib())
  batch = parallel.host_to_global(synthetic_batch(config), mesh)
  metrics = None

  def step():
    nonlocal state, metrics
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)  # per-step sync only to time each step

  with jax.set_mesh(mesh):
    times = timed(step, config.bench.warmup, config.bench.steps)
  median = statistics.median(times)
  forward, train = flops_per_example(config)
  per_s = config.data.batch_size / median
  kind = jax.devices()[0].device_kind
  peak = bf16_peak(kind)
  # MFU only against a bf16 peak, and only for a bf16 step (an f32 step's peak differs).
  mfu = (train * per_s / (peak * mesh.size)
         if peak and config.model.get("dtype") == "bfloat16" else None)
  return dict(result, ran=True, device_kind=kind, dtype=config.model.get("dtype", "float32"),
              steps=config.bench.steps, step_s_median=median, step_s_min=min(times),
              step_s_max=max(times), examples_per_s=per_s, flops_per_example_fwd=forward,
              flops_per_example_train=train, achieved_gflops=train * per_s / 1e9,
              bf16_peak_tflops=peak and peak / 1e12, mfu=mfu, loss=float(metrics.compute()["loss"]),
              peak_rss_mib=peak_rss_mib())


# ---------------------------------------------------------------------------- the table


def child(config_arg, devices, batch, chunk=0, block=0, compile_only=False, steps=None):
  """One bench run in a fresh process (its own device count and peak RSS) -> its JSON."""
  args = [sys.executable, "-m", "gemb.bench", f"--config={config_arg}",
          f"--config.bench.devices={devices}", f"--config.data.batch_size={batch}",
          f"--config.loss.cache_chunk={chunk}", f"--config.loss.score_block={block}",
          f"--config.bench.compile_only={compile_only}"]
  if steps is not None:
    args += ["--config.bench.warmup=1", f"--config.bench.steps={steps}"]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # devices come from the flag
  out = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"bench child {' '.join(args[2:])} failed:\n{out.stderr[-3000:]}")
  return json.loads(out.stdout.strip().splitlines()[-1])


def _lever(r):
  if not r["cache_chunk"]:
    return "plain" + (f" + score_block {r['score_block']}" if r["score_block"] else "")
  return f"GradCache {r['cache_chunk']}" + (f" + score_block {r['score_block']}"
                                            if r["score_block"] else "")


def table_row(r):
  m = r["memory_bytes"]
  timing = (f"{r['step_s_median']:.3f} | {r['examples_per_s']:.1f} | "
            f"{1000 * r['step_s_median'] / r['batch']:.2f}" if r["ran"]
            else "compiled only | - | -")
  return (f"| {r['devices']} | {r['batch']} | {_lever(r)} | {m['temp'] / MIB:.1f} | "
          f"{m['arguments'] / MIB:.1f} | {m['total'] / MIB:.1f} | {timing} | "
          f"{r['peak_rss_mib']:.0f} |")


HEADER = ("| devices | global batch | lever | temp MiB/dev | args MiB/dev | total MiB/dev | "
          "step s | examples/s | ms/example | peak RSS MiB |\n"
          "|---|---|---|---|---|---|---|---|---|---|")


def build_table(config, config_file):
  t = config.bench.table
  lines = ["### Memory and step time vs global batch (configs/bench.py model, 1 device)", "",
           HEADER]

  def emit(line):
    lines.append(line)
    print(line, flush=True)

  print("\n".join(lines), flush=True)
  for batch in t.batches:
    for chunk, block in t.levers:
      if chunk and (chunk > batch or batch % chunk):
        continue
      emit(table_row(child(config_file, 1, batch, chunk, block,
                           compile_only=batch > t.run_up_to, steps=t.steps)))
  emit("")
  emit(f"### Per-device memory vs simulated device count (global batch {t.devices_batch}, "
       "compiled only: the simulated devices share the same CPU cores)")
  emit("")
  emit(HEADER)
  for devices in t.devices:
    for chunk, block in t.levers:
      chunk = chunk * devices if chunk else 0  # the same per-device chunk on every mesh
      if chunk and (chunk > t.devices_batch or t.devices_batch % chunk):
        continue
      emit(table_row(child(config_file, devices, t.devices_batch, chunk, block,
                           compile_only=True)))

  # GradCache at 16x the largest batch the plain step fits under the cap, small model.
  small = f"{config_file}:small"
  cap = t.cap_mib * MIB
  fits = None
  emit("")
  emit(f"### GradCache at 16x the batch that fits without it (per-device cap "
       f"{t.cap_mib} MiB, configs/bench.py:small model, 1 device)")
  emit("")
  emit(HEADER)
  batch = t.demo_start
  while True:
    r = child(small, 1, batch, compile_only=True)
    emit(table_row(r))
    if r["memory_bytes"]["total"] > cap:
      break
    fits, batch = batch, batch * 2
  if fits is None:
    raise ValueError(f"bench.table.cap_mib={t.cap_mib}: not even batch {t.demo_start} fits")
  # Alternate the two runs and keep each one's fastest step: the CPU is shared, and the
  # fastest step is the one least disturbed by other processes.
  runs = {"plain": [], "big": []}
  for _ in range(t.demo_rounds):
    runs["plain"].append(child(small, 1, fits, steps=t.demo_steps))
    runs["big"].append(child(small, 1, 16 * fits, fits, t.demo_block, steps=t.demo_steps))
  plain, big = (min(r, key=lambda x: x["step_s_min"]) for r in runs.values())
  emit(table_row(plain))
  emit(table_row(big))
  per_plain = plain["step_s_min"] / plain["batch"]
  per_big = big["step_s_min"] / big["batch"]
  emit("")
  emit(f"Largest plain batch under {t.cap_mib} MiB: {fits} "
       f"({plain['memory_bytes']['total'] / MIB:.1f} MiB). GradCache (chunk {fits}, score_block "
       f"{t.demo_block}) at batch {16 * fits}: {big['memory_bytes']['total'] / MIB:.1f} MiB "
       f"({'under' if big['memory_bytes']['total'] <= cap else 'OVER'} the cap), "
       f"{1000 * per_big:.2f} ms/example vs {1000 * per_plain:.2f} plain (fastest step of "
       f"{t.demo_rounds} alternating runs x {t.demo_steps} steps): {per_big / per_plain:.2f}x "
       f"the per-example step time.")
  return "\n".join(lines)


def main(argv):
  del argv
  config = _CONFIG.value
  if _TABLE.value:
    config_file = config_flags.get_config_filename(flags.FLAGS["config"]).split(":")[0]
    text = build_table(config, config_file)
    if _TABLE_OUT.value:
      with open(_TABLE_OUT.value, "w") as f:
        f.write(text + "\n")
    return
  if config.bench.devices:
    # Before any jax op: the CPU backend is created with this many devices.
    jax.config.update("jax_num_cpu_devices", config.bench.devices)
  print(json.dumps(run(config)))


if __name__ == "__main__":
  app.run(main)
