#!/usr/bin/env bash
# A small CPU-only version of the paper's table for the shipped DiT (the GPU budget ran out before the
# Inception-FID tables): cheap FD-FMNIST-Classifier metric (NOT FID), 500 images per cell, one seed.
set -euo pipefail
E=".venv/bin/eediff"
A="--samplers dpm-solver++-20 -n 500 --batch-size 250 --seeds 0 --metric fd-classifier --reference fashion-mnist:test --time-repeats 3 --time-batch 32 --no-progress"
$E eval --model dit-fmnist    --schedules "full;D4-DiT" $A --out results/cpu_dit_base.json
$E eval --model dit-fmnist-D4 --schedules "D4-DiT"      $A --out results/cpu_dit_D4.json
$E eval --model .data/zoo/dit-full/final-fp16.safetensors --schedules "full" $A --out results/cpu_dit_fair_baseline.json
