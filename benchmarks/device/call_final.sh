#!/usr/bin/env bash
# Last device call of the second session (carry [".whlmin", ".gpu1", ".gpu3"]; an earlier call left the fp16
# Inception network in /root/eediff). The first attempt's trained models were lost with the machine, so this
# one call retrains the U-ViT (shorter: 6000 + 1500 D4 steps) in the background while the DiT FID cells run
# (FID only: the GPU is shared), then measures the DiT timings and the U-ViT cells with the GPU to itself.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
mkdir -p /root/site /root/zoo /root/data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whlmin/*.whl 2>&1 | tail -2
export PYTHONPATH=/root/site:$PWD/src
cp .gpu1/fmnist_train.npz /root/data/
rm -rf /root/src && mkdir -p /root/src && cp -r src benchmarks /root/src/
(cd /root/src && PYTHONPATH=/root/site:/root/src/src DATA=/root/data/fmnist_train.npz WORK=/root/zoo TRAIN_STEPS=6000 FT_STEPS=1500 \
  FT_SCHEDULES=D4-U-ViT WITH_DIT_D6=0 bash benchmarks/train_uvit.sh > /root/zoo/chain.log 2>&1) &
C="--n 5000 --batch-size 1000 --seeds 0 --extra-seeds 1,2 --metric fid --inception /root/eediff/inception_fp16.pt --reference .gpu3/fmnist_test.npz --cache-dir /tmp/fidcache --time-batch 256 --time-repeats 3 --fast"
DIT="--arch-label DiT --base dit-fmnist --finetuned D4-DiT=dit-fmnist-D4 --fair .gpu3/dit-full.safetensors --zero-shot D4-DiT;D6-DiT;D1-DiT;D3-DiT --samplers dpm-solver++-25;ddim-50;ddim-100;dpm-solver++-50;ddpm-250"
timeout 420 python3 benchmarks/gpu_tables.py $DIT $C --timing skip --deadline-s 390 --out-jsonl $OUT/dit.jsonl 2>&1 | grep -v -i warn
echo "[$(el)s] DiT cells over; waiting for the U-ViT chain"; tail -n 1 /root/zoo/uvit/metrics.jsonl 2>/dev/null | cut -c1-120
while [ ! -f /root/zoo/DONE ] && [ $(el) -lt 470 ]; do sleep 3; done
cat /root/zoo/chain.log; tail -n 2 /root/zoo/*.log | cut -c1-160
cp /root/zoo/u/*.safetensors $OUT/ 2>/dev/null; tar czf $OUT/logs.tgz -C /root/zoo logs 2>/dev/null
echo "[$(el)s] DiT timings (GPU to itself)"
timeout 60 python3 benchmarks/gpu_tables.py $DIT $C --timing only --out-jsonl $OUT/dit.jsonl 2>&1 | grep -v -i warn
R=$(( 545 - $(el) )); echo "[$(el)s] U-ViT cells, $R s left"
[ -f /root/zoo/u/uvit-D4-U-ViT.safetensors ] && timeout $R python3 benchmarks/gpu_tables.py --arch-label U-ViT --base /root/zoo/u/uvit.safetensors \
  --finetuned D4-U-ViT=/root/zoo/u/uvit-D4-U-ViT.safetensors --zero-shot "D4-U-ViT;D6-U-ViT" \
  --samplers "dpm-solver++-25;ddim-50;ddim-100;dpm-solver++-50;euler-maruyama-1000" $C --deadline-s $(( R - 10 )) --out-jsonl $OUT/uvit.jsonl 2>&1 | grep -v -i warn
echo "[$(el)s] end"
