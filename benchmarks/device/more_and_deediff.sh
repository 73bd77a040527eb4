#!/usr/bin/env bash
# Two jobs side by side on one GPU (the small Fashion-MNIST models leave it mostly idle): the D6 and searched
# fine-tunes on the shipped bases (cooldown.sh more) and DeeDiff trained on the same bases
# (deediff_converged.sh train, DD_STEPS=${DD_STEPS:-4000}). The same command again on the warm machine goes on with
# both; the second call's fine-tune stage ends with the tables.
#
#   SEARCH_UVIT=D6 HAND_DIT="band=28,25,23,21,3" HAND_UVIT="band=5,2,3,3,1" bash benchmarks/device/more_and_deediff.sh 555   carry [".whl", ".data/fm-xz", ".data/v3/call3/ftp"]
#
# $OUT: what cooldown.sh more returns, and deediff.tar (dd/: dd-MODEL.metrics.jsonl, dd-MODEL-fp16.safetensors (DeeDiff EMA exports).
set -u
DL=${1:?deadline in seconds}
STATE=/root/dd2 bash benchmarks/device/converge.sh prep 0 || exit 3   # installs once, before the two jobs start
mkdir -p $OUT/dd
DD_STEPS=${DD_STEPS:-4000} OUT=$OUT/dd bash benchmarks/device/deediff_converged.sh train $(( DL - 15 )) > /root/dd2.out 2>&1 &
bash benchmarks/device/cooldown.sh more $DL
wait
echo "== DeeDiff"; tail -n 6 /root/dd2.out
(cd $OUT && tar cf deediff.tar dd && rm -r dd)   # (one file: a call returns few)
