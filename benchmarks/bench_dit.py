"""GPU benchmark of the DiT fast path (issue 6). Usage: python benchmarks/bench_dit.py [--tiny] [--out FILE]"""

import argparse
import sys

from eediff.bench import run_bench, write_results
from eediff.config import BenchConfig

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="results/bench_dit.json")
    ap.add_argument("--batch-sizes", default="1,8,64")
    ap.add_argument("--skip-e2e", action="store_true")
    a = ap.parse_args()
    cfg = BenchConfig(tiny=a.tiny, out=a.out, batch_sizes=a.batch_sizes, skip_e2e=a.skip_e2e, repeats=3 if a.tiny else 10)
    res = run_bench(cfg)
    res["command"] = "python " + " ".join(sys.argv)
    write_results(res, a.out)
    print(f"wrote {a.out}")
