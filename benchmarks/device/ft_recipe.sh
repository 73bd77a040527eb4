# The ASE fine-tune recipe of the converged-model runs, sourced by converge.sh (stage finetune) and distill.sh so
# that their runs differ only in what each adds: batch 512, lr 1e-4, EMA 0.999 with warm-up, one schedule interval
# per step, compiled blocks, the classifier Fréchet distance of EN EMA samples every 1,000 steps.
#   ft_flags STEPS EVAL_N STATE_DIR  ->  the `eediff finetune` flags (FT_BATCH, FT_SCOPE, FT_MODE, FT_LR_SCHEDULE,
#   FT_EMA override; FT_LR_SCHEDULE=cosine gives the DiT, constant under `auto`, the U-ViT's decaying rate)
ft_flags() {
  echo "--dataset fashion-mnist --batch-size ${FT_BATCH:-512} --lr 1e-4 --lr-schedule ${FT_LR_SCHEDULE:-auto} --ema-decay ${FT_EMA:-0.999} --ema-warmup --depth-grouping batch"\
       "--steps $1 --compile --compile-scope ${FT_SCOPE:-blocks} --compile-mode ${FT_MODE:-default}"\
       "--eval-every 1000 --eval-n $2 --eval-cache-dir $3/fdcache --save-every 100000 --log-every 250 --sample-every 0"\
       "--no-progress --export-fp16"
}
