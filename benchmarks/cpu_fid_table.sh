#!/usr/bin/env bash
# Inception FID on the CPU for the shipped DiT (small: 500 generated images per cell against 2,000
# Fashion-MNIST test images, one seed). FID at this sample size is biased upwards; compare rows, not papers.
set -euo pipefail
E=".venv/bin/eediff"
test -f .data/fmnist_test2k.npz || $E export-data --dataset fashion-mnist --split test --per-class 200 --out .data/fmnist_test2k.npz
A="--samplers dpm-solver++-20 -n 500 --batch-size 250 --seeds 0 --metric fid --reference .data/fmnist_test2k.npz --time-repeats 1 --time-batch 16 --no-progress --device cpu"
$E eval --model dit-fmnist    --schedules "full;D4-DiT" $A --out results/cpu_fid_dit_base.json
$E eval --model dit-fmnist-D4 --schedules "D4-DiT"      $A --out results/cpu_fid_dit_D4.json
$E eval --model .data/zoo/dit-full/final-fp16.safetensors --schedules "full" $A --out results/cpu_fid_dit_fair_baseline.json
