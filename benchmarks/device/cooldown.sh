#!/usr/bin/env bash
# A cosine cool-down of the shipped bases (trained at a constant lr 3e-4), tested against the plateau rule, then the
# ASE fine-tunes on the cooled bases. One GPU, consecutive calls on one warm machine (results/converge/v3/).
#
#   bash benchmarks/device/cooldown.sh base 540        carry [".whl", ".data/fm-xz"]
#       each base continued twice from its shipped export with a fresh AdamW, lr 1e-4 (200 warm-up steps) decayed to
#       0 by a cosine over N and over 1.2 N steps (N=${N:-2500}), the four runs side by side; the rule (20% more
#       training improves the distance by < 3%) compares the two ends. $OUT/cdN/ and $OUT/cd1.2N/ as converge.sh
#       returns them (fp16 EMA exports, metrics, logs).
#   bash benchmarks/device/cooldown.sh finetune 540    (same warm machine) D4 and the fair baseline (FT_KINDS_DIT /
#       FT_KINDS_UVIT add D6-DiT / D6-U-ViT) on the 1.2 N
#       cool-down of each model: --distill 1.0 on the cut runs, a cosine lr, FT_STEPS=${FT_STEPS:-2000}; a second
#       call with the same command finishes them and measures the tables (DPM-Solver++ 25, DDIM 50, DDPM 100)
#   N=2000 FT_STEPS=1500 bash benchmarks/device/cooldown.sh all 560   both stages in one call: the cool-downs get
#       CD_SHARE=${CD_SHARE:-70}% of it, the fine-tunes and (time allowing) their tables the rest (N=2000: the four
#       cool-downs took about 370 s on one H100, so a 45% share of 500 s stopped them part-way)
#   CD_EMA=0.999 CD_EMA_WARMUP=1 bash benchmarks/device/cooldown.sh base 540   the same with EMA 0.999 and warm-up
#       (the default EMA, 0.9995 from the export's weights, still holds 30-37% of them after 2,000-2,400 steps);
#       state and results in cdN-ema0.999/ (four runs on one H100 need about 400 s for N=2000)
#   CD_DIT=F CD_UVIT=G bash benchmarks/device/cooldown.sh finetune 540   carry [".whl", ".data/fm-xz", F, G]
#       (a fresh machine: the cooled exports travel)
set -u
STAGE=${1:?base|finetune|all|more}; DL=${2:?deadline in seconds}
if [ "$STAGE" = all ]; then
  T0=$(date +%s)
  bash $0 base $(( DL * ${CD_SHARE:-70} / 100 ))
  # (at most 8 files come back: the cool-downs' six as one tar of cdN/ and cd1.2N/)
  (cd $OUT && tar cf cooldown.tar cd* && rm -r cd*/)
  exec bash $0 finetune $(( DL - ($(date +%s) - T0) ))
fi
N=${N:-2500}; N2=$(( N * 6 / 5 ))
TAG=""; [ -n "${CD_EMA:-}${CD_EMA_WARMUP:-}" ] && TAG=-ema${CD_EMA:-0.9995}${CD_EMA_WARMUP:+w}   # (the folders of a changed EMA)
bash benchmarks/device/converge.sh prep 0 || exit 3   # installs and unpacks once, before the runs start side by side
if [ "$STAGE" = base ]; then
  zoo() { PYTHONPATH=/tmp/site:$PWD/src python3 -m eediff.cli models --path $1; }   # a shipped model's file
  DIT0=$(zoo dit-fmnist) && UVIT0=$(zoo uvit-fmnist) || exit 3
  for n in $N $N2; do
    mkdir -p $OUT/cd$n$TAG
    STATE=/root/cd$n$TAG OUT=$OUT/cd$n$TAG INIT_DIT=$DIT0 INIT_UVIT=$UVIT0 BASE_EMA=${CD_EMA:-0.9995} BASE_EMA_WARMUP=${CD_EMA_WARMUP:-} \
      LR=1e-4 LR_SCHEDULE=cosine WARMUP=200 BASE_STEPS=$n EVAL_EVERY=${EVAL_EVERY:-1000} SCOPE=model MODE=reduce-overhead \
      bash benchmarks/device/converge.sh base $DL > /root/cd$n$TAG.out 2>&1 &
  done
  wait
  for n in $N $N2; do echo "== cool-down over $n steps"; grep -v '^\[.*s\] [a-z]*:[0-9]' /root/cd$n$TAG.out | tail -n 8
    for m in dit uvit; do grep -o '"step": [0-9]*, "eval": {[^}]*"value": [0-9.]*' /root/cd$n$TAG/$m/metrics.jsonl | sed 's/"eval".*"value"/FD/' | tr '\n' ' '; echo " ($m)"; done; done
elif [ "$STAGE" = finetune ]; then
  D=${CD_DIT:-/root/cd$N2$TAG/dit/final.safetensors}; U=${CD_UVIT:-/root/cd$N2$TAG/uvit/final.safetensors}
  [ -f $D ] && [ -f $U ] || { echo "no cooled exports ($D, $U): run the base stage first, or give CD_DIT / CD_UVIT"; exit 3; }
  FT_KINDS_DIT=${FT_KINDS_DIT:-D4-DiT full} FT_KINDS_UVIT=${FT_KINDS_UVIT:-D4-U-ViT full} STATE=/root/ft3 INIT_DIT=$D INIT_UVIT=$U FT_DISTILL=1.0 FT_LR_SCHEDULE=cosine FT_STEPS=${FT_STEPS:-2000} \
    FT_END=${FT_END:-$(( DL * 7 / 10 ))} SAMPLERS="dpm-solver++-25;ddim-50;ddpm-100" \
    bash benchmarks/device/converge.sh finetune $DL
elif [ "$STAGE" = more ]; then
  # D6 and the schedules `eediff search` finds at D6's saving and at 40% (SEARCH), fine-tuned like D4 on the shipped
  # (cooled) bases, on a fresh machine; the D4 and fair runs of the finetune stage travel as run folders (FT_IMPORT,
  # default .data/v3/call3/ftp: each MODEL-KIND/ with final-fp16.eedz or .safetensors, metrics.jsonl, config.json) and their
  # measured cells as TABLES_FROM, so the tables that come back hold every row. Two calls on one warm machine:
  #   bash benchmarks/device/cooldown.sh more 560     carry [".whl", ".data/fm-xz", ".data/v3/call3/ftp"]  (twice)
  # (ftp: the fair runs only, packed; the D4 runs' table cells come from TABLES_FROM, their files are not needed)
  zoo() { PYTHONPATH=/tmp/site:$PWD/src python3 -m eediff.cli models --path $1; }
  DIT0=$(zoo dit-fmnist) && UVIT0=$(zoo uvit-fmnist) || exit 3
  FT_IMPORT=${FT_IMPORT:-.data/v3/call3/ftp}
  # run folders travel packed as deltas of the shipped bases (python -m eediff.zoo.pack --file F --base B: half the
  # bytes, so that they fit the call's carry); rebuilt here, checked against their SHA-256
  for p in $FT_IMPORT/*/final-fp16.eedz; do
    [ -f "$p" ] && [ ! -f "${p%.eedz}.safetensors" ] && { PYTHONPATH=/tmp/site:$PWD/src python3 -m eediff.zoo.pack --unpack $p || exit 3; }
  done
  FT_KINDS_DIT=${FT_KINDS_DIT:-D6-DiT} FT_KINDS_UVIT=${FT_KINDS_UVIT:-D6-U-ViT} SEARCH=${SEARCH-D6 0.4} STATE=/root/ft3 \
    FT_IMPORT=$FT_IMPORT TABLES_FROM=${TABLES_FROM:-results/converge/v3/ft-ema0.999w} \
    INIT_DIT=$DIT0 INIT_UVIT=$UVIT0 FT_DISTILL=1.0 FT_LR_SCHEDULE=cosine FT_STEPS=${FT_STEPS:-2000} \
    FT_END=${FT_END:-$(( DL * 7 / 10 ))} SAMPLERS="dpm-solver++-25;ddim-50;ddpm-100" \
    bash benchmarks/device/converge.sh finetune $DL
else
  echo "stage: base, finetune, all or more"; exit 2
fi
