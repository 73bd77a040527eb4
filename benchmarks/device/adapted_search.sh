#!/usr/bin/env bash
# Does `eediff search --adapted` find schedules that beat the presets after the same fine-tune, where the zero-shot
# search lost (results/converge/uvit-ft/finetunes.md)? One call on one H200 (carry [".whl", ".data/fm-xz"]),
# about 9 minutes, on a base model that travels in the checkout (default: the shipped uvit-fmnist):
#
#   MODEL=uvit BASE=path/to/base.safetensors bash benchmarks/device/adapted_search.sh 560
#
# 1. converge.sh finetune, first pass: D4 and D6 fine-tunes, the zero-shot searches at D4's and D6's compute
#    saving (searched on the base, then fine-tuned), and `any`: the base fine-tuned at every depth
#    (--depth-sampling uniform), all FT_STEPS steps, side by side.
# 2. converge.sh finetune, second pass: `any` has finished, so the adapted searches run on it (at D4's and D6's
#    saving, along the base's trajectories) and their schedules are fine-tuned from the base with the same steps.
# 3. The base's own distance at full depth (the same measurement as the runs' --eval-every rows).
# Every fine-tune's --eval-every rows (classifier FD of 5000 samples, DPM-Solver++ 25, the schedule it was tuned
# for) are what compares; benchmarks/finetune_report.py --base-fd makes the table from what comes back.
set -u
DL=${1:?deadline in seconds}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
M=${MODEL:-uvit}; A=U-ViT; [ $M = dit ] && A=DiT
export FT_STEPS=${FT_STEPS:-2000} FT_MODELS=$M SEARCH="D4 D6" ASEARCH="D4 D6" FT_KINDS="D4-$A D6-$A" NO_TABLES=1
S=benchmarks/device/converge.sh
bash $S prep 0 || exit 3
# the shipped base of MODEL by default (`eediff models --path` gives its file, unpacked if the package holds it packed)
declare -x INIT_${M^^}=${BASE:-$(PYTHONPATH=/tmp/site:$PWD/src python3 -m eediff.cli models --path $M-fmnist)}
P1=${PASS1_S:-$(( DL * 55 / 100 ))}   # the first pass's share of the call
FT_END=$(( P1 - 10 )) bash $S finetune $P1
left=$(( DL - $(el) - 45 ))           # the base's distance needs about 30 s
[ $left -gt 60 ] && FT_END=$(( left - 10 )) bash $S finetune $left
R=${STATE:-/root/converge}
EEDIFF_FASHION_MNIST_DIR=$R/data PYTHONPATH=/tmp/site:$PWD/src timeout 60 python3 -m eediff.cli eval --model $R/init-$M.safetensors --schedules full \
  --samplers dpm-solver++-25 -n 5000 --batch-size 1000 --metric fd-classifier --cache-dir $R/fidcache --time-repeats 1 \
  --no-progress --out $OUT/base_fd.json 2>&1 | grep -v -i warn | tail -n 3
echo "[$(el)s] adapted_search done"; ls -la $OUT
