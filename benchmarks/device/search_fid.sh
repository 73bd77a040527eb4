#!/usr/bin/env bash
# Schedule search, second call on the same warm machine (carry [".gpu2"], the second half of the Inception xz):
# Inception FID of every set search_generate.sh left in /root/pt -> $OUT/search.{json,md}.
set -u
export PYTHONUNBUFFERED=1
[ -f /root/pt/search_partial.json ] || { echo "no /root/pt/search_partial.json: the machine is not the one the first call ran on"; exit 3; }
cat /root/pt/gpu1/inception.xz.00 .gpu2/inception.xz.01 | python3 -c "import lzma, sys, shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open('/root/pt/inception_fp16.pt', 'wb'))"
# the loader recognises a Fashion-MNIST folder by its training images, which the FID reference does not need
touch /root/pt/gpu1/fashion-mnist/train-images-idx3-ubyte
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=/root/pt/gpu1/fashion-mnist
python3 benchmarks/search_eval.py fid --work /root/pt/search --partial /root/pt/search_partial.json --inception /root/pt/inception_fp16.pt \
  --cache-dir /root/pt/fidcache --out $OUT/search.json 2>&1 | grep -v -i warn | tail -n 40
