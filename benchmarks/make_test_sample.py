"""Write tests/data/fmnist_sample.npz: 300 Fashion-MNIST TEST images, 30 per class.

Source: the Debian package `dataset-fashion-mnist` (/usr/share/datasets/fashion-mnist,
IDX .gz files), or --data DIR.  Deterministic: the first 30 test images of each class,
in test-set order, then sorted by (label, index).

    .venv/bin/python benchmarks/make_test_sample.py [--per-class 30] [--out tests/data/fmnist_sample.npz]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from eediff.eval.fid import load_fashion_mnist

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--out", default=str(ROOT / "tests" / "data" / "fmnist_sample.npz"))
    ap.add_argument("--data", default=None, help="folder with t10k-*-idx?-ubyte.gz")
    a = ap.parse_args()
    images, labels = load_fashion_mnist("test", a.data)
    idx = np.concatenate([np.flatnonzero(labels == c)[: a.per_class] for c in range(10)])
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, images=images[idx], labels=labels[idx], test_index=idx.astype(np.int32))
    print(f"wrote {out}: {len(idx)} images, {os.path.getsize(out)} bytes")


if __name__ == "__main__":
    main()
