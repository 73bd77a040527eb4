#!/usr/bin/env python3
"""Does a linear readout make the zero-shot search proxy predict fine-tuned quality? Measured on the CPU.

`eediff search` scores a schedule by the eps error of the truncated model against its own full depth, zero-shot
(``exits/search.py``). On the shipped DiT that ranks the fine-tuned schedules as their measured distances do;
on the U-ViT it does not (Spearman 0.00): there, cutting decoder blocks zero-shot mostly shifts the features
the head reads, which a fine-tune repairs. This experiment asks whether the part a fine-tune repairs is the
linear part. Along the same full-depth trajectories as the search (``-n`` images, DPM-Solver++ ``--steps``), the
head's input after k blocks ``h_k`` (U-ViT: the dropped decoder blocks still fuse their skips) is mapped by a
ridge least-squares affine map ``A`` fitted to the full-depth ``h_K``, and the error is measured after the real
head: ``e[s, k] = mean (head(A h_k) - eps_full)^2``. Maps are fitted on the even-numbered images and the errors
measured on the odd ones. Two fits: one map per (t interval of ten, depth) (``probe-interval``) and one per
depth for every t (``probe-shared``, closer to a fine-tune, whose weights serve every t). Each table scores the
schedules fine-tuned in ``--finetuned`` (step weighting, as the search) and is ranked against their measured
classifier distances on each sampler; Spearman's rho is reported per sampler.

    python benchmarks/probe_proxy.py --model uvit-fmnist -n 64 --out results/search_probe/uvit.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import torch
from search_eval import spearman  # rank correlation, tested against scipy (tests/test_search.py)


def finetuned_rows(path: str, key: str, arch: str) -> dict:
    """{schedule: {sampler: measured distance}} of the fine-tunes of ``arch`` recorded under ``key``."""
    with open(path) as f:
        rows = json.load(f)["finetuned"][key]["rows"]
    model = {"DiT": "dit", "U-ViT": "uvit"}[arch]
    out: dict = {}
    for r in rows:
        if r["model"] == model and r.get("fid") is not None:
            out.setdefault(r["schedule"], {})[r["sampler"]] = r["fid"]
    return out


@torch.no_grad()
def head_inputs(model, x, t: float, y):
    """{k: Tokens the head would read after k blocks} for k = 1..K (U-ViT: the dropped blocks fuse their skips)."""
    from eediff.models.backbone import depth_states

    return dict(depth_states(model, x, torch.full((x.shape[0],), float(t)), y, range(1, model.num_exit_blocks + 1)))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a shipped base (dit-fmnist, uvit-fmnist) or a checkpoint")
    ap.add_argument("-n", type=int, default=64, help="trajectories (half fit the maps, half measure)")
    ap.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps")
    ap.add_argument("--ridge", type=float, default=1e-3, help="ridge, relative to the mean diagonal of X^T X")
    ap.add_argument("--finetuned", default="results/search.json")
    ap.add_argument("--key", default="converge/v3/ft-more", help="the fine-tune set in --finetuned to rank against")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    from eediff.diffusion.sampling import Denoiser, SamplerConfig, sample_loop
    from eediff.exits.policy import FullDepth
    from eediff.exits.schedule import get_schedule
    from eediff.exits.search import ProxyTable, eps_coefficients, equal_boundaries, interval_of
    from eediff.generate import image_noise, resolve_labels
    from eediff.io import write_atomic
    from eediff.models.backbone import Tokens
    from eediff.zoo import resolve_model

    t_start = time.perf_counter()
    loaded = resolve_model(a.model)
    model, process = loaded.model.eval(), loaded.process
    K, C, D = model.num_exit_blocks, model.in_channels, model.hidden_size
    measured = finetuned_rows(a.finetuned, a.key, model.arch)
    if len(measured) < 3:
        raise SystemExit(f"{a.finetuned} holds {len(measured)} fine-tuned {model.arch} schedules under '{a.key}': need 3 to rank")
    full = Denoiser(model, process, FullDepth(K))
    y = resolve_labels(range(a.n), model.num_classes, None)
    states = []

    def record(x, t, y_):
        out = full(x, t, y_)
        states.append((x.clone(), float(t), out[:, :C].float()))
        return out

    with torch.no_grad():
        noise, gens = image_noise((C, model.input_size, model.input_size), list(range(a.n)), "cpu")
        sample_loop(record, process, SamplerConfig("dpm-solver++", a.steps), noise, y, gens, learned_sigma=model.learn_sigma)
    times = [t for _, t, _ in states]
    t_unit = [float(process.unit_time(t)) for t in times]
    interval = [interval_of(u, equal_boundaries(10)) for u in t_unit]
    fit, held = torch.arange(a.n) % 2 == 0, torch.arange(a.n) % 2 == 1

    def design(h):  # (rows, D + 1): tokens and a constant, in float64 for the normal equations
        h = h.reshape(-1, D).double()
        return torch.cat([h, torch.ones(h.shape[0], 1, dtype=h.dtype)], 1)

    # pass 1: the normal equations of every map, from the fitting half
    gram: dict = {}
    cross: dict = {}
    for s, (x, t, _) in enumerate(states):
        f = head_inputs(model, x[fit], t, None if y is None else y[fit])
        target = f[K].h.reshape(-1, D).double()
        for k in range(1, K):
            X = design(f[k].h)
            for key in (("interval", interval[s], k), ("shared", 0, k)):
                gram[key] = gram.get(key, 0) + X.T @ X
                cross[key] = cross.get(key, 0) + X.T @ target
    maps = {}
    for key, G in gram.items():
        eye = torch.eye(G.shape[0], dtype=G.dtype)
        maps[key] = torch.linalg.solve(G + a.ridge * G.diagonal().mean() * eye, cross[key]).float()

    # pass 2: the errors on the held-out half
    kinds = ("zero-shot", "probe-interval", "probe-shared")
    err = {m: [[math.nan] * (K + 1) for _ in states] for m in kinds}
    with torch.no_grad():
        for s, (x, t, eps) in enumerate(states):
            f = head_inputs(model, x[held], t, None if y is None else y[held])
            ref = eps[held]
            for m in kinds:
                err[m][s][K] = 0.0
            for k in range(1, K):
                tok = f[k]
                err["zero-shot"][s][k] = float(((model.head(tok)[:, :C] - ref) ** 2).mean())
                for m, key in (("probe-interval", ("interval", interval[s], k)), ("probe-shared", ("shared", 0, k))):
                    h = torch.cat([tok.h, torch.ones(*tok.h.shape[:2], 1)], -1) @ maps[key]
                    err[m][s][k] = float(((model.head(Tokens(h, tok.c, tok.skips))[:, :C] - ref) ** 2).mean())

    coef = eps_coefficients(process, times)
    flops = [float(model.flops(k)) for k in range(K + 1)]
    samplers = sorted({smp for row in measured.values() for smp in row})
    res = {"command": "python " + " ".join(sys.argv), "model": a.model, "arch": model.arch, "n": a.n, "fit": "even images",
           "measured": "odd images", "sampler": f"dpm-solver++-{a.steps}", "ridge": a.ridge, "finetuned": f"{a.finetuned}:{a.key}",
           "t_unit": t_unit, "errors": err, "schedules": measured, "proxies": {}, "spearman": {}}
    for m in kinds:
        table = ProxyTable(t_model=times, t_unit=t_unit, coef=coef, error=err[m], flops=flops, num_blocks=K, n=a.n // 2, seed=0)
        px = {sch: table.proxy(get_schedule(sch)) for sch in measured}
        res["proxies"][m] = px
        res["spearman"][m] = {}
        for smp in samplers:
            keys = [sch for sch in measured if smp in measured[sch]]
            res["spearman"][m][smp] = spearman([px[k] for k in keys], [measured[k][smp] for k in keys])
        print(f"{m:15s} " + "  ".join(f"{smp} {rho:+.2f}" for smp, rho in res["spearman"][m].items())
              + "   " + "  ".join(f"{sch}={v:.4g}" for sch, v in px.items()), flush=True)
    res["seconds"] = round(time.perf_counter() - t_start, 1)
    write_atomic(a.out, json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
