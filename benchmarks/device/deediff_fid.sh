#!/usr/bin/env bash
# DeeDiff, second call on the same warm machine (carry [".gpu"]: the fp16 Inception network, xz, and the Fashion-MNIST
# test set): Inception FID of every image set the first call left in /root/dd/gen -> $OUT/deediff.json.
set -u
export PYTHONUNBUFFERED=1
[ -f /root/dd/partial.json ] || { echo "no /root/dd/partial.json: the machine is not the one the first call ran on"; exit 3; }
python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/inception_fp16.pt.xz'), open('/root/dd/inception_fp16.pt', 'wb'))"
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$PWD/.gpu/fashion-mnist
python3 benchmarks/deediff_eval.py fid --work /root/dd/gen --partial /root/dd/partial.json --inception /root/dd/inception_fp16.pt \
  --cache-dir /root/dd/fidcache --out $OUT/deediff.json 2>&1 | grep -v -i warn
