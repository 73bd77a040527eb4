#!/usr/bin/env bash
# The row kernels with and without triton_ops.FAST_MATH (reciprocal scale, tanh.approx), each kernel alone and in
# the whole DiT-XL/2 forward beside compiled diffusers, in one run (carry [".whl"]):
#   bash benchmarks/device/fast_math.sh
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
G=$(python3 -c "import torch; n = torch.cuda.get_device_name(); print('h200' if 'H200' in n else 'h100' if 'H100' in n else 'gpu')")
timeout 150 python3 benchmarks/row_kernels.py --rows 1,2 --warps 2,4,8,16 --chunks 1024 --no-split --math precise,fast \
  --out $OUT/row_kernels_fast_math_$G.json 2>&1 | grep -v -i warn
timeout 330 python3 benchmarks/kernel_variants.py --attention cudnn --row-kernels triton --diffusers-compile --fast-accum --precise-math \
  --out $OUT/kernel_variants_fast_math_$G.json 2>&1 | grep -v -i warn | grep -v "^      "
