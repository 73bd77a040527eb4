"""What the two-stage evaluation drivers (deediff_eval.py, tome_eval.py) share: a ``generate`` stage that samples
image sets on the GPU without the Inception network, and an ``fid`` stage that scores them where it is."""

from __future__ import annotations

import argparse
import json


def pairs(s: str) -> dict:
    """'DiT=a,U-ViT=b' -> {'DiT': 'a', 'U-ViT': 'b'}."""
    return dict(kv.split("=", 1) for kv in s.split(",") if kv) if s else {}


def parser() -> argparse.ArgumentParser:
    """The stage argument, the sampling options and the FID stage's options."""
    ap = argparse.ArgumentParser()
    ap.add_argument("stage", choices=["generate", "fid"])
    ap.add_argument("--sampler", default="dpm-solver++")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("-n", type=int, default=5000)
    ap.add_argument("--batch-size", type=int, default=1000)
    ap.add_argument("--time-repeats", type=int, default=3)
    ap.add_argument("--work", required=True, help="where the image sets are written (generate) and read (fid)")
    ap.add_argument("--partial", default=None, help="fid: the generate stage's JSON")
    ap.add_argument("--inception", default=None)
    ap.add_argument("--reference", default="fashion-mnist:test")
    ap.add_argument("--metric", default="fid", help="fid | fd-classifier (a quick check, not FID)")
    ap.add_argument("--cache-dir", default=".cache/fid")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", required=True)
    return ap


def write(path: str, res: dict) -> None:
    from eediff.io import write_atomic

    write_atomic(path, json.dumps(res, indent=1))
    print(f"wrote {path}")
