#!/usr/bin/env bash
# The fast path's kernel variants against each other in sample quality: the shipped D4 fine-tunes (and their bases'
# full-depth rows) sampled through `--fast` under each variant, same seeds, classifier FD of 5000 images per seed
# (DPM-Solver++ 25). One call on one H200, carry [".whl", ".data/fm-xz"], about 6 minutes:
#
#   bash benchmarks/device/kernels_fd.sh 500        -> $OUT/kfd.tgz: kfd/<model>_<variant>.{json,md,png}
#   FD_MODELS=dit DIT_VARIANTS="fp8 fp8-smooth" bash benchmarks/device/kernels_fd.sh 300   (fp8 with and without balancing)
# (one archive: a call returns only the first few files under $OUT)
set -u
DL=${1:?deadline in seconds}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=${STATE:-/root/converge}
bash benchmarks/device/converge.sh prep 0 || exit 3
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$R/data PYTHONUNBUFFERED=1
mkdir -p $OUT/kfd
F="--metric fd-classifier --cache-dir $R/fidcache -n 5000 --batch-size 1000 --seeds 0,1 --samplers dpm-solver++-25 --fast --time-repeats 3 --no-progress"
run() {  # MODEL BASE NAME KERNEL-FLAGS...
  local m=$1 b=$2 n=$3; shift 3
  [ $(( DL - $(el) )) -gt 70 ] || { echo "skip $n: out of time"; return; }
  timeout $(( DL - $(el) - 5 )) python3 -m eediff.cli eval --model $m --baseline $b $F "$@" --out $OUT/kfd/$n.json 2>&1 \
    | grep -v -i warn | tail -n 3
  echo "[$(el)s] $n"
}
wants() { [[ " ${FD_MODELS:-dit uvit} " == *" $1 "* ]]; }   # FD_MODELS="dit" (or "uvit"): only that model's rows
DIT_VARIANTS=${DIT_VARIANTS:-"inductor fused fp8 fp8-fast"}   # also: fp8-smooth fp8-fast-smooth (SmoothQuant balancing, 64 images)
declare -A VF=([inductor]="--kernels inductor" [fused]="--kernels fused" [fp8]="--kernels fp8" [fp8-fast]="--kernels fp8 --fp8-fast-accum"
  [fp8-smooth]="--kernels fp8 --fp8-smooth 64" [fp8-fast-smooth]="--kernels fp8 --fp8-fast-accum --fp8-smooth 64")
wants dit && for n in $DIT_VARIANTS; do
  run dit-fmnist-D4 dit-fmnist dit_$n ${VF[$n]}
done
wants uvit && for v in "inductor --kernels inductor" "fp8 --kernels fp8" "fp8-fast --kernels fp8 --fp8-fast-accum"; do
  set -- $v; n=$1; shift
  run uvit-fmnist-D4 uvit-fmnist uvit_$n "$@"
done
ls -la $OUT/kfd; tar czf $OUT/kfd.tgz -C $OUT kfd && rm -r $OUT/kfd
