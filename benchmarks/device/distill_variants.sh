#!/usr/bin/env bash
# distill.sh for several recipe variants side by side on one GPU, each with its own fair baseline where RUNS names
# MODEL:full: a variant NAME:LR_SCHEDULE:EMA trains RUNS with `--lr-schedule LR_SCHEDULE --ema-decay EMA` (the other
# options as distill.sh: DISTILL, LOSS_NORM, FT_STEPS, EVAL_N) in the state folder /root/NAME and returns its files
# in $OUT/NAME (runs.tgz, exports-MODEL.tar, tables_MODEL-distill.jsonl: at most 8 files come back in all, so two
# variants of one model). A later call with the same arguments and FT_STEPS resumes every run on one cosine.
#
#   FT_STEPS=4000 RUNS="dit:D4-DiT dit:full" bash benchmarks/device/distill_variants.sh 560 cos:cosine:0.999 cosema:cosine:0.9999
#
# Unpack each variant's files into a results folder of its own (benchmarks/distill_report.py --dir FOLDER): the
# report names the learning-rate schedule and EMA decay where they differ from the plain fine-tune's.
set -u
DL=${1:?deadline in seconds}; shift
[ $# -gt 0 ] || { echo "give one or more variants NAME:LR_SCHEDULE:EMA"; exit 2; }
bash benchmarks/device/converge.sh prep 0 || exit 3   # installs and unpacks once, before the variants start
for v in "$@"; do
  IFS=: read -r name lr ema <<< "$v"
  [ -n "$name" ] && [ -n "$lr" ] && [ -n "$ema" ] || { echo "variant '$v': give NAME:LR_SCHEDULE:EMA"; exit 2; }
  STATE=/root/$name FT_LR_SCHEDULE=$lr FT_EMA=$ema RESULT_OUT=$OUT/$name bash benchmarks/device/distill.sh $DL > /root/$name.out 2>&1 &
done
wait
for v in "$@"; do name=${v%%:*}; echo "== $name"; grep -v '^\[.*s\] .*: "step"' /root/$name.out | tail -n 12; done
