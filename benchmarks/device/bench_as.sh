# Sourced by the device scripts that run `eediff bench`:
#   bench_as SECONDS "eediff bench ... --out results/NAME.json" [LINES]
# runs the command with a second --out, $OUT/NAME.json (the last --out wins), shows the last LINES lines of its
# output (warnings dropped), and sets the JSON's "command" to the command as given: the checkout's results/
# path, which is where the file is committed, not the machine's $OUT.
bench_as() {
  local secs=$1 cmd=$2 lines=${3:-40} name
  name=$(basename "$(echo "${cmd##*--out }" | cut -d' ' -f1)")
  timeout "$secs" python3 -m eediff.cli ${cmd#eediff } --out "$OUT/$name" 2>&1 | grep -v -i -E "warn|kept in float32" | tail -n "$lines"
  python3 - "$OUT/$name" "$cmd" <<'PY'
import json, sys
p = sys.argv[1]
try:
    r = json.load(open(p))
except FileNotFoundError:  # the bench did not finish: nothing to label
    sys.exit(0)
r["command"] = sys.argv[2]
json.dump(r, open(p, "w"), indent=2)
PY
}
