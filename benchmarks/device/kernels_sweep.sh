#!/usr/bin/env bash
# Fast-path kernel sweep, one call (carry [".whl"]), about 3 minutes on an H200:
#   1. benchmarks/row_kernels.py: the Triton row kernels over rows per program x warps (which launch to make
#      the default in triton_ops.row_launch);
#   2. benchmarks/kernel_variants.py with compiled diffusers in the same run, and fp8 with the GELU + quantise
#      pass on the chunked kernel (three chunk x warps choices), beside the full variants (the fp8 subsets and
#      the batched adaLN, timed before: results/kernel_variants_h200.md, take --fp8-subsets / --batched-adaln).
# Then kernels_bench.sh (a call of its own) measures the end-to-end rows again.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm --format=csv,noheader
timeout 200 python3 benchmarks/row_kernels.py --out $OUT/row_kernels_h200.json 2>&1 | grep -v -i warn
timeout 330 python3 benchmarks/kernel_variants.py --attention cudnn --diffusers-compile --quant-chunk '512:2;1024:4;2048:8' \
  --out $OUT/kernel_variants_h200_quant_chunk.json 2>&1 | grep -v -i -E "warn|kept in float32" | tail -n 60
ls -la $OUT
