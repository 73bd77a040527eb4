#!/usr/bin/env bash
# Fast-path kernels, first of two calls on one machine (carry [".whl", ".gpu1"]):
#   eediff bench at B=64: floors (bf16, fp8), diffusers eager and compiled, the fast path under each kernel
#   variant (inductor, fused, fp8), exits per variant, per-row depths, one block's parts, end to end.
# Leaves .gpu1 (half the Inception xz + the Fashion-MNIST test set) in /root/pt for kernels_fid.sh.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
source benchmarks/device/bench_as.sh
mkdir -p /root/pt && cp -r .gpu1 /root/pt/gpu1
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv
CMD="eediff bench --batch-sizes 64 --schedules D4-DiT,D6-DiT --row-batch 64 --row-buckets 8 --diffusers-compile default --repeats 10 --out results/bench_dit_h200_kernels.json"
bench_as ${BENCH_S:-500} "$CMD" 80
