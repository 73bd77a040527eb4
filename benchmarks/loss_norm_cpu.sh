#!/usr/bin/env bash
# A small CPU check of `finetune --loss-norm`: the shipped U-ViT's D4 fine-tune with --distill 1.0, without and with
# --loss-norm 0.5, STEPS steps each at batch 64 (the same seed, data order and noise), then the ε error by noise
# level of both against the base (benchmarks/loss_by_t.py). Early dynamics only: the real runs are 2,000+ steps at
# batch 512 on a GPU (benchmarks/device/distill.sh LOSS_NORM=0.5). Needs Fashion-MNIST (EEDIFF_FASHION_MNIST_DIR).
#   bash benchmarks/loss_norm_cpu.sh [STEPS]      -> results/loss_norm_cpu/loss_by_t.json, .png
set -eu
S=${1:-200}; W=${WORK:-.data/loss_norm_cpu}; E=".venv/bin/eediff"
C="--init uvit-fmnist --schedule D4-U-ViT --distill 1.0 --dataset fashion-mnist --batch-size 64 --steps $S --lr 1e-4
   --ema-decay 0 --depth-grouping batch --save-every 100000 --log-every 50 --sample-every -1 --device cpu --no-progress --overwrite"
$E finetune $C --out $W/plain
$E finetune $C --loss-norm 0.5 --out $W/ln05
.venv/bin/python benchmarks/loss_by_t.py --arch U-ViT --n 256 --out results/loss_norm_cpu/loss_by_t.json --only-base \
  --entry "distill, $S steps;$W/plain/final.safetensors;D4-U-ViT" --entry "distill + loss-norm 0.5, $S steps;$W/ln05/final.safetensors;D4-U-ViT"
cp $W/plain/metrics.jsonl results/loss_norm_cpu/plain.metrics.jsonl; cp $W/ln05/metrics.jsonl results/loss_norm_cpu/ln05.metrics.jsonl
cp $W/ln05/loss_norm.json results/loss_norm_cpu/
