#!/usr/bin/env bash
# DeeDiff rebuilt on the converged shipped bases (dit-fmnist, 29,000 steps; uvit-fmnist, 42,500), measured with the
# classifier Fréchet distance of the converged-model tables (results/converge/v2) beside the shipped ASE D4
# fine-tunes. Carry [".whl", ".data/fm-xz"]; state in /root/dd2 (a later call on the same warm machine goes on).
#
#   bash benchmarks/device/deediff_converged.sh train 560   # both DeeDiff fine-tunes side by side, --steps DD_STEPS
#                                                           # (default 6000), stopped by the deadline; again to go on
#   bash benchmarks/device/deediff_converged.sh eval 560    # τ for 30/40/50% of the blocks, 5,000 images per set
#                                                           # (benchmarks/deediff_eval.py generate), their distances
#
# train returns dd-MODEL.metrics.jsonl, eval the fp16 exports dd-MODEL-fp16.safetensors (to replace the shipped
# MODEL-fmnist-deediff once calibrated, `eediff calibrate --target-saving 0.4`, and packed as a delta of its base,
# `python -m eediff.zoo.pack MODEL-fmnist-deediff --base MODEL-fmnist`),
# deediff_partial.json and deediff.json (`python benchmarks/deediff_report.py deediff.json` makes the table).
# Recipe as the earlier DeeDiff models (results/deediff.md): λ = β = 1, `code` L_UAL weighting, lr 1e-4 constant,
# EMA 0.995, batch 512, and longer (the earlier DiT's 1,200 steps were too few).
set -u
STAGE=${1:?train|eval}; DL=${2:?deadline in seconds}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=/root/dd2; mkdir -p $R
STATE=$R bash benchmarks/device/converge.sh prep 0 || exit 3   # wheels into /tmp/site, Fashion-MNIST into $R/data
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$R/data PYTHONUNBUFFERED=1
E="python3 -m eediff.cli"
if [ "$STAGE" = train ]; then
  A="--method deediff --deediff-ual code --dataset fashion-mnist --steps ${DD_STEPS:-6000} --batch-size 512 --lr 1e-4
     --lr-schedule constant --ema-decay 0.995 --log-every 250 --save-every 1000 --sample-every -1 --no-progress --export-fp16"
  for m in dit uvit; do
    $E finetune --init $m-fmnist --out $R/$m $A --max-minutes $(python3 -c "print(round(($DL - 40 - $(el)) / 60, 2))") \
      $([ -d $R/$m/checkpoints ] && echo --resume || echo --overwrite) >> $R/$m.log 2>&1 &
  done
  wait
  for m in dit uvit; do grep -v -i warn $R/$m.log | tail -n 2 | cut -c1-200; cp $R/$m/metrics.jsonl $OUT/dd-$m.metrics.jsonl
    # the EMA export as it stands (a run stopped by --max-minutes writes one too): calibrated and measured on a CPU
    # if no eval call follows (benchmarks/deediff_cpu_check.py, then eediff.eval.calibrate.store_tau)
    [ -f $R/$m/final-fp16.safetensors ] && cp $R/$m/final-fp16.safetensors $OUT/dd-$m-fp16.safetensors; done
  exit 0
fi
[ -f $R/dit/final.safetensors ] && [ -f $R/uvit/final.safetensors ] || { echo "no DeeDiff runs in $R: run the train stage first"; exit 3; }
for m in dit uvit; do cp $R/$m/final-fp16.safetensors $OUT/dd-$m-fp16.safetensors; done
timeout $(( DL - $(el) - 70 )) python3 benchmarks/deediff_eval.py generate --models DiT=$R/dit/final.safetensors,U-ViT=$R/uvit/final.safetensors \
  --base DiT=dit-fmnist,U-ViT=uvit-fmnist --ase DiT=dit-fmnist-D4:D4-DiT,U-ViT=uvit-fmnist-D4:D4-U-ViT \
  --work $R/gen --out $R/partial.json 2>&1 | grep -v -i warn
[ -f $R/partial.json ] || { echo "[$(el)s] generate did not finish"; exit 4; }
cp $R/partial.json $OUT/deediff_partial.json
python3 benchmarks/deediff_eval.py fid --work $R/gen --partial $R/partial.json --metric fd-classifier \
  --cache-dir $R/fdcache --out $OUT/deediff.json 2>&1 | grep -v -i warn
echo "[$(el)s] done"
