#!/usr/bin/env bash
# Device call 1 of the second session (carry [".whl", ".gpu1"]): install the wheels where later calls find
# them, run the DiT benchmark (issue 6) with the GPU to itself, then start the U-ViT training chain in its
# own process session so that it runs on while the machine stays warm (later calls collect it).
set -u
export PYTHONUNBUFFERED=1
mkdir -p /root/site /root/data /root/zoo
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/root/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
cp .gpu1/fmnist_train.npz /root/data/
rm -rf /root/src && mkdir -p /root/src && cp -r src benchmarks /root/src/
timeout 400 python3 benchmarks/bench_dit.py --out $OUT/bench_dit_h100.json 2>&1 | grep -v "Warning\|warn(" | tee $OUT/bench.log
cd /root/src && PYTHONPATH=/root/site:/root/src/src DATA=/root/data/fmnist_train.npz WORK=/root/zoo DIT_BASE=/root/src/src/eediff/zoo/dit-fmnist.safetensors \
  setsid nohup bash benchmarks/train_uvit.sh > /root/zoo/chain.log 2>&1 < /dev/null &
sleep 50
cat /root/zoo/chain.log; tail -n 3 /root/zoo/uvit.log; cat /root/zoo/uvit/metrics.jsonl 2>/dev/null | tail -n 2
