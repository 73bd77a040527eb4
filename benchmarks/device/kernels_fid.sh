#!/usr/bin/env bash
# Fast-path kernels, second call on the same warm machine (carry [".gpu2"], the second half of the Inception xz):
# Inception FID of the shipped models sampled through the fast path under each kernel variant (same seeds),
# -> $OUT/kernels_fid.tgz (kf/<model>_<kernels>.json, .md, .png): the fp8 path's FID change against bf16.
set -u
export PYTHONUNBUFFERED=1
[ -d /root/pt/gpu1 ] || { echo "no /root/pt/gpu1: the machine is not the one kernels_bench.sh ran on"; exit 3; }
cat /root/pt/gpu1/inception.xz.00 .gpu2/inception.xz.01 | python3 -c "import lzma, sys, shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), open('/root/pt/inception_fp16.pt', 'wb'))"
touch /root/pt/gpu1/fashion-mnist/train-images-idx3-ubyte  # the loader recognises the folder by its training images
export PYTHONPATH=/tmp/site:$PWD/src EEDIFF_FASHION_MNIST_DIR=/root/pt/gpu1/fashion-mnist
mkdir -p /root/pt/kf
F="--inception /root/pt/inception_fp16.pt --cache-dir /root/pt/fidcache -n 5000 --batch-size 1000 --samplers dpm-solver++-25 --fast --no-progress"
for k in inductor fused fp8; do
  timeout 150 python3 -m eediff.cli eval --model dit-fmnist-D4 --baseline dit-fmnist --kernels $k $F --out /root/pt/kf/dit_$k.json 2>&1 | grep -v -i warn | tail -n 4
done
for k in inductor fp8; do
  timeout 150 python3 -m eediff.cli eval --model uvit-fmnist-D4 --baseline uvit-fmnist --kernels $k $F --out /root/pt/kf/uvit_$k.json 2>&1 | grep -v -i warn | tail -n 4
done
tar czf $OUT/kernels_fid.tgz -C /root/pt kf; ls -la /root/pt/kf
