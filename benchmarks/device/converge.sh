#!/usr/bin/env bash
# Base Fashion-MNIST models (DiT and U-ViT) trained to the --plateau rule, then their ASE fine-tunes (D4, D6 and
# the fair full-depth baseline) and FID tables, over consecutive calls on one H200 (results/converge/).
#
#   bash benchmarks/device/converge.sh base DEADLINE_S       carry [".whl", ".data/fm-xz"]
#   bash benchmarks/device/converge.sh base DEADLINE_S       carry [".gpu1"]  (same warm machine: resumes exactly;
#                                                             keeps the first half of the Inception xz)
#   bash benchmarks/device/converge.sh finetune DEADLINE_S   carry [".gpu2"]  (the second half: FID tables)
#   INIT_DIT=F INIT_UVIT=G bash benchmarks/device/converge.sh finetune DEADLINE_S   carry [".whl", ".data/fm-xz"]
#       (a fresh machine: fine-tune the exports F and G; classifier distances, no Inception)
#   INIT_DIT=F INIT_UVIT=G bash benchmarks/device/converge.sh base DEADLINE_S   carry [".whl", ".data/fm-xz"]
#       (a fresh machine: continue earlier EMA exports F and G with a fresh optimizer; the exports must travel
#        too (the shipped bases do: cooldown.sh gives their files with `eediff models --path NAME`); the first call
#        keeps each export in the state folder, later calls use that copy)
#   SEARCH="D4 D6 0.4" ... converge.sh finetune DL   (also: schedules searched on the base at D4's and D6's compute
#       saving and at 40%, fine-tuned with the same budget and put in the same tables)
#   ASEARCH="D4 D6 0.3" ... converge.sh finetune DL  (also: the base fine-tuned at every depth, `--depth-sampling
#       uniform`, run "any"; once it has finished, a call searches with `--adapted` on it and fine-tunes those schedules)
#   FT_IMPORT=DIR ... converge.sh finetune DL   carry [DIR]  (DIR holds run folders DIR/MODEL-KIND/{final-fp16.safetensors,
#       metrics.jsonl,config.json} and MODEL-search-X.json files as an earlier machine sent them back: they count as
#       finished here, so a fresh machine makes the tables of fine-tunes it did not train)
#   HAND_DIT="band=28,25,23,21,3" ... converge.sh finetune DL   (also: hand-written schedules, run MODEL-hand-NAME)
#   FT_KINDS_UVIT="D4-U-ViT full" SEARCH_UVIT="" ... (per model: FT_KINDS_DIT, FT_KINDS_UVIT, SEARCH_DIT, SEARCH_UVIT)
#   TABLES_FROM=DIR ... converge.sh finetune DL   (DIR/tables_MODEL.jsonl: table cells measured by an earlier call, kept)
#   FT_DISTILL=1.0 FT_LR_SCHEDULE=cosine ... converge.sh finetune DL   (the cut runs with --distill 1.0, every run on a
#       cosine learning rate: ft_recipe.sh)
#   bash benchmarks/device/converge.sh prep 0 && (BASE_MODELS=dit INIT_DIT=F bash benchmarks/device/converge.sh base DL &
#       FT_MODELS=uvit INIT_UVIT=G bash benchmarks/device/converge.sh finetune DL; wait)
#       (one model still training while the other, at its plateau, is fine-tuned: prep installs and unpacks once)
#
# .data/fm-xz: the Fashion-MNIST IDX files, the training images recompressed with `xz -9e`. State that a later
# call reuses (data, checkpoints, Inception) stays in /root/converge: the checkout there is replaced at every
# call, ignored folders included. What each call made comes back in $OUT (fp16 EMA exports, metrics, logs).
# Base runs: constant lr 3e-4, batch 512, EMA 0.9995, compiled blocks, the classifier Fréchet distance of 5000
# EMA samples (DPM-Solver++ 25, fixed seeds) every 2000 steps; --plateau 0.03. SPEED=1 first times the ways of
# compiling a training step (benchmarks/train_speed.py); SCOPE=model trains with --compile-scope model,
# MODE=reduce-overhead with --compile-mode reduce-overhead (CUDA graphs); without SCOPE / MODE, SPEED=1 trains each model
# the fastest way it measured (a run that fails under reduce-overhead goes on in the default mode). LR=1e-4
# continues at a lower learning rate, LR_SCHEDULE=cosine decays it to 0 over BASE_STEPS (a cool-down of a base
# trained at a constant rate: give BASE_STEPS and resume with the same value), BATCH=1024 at a larger batch (converge_report.py counts images seen),
# BASE_EMA=D / BASE_EMA_WARMUP=1 change the EMA (decay D; --ema-warmup: a continued export's EMA forgets its start
# weights fast), WARMUP=N ramps the learning rate up over the first N steps (a continued export starts a fresh AdamW: without
# a warm-up, the DiT of results/converge/v2 measured 77.7 two thousand steps in, far worse than its export).
# A fine-tune stopped by the call's end goes on from its checkpoint in the next call.
# On a machine with several GPUs (nvidia-h200-x2 / -x4 / -x8) every base run and fine-tune gets a GPU of its own
# (round robin; on one H200 the DiT trains at 45 steps/s alone and 20 beside the U-ViT).
# Fine-tunes (one schedule interval per step) compile each block; FT_SCOPE=model compiles the whole forward, a
# graph per depth (faster steps, but one compilation per depth of the schedule: not yet timed), and with it
# FT_MODE=reduce-overhead replays CUDA graphs.
set -u
shopt -s nullglob
export PYTHONUNBUFFERED=1
STAGE=${1:?prep|base|finetune}; DL=${2:?deadline in seconds}
T0=$(date +%s); el() { echo $(( $(date +%s) - T0 )); }
mins() { python3 -c "print(round(max(0.5, ($1 - $(el)) / 60), 2))"; }  # minutes left until second $1 of this call
R=${STATE:-/root/converge}; mkdir -p $R/data $R/pt
PY=${PYTHON:-python3}; E="$PY -m eediff.cli"

# (installed and unpacked once per machine, so that a base and a finetune stage can run side by side after `prep`)
if [ -d .whl ] && [ -z "${NO_INSTALL:-}" ] && [ ! -d /tmp/site/diffusers ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -2
fi
[ -n "${NO_INSTALL:-}" ] || [ -d /tmp/site/diffusers ] || { echo "no /tmp/site: the first call carries .whl"; exit 3; }
if [ -f .data/fm-xz/train-images-idx3-ubyte.xz ] && [ ! -f $R/data/train-images-idx3-ubyte ]; then
  xz -dc .data/fm-xz/train-images-idx3-ubyte.xz > $R/data/train-images-idx3-ubyte.tmp && mv $R/data/train-images-idx3-ubyte.tmp $R/data/train-images-idx3-ubyte
fi
[ -d .data/fm-xz ] && cp .data/fm-xz/*.gz $R/data/ 2>/dev/null
# the tables read the test set only: a call that only makes them (FT_IMPORT) may carry .data/fm-xz without the training images
[ -f $R/data/t10k-images-idx3-ubyte.gz ] || { echo "no data in $R/data: the first call carries .data/fm-xz"; exit 3; }
[ -f $R/data/train-images-idx3-ubyte ] || echo "no training images in $R/data: tables only (training needs .data/fm-xz in full)"
[ -f .gpu1/inception.xz.00 ] && cp .gpu1/inception.xz.00 $R/pt/
if [ -f .gpu2/inception.xz.01 ] && [ -f $R/pt/inception.xz.00 ] && [ ! -f $R/pt/inception_fp16.pt ]; then
  cat $R/pt/inception.xz.00 .gpu2/inception.xz.01 | python3 -c "import lzma, sys, shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open('$R/pt/inception.tmp', 'wb'))" \
    && mv $R/pt/inception.tmp $R/pt/inception_fp16.pt
fi
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$R/data
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name --format=csv,noheader
echo "[$(el)s] stage $STAGE, deadline ${DL}s"
[ "$STAGE" = prep ] && exit 0
# an export given as INIT_DIT / INIT_UVIT is kept in the state folder at first sight, and that copy is used from
# then on: the checkout (where the export travelled) is replaced at every call
for m in dit uvit; do
  INIT=INIT_${m^^}
  if [ -n "${!INIT:-}" ]; then
    [ -f $R/init-$m.safetensors ] || cp ${!INIT} $R/init-$m.safetensors || exit 3
    declare INIT_${m^^}=$R/init-$m.safetensors; echo "$m: init $R/init-$m.safetensors ($(sha256sum < $R/init-$m.safetensors | cut -c1-12))"
  fi
done
MODELS=${BASE_MODELS:-dit uvit}   # the base stage's runs

STEPS=${BASE_STEPS:-100000}; EV=${EVAL_EVERY:-2000}; EN=${EVAL_N:-5000}
B="--dataset fashion-mnist --batch-size ${BATCH:-512} --lr ${LR:-3e-4} --lr-schedule ${LR_SCHEDULE:-constant} --warmup-steps ${WARMUP:-0} --ema-decay ${BASE_EMA:-0.9995} ${BASE_EMA_WARMUP:+--ema-warmup} --steps $STEPS
   --eval-every $EV --eval-n $EN --eval-cache-dir $R/fdcache --save-every $EV --keep-last 2
   --log-every 500 --sample-every 0 --no-progress --export-fp16"
declare -A CF=([dit]="${COMPILE---compile --compile-scope ${SCOPE:-blocks} --compile-mode ${MODE:-default}}")
CF[uvit]=${CF[dit]}
declare -A CONF=([dit]='--arch DiT --model-config {"hidden_size":64,"depth":28,"num_heads":2,"patch_size":2}'
                 [uvit]='--arch U-ViT --model-config {"embed_dim":96,"depth":12,"num_heads":3,"patch_size":2}')
# done: the run stopped at a plateau or was measured at --steps (a run the time limit stopped at its last step
# before that measurement is not done: its --resume measures it)
done_run() { python3 - "$R/$1/metrics.jsonl" "${2:-$STEPS}" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().endswith("}")] if __import__("os").path.exists(sys.argv[1]) else []
measured = max((r["eval"].get("step", r.get("step", 0)) for r in rows if "eval" in r), default=0)
sys.exit(0 if any(r.get("plateau") for r in rows) or measured >= int(sys.argv[2]) else 1)
PY
}
ret() {  # what comes back: the EMA export (fp16) and metrics of each run of this stage, one tar per family (<= 16 MiB)
  local fams=${MODELS:-dit uvit}; [ "$STAGE" = finetune ] && fams=${FT_MODELS:-dit uvit}
  for m in $fams; do  # base stage: the base run; finetune stage: its fine-tunes (the base came back earlier)
    if [ "$STAGE" = base ]; then dirs=$m; else dirs=$(cd $R && for d in $m-*/; do [ -f $d/imported ] || echo ${d%/}; done); fi   # (nullglob: no fine-tunes, no dirs)
    # three runs per tar (a U-ViT export is 3.2 MB: six fine-tunes in one tar pass what comes back), the searches
    # in the first; few files in all (only so many come back)
    set -- $dirs; i=0
    while [ $# -gt 0 ]; do
      files=$(cd $R && for d in "${@:1:3}"; do for f in $d/final-fp16.safetensors $d/metrics.jsonl $d/config.json; do [ -f $f ] && echo $f; done; done
              if [ $i = 0 ] && [ "$STAGE" = finetune ]; then js=( $m-search-*.json $m-asearch-*.json ); printf '%s\n' "${js[@]}"; fi)
      [ -n "$files" ] && (cd $R && tar cf $OUT/$m-$STAGE-$i.tar $files)
      shift $(( $# < 3 ? $# : 3 )); i=$((i + 1))
    done
  done
  (cd $R && logs=( *.log ) && [ ${#logs[@]} -gt 0 ] && tar czf $OUT/logs-$STAGE.tgz "${logs[@]}"); ls -la $OUT
}
fid_snaps() {  # Inception FID (DPM-Solver++ 25, 5000 images) of every base export kept so far, once Inception is here
  [ -f $R/pt/inception_fp16.pt ] || return 0
  for f in $R/snap/*.safetensors; do
    d=${f%.safetensors}; [ -f $d/eval.json ] && continue
    [ $(el) -lt $(( DL - 30 )) ] || { echo "[$(el)s] no time for the FID of $f"; break; }
    timeout 90 $E eval --model $f --schedules full --samplers dpm-solver++-25 -n $EN --batch-size 1000 --metric fid \
      --inception $R/pt/inception_fp16.pt --cache-dir $R/fidcache --time-repeats 1 --no-progress --out $d/eval.json 2>&1 | grep -v -i warn | tail -n 2
  done
  # (a glob, not `ls`: with nullglob an `ls` of no matches lists the whole state folder, training data included)
  local got=( $R/snap/*/eval.json $R/snap/*/eval.md )
  [ ${#got[@]} -gt 0 ] && (cd $R && tar czf $OUT/snap_fid.tgz "${got[@]#$R/}")
}
watch() { while [ $(jobs -r | wc -l) -gt 0 ]; do sleep 20; echo "[$(el)s] $(for f in $R/*/metrics.jsonl; do echo -n "$(basename $(dirname $f)):$(python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip().endswith("}")]
s = [r for r in rows if "loss" in r]; e = [r for r in rows if "eval" in r]
print(s[-1]["step"] if s else 0, round(s[-1].get("steps_per_s", 0), 1) if s else 0, round(e[-1]["eval"]["value"], 2) if e else "-", sep="/")' $f 2>/dev/null) "; done)"; done; }

# several GPUs on the machine (a kind with 2, 4 or 8): each background run gets one of its own, round robin
# (CUDA_VISIBLE_DEVICES, exported by on_gpu before each launch), from GPU_OFFSET on (a second invocation beside a
# first one starts past the first's GPUs); one GPU: every run shares it, as before
NGPU=$(nvidia-smi -L 2> /dev/null | grep -c '^GPU'); [ "$NGPU" -ge 1 ] || NGPU=1
GI=${GPU_OFFSET:-0}
on_gpu() { [ "$NGPU" -gt 1 ] || return 0; export CUDA_VISIBLE_DEVICES=$(( GI % NGPU )); GI=$(( GI + 1 )); }

has_ckpt() { local c=( $R/$1/checkpoints/step-* ); [ ${#c[@]} -gt 0 ]; }   # run $1 has a checkpoint to resume

train_run() {  # train_run MODEL COMMAND...: one base run; one that fails under reduce-overhead (CUDA graphs) goes on
  local m=$1; shift  # with --compile-mode default, from its last checkpoint, in the time left
  "$@" >> $R/$m.log 2>&1 && return 0
  [[ " $* " == *" reduce-overhead "* ]] || return 1
  echo "[$(el)s] $m failed under --compile-mode reduce-overhead ($(grep -m1 -o 'Error[^.]*' $R/$m.log | cut -c1-160)); going on with the default mode"
  local a=() prev="" w
  for w in "$@"; do
    [ "$prev" = --max-minutes ] && w=$(mins $(( DL - RESERVE )))
    prev=$w; [ "$w" = reduce-overhead ] && w=default
    [ "$w" = --resume ] || a+=("$w")
  done
  if has_ckpt $m; then a+=(--resume); else a+=(--overwrite); fi   # (no checkpoint yet: the failed run's files go)
  "${a[@]}" >> $R/$m.log 2>&1
}

if [ "$STAGE" = base ]; then
  if [ -n "${SPEED:-}" ]; then  # first, how fast each way of compiling trains (about 4 minutes)
    for m in $MODELS; do
      timeout 240 $PY benchmarks/train_speed.py ${CONF[$m]} --variants ${SPEED_VARIANTS:-blocks:512,model:512,model/reduce-overhead:512} \
        --warmup 20 --repeats 30 --out $OUT/train_speed_$m.json 2>&1 | grep -v -i warn | tail -n 5
      # train with the fastest way measured at the run's batch size (SCOPE / MODE, when given, are kept)
      [ -z "${SCOPE:-}${MODE:-}" ] && [ -f $OUT/train_speed_$m.json ] && pick=$(python3 - $OUT/train_speed_$m.json ${BATCH:-512} <<'PY'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["batch"] == int(sys.argv[2]) and "ms_per_step" in r and not r["scope"].startswith("eager")]
scope, _, mode = min(rows, key=lambda r: r["ms_per_step"])["scope"].partition("/")
print(f"--compile --compile-scope {scope} --compile-mode {mode or 'default'}")
PY
) && [ -n "$pick" ] && CF[$m]=$pick && echo "$m: training with ${CF[$m]}"
    done
  fi
  for m in $MODELS; do
    if [ -f $R/$m/metrics.jsonl ] && done_run $m; then echo "$m: finished earlier"; continue; fi
    RES=""; [ -d $R/$m/checkpoints ] && RES="--resume"
    RESERVE=50; [ -f $R/pt/inception_fp16.pt ] && RESERVE=170   # the snapshots' FID comes after training
    M=$(mins $(( DL - RESERVE )))
    INIT=INIT_${m^^}
    if [ -n "${!INIT:-}" ]; then  # continue an earlier export (a fresh optimizer; EMA from its weights), or resume that
      # no --plateau here: its steps count from 0, the rule is about total steps (benchmarks/converge_report.py applies it)
      on_gpu; train_run $m $E finetune --init ${!INIT} --schedule full --reweight-gamma 0 $B ${CF[$m]} --max-minutes $M --out $R/$m $RES &
    else
      on_gpu; train_run $m $E train ${CONF[$m]} $B ${CF[$m]} --plateau 0.03 --max-minutes $M --out $R/$m $RES &
    fi
  done
  watch; wait
  for m in $MODELS; do tail -n 3 $R/$m.log | cut -c1-240; done
  mkdir -p $R/snap
  for m in $MODELS; do  # this call's EMA export, kept for the FID at checkpoints
    S=$(python3 -c "import json,sys; print(max(json.loads(l).get('step', 0) for l in open(sys.argv[1]) if l.strip().endswith('}')))" $R/$m/metrics.jsonl)
    [ -f $R/snap/$m-$S.safetensors ] || cp $R/$m/final.safetensors $R/snap/$m-$S.safetensors
  done
  ret
  fid_snaps
elif [ "$STAGE" = finetune ]; then
  FS=${FT_STEPS:-5000}
  source benchmarks/device/ft_recipe.sh; F=$(ft_flags $FS $EN $R)
  FT_END=${FT_END:-$(( DL * 6 / 10 ))}   # the fine-tunes get 60% of the call, the FID tables the rest
  declare -A BASE SCHED KINDS EXTRA
  search_kind() {  # search_kind MODEL NAME X [ARGS...]: `eediff search` on the base at D<X>'s saving or at saving X
    local m=$1 name=$2 x=$3 arg; shift 3   # (once: its schedule file is kept), SCHED[MODEL-NAME-X] set from it
    local f=$R/$m-$name-$x.json
    if [ ! -f $f ]; then
      case $x in D*) arg="--saving-of $x-$A" ;; *) arg="--target-saving $x" ;; esac
      $E search --model ${BASE[$m]} "$@" $arg --sampler dpm-solver++ --steps 25 -n ${SEARCH_N:-256} --batch-size 256 --out $f \
        --report $R/$m-$name-$x.report.json --no-progress >> $R/$m-search.log 2>&1 \
        || { echo "$m: $name $x failed: $(tail -n 1 $R/$m-search.log)"; return 1; }
    fi
    # the search's intervals are equal, so its blocks as a comma list are the same schedule
    SCHED[$m-$name-$x]=$(python3 -c "import json, sys; print(','.join(map(str, json.load(open(sys.argv[1]))['blocks'])))" $f)
    echo "$m: $name $x -> ${SCHED[$m-$name-$x]}"
  }
  if [ -n "${FT_IMPORT:-}" ]; then  # fine-tunes made on an earlier machine (run folders as they came back), and their
    for d in $(for m in ${FT_MODELS:-dit uvit}; do echo $FT_IMPORT/$m-*/; done); do   # searches: taken as finished runs
      n=$(basename $d)    # here (not trained again, not sent back again); a base run's folder is not a fine-tune
      [ -f $d/final-fp16.safetensors ] && [ ! -f $R/$n/final.safetensors ] || continue
      mkdir -p $R/$n && cp $d/metrics.jsonl $d/config.json $R/$n/ && cp $d/final-fp16.safetensors $R/$n/final.safetensors \
        && touch $R/$n/imported && echo "imported $n"
    done
    js=( $FT_IMPORT/*search-*.json ); [ ${#js[@]} -gt 0 ] && cp -n "${js[@]}" $R/
  fi
  for m in ${FT_MODELS:-dit uvit}; do
    INIT=INIT_${m^^}; BASE[$m]=${!INIT:-$R/$m/final.safetensors}   # this machine's base run, or an export that travelled
    [ -f ${BASE[$m]} ] || { echo "no ${BASE[$m]}: run the base stage first (or give INIT_${m^^}=EXPORT)"; exit 3; }
    A=DiT; [ $m = uvit ] && A=U-ViT
    # FT_KINDS_DIT / FT_KINDS_UVIT and SEARCH_DIT / SEARCH_UVIT, where given, replace FT_KINDS / SEARCH for that model
    KV=FT_KINDS_${m^^}; SV=SEARCH_${m^^}
    kinds="${!KV-${FT_KINDS:-D4-$A D6-$A full}}"
    for x in ${!SV-${SEARCH:-}}; do  # searched on the base (eediff search), then fine-tuned with the presets' budget
      search_kind $m search $x && kinds="$kinds search-$x"
    done
    HV=HAND_${m^^}
    for nb in ${!HV-}; do  # HAND_DIT="band=28,25,23,21,3": a hand-written schedule (equal intervals), run hand-band,
      SCHED[$m-hand-${nb%%=*}]=${nb#*=}; kinds="$kinds hand-${nb%%=*}"   # fine-tuned and tabled like the searched ones
    done
    if [ -n "${ASEARCH:-}" ]; then  # the base fine-tuned at every depth (the same budget), then searched with --adapted
      SCHED[$m-any]=full; EXTRA[$m-any]="--depth-sampling uniform"; kinds="$kinds any"
      if done_run $m-any $FS; then
        for x in $ASEARCH; do
          search_kind $m asearch $x --adapted $R/$m-any/final.safetensors && kinds="$kinds asearch-$x"
        done
      else
        echo "$m: the adapted searches ($ASEARCH) wait for $m-any to finish (a later call)"
      fi
    fi
    KINDS[$m]=$kinds
    # FT_DISTILL=W: every run that cuts rows learns (1 - W) ε + W ε_full of the frozen base (`finetune --distill W`);
    # the fair baseline (full) and the any-depth run train as before
    if [ -n "${FT_DISTILL:-}" ]; then for s in $kinds; do
      [ "$s" = full ] || [ "$s" = any ] || EXTRA[$m-$s]="${EXTRA[$m-$s]:-} --distill $FT_DISTILL"; done; fi
    for s in $kinds; do
      done_run $m-$s $FS && continue   # finished; one stopped by --max-minutes goes on from its checkpoint
      RES=""; has_ckpt $m-$s && RES="--resume"
      on_gpu; $E finetune --init ${BASE[$m]} --schedule ${SCHED[$m-$s]:-$s} ${EXTRA[$m-$s]:-} $F --max-minutes $(mins $(( FT_END - 40 ))) --out $R/$m-$s $RES >> $R/$m-$s.log 2>&1 &
    done
  done
  watch; wait
  ret
  if [ -f $R/pt/inception_fp16.pt ]; then MET="--metric fid --inception $R/pt/inception_fp16.pt"; else MET="--metric fd-classifier"; fi
  C="--n $EN --batch-size 1000 --seeds 0 --cache-dir $R/fidcache --time-batch 1000 --time-repeats 3 $MET"
  [ -n "${NO_TABLES:-}" ] && { echo "[$(el)s] done (NO_TABLES)"; exit 0; }
  for m in ${FT_MODELS:-dit uvit}; do
    # TABLES_FROM=DIR: the cells an earlier call measured (DIR/tables_MODEL.jsonl) are not measured again (same keys:
    # the same state paths, sampler, seed, n and metric), so a call that adds fine-tunes measures only their cells
    [ -n "${TABLES_FROM:-}" ] && [ -f $TABLES_FROM/tables_$m.jsonl ] && [ ! -f $R/tables_$m.jsonl ] && cp $TABLES_FROM/tables_$m.jsonl $R/
    [ $(( DL - $(el) )) -gt 60 ] || { echo "[$(el)s] no time left for the tables"; break; }   # (a later call makes them)
    # a fine-tune the call's end stopped short is not measured (its cells would be keyed by the path its finished
    # export will have): the call that finishes it makes the tables
    short=$(for s in ${KINDS[$m]}; do done_run $m-$s $FS || echo -n "$s "; done)
    [ -z "$short" ] || { echo "[$(el)s] $m: not finished ($short): the next call makes its tables"; continue; }
    A=DiT; SHARE=2; [ $m = uvit ] && A=U-ViT && SHARE=1   # DiT gets half of what is left, U-ViT the rest
    [ "${FT_MODELS:-dit uvit}" = $m ] && SHARE=1
    more=(); for s in ${KINDS[$m]}; do [[ $s == *search-* || $s == hand-* ]] && [ -f $R/$m-$s/final.safetensors ] && more+=(--finetuned "${SCHED[$m-$s]}=$R/$m-$s/final.safetensors"); done
    # the presets fine-tuned here (FT_KINDS may leave one out)
    for d in D4 D6; do [ -f $R/$m-$d-$A/final.safetensors ] && more=(--finetuned "$d-$A=$R/$m-$d-$A/final.safetensors" "${more[@]}"); done
    $PY benchmarks/gpu_tables.py --arch-label $A --base ${BASE[$m]} \
      "${more[@]}" --fair $R/$m-full/final.safetensors --zero-shot "D4-$A;D6-$A$(for s in ${KINDS[$m]}; do [[ $s == *search-* || $s == hand-* ]] && echo -n ";${SCHED[$m-$s]}"; done)" \
      --samplers "${SAMPLERS:-dpm-solver++-25;ddim-50;ddpm-100}" --late-samplers ddpm-100 --deadline-s $(( (DL - $(el) - 20) / SHARE )) \
      $C --out-jsonl $R/tables_$m.jsonl 2>&1 | grep -v -i warn | tail -n 5
    cp $R/tables_$m.jsonl $OUT/ 2>/dev/null
  done
fi
echo "[$(el)s] done"
