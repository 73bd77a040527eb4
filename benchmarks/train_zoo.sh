#!/usr/bin/env bash
# Trains the shipped Fashion-MNIST models on the lent GPU (issue 5), all in one device call:
#   base U-ViT (13 blocks) and base DiT (28 blocks) concurrently, then ASE fine-tunes (D4, D6) and the
#   fair baselines (the same extra steps at full depth) concurrently. Data: .data/fmnist_train.npz
#   (`eediff export-data --dataset fashion-mnist --split train --out .data/fmnist_train.npz`).
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
E="python3 -m eediff.cli"
D=.data/fmnist_train.npz
W=${WORK:-/tmp/zoo}
mkdir -p $W
UC='{"embed_dim":96,"depth":12,"num_heads":3,"patch_size":2}'
DC='{"hidden_size":64,"depth":28,"num_heads":2,"patch_size":2}'
TS=${TRAIN_STEPS:-3000}
FS=${FT_STEPS:-1000}
COMMON="--dataset $D --batch-size 512 --log-every 250 --sample-every -1 --no-progress --export-fp16 --compile"
date
$E train --arch U-ViT --model-config "$UC" --steps $TS --lr 3e-4 --ema-decay 0.999 --save-every $TS --out $W/uvit $COMMON > $W/uvit.log 2>&1 &
$E train --arch DiT --model-config "$DC" --steps $TS --lr 3e-4 --ema-decay 0.999 --save-every $TS --out $W/dit $COMMON > $W/dit.log 2>&1 &
wait
date
FT="--steps $FS --lr 1e-4 --ema-decay 0.995 --save-every $FS $COMMON"
for s in D4-U-ViT D6-U-ViT full; do $E finetune --init $W/uvit/final.safetensors --schedule $s --out $W/uvit-$s $FT > $W/uvit-$s.log 2>&1 & done
for s in D4-DiT D6-DiT full; do $E finetune --init $W/dit/final.safetensors --schedule $s --out $W/dit-$s $FT > $W/dit-$s.log 2>&1 & done
wait
date
mkdir -p $W/u $W/d $W/logs
for r in uvit uvit-D4-U-ViT uvit-D6-U-ViT uvit-full; do cp $W/$r/final-fp16.safetensors $W/u/$r.safetensors; done
for r in dit dit-D4-DiT dit-D6-DiT dit-full; do cp $W/$r/final-fp16.safetensors $W/d/$r.safetensors; done
for r in uvit dit uvit-D4-U-ViT uvit-D6-U-ViT uvit-full dit-D4-DiT dit-D6-DiT dit-full; do cp $W/$r.log $W/logs/; cp $W/$r/metrics.jsonl $W/logs/$r.metrics.jsonl; cp $W/$r/config.json $W/logs/$r.config.json; done
tar cf $OUT/uvit.tar -C $W u; tar cf $OUT/dit.tar -C $W d; tar czf $OUT/logs.tgz -C $W logs
for r in uvit dit; do tail -2 $W/logs/$r.metrics.jsonl; done
ls -la $OUT
