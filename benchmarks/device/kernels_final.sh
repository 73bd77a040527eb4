#!/usr/bin/env bash
# The block kernels against compiled diffusers once more, one call on one H200 (carry [".whl"]), about 9 minutes:
#   1. benchmarks/kernel_variants.py: the forward at B=64 under every kernel variant with the current row-kernel
#      launch (triton_ops.row_launch), fp8 with the chunked GELU + quantise pass, fp8 with the GEMMs' fast
#      accumulation, and compiled diffusers, all in one run;
#   2. eediff bench: floors, diffusers eager and compiled, the fused and fp8 (fast accumulation) fast paths, their
#      exit schedules, and end to end (DPM-Solver++ 25 and DDPM-250, full depth and D4-DiT) in one run.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
source benchmarks/device/bench_as.sh
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv,noheader
timeout ${KV_S:-240} python3 benchmarks/kernel_variants.py --attention cudnn --row-kernels triton --diffusers-compile \
  --quant-chunk '1024:4' --fast-accum --out $OUT/kernel_variants_h200_final.json 2>&1 | grep -v -i -E "warn|kept in float32" | grep -v "^      "
CMD="eediff bench --batch-sizes 64 --schedules D4-DiT,D6-DiT --row-batch 0 --kernels fused,fp8 --fp8-fast-accum --no-block-parts --diffusers-compile default --repeats 10 --out results/bench_dit_h200_final.json"
bench_as ${BENCH_S:-320} "$CMD" 40
ls -la $OUT
