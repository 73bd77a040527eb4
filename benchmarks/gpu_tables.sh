#!/usr/bin/env bash
# The paper-style tables on the lent GPU (issue 5), for the next session. NOT YET RUN.
# A device call carries at most 64 MiB with the tracked tree (~17 MB), so this takes two calls on a warm machine:
#   call 1 (carry [".gpu1"], .gpu1/inception_fp16.pt = save_inception_fp16 of default_1.pt, 43.7 MB):
#       mkdir -p /root/eediff && cp .gpu1/inception_fp16.pt /root/eediff/
#   call 2, within ~30 s (carry [".whl", ".gpu2"], .gpu2/fmnist_test.npz from
#       `eediff export-data --dataset fashion-mnist --split test --out .gpu2/fmnist_test.npz`):
#       bash benchmarks/gpu_tables.sh
set -euo pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src PYTHONUNBUFFERED=1
E="python3 -m eediff.cli"
N=${N:-5000}
SEEDS=${SEEDS:-0}
A="-n $N --batch-size 1000 --seeds $SEEDS --metric fid --inception /root/eediff/inception_fp16.pt --reference .gpu2/fmnist_test.npz --time-repeats 5 --time-batch 256 --fast --cache-dir /tmp/fidcache --no-progress"
$E eval --model dit-fmnist    --schedules "full;D4-DiT" --samplers "ddpm-250;ddim-50;ddim-100;dpm-solver++-25;dpm-solver++-50" $A --out $OUT/gpu_dit_base.json
$E eval --model dit-fmnist-D4 --schedules "D4-DiT"      --samplers "ddpm-250;ddim-50;ddim-100;dpm-solver++-25;dpm-solver++-50" $A --out $OUT/gpu_dit_D4.json
$E eval --model uvit-fmnist    --schedules "full;D4-U-ViT" --samplers "euler-maruyama-1000;ddim-50;ddim-100;dpm-solver++-25;dpm-solver++-50" $A --out $OUT/gpu_uvit_base.json
$E eval --model uvit-fmnist-D4 --schedules "D4-U-ViT"      --samplers "euler-maruyama-1000;ddim-50;ddim-100;dpm-solver++-25;dpm-solver++-50" $A --out $OUT/gpu_uvit_D4.json
