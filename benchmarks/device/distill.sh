#!/usr/bin/env bash
# ASE fine-tunes with `finetune --distill W` (the cut rows learn (1 - W) ε + W ε_full of the frozen base at full
# depth) beside the plain fine-tunes of results/converge/v2: the same bases, schedules, recipe (ft_recipe.sh, that of
# `converge.sh finetune`: batch 512, lr 1e-4, EMA 0.999 with warm-up, one schedule interval per step, compiled
# blocks), steps and seed; only --distill differs. One call on one GPU, carry [".whl", ".data/fm-xz"]:
#
#   bash benchmarks/device/distill.sh 560
#   DISTILL=0.5 RUNS="dit:D4-DiT" FT_STEPS=2000 bash benchmarks/device/distill.sh 560
#   LOSS_NORM=0.5 RUNS="dit:D4-DiT uvit:D4-U-ViT" bash benchmarks/device/distill.sh 560   (with --loss-norm 0.5)
#   FT_STEPS=4000 bash benchmarks/device/distill.sh 560   (the next call on the same warm machine: the runs go on
#       from their checkpoints in /root/converge; the table cells are measured again, on the new exports)
#
# RUNS: MODEL:SCHEDULE items (MODEL dit or uvit; SCHEDULE a preset, a comma list, search-D6 for the schedule of
# results/converge/v2/dit-ft/search-D6.schedule.json, or full: the fair baseline of these runs, the base trained as
# many more steps at full depth, without --distill, run MODEL-fair and measured as the tables' "fair" row). A later
# call with a larger FT_STEPS resumes each run and stretches its cosine learning rate (a warm restart, noted in its
# log); for one cosine over N steps give FT_STEPS=N from the first call and resume with the same N. The fine-tunes run side by side and measure the classifier
# Fréchet distance of 5,000 EMA samples (DPM-Solver++ 25) every 1,000 steps, as the plain ones did; then
# benchmarks/gpu_tables.py measures each under DDIM 50 and DDPM 100 too (cells of the same keys as
# results/converge/v2/*/tables_*.jsonl: the base's cells are taken from there, not measured again), in
# tables_MODEL-distill.jsonl, or tables_MODEL-distill-STEP.jsonl when the runs stopped at a STEP other than the plain
# fine-tunes' 2,000. FT_LR_SCHEDULE / FT_EMA change the recipe (ft_recipe.sh); distill_variants.sh runs several such
# variants side by side.
set -u
DL=${1:?deadline in seconds}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
R=${STATE:-/root/converge}; W=${DISTILL:-1.0}; FS=${FT_STEPS:-2000}; EN=${EVAL_N:-5000}
LN=${LOSS_NORM:-0}   # --loss-norm P of the cut runs (their names end in -lnP when P is not 0)
O=${RESULT_OUT:-$OUT}; mkdir -p $O   # where the returned files go (distill_variants.sh gives each variant a folder)
bash benchmarks/device/converge.sh prep 0 || exit 3   # wheels into /tmp/site, Fashion-MNIST into $R/data
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$R/data PYTHONUNBUFFERED=1
E="python3 -m eediff.cli"
B=/root/converge; mkdir -p $B   # the base paths the earlier tables were keyed by; variants side by side share them
for m in dit uvit; do
  z=$(python3 -m eediff.cli models --path $m-fmnist) || exit 3   # (the shipped file, unpacked if packed)
  cmp -s $z $B/init-$m.safetensors || { cp $z $B/.init-$m.$$ && mv $B/.init-$m.$$ $B/init-$m.safetensors; }   # (atomic)
  [ $R = $B ] || cp $z $R/init-$m.safetensors
done
source benchmarks/device/ft_recipe.sh; F=$(ft_flags $FS $EN $R)   # the plain fine-tunes' recipe
declare -A SCHED FAIR
for item in ${RUNS:-dit:D4-DiT dit:search-D6 uvit:D4-U-ViT}; do
  m=${item%%:*}; s=${item#*:}
  case $s in search-*) sched=$(python3 -c "import json,sys; print(','.join(map(str, json.load(open(sys.argv[1]))['blocks'])))" results/converge/v2/$m-ft/$s.schedule.json) ;;
             *) sched=$s ;; esac
  if [ "$s" = full ]; then n=$m-fair; FAIR[$m]=$n; D=""
  else n=$m-$s-distill$W; D="--distill $W"; [ "$LN" != 0 ] && { n=$n-ln$LN; D="$D --loss-norm $LN"; }; fi
  SCHED[$n]=$sched
  echo "[$(el)s] $n: --schedule $sched $D"
  $E finetune --init $R/init-$m.safetensors --schedule $sched $D $F --max-minutes $(python3 -c "print(round(($DL * 0.75 - $(el)) / 60, 2))") \
    --out $R/$n $([ -d $R/$n/checkpoints ] && echo --resume || echo --overwrite) >> $R/$n.log 2>&1 &
done
while [ $(jobs -r | wc -l) -gt 0 ]; do sleep 30; echo "[$(el)s] $(for n in ${!SCHED[@]}; do echo -n "$n: $(grep -o '"step": [0-9]*' $R/$n/metrics.jsonl 2>/dev/null | tail -1) $(grep -o '"value": [0-9.]*' $R/$n/metrics.jsonl 2>/dev/null | tail -1); "; done)"; done
wait
# what comes back is at most 8 files of 16 MiB: every run's metrics, config and log in runs.tgz, the fp16 exports in
# one tar per model (unpack runs.tgz as NAME/{metrics.jsonl,config.json} beside NAME.log)
for n in ${!SCHED[@]}; do tail -n 2 $R/$n.log | cut -c1-200; done
(cd $R && tar czf $O/runs.tgz $(for n in ${!SCHED[@]}; do echo $n/metrics.jsonl $n/config.json $n.log; done) 2>/dev/null)
for m in dit uvit; do (cd $R && ls $m-*/final-fp16.safetensors >/dev/null 2>&1 && tar cf $O/exports-$m.tar $m-*/final-fp16.safetensors); done
for m in dit uvit; do
  A=DiT; [ $m = uvit ] && A=U-ViT
  more=(); for n in ${!SCHED[@]}; do [[ $n == $m-* ]] && [ -f $R/$n/final.safetensors ] && [ "$n" != "${FAIR[$m]:-}" ] && more+=(--finetuned "${SCHED[$n]}=$R/$n/final.safetensors"); done
  [ -n "${FAIR[$m]:-}" ] && [ -f $R/${FAIR[$m]}/final.safetensors ] && more+=(--fair $R/${FAIR[$m]}/final.safetensors)
  [ ${#more[@]} -gt 0 ] || continue
  [ $(( DL - $(el) )) -gt 40 ] || { echo "[$(el)s] no time left for the $A tables"; break; }
  LEFT=$(( DL - $(el) - 15 )); [ $m = dit ] && [[ " ${!SCHED[*]}" == *" uvit-"* ]] && LEFT=$(( LEFT * 2 / 3 ))   # (the U-ViT's tables after)
  # the table's name says at which step it was measured when that is not the plain fine-tunes' (2,000):
  # tables_MODEL-distill-STEP.jsonl, the name benchmarks/distill_report.py reads as "taken further"
  at=$(for n in ${!SCHED[@]}; do [[ $n == $m-* ]] && grep -o '"step": [0-9]*' $R/$n/metrics.jsonl | tail -n 1 | grep -o '[0-9]*$'; done | sort -u)
  T=tables_$m-distill.jsonl; [ $(echo "$at" | wc -l) = 1 ] && [ -n "$at" ] && [ "$at" != 2000 ] && T=tables_$m-distill-$at.jsonl
  cp results/converge/v2/$m-ft/tables_$m.jsonl $R/$T
  python3 benchmarks/gpu_tables.py --arch-label $A --base $B/init-$m.safetensors "${more[@]}" \
    --samplers "dpm-solver++-25;ddim-50;ddpm-100" --late-samplers ddpm-100 --deadline-s $LEFT \
    --n $EN --batch-size 1000 --seeds 0 --cache-dir $R/fidcache --time-batch 1000 --time-repeats 3 --metric fd-classifier \
    --out-jsonl $R/$T 2>&1 | grep -v -i warn | tail -n 4
  cp $R/$T $O/
done
echo "[$(el)s] done"
