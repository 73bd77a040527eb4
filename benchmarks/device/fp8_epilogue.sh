#!/usr/bin/env bash
# The fp8 MLP with GELU + group quantisation in fc1's epilogue (eediff/triton_gemm.py) against the row path,
# one call (carry [".whl"]), about 6 minutes on one H100 / H200:
#   1. benchmarks/fp8_mlp.py: the MLP alone at DiT-XL/2's B=64 shapes, bf16 / fp8 rows (with and without fast
#      accumulation) / fp8 epilogue over a sweep of tiles and launches, each GEMM also alone;
#   2. benchmarks/kernel_variants.py --mlp-epilogue --gemm-launch (step 1's fastest): the whole forward, fp8 with
#      and without the epilogue, with and without fast accumulation, beside compiled diffusers, in one run.
#   bash benchmarks/device/fp8_epilogue.sh          (LAUNCH='...' narrows step 1's sweep, as fp8_mlp.py --launch)
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name --format=csv,noheader
G=$(python3 -c "import torch; n = torch.cuda.get_device_name(); print('h200' if 'H200' in n else 'h100' if 'H100' in n else 'gpu')")
timeout ${MLP_S:-150} python3 benchmarks/fp8_mlp.py ${LAUNCH:+--launch "$LAUNCH"} --out $OUT/fp8_mlp_$G.json 2>&1 | grep -v -i warn
BEST=$(python3 -c "import json; print(json.load(open('$OUT/fp8_mlp_$G.json')).get('fastest_launch', ''))" 2>/dev/null)
echo "fastest epilogue launch: ${BEST:-none (the default)}"
timeout ${KV_S:-240} python3 benchmarks/kernel_variants.py --attention cudnn --row-kernels triton --diffusers-compile --fast-accum \
  --mlp-epilogue ${BEST:+--gemm-launch $BEST} --out $OUT/kernel_variants_epilogue_$G.json 2>&1 | grep -v -i warn | grep -v "^      "
ls -la $OUT
