#!/usr/bin/env bash
# Issue 11's GPU row: bench_time_to_quality.py on one GPU, prepared as one run of under 8 minutes.
#
#   bash experiments/gpu_time_to_quality.sh download   # here, where PyPI is reachable: the wheels
#                                                      # the GPU image lacks, into .whl/ (git-ignored)
#   bash experiments/gpu_time_to_quality.sh run        # on the GPU machine (no network there;
#                                                      # the device tool's `carry` takes .whl)
#
# `run` installs those wheels into /tmp/site (the image's own JAX, Flax, Optax, Orbax and CUDA
# stay), generates MNIST-1D once so no contestant's clock pays for it, and runs the benchmark with
# SEEDS seeds (default 1) of Optuna TPE against vhjax `tune` (16 slots, its accelerator default)
# and `search_pbt` (32 members). The table, JSON and plot go to experiments/results and figures
# (tag _gpu) and, where $OUT is set, are copied there. QUICK=1 runs the benchmark's smoke
# settings instead (4 trials of 100 steps), to check the set-up. Device command, for example:
#   bash experiments/gpu_time_to_quality.sh run 2>&1 | tee $OUT/log     (timeout_s 540, carry [".whl"])
set -euo pipefail
cd "$(dirname "$0")/.."

# Not in the GPU image's package list (/work/.library/device/KINDS.md), at the versions CI uses.
WHEELS=(
  optuna==5.1.0 alembic==1.20.1 Mako==1.4.3 SQLAlchemy==2.1.9 greenlet colorlog==6.12.0
  mnist1d==0.0.2.post1 dm_pix==0.4.5 evosax==0.3.2 ml_collections==1.1.0 tensorboardX==2.6.5
  tensorflow-datasets==4.9.10 tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0
  array_record==0.8.6 dm-tree==0.1.10 immutabledict==4.3.1 toml==0.10.2
  termcolor==3.3.0 simple_parsing docstring_parser
)
PURE_SOURCES=(promise==2.3)  # published as source only: built into a pure-Python wheel here
SEEDS=${SEEDS:-1}
CONTESTANTS=${CONTESTANTS:-optuna_tpe,vhjax_tune,vhjax_pbt}

download() {
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
  python3 -m pip wheel -q --no-deps -w .whl "${PURE_SOURCES[@]}"
  du -sh .whl
}

run() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  python3 -c "import jax; print('JAX', jax.__version__, jax.devices())"
  python3 -c "from vhjax.data import load; load('mnist1d', 'train')"
  local extra=()
  [[ "${QUICK:-0}" == 1 ]] && extra=(--quick)
  python3 experiments/bench_time_to_quality.py --seeds "$SEEDS" --contestants "$CONTESTANTS" --cpu-devices 1 \
    --tag _gpu "${extra[@]}"
  if [[ -n "${OUT:-}" ]]; then
    cp experiments/results/time_to_quality*_gpu.md experiments/results/time_to_quality*_gpu.json \
      experiments/figures/time_to_quality*_gpu.png "$OUT"/
  fi
}

case "${1:-}" in
  download) download ;;
  run) run ;;
  *) echo "usage: $0 download|run   (see the comment at the top)" >&2; exit 2 ;;
esac
