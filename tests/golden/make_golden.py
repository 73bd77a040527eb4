"""Record the sampling outputs of the shipped models, as golden values for tests/test_golden.py.

Run once, before a change to the sampling path (the values must come from the code being replaced):
    .venv/bin/python tests/golden/make_golden.py
When a shipped file is replaced (the code unchanged), record its cases again and keep the others:
    .venv/bin/python tests/golden/make_golden.py --only uvit-fmnist-D4
Each case: 4 images, DPM-Solver++ 6 steps, seed 0, CPU float32, at full depth and at an exit schedule;
the DiT cases also with classifier-free guidance. Stored as float32 in shipped_samples.npz.
"""

from __future__ import annotations

import os

import numpy as np
import torch

CASES = [  # (shipped model, schedule, cfg scale)
    ("dit-fmnist-D4", "D4-DiT", 1.0),
    ("dit-fmnist-D4", "D4-DiT", 1.5),
    ("dit-fmnist", None, 1.0),
    ("dit-fmnist", "D6-DiT", 1.5),
    ("uvit-fmnist-D4", "D4-U-ViT", 1.0),
    ("uvit-fmnist-D4", "D3-U-ViT", 2.0),
    ("uvit-fmnist", None, 1.0),
]


def case_key(model: str, schedule: str | None, cfg: float) -> str:
    return f"{model}|{schedule or 'full'}|cfg{cfg:g}"


def sample_case(model: str, schedule: str | None, cfg: float) -> np.ndarray:
    from eediff.diffusion.sampling import SamplerConfig
    from eediff.generate import generate
    from eediff.zoo import resolve_model

    torch.set_num_threads(1)
    loaded = resolve_model(model)
    res = generate(loaded.model.float(), loaded.process, SamplerConfig("dpm-solver++", 6), n=4, batch_size=4, seed=0,
                   schedule=schedule or "full", cfg_scale=cfg, progress=False)
    return res.images.numpy().astype(np.float32)


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--only", help="record only this shipped model's cases, keeping the others' stored values")
    only = ap.parse_args().only
    path = os.path.join(os.path.dirname(__file__), "shipped_samples.npz")
    if only and only not in {c[0] for c in CASES}:
        raise SystemExit(f"--only {only}: not a model of CASES ({', '.join(sorted({c[0] for c in CASES}))})")
    out = dict(np.load(path)) if only else {}
    out.update({case_key(*c): sample_case(*c) for c in CASES if only in (None, c[0])})
    np.savez_compressed(path, **out)
    print(f"wrote {len(out)} cases to {path}")
