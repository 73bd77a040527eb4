#!/usr/bin/env bash
# Third session, device call 1 (carry [".whl", ".data/fashion-mnist"]): every model the issue-5 tables need,
# trained concurrently on one H100 (these models are far too small to fill it; each process is launch-bound).
#   U-ViT: the shipped 3000-step uvit-fmnist trained on at full depth (lr 3e-4 cosine, compiled), then from it
#          the ASE fine-tunes for D4-U-ViT and D6-U-ViT and the fair baseline (same extra steps at full depth).
#   DiT:   from the shipped 3000-step dit-fmnist, ASE fine-tunes for D4-DiT and D6-DiT and the fair baseline.
# Fine-tunes: Algorithm 1 with EMA 0.999 + warm-up (the second session's 0.999 without warm-up kept 22% of the
# zero-shot weights), lambda(t) gamma 1 over the first half, one exit depth per batch.
# Every run has a wall-clock limit (--max-minutes) so the call ends inside its 10 minutes with exported weights.
# Models stay in /root/zoo for the next call on the warm machine; fp16 copies and logs come back in $OUT.
set -u
export PYTHONUNBUFFERED=1
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
W=/root/zoo; mkdir -p /root/site $W
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /root/site .whl/*.whl 2>&1 | tail -2
export PYTHONPATH=/root/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "import torch, diffusers; print('torch', torch.__version__, 'diffusers', diffusers.__version__)"
E="python3 -m eediff.cli"
C="--dataset fashion-mnist --data-dir .data --batch-size 512 --log-every 250 --no-progress --export-fp16 --ema-decay 0.999 --ema-warmup --depth-grouping batch --save-every 100000"
ship() { cp $W/$1/final-fp16.safetensors $OUT/$1.safetensors && echo "[$(el)s] shipped $1 ($(tail -n 1 $W/$1/metrics.jsonl | cut -c1-90))"; }
mins() { python3 -c "print(round(max(0.5, ($1 - $(el)) / 60), 2))"; }  # minutes left until second $1 of the call

(   # U-ViT chain
  $E finetune --init uvit-fmnist --schedule full --steps 5000 --lr 3e-4 --lr-schedule cosine --compile --sample-every 0 \
     --max-minutes 4.6 --out $W/uvit $C > $W/uvit.log 2>&1; ship uvit
  M=$(mins 505)
  for s in D4-U-ViT D6-U-ViT full; do
    ( $E finetune --init $W/uvit/final.safetensors --schedule $s --steps 2500 --lr 1e-4 --lr-schedule cosine --sample-every 0 \
        --max-minutes $M --out $W/uvit-$s $C > $W/uvit-$s.log 2>&1; ship uvit-$s ) &
  done
  wait
) &
for s in D4-DiT D6-DiT full; do   # DiT fine-tunes, eager (one depth per step)
  ( $E finetune --init dit-fmnist --schedule $s --steps 5000 --lr 1e-4 --sample-every 0 --max-minutes 7.6 \
      --out $W/dit-$s $C > $W/dit-$s.log 2>&1; ship dit-$s ) &
done
while [ $(jobs -r | wc -l) -gt 0 ] && [ $(el) -lt 560 ]; do sleep 10; [ $(( $(el) % 60 )) -lt 10 ] && echo "[$(el)s] $(for f in $W/*/metrics.jsonl; do echo -n "$(basename $(dirname $f)):$(tail -n 1 $f | python3 -c 'import json,sys; d=json.loads(sys.stdin.read() or "{}"); print(d.get("step"), round(d.get("steps_per_s", 0)))' 2>/dev/null) "; done)"; done
echo "[$(el)s] all runs over"
mkdir -p /root/logs; for d in $W/*/; do r=$(basename $d); cp $d/metrics.jsonl /root/logs/$r.metrics.jsonl; cp $d/config.json /root/logs/$r.config.json; cp $d/samples/*.png /root/logs/$r.png 2>/dev/null; done
cp $W/*.log /root/logs/; tar czf $OUT/logs.tgz -C /root logs; tail -n 2 $W/*.log | cut -c1-200
ls -la $OUT
