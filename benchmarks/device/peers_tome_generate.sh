#!/usr/bin/env bash
# First of two calls on one machine (carry [".whl", ".whl-peers"]): the image sets and timings of
#   benchmarks/peers.py generate   (eediff exits beside diffusers' hooks, cache-dit, ToMe, in one table)
#   benchmarks/tome_eval.py generate (ToMe F/R/B rows on the shipped DiT and U-ViT)
# Images stay in /root/pt for the second call (peers_tome_fid.sh); the partial JSON files come back in $OUT.
# .whl: diffusers and the CLI's wheels; .whl-peers: cache-dit and the transformers stack it imports.
set -u
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>&1 | tail -1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site-peers .whl-peers/*.whl 2>&1 | tail -1
export PYTHONPATH=/tmp/site:$PWD/src
PYTHONPATH=/tmp/site-peers:$PYTHONPATH python3 -c "import diffusers, cache_dit" > /tmp/peers_import.log 2>&1 \
  && export PYTHONPATH=/tmp/site-peers:$PYTHONPATH \
  || { echo "cache-dit does not import here (its row records the failure):"; grep -v -i warn /tmp/peers_import.log | tail -n 2; }
mkdir -p /root/pt
timeout ${PEERS_S:-300} python3 benchmarks/peers.py generate --work /root/pt/peers --out /root/pt/peers_partial.json 2>&1 \
  | grep -v -i -E "warn|Cache-DiT\]" | tail -n 40
cp /root/pt/peers_partial.json $OUT/ 2>/dev/null
timeout ${TOME_S:-200} python3 benchmarks/tome_eval.py generate --work /root/pt/tome --out /root/pt/tome_partial.json 2>&1 | grep -v -i warn | tail -n 20
cp /root/pt/tome_partial.json $OUT/ 2>/dev/null
