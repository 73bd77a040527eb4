#!/usr/bin/env bash
# Second call on the same warm machine (carry [".gpu"]: the fp16 Inception network, xz, and the Fashion-MNIST
# test set): Inception FID of every image set peers_tome_generate.sh left in /root/pt -> $OUT/peers.{json,md,png}, $OUT/tome.json.
set -u
export PYTHONUNBUFFERED=1
[ -f /root/pt/peers_partial.json ] || { echo "no /root/pt/peers_partial.json: the machine is not the one the first call ran on"; exit 3; }
python3 -c "import lzma, shutil; shutil.copyfileobj(lzma.open('.gpu/inception_fp16.pt.xz'), open('/root/pt/inception_fp16.pt', 'wb'))"
mkdir -p .data && cp -r .gpu/fashion-mnist .data/
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=$PWD/.gpu/fashion-mnist
F="--inception /root/pt/inception_fp16.pt --cache-dir /root/pt/fidcache"
python3 benchmarks/peers.py fid --work /root/pt/peers --partial /root/pt/peers_partial.json $F --out $OUT/peers.json 2>&1 | grep -v -i warn
[ -f /root/pt/tome_partial.json ] && python3 benchmarks/tome_eval.py fid --work /root/pt/tome --partial /root/pt/tome_partial.json $F \
  --out $OUT/tome.json 2>&1 | grep -v -i warn
