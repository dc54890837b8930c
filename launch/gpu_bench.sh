#!/usr/bin/env bash
# One short GPU benchmark: the ViT-B-sized shared model of configs/bench.py:vitb in bfloat16
# on one GPU; prints one JSON line with step time, examples/s and MFU against the GPU's bf16
# dense peak (H100/H200 SXM: 989 TFLOP/s). Under 10 minutes including the wheel install.
#
# On the device tool's machine (jax with CUDA is preinstalled there; flax and ml-collections
# travel as wheels, see /work/.library/device/README.md). Once, here, in the repo root:
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux2014_x86_64 -d .whl \
#     flax==0.12.8 ml-collections==1.1.0
# then run with carry=[".whl"]:   bash launch/gpu_bench.sh
# CPU check of this script (tiny sizes, seconds):
#   PYTHON=/work/venv/bin/python bash launch/gpu_bench.sh --tiny
set -euo pipefail
cd "$(dirname "$0")/.."

py=${PYTHON:-python3}
tiny=0; if [ "${1:-}" = "--tiny" ]; then tiny=1; shift; fi
if [ "$tiny" = 0 ] && ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

args=(--config=configs/bench.py:vitb)
if [ "$tiny" = 1 ]; then  # same code path, sizes a CPU runs in seconds
  args+=(--config.model.width=64 --config.model.depth=2 --config.model.heads=2
         --config.model.mlp_dim=128 --config.model.embed_dim=32
         --config.model.text.vocab_size=512 --config.model.text.max_len=8
         --config.model.image.size=32 --config.model.image.patch=16
         --config.loss.matryoshka_dims='(32,)' --config.data.batch_size=8
         --config.bench.warmup=1 --config.bench.steps=2)
fi
$py -c "import jax; print('jax', jax.__version__, jax.devices())"
exec $py -m gemb.bench "${args[@]}" "$@"
