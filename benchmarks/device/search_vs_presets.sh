#!/usr/bin/env bash
# The adapted searches' schedules against the presets after the same, longer fine-tune, with the fair baseline
# beside them: D4, D6, asearch-D4, asearch-D6 (results/converge/uvit-shipped-asearch/, found by
# benchmarks/device/adapted_search.sh) and full depth, each fine-tuned FT_STEPS steps from the shipped U-ViT side by
# side on one H200, classifier FD of 5000 images (DPM-Solver++ 25, the schedule each was tuned for) every 500 steps.
# First, if KFD_FIRST is set, the bf16 (inductor) row of benchmarks/device/kernels_fd.sh for the DiT.
# carry [".whl", ".data/fm-xz"]:
#
#   FT_STEPS=3000 bash benchmarks/device/search_vs_presets.sh 540     -> $OUT/svp.tgz
#   SEED=1 KINDS="D4-U-ViT asearch-D4" FT_STEPS=3500 bash benchmarks/device/search_vs_presets.sh 330   (a repeat of
#   two of them under another training seed: data order, timesteps and noise)
set -u
DL=${1:?deadline in seconds}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=${STATE:-/root/converge}; S=results/converge/uvit-shipped-asearch
bash benchmarks/device/converge.sh prep 0 || exit 3
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$R/data PYTHONUNBUFFERED=1
mkdir -p $R/svp $R/svp/kfd
if [ -n "${KFD_FIRST:-}" ]; then
  timeout 90 python3 -m eediff.cli eval --model dit-fmnist-D4 --baseline dit-fmnist --metric fd-classifier --cache-dir $R/fidcache \
    -n 5000 --batch-size 1000 --seeds 0,1 --samplers dpm-solver++-25 --fast --time-repeats 3 --no-progress --kernels inductor \
    --out $R/svp/kfd/dit_inductor.json 2>&1 | grep -v -i warn | tail -n 3
  echo "[$(el)s] kfd"
fi
F="--init uvit-fmnist --dataset fashion-mnist --batch-size 512 --lr 1e-4 --ema-decay 0.999 --ema-warmup
   --depth-grouping batch --steps ${FT_STEPS:-3000} --compile --compile-scope blocks --eval-every 500 --eval-n 5000
   --eval-cache-dir $R/fdcache --save-every 100000 --log-every 250 --sample-every 0 --no-progress --export-fp16"
M=$(python3 -c "print(round(($DL - $(el) - 40) / 60, 2))")
for n in ${KINDS:-D4-U-ViT D6-U-ViT full asearch-D4 asearch-D6}; do
  k=$n; [ -f $S/$n.schedule.json ] && k=$S/$n.schedule.json
  python3 -m eediff.cli finetune --schedule $k $F --seed ${SEED:-0} --max-minutes $M --out $R/svp/$n > $R/svp/$n.log 2>&1 &
done
while [ -n "$(jobs -r)" ]; do
  sleep 30; echo "[$(el)s] $(for f in $R/svp/*/metrics.jsonl; do d=$(basename $(dirname $f)); python3 - $f $d <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().endswith("}")]
ev = [r["eval"]["value"] for r in rows if "eval" in r]
print(f"{sys.argv[2]}:{max([r.get('step', 0) for r in rows] or [0])}/{ev[-1] if ev else '-'}", end=" ")
PY
done)"
done
for f in $R/svp/*.log; do echo "$(basename $f): $(tail -n 1 $f | cut -c1-200)"; done
cd $R/svp && rm -f */final.safetensors && tar czf $OUT/svp.tgz --exclude='checkpoints' . && ls -la $OUT
