#!/usr/bin/env bash
# Issue 11's GPU row: bench_time_to_quality.py on one GPU, prepared as one run of under 8 minutes.
#
#   bash experiments/gpu_time_to_quality.sh download   # here, where PyPI is reachable: the wheels
#                                                      # the GPU image lacks, into .whl/ (git-ignored)
#   bash experiments/gpu_time_to_quality.sh run        # on the GPU machine (no network there;
#                                                      # the device tool's `carry` takes .whl)
#   bash experiments/gpu_time_to_quality.sh profile    # on the GPU machine: where the time goes
#                                                      # (population step parts, patch vs XLA convolution)
#
# `run` installs those wheels into /tmp/site (the image's own JAX, Flax, Optax, Orbax and CUDA
# stay), generates MNIST-1D once so no contestant's clock pays for it, and runs the benchmark with
# SEEDS seeds (default 1) of Optuna TPE and TPE + pruner against vhjax `tune` (`vhjax_tune`: its
# 'auto' method, here the shrinking keep_best PBT of 32 members and 30 rounds) and `tune`'s
# sampler-and-pruner method (`vhjax_tune_asha`, 16 slots, its accelerator default; session 32 ran
# that as `vhjax_tune`, with `tune:64` and plain PBT, see experiments/README.md "On a GPU");
# CONTESTANTS overrides the list; no seed round starts that would end
# after TIME_BUDGET seconds (default 400). The table, JSON and plot go to experiments/results and
# figures (tag _gpu) and, where $OUT is set, are copied there. QUICK=1 runs the benchmark's smoke
# settings instead (4 trials of 100 steps), to check the set-up. On an H200 (session 32) `run` took
# 315 s for 2 seeds and `profile`'s earlier version 278 s, each plus about 30 s of machine start.
# Device command, for example:
#   set -o pipefail; SEEDS=3 TIME_BUDGET=370 bash experiments/gpu_time_to_quality.sh run 2>&1 | tee $OUT/log
#   (timeout_s 520, carry [".whl"])
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
CONTESTANTS=${CONTESTANTS:-optuna_tpe,optuna_tpe_hb,vhjax_tune,vhjax_tune_asha}
TIME_BUDGET=${TIME_BUDGET:-400}  # seconds: no seed round is started that would end later (device lease)

download() {
  mkdir -p .whl
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
  python3 -m pip wheel -q --no-deps -w .whl "${PURE_SOURCES[@]}"
  du -sh .whl
}

install() {
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  python3 -c "import jax; print('JAX', jax.__version__, jax.devices())"
  python3 -c "from vhjax.data import load; load('mnist1d', 'train')"
}

run() {
  install
  local extra=()
  [[ "${QUICK:-0}" == 1 ]] && extra=(--quick)
  python3 experiments/bench_time_to_quality.py --seeds "$SEEDS" --contestants "$CONTESTANTS" --cpu-devices 1 \
    --time-budget "$TIME_BUDGET" \
    --tag _gpu "${extra[@]}"
  if [[ -n "${OUT:-}" ]]; then
    cp experiments/results/time_to_quality*_gpu.md experiments/results/time_to_quality*_gpu.json \
      experiments/figures/time_to_quality*_gpu.png "$OUT"/
  fi
}

# Where a GPU search's time goes, as one run of under 7 minutes: (1) bench_population.py, the population
# step against a per-step loop at P = 1, 16, 64: plain, with dropout alone, with the shift alone, with
# all three regularizers (dropout, weight decay, shift), and the realistic row with vhjax's patch
# convolution instead of XLA's native one (the GPU default, never compared on a GPU before); (2) the
# time-to-quality bench, 1 seed, with the vhjax contestants on patch convolutions (tag _gpu_patch).
# Session 32's profile (XLA autotuning off, tag _gpu_noautotune) is in experiments/README.md.
profile() {
  install
  timeout 230 python3 experiments/bench_population.py --steps 300 --sizes 1 16 64 --repeats 2 --models \
    "paper CNN" "paper CNN with dropout" "paper CNN with augmentation" \
    "paper CNN with dropout + weight decay + augmentation" \
    "paper CNN, patch conv, with dropout + weight decay + augmentation" || echo "bench_population: rc $?"
  timeout 150 python3 experiments/bench_time_to_quality.py --seeds 1 --contestants optuna_tpe,vhjax_tune,vhjax_tune_asha \
    --cpu-devices 1 --conv-impl patch --tag _gpu_patch || echo "bench_time_to_quality: rc $?"
  if [[ -n "${OUT:-}" ]]; then
    cp experiments/results/time_to_quality_gpu_patch.* "$OUT"/ || true
  fi
}

case "${1:-}" in
  download) download ;;
  run) run ;;
  profile) profile ;;
  *) echo "usage: $0 download|run|profile   (see the comment at the top)" >&2; exit 2 ;;
esac
