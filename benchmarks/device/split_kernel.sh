#!/usr/bin/env bash
# The split-row GELU + quantise kernel (triton_ops.SPLIT: a row of 4608 as 4096 + 512 lanes, no padded lanes)
# timed against the default row kernel, one H200, about 3 minutes (carry [".whl"]):
#   1. benchmarks/row_kernels.py --only act_quant --split: the quantise pass alone over rows per program x warps;
#   2. benchmarks/kernel_variants.py: the DiT-XL/2 forward at B=64, fp8 with fast accumulation on the default
#      kernel and on the split kernel, in the same run.
# Results: $OUT/split_kernel.tgz (row_kernels_split_h200.*, kernel_variants_split_h200.*).
set -u
export PYTHONUNBUFFERED=1
[ -d /tmp/site/diffusers ] || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
D=$(mktemp -d)
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,power.draw,power.limit --format=csv,noheader
timeout ${RK_S:-60} python3 benchmarks/row_kernels.py --only act_quant --split --rows 1,2,4 --warps 4,8 --chunks 1024 \
  --out $D/row_kernels_split_h200.json 2>&1 | grep -v -i warn | tail -n 20
timeout ${KV_S:-170} python3 benchmarks/kernel_variants.py --attention cudnn --row-kernels triton --fast-accum \
  --quant-split '1:4;1:8;2:8' --out $D/kernel_variants_split_h200.json 2>&1 | grep -v -i -E "warn|kept in float32" | grep -v "^      "
(cd $D && tar czf $OUT/split_kernel.tgz *)
