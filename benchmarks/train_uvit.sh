#!/usr/bin/env bash
# The shipped U-ViT (issue 5, second session), on the lent GPU: base U-ViT 8000 steps (compiled, bf16), then
# concurrently its ASE fine-tunes (D4, D6), its fair baseline (the same extra steps at full depth) and the DiT
# D6 fine-tune that the first session's budget did not reach (same recipe as the shipped dit-fmnist-D4).
# Data: `eediff export-data --dataset fashion-mnist --split train --out .data/fmnist_train.npz`.
# Writes $WORK/u/*.safetensors (fp16) and $WORK/logs; touches $WORK/DONE at the end.
set -euo pipefail
E="python3 -m eediff.cli"
D=${DATA:-.data/fmnist_train.npz}
W=${WORK:-/tmp/zoo}
TS=${TRAIN_STEPS:-8000}
FS=${FT_STEPS:-3000}
DIT=${DIT_BASE:-src/eediff/zoo/dit-fmnist.safetensors}
FT_SCHEDULES=${FT_SCHEDULES:-D4-U-ViT D6-U-ViT full}
WITH_DIT_D6=${WITH_DIT_D6:-1}
mkdir -p $W/u $W/logs
UC='{"embed_dim":96,"depth":12,"num_heads":3,"patch_size":2}'
COMMON="--dataset $D --batch-size 512 --log-every 500 --sample-every -1 --no-progress --export-fp16"
date
$E train --arch U-ViT --model-config "$UC" --steps $TS --lr 3e-4 --lr-schedule cosine --ema-decay 0.999 \
  --save-every $TS --compile --out $W/uvit $COMMON > $W/uvit.log 2>&1
date
for s in $FT_SCHEDULES; do
  $E finetune --init $W/uvit/final.safetensors --schedule $s --steps $FS --lr 1e-4 --lr-schedule cosine \
    --ema-decay 0.999 --depth-grouping batch --save-every $FS --out $W/uvit-$s $COMMON > $W/uvit-$s.log 2>&1 &
done
[ "$WITH_DIT_D6" = 1 ] && $E finetune --init $DIT --schedule D6-DiT --steps 800 --lr 1e-4 --ema-decay 0.995 --depth-grouping batch \
  --save-every 800 --out $W/dit-D6-DiT $COMMON > $W/dit-D6-DiT.log 2>&1 &
wait
date
for r in uvit $(for s in $FT_SCHEDULES; do echo uvit-$s; done) $([ "$WITH_DIT_D6" = 1 ] && echo dit-D6-DiT); do
  cp $W/$r/final-fp16.safetensors $W/u/$r.safetensors || echo "MISSING: $r"
  cp $W/$r.log $W/logs/ || true; cp $W/$r/metrics.jsonl $W/logs/$r.metrics.jsonl || true; cp $W/$r/config.json $W/logs/$r.config.json || true
done
touch $W/DONE
