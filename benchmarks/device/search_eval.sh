#!/usr/bin/env bash
# Searched exit schedules vs the D4/D6 presets on one GPU: bash benchmarks/device/search_eval.sh [EXTRA generate FLAGS]
# Carry [".gpu1"] as for s3_eval.sh: the Inception network (fp16 copy, xz), diffusers as a site tarball and the
# Fashion-MNIST test set. Writes $OUT/search.json, $OUT/search.md and the generate stage's partial.json.
set -u
export PYTHONUNBUFFERED=1
R=/root/eediff; mkdir -p $R/site
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
PY
export PYTHONPATH=$R/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$R/fashion-mnist
nvidia-smi --query-gpu=name --format=csv,noheader
python3 benchmarks/search_eval.py generate --work $R/search --out $R/search/partial.json "$@" 2>&1 | grep -v -i warn
cp $R/search/partial.json $OUT/
python3 benchmarks/search_eval.py fid --work $R/search --partial $R/search/partial.json --inception $R/inception_fp16.pt \
  --cache-dir $R/fidcache --out $OUT/search.json 2>&1 | grep -v -i warn
