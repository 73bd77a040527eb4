#!/usr/bin/env bash
# Per-row depth on one GPU: `eediff bench` (forward variants, schedule ratios, per-row depths at B=64), then the
# D4-DiT fine-tune's steps/s with the code before the per-row change (.old/src = `git archive fadc2c6 src`) and
# after it, eager and with --compile. Carry [".whl", ".data/fashion-mnist", ".old"]. Results under $OUT.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader
PYTHONPATH=/tmp/site:$PWD/src python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
PYTHONPATH=/tmp/site:$PWD/src timeout ${BENCH_S:-330} python3 -m eediff.cli bench --skip-e2e --row-buckets ${BUCKETS:-8,4,2} --out $OUT/bench_dit_h200.json 2>&1 \
  | grep -v "Warning\|warn(" | tee $OUT/bench.log
A="--init dit-fmnist --schedule D4-DiT --dataset fashion-mnist --data-dir .data --steps ${FT_STEPS:-400}
   --batch-size 512 --lr 1e-4 --ema-decay 0.995 --log-every 100 --sample-every -1 --no-progress"
for variant in old new old-compile new-compile; do
  src=$PWD/src; [ "${variant%%-*}" = old ] && src=$PWD/.old/src
  extra=""; [ "${variant#*-}" = compile ] && extra="--compile"
  echo "== finetune $variant"
  ( PYTHONPATH=/tmp/site:$src timeout ${FT_S:-100} python3 -m eediff.cli finetune $A $extra --out /tmp/ft-$variant ) 2>&1 | grep -v -i warn | tail -n 3
  cp /tmp/ft-$variant/metrics.jsonl $OUT/ft-$variant.metrics.jsonl 2>/dev/null
  tail -n 2 /tmp/ft-$variant/metrics.jsonl 2>/dev/null
done
