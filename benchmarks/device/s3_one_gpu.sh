#!/usr/bin/env bash
# Issue 7 on the single lent GPU (multi-GPU kinds were withheld): the accelerate commands of the scaling table,
# with --num_processes 1. Carry [".whl", ".data/fashion-mnist"]. Writes $OUT/one_gpu.log and the run's metrics.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
nvidia-smi --query-gpu=name --format=csv,noheader; accelerate --version 2>/dev/null || python3 -c "import accelerate; print(accelerate.__version__)"
A="--dataset fashion-mnist --data-dir .data --batch-size 512 --log-every 100 --sample-every -1 --no-progress --ema-decay 0.999 --ema-warmup --depth-grouping batch"
( time accelerate launch --num_processes 1 --num_machines 1 --mixed_precision bf16 --dynamo_backend no -m eediff.cli finetune \
    --init uvit-fmnist --schedule D4-U-ViT --steps 800 --lr 1e-4 $A --out /tmp/ft1 ) 2>&1 | grep -v -i warn | tail -n 6
cp /tmp/ft1/metrics.jsonl $OUT/ft_1gpu.metrics.jsonl
( time accelerate launch --num_processes 1 --num_machines 1 --dynamo_backend no -m eediff.cli eval --model /tmp/ft1/final.safetensors \
    --schedules "D4-U-ViT" --samplers "dpm-solver++-25" -n 5000 --batch-size 1000 --seeds 0 --metric fd-classifier --fast \
    --time-batch 1000 --time-repeats 3 --no-progress --out $OUT/eval_1gpu.json ) 2>&1 | grep -v -i warn | tail -n 12
