#!/usr/bin/env bash
# Schedule search, first of two calls on one machine (carry [".whl", ".gpu1"]). .gpu1 = the first half of the
# fp16 Inception network (xz, split in two so that each call stays under the 64 MiB a call carries) and the
# Fashion-MNIST test set; both are stashed in /root/pt for the second call (search_fid.sh, carry [".gpu2"]).
#   make the halves: split -n 2 -d inception_fp16.pt.xz  ->  .gpu1/inception.xz.00, .gpu2/inception.xz.01
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | grep -v -i warn | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
mkdir -p /root/pt && cp -r .gpu1 /root/pt/gpu1
timeout ${GEN_S:-330} python3 benchmarks/search_eval.py generate --work /root/pt/search --out /root/pt/search_partial.json "$@" 2>&1 | grep -v -i warn | tail -n 40
cp /root/pt/search_partial.json $OUT/ 2>/dev/null
