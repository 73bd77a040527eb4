#!/usr/bin/env bash
# Third session, issue-5 tables on the lent GPU: bash benchmarks/device/s3_eval.sh DiT|U-ViT DEADLINE_S
# Carry [".gpu1", ".gpu2" (DiT) or ".gpu3" (U-ViT)]: .gpu1 = the Inception network (fp16 copy, xz: 39 MB), diffusers as a site tarball
# (2 MB) and the Fashion-MNIST test set; .gpu2/models = the models not shipped in the zoo (D6 fine-tunes and
# fair baselines). Everything a later call can reuse on the warm machine is unpacked under /root/eediff.
set -u
export PYTHONUNBUFFERED=1
ARCH=$1; DL=${2:-530}
R=/root/eediff; mkdir -p $R/site $R/models
python3 - <<'PY'
import lzma, os, shutil, tarfile
R = "/root/eediff"
if not os.path.exists(f"{R}/inception_fp16.pt"):
    with lzma.open(".gpu1/inception_fp16.pt.xz") as f, open(f"{R}/inception.tmp", "wb") as g:
        shutil.copyfileobj(f, g)
    os.replace(f"{R}/inception.tmp", f"{R}/inception_fp16.pt")
if not os.path.exists(f"{R}/site/diffusers"):
    tarfile.open(".gpu1/site.tar.xz").extractall(f"{R}/site")
if os.path.isdir(".gpu1/fashion-mnist"):
    shutil.copytree(".gpu1/fashion-mnist", f"{R}/fashion-mnist", dirs_exist_ok=True)
for d in (".gpu2/models", ".gpu3/models"):
    if os.path.isdir(d):
        shutil.copytree(d, f"{R}/models", dirs_exist_ok=True)
PY
export PYTHONPATH=$R/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$R/fashion-mnist
nvidia-smi --query-gpu=name --format=csv,noheader
C="--n 5000 --batch-size 2500 --seeds 0 --extra-seeds 1,2 --metric fid --inception $R/inception_fp16.pt --reference fashion-mnist:test
   --cache-dir $R/fidcache --time-batch 1000 --time-repeats 3 --fast --deadline-s $DL"
if [ "$ARCH" = DiT ]; then
  python3 benchmarks/gpu_tables.py --arch-label DiT --base dit-fmnist --finetuned D4-DiT=dit-fmnist-D4 \
    --finetuned D6-DiT=$R/models/dit-D6-DiT.safetensors --fair $R/models/dit-full.safetensors --zero-shot "D4-DiT;D6-DiT;D1-DiT;D3-DiT" \
    --samplers "dpm-solver++-25;ddim-50;ddim-100;dpm-solver++-50;ddpm-250" --late-samplers ddpm-250 \
    --time-samplers "dpm-solver++-25;ddim-50;ddim-100;dpm-solver++-50" $C --out-jsonl $R/dit3.jsonl 2>&1 | grep -v -i warn
  cp $R/dit3.jsonl $OUT/
else
  python3 benchmarks/gpu_tables.py --arch-label U-ViT --base uvit-fmnist --finetuned D4-U-ViT=uvit-fmnist-D4 \
    --finetuned D6-U-ViT=$R/models/uvit-D6-U-ViT.safetensors --fair $R/models/uvit-full.safetensors \
    --zero-shot "D4-U-ViT;D6-U-ViT;D1-U-ViT;D2-U-ViT;D3-U-ViT;D5-U-ViT" \
    --samplers "dpm-solver++-25;ddim-50;ddim-100;dpm-solver++-50;euler-maruyama-1000" --late-samplers euler-maruyama-1000 \
    --time-samplers "dpm-solver++-25;ddim-50;ddim-100;dpm-solver++-50" $C --out-jsonl $R/uvit3.jsonl 2>&1 | grep -v -i warn
  cp $R/uvit3.jsonl $OUT/
fi
