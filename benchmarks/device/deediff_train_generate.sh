#!/usr/bin/env bash
# DeeDiff, first of two calls (carry [".whl", ".data/fashion-mnist"]): fine-tune DeeDiff heads + backbone on the shipped
# base DiT and U-ViT (two processes sharing the GPU, --max-minutes), then `deediff_eval.py generate` (calibrated
# thresholds, 5,000 images per set, timings at batch 1 and 64). Images and models stay in /root/dd for the second
# call (deediff_fid.sh, on the same warm machine); metrics, the partial JSON and fp16 models come back in $OUT.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p /root/dd
A="--method deediff --deediff-ual ${UAL:-code} --dataset fashion-mnist --data-dir .data --steps 20000 --batch-size 512 --lr 1e-4
   --lr-schedule constant --ema-decay 0.995 --log-every 100 --sample-every -1 --no-progress --max-minutes ${TRAIN_MIN:-4} --export-fp16"
python3 -m eediff.cli finetune --init dit-fmnist --out /root/dd/dit $A > /root/dd/dit.log 2>&1 &
python3 -m eediff.cli finetune --init uvit-fmnist --out /root/dd/uvit $A > /root/dd/uvit.log 2>&1 &
wait
for m in dit uvit; do grep -v -i warn /root/dd/$m.log | tail -n 3; cp /root/dd/$m/metrics.jsonl $OUT/dd-$m.metrics.jsonl; cp /root/dd/$m/final-fp16.safetensors $OUT/dd-$m-fp16.safetensors; done
timeout ${GEN_S:-200} python3 benchmarks/deediff_eval.py generate --models DiT=/root/dd/dit/final.safetensors,U-ViT=/root/dd/uvit/final.safetensors \
  --base DiT=dit-fmnist,U-ViT=uvit-fmnist --ase DiT=dit-fmnist-D4:D4-DiT,U-ViT=uvit-fmnist-D4:D4-U-ViT \
  --work /root/dd/gen --out /root/dd/partial.json 2>&1 | grep -v -i warn
cp /root/dd/partial.json $OUT/deediff_partial.json
