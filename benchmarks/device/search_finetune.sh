#!/usr/bin/env bash
# Searched schedule vs the D4 preset after the same fine-tune budget, on the machine search_generate.sh and
# search_fid.sh ran on (the Inception network and the test set are in /root/pt). Carry [".data/fashion-mnist"].
# Both fine-tunes run side by side on the GPU with the shipped D4 fine-tune's settings and STEPS steps each.
set -u
export PYTHONUNBUFFERED=1
export PYTHONPATH=/tmp/site:$PWD/src
S_SEARCH=${S_SEARCH:-28,23,23,23,23,23,23,11,11,11}   # search(step)@D4-DiT, results/search.json
A="--dataset fashion-mnist --data-dir .data --steps ${STEPS:-2000} --batch-size 512 --lr 1e-4 --lr-schedule constant --ema-decay 0.999
   --reweight-cycle 2500 --log-every 250 --sample-every -1 --no-progress --max-minutes ${TRAIN_MIN:-4}"
python3 -m eediff.cli finetune --init dit-fmnist --schedule D4-DiT --out /root/pt/ft-d4 $A > /root/pt/ft-d4.log 2>&1 &
python3 -m eediff.cli finetune --init dit-fmnist --schedule "$S_SEARCH" --out /root/pt/ft-search $A > /root/pt/ft-search.log 2>&1 &
wait
for m in d4 search; do grep -v -i warn /root/pt/ft-$m.log | tail -n 2; cp /root/pt/ft-$m/metrics.jsonl $OUT/ft-$m.metrics.jsonl; done
export EEDIFF_FASHION_MNIST_DIR=/root/pt/gpu1/fashion-mnist
for m in d4 search; do
  sched=D4-DiT; [ $m = search ] && sched=$S_SEARCH
  python3 -m eediff.cli eval --model /root/pt/ft-$m/final.safetensors --schedules "full;$sched" --samplers dpm-solver++-25 -n 5000 \
    --metric fid --inception /root/pt/inception_fp16.pt --cache-dir /root/pt/fidcache --out $OUT/ft-$m-eval.json 2>&1 | grep -v -i warn | tail -n 8
done
