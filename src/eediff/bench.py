"""`eediff bench`: DiT forward and end-to-end sampling speed, eager vs fast path vs diffusers, exits vs FLOPs.

Everything compared is measured in the same run, on the same weights (a randomly initialised diffusers
DiTTransformer2DModel converted to eediff, so the diffusers reference computes the same function).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import platform
import time
from dataclasses import asdict

import torch

from .config import BenchConfig, ConfigError
from .eval.timing import matmul_peak, time_fn


def _random_diffusers_dit(model: str, tiny: bool):
    from diffusers import DiTTransformer2DModel

    from .models.dit import DIT_SIZES

    if tiny:
        kw = dict(num_attention_heads=2, attention_head_dim=16, num_layers=28, sample_size=8, patch_size=2)
    else:
        s = DIT_SIZES[model]
        kw = dict(num_attention_heads=s["num_heads"], attention_head_dim=s["hidden_size"] // s["num_heads"],
                  num_layers=s["depth"], sample_size=32, patch_size=s["patch_size"])
    torch.manual_seed(0)
    m = DiTTransformer2DModel(in_channels=4, out_channels=8, num_embeds_ada_norm=1000, norm_num_groups=32, **kw)
    with torch.no_grad():  # adaLN-Zero would make blocks identities: use non-zero weights everywhere
        for p in m.parameters():
            p.normal_(0, 0.02)
        e0 = m.transformer_blocks[0].norm1.emb.state_dict()
        for blk in m.transformer_blocks[1:]:
            blk.norm1.emb.load_state_dict(e0)
    return m.eval()


def _sd_vae(tiny: bool):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if tiny:
        return AutoencoderKL(latent_channels=4, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
                             down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",)).eval()
    # Stable Diffusion's VAE configuration, random weights
    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                         layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256,
                         scaling_factor=0.18215).eval()


def run_bench(cfg: BenchConfig, log=print) -> dict:

    from .exits.schedule import get_schedule
    from .fast import FastPathConfig, apply_fast_path
    from .models.dit import DiT, from_diffusers_state_dict

    kernel_names = [k for k in cfg.kernels.split(",") if k]
    if not kernel_names:
        raise ConfigError("--kernels is empty: name at least one of inductor, fused, fp8")
    from .kernels import KERNELS

    if set(kernel_names) - set(KERNELS):
        raise ConfigError(f"unknown --kernels '{cfg.kernels}': a comma list of {', '.join(KERNELS)}")
    if cfg.fp8_fast_accum and "fp8" not in kernel_names:
        raise ConfigError(f"--fp8-fast-accum is a mode of the fp8 kernels: add fp8 to --kernels (now '{cfg.kernels}'), or drop it")
    from .kernels import FP8_MLP

    if cfg.fp8_mlp not in FP8_MLP:
        raise ConfigError(f"unknown --fp8-mlp '{cfg.fp8_mlp}': use one of {', '.join(FP8_MLP)}")
    if cfg.fp8_mlp != "rows" and "fp8" not in kernel_names:
        raise ConfigError(f"--fp8-mlp {cfg.fp8_mlp} is a mode of the fp8 kernels: add fp8 to --kernels (now '{cfg.kernels}'), or drop it")
    device = "cuda" if torch.cuda.is_available() and not cfg.tiny else "cpu"
    if cfg.tiny:  # a smoke test of the benchmark itself: every code path once, small enough for 2 CPU cores
        # (compiled diffusers rows only when asked for explicitly: tracing them doubles the smoke test's time)
        default_modes = BenchConfig.__dataclass_fields__["diffusers_compile"].default
        cfg = dataclasses.replace(cfg, batch_sizes="1,4", repeats=2, e2e_images=2, row_batch=8, row_draws=2, row_buckets="4",
                                  diffusers_compile="" if cfg.diffusers_compile == default_modes else cfg.diffusers_compile)
    res: dict = {"config": asdict(cfg), "device": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
                 "torch": torch.__version__}
    peak = matmul_peak(device, n=8192 if device == "cuda" else 512)
    res["bf16_matmul_tflops"] = peak / 1e12
    on_gpu = device == "cuda"  # on a CPU a bf16 matmul is no ceiling for fp32 work: no percentages there
    log(f"bf16 matmul peak: {peak / 1e12:.1f} TFLOP/s" if on_gpu else f"CPU: bf16 matmul {peak / 1e9:.1f} GFLOP/s (no peak percentages on a CPU)")

    dm = _random_diffusers_dit(cfg.model, cfg.tiny).to(device)
    config, sd = from_diffusers_state_dict({k: v.cpu() for k, v in dm.state_dict().items()}, dict(dm.config))
    eager = DiT(config)
    eager.load_state_dict(sd)
    eager = eager.eval().to(device)
    dm_bf16 = copy.deepcopy(dm).to(torch.bfloat16)
    eager_bf16 = copy.deepcopy(eager).to(torch.bfloat16)
    fasts = {}  # kernels -> (fast-path model, handle), all on the same weights
    for kern in kernel_names:
        m = copy.deepcopy(eager)
        fasts[kern] = (m, apply_fast_path(m, FastPathConfig(compile=device == "cuda", kernels=kern,
                                                              fp8_fast_accum=cfg.fp8_fast_accum and kern == "fp8",
                                                              fp8_mlp=cfg.fp8_mlp if kern == "fp8" else "rows")))
    main_kernels = "fused" if "fused" in fasts else kernel_names[0]  # the variant per-row depths and DDPM-250 e2e run on
    fast, handle = fasts[main_kernels]
    K = config.depth
    flops_full = eager.flops()
    res["gflop_per_image"] = flops_full / 1e9

    # the strongest peer: the same diffusers transformer under torch.compile (on a CPU, the eager backend:
    # a smoke test of the code path, not a timing worth reading)
    compiled = {mode: torch.compile(dm_bf16, mode=mode if on_gpu else None, backend="inductor" if on_gpu else "eager")
                for mode in filter(None, cfg.diffusers_compile.split(","))}
    res["diffusers_compile_backend"] = "inductor" if on_gpu else "eager (CPU smoke test)"
    rows = []
    torch.backends.cuda.matmul.allow_tf32 = False
    for B in [int(b) for b in cfg.batch_sizes.split(",")]:
        g = torch.Generator(device=device).manual_seed(B)
        x = torch.randn(B, 4, config.input_size, config.input_size, device=device, generator=g)
        t = torch.randint(0, 1000, (B,), device=device, generator=g)
        y = torch.randint(0, 1000, (B,), device=device, generator=g)
        tf = t.float()
        with torch.no_grad():
            ref = dm(x, timestep=t, class_labels=y).sample.float()
            variants = {
                "floor: 4 GEMMs + SDPA per block": _floor(config, B, device),
                "floor fp8: 4 row-scaled fp8 GEMMs + bf16 SDPA per block": _floor(config, B, device, fp8=True),
                "diffusers bf16": lambda: dm_bf16(x.bfloat16(), timestep=t, class_labels=y).sample,
                **{f"diffusers bf16 + compile {mode}": (lambda c=c: c(x.bfloat16(), timestep=t, class_labels=y).sample)
                   for mode, c in compiled.items()},
                "eediff eager fp32": lambda: eager(x, tf, y),
                "eediff eager bf16": lambda: eager_bf16(x.bfloat16(), tf, y),
                **{fast_name(kern, cfg.fp8_fast_accum, cfg.fp8_mlp): (lambda m=m: m(x, tf, y)) for kern, (m, _) in fasts.items()},
            }
            for name, fn in variants.items():
                try:
                    out = fn()
                    err = None if name.startswith("floor") else ((out.float() - ref).norm() / ref.norm()).item()
                    r = time_fn(fn, device, warmup=3, repeats=cfg.repeats)
                except Exception as e:  # a variant that fails is reported, the others still run
                    rows.append({"batch": B, "variant": name, "error": f"{type(e).__name__}: {e}"[:300]})
                    log(f"B={B:3d} {name:18s} FAILED: {rows[-1]['error']}")
                    continue
                tfl = flops_full * B / r["median_s"] / 1e12
                pct = 100 * tfl * 1e12 / peak if on_gpu else None
                floor = next((q["ms"] for q in rows if q["batch"] == B and q["variant"].startswith("floor:")), None)
                rows.append({"batch": B, "variant": name, "ms": r["median_s"] * 1e3, "tflops": tfl, "pct_peak": pct,
                             "rel_err_vs_diffusers_fp32": err, "x_floor": r["median_s"] * 1e3 / floor if floor else None})
                rate = f"{tfl:7.1f} TFLOP/s ({pct:4.1f}% of peak)" if on_gpu else f"{tfl * 1e3:7.2f} GFLOP/s"
                log(f"B={B:3d} {name:40s} {r['median_s'] * 1e3:8.2f} ms  {rate}  " + ("" if err is None else f"rel.err {err:.1e}"))
    res["forward"] = rows
    if device == "cuda":
        res["fast_path_recompiles"] = _recompile_count()

    # exits: per-depth forward time of the fast path at the largest batch, and each schedule's ratio
    B = max(int(b) for b in cfg.batch_sizes.split(","))
    x = torch.randn(B, 4, config.input_size, config.input_size, device=device)
    tf = torch.full((B,), 500.0, device=device)
    y = torch.zeros(B, dtype=torch.long, device=device)
    scheds = [get_schedule(s) for s in cfg.schedules.split(",")]
    depths = sorted({k for s in scheds for k in s.blocks} | {K})
    ts = [s / 1000 for s in torch.linspace(0, 999, 250).round().tolist()]  # the DDPM-250 grid
    sched_rows, res["per_depth_ms"] = [], {}
    for kern, (m, _) in fasts.items():
        per_depth, variant = {}, fast_name(kern, cfg.fp8_fast_accum, cfg.fp8_mlp)
        with torch.no_grad():
            try:
                for k in depths:
                    per_depth[k] = time_fn(lambda: m(x, tf, y, active_blocks=k), device, warmup=3, repeats=cfg.repeats)["median_s"]
            except Exception as e:  # fall back to eager bf16 so the exit ratios are still measured
                variant = f"eediff eager bf16 ({fast_name(kern, cfg.fp8_fast_accum, cfg.fp8_mlp)} failed: {type(e).__name__}: {e})"[:300]
                log(variant)
                xb = x.bfloat16()
                for k in depths:
                    per_depth[k] = time_fn(lambda: eager_bf16(xb, tf, y, active_blocks=k), device, warmup=3, repeats=cfg.repeats)["median_s"]
        res["per_depth_ms"][variant] = {k: v * 1e3 for k, v in per_depth.items()}
        for s in scheds:
            ks = [s.active_blocks(u, K) for u in ts]
            time_ratio = sum(per_depth[k] for k in ks) / (len(ks) * per_depth[K])
            flop_ratio = sum(eager.flops(k) for k in ks) / (len(ks) * flops_full)
            sched_rows.append({"variant": variant, "schedule": s.name, "time_ratio": time_ratio, "flop_ratio": flop_ratio,
                               "time_over_flop": time_ratio / flop_ratio, "mean_ms": time_ratio * per_depth[K] * 1e3})
            log(f"{variant:34s} {s.name:8s} time ratio {time_ratio:.3f}  FLOP ratio {flop_ratio:.3f}  ({time_ratio / flop_ratio:.3f}x)")
    res["schedules"] = sched_rows

    if cfg.row_batch > 0:
        try:
            res["per_row"] = _per_row(cfg, fast, handle, eager, config, device, log)
        except Exception as e:
            res["per_row_error"] = f"{type(e).__name__}: {e}"[:300]
            log(f"per-row depths FAILED: {res['per_row_error']}")
    if not cfg.skip_e2e:
        try:
            res["end_to_end"] = _end_to_end(cfg, dm_bf16, compiled, fasts, main_kernels, device, log)
        except Exception as e:
            res["end_to_end_error"] = f"{type(e).__name__}: {e}"[:300]
            log(f"end to end FAILED: {res['end_to_end_error']}")
    if cfg.block_parts:
        try:
            res["block_parts"] = block_parts(config, max(int(b) for b in cfg.batch_sizes.split(",")), device, cfg.repeats, log)
        except Exception as e:
            res["block_parts_error"] = f"{type(e).__name__}: {e}"[:300]
            log(f"block parts FAILED: {res['block_parts_error']}")
    res["fast_path_stats"] = {fast_name(k, cfg.fp8_fast_accum, cfg.fp8_mlp): dict(h.stats) for k, (_, h) in fasts.items()}
    return res


def fast_name(kernels: str, fast_accum: bool = False, fp8_mlp: str = "rows") -> str:
    return ("eediff fast path" if kernels == "inductor" else f"eediff fast path, kernels={kernels}") + accum_tag(kernels, fast_accum, fp8_mlp)


def accum_tag(kernels: str, fast_accum: bool, fp8_mlp: str = "rows") -> str:
    """The rows' mark of the fp8 GEMMs' fast accumulation and of the fp8 MLP's fused epilogue (both apply to
    kernels="fp8" only)."""
    if kernels != "fp8":
        return ""
    return (", fast accumulation" if fast_accum else "") + (", MLP epilogue" if fp8_mlp == "epilogue" else "")


def _per_row(cfg, fast, handle, eager, config, device, log) -> dict:
    """A depth per row at one batch: time over full-depth time, against the rows' FLOP share (same run).

    (a) half the rows at full depth and half at 12 blocks, in shuffled order; (b) ``row_draws`` depth
    vectors drawn from D4-DiT at uniform random t (the mix a batch of requests at different steps, or a
    training batch, has). Each at every row bucket of the fast path; plus eager bf16 (exact rows, no
    compile, no graphs) as a reference. Output checked against eager fp32 on the same depths.
    """
    from .exits.schedule import get_schedule

    K, B = config.depth, cfg.row_batch
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, 4, config.input_size, config.input_size, generator=g).to(device)
    tf = (torch.rand(B, generator=g) * 999).to(device)
    y = torch.randint(0, 1000, (B,), generator=g).to(device)
    half = torch.tensor([K] * (B // 2) + [12] * (B - B // 2))[torch.randperm(B, generator=g)]
    d4 = get_schedule("D4-DiT")
    draws = [d4.active_blocks(torch.rand(B, generator=g, dtype=torch.float64), K) for _ in range(cfg.row_draws)]
    cases = [("half 28 / half 12", [half]), ("D4-DiT at uniform t", draws)]
    share = lambda d: sum(eager.flops(int(k)) for k in d) / (len(d) * eager.flops(K))  # noqa: E731
    eager_bf16 = copy.deepcopy(eager).to(torch.bfloat16)
    out: dict = {"batch": B, "rows": []}
    with torch.no_grad():
        ref = eager(x, tf, y, active_blocks=draws[0])
        full_fast = time_fn(lambda: fast(x, tf, y, active_blocks=K), device, warmup=3, repeats=cfg.repeats)["median_s"]
        full_eager = time_fn(lambda: eager_bf16(x.bfloat16(), tf, y), device, warmup=3, repeats=cfg.repeats)["median_s"]
        out["full_ms"] = {"fast path": full_fast * 1e3, "eager bf16": full_eager * 1e3}
        # what a block costs on half the rows (one depth, whole-forward graph): the part of a per-row time
        # that is the GEMMs' own efficiency at a smaller batch, not the per-row machinery
        h = B // 2
        half_fast = time_fn(lambda: fast(x[:h], tf[:h], y[:h], active_blocks=K), device, warmup=3, repeats=cfg.repeats)["median_s"]
        out["half_batch_full_depth_over_full"] = half_fast / full_fast
        log(f"per-row B={B}: full depth {full_fast * 1e3:.2f} ms (fast path), {full_eager * 1e3:.2f} ms (eager bf16); "
            f"B={h} full depth {half_fast * 1e3:.2f} ms = {half_fast / full_fast:.3f} of B={B}")
        variants = [(f"fast path, bucket {b}", int(b)) for b in cfg.row_buckets.split(",")] + [("eager bf16", None)]
        for name, bucket in variants:
            t0 = time.perf_counter()
            if bucket is not None:
                handle.config.row_bucket = bucket
                fn, full = (lambda d: fast(x, tf, y, active_blocks=d)), full_fast
                err = ((fn(draws[0]) - ref).norm() / ref.norm()).item()
            else:
                fn, full, err = (lambda d: eager_bf16(x.bfloat16(), tf, y, active_blocks=d)), full_eager, None
            for case, depths in cases:
                ratios = [time_fn(lambda: fn(d), device, warmup=3, repeats=cfg.repeats)["median_s"] / full for d in depths]
                shares = [share(d) for d in depths]
                over = [r / s for r, s in zip(ratios, shares)]
                row = {"variant": name, "case": case, "time_ratio": sum(ratios) / len(ratios), "flop_share": sum(shares) / len(shares),
                       "time_over_flop_mean": sum(over) / len(over), "time_over_flop_max": max(over), "draws": len(depths),
                       "rel_err_vs_eager_fp32": err}
                out["rows"].append(row)
                row["wall_s"] = time.perf_counter() - t0  # compilation and graph captures of new shapes included
                log(f"per-row {name:20s} {case:20s} time {row['time_ratio']:.3f} of full, FLOP share {row['flop_share']:.3f} "
                    f"-> {row['time_over_flop_mean']:.3f}x (max {row['time_over_flop_max']:.3f})" + ("" if err is None else f", rel.err {err:.1e}"))
    out["graphs"] = handle.graph_count()
    out["stats"] = dict(handle.stats)
    return out


def _recompile_count():
    try:
        from torch._dynamo.utils import counters

        return {k: sum(v.values()) for k, v in counters.items() if k in ("recompiles", "graph_break", "unique_graphs", "stats")}
    except Exception:  # counters are a private API; their absence must not fail the benchmark
        return None


def _floor(config, B: int, device: str, fp8: bool = False):
    """What a DiT forward cannot go below with these kernels: each block's four GEMMs (qkv, attention out,
    MLP in, MLP out) and its attention (SDPA), on preallocated tensors, x depth; nothing else (no norms,
    modulation, activations, residuals, embedding or head). ``fp8``: the GEMMs as ``torch._scaled_mm`` on e4m3
    operands with row-wise scales and bf16 output (what ``kernels='fp8'`` runs), attention in bf16.
    Written by hand: no library times this."""
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    D, H = config.hidden_size, config.num_heads
    N = (config.input_size // config.patch_size) ** 2
    M, F = B * N, int(D * config.mlp_ratio)
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dt, generator=g) * 0.02  # noqa: E731
    q = k = v = r(B, H, N, D // H).to(torch.bfloat16 if fp8 else dt)
    sdpa = torch.nn.functional.scaled_dot_product_attention
    if not fp8:
        x, h = r(M, D), r(M, F)
        w_qkv, w_o, w_1, w_2 = r(D, 3 * D), r(D, D), r(D, F), r(F, D)
        gemms = [lambda: x @ w_qkv, lambda: x @ w_o, lambda: x @ w_1, lambda: h @ w_2]
    else:
        from .kernels import _fp8_gemm, quantize_rows, quantize_weight

        (x8, sx), (h8, sh) = quantize_rows(r(M, D)), quantize_rows(r(M, F))
        ws = [quantize_weight(r(n, kk)) for n, kk in ((3 * D, D), (D, D), (F, D), (D, F))]  # (out, in)
        mm = lambda a, sa, w: _fp8_gemm(a, sa, w[0], w[1], None)  # noqa: E731
        gemms = [lambda: mm(x8, sx, ws[0]), lambda: mm(x8, sx, ws[1]), lambda: mm(x8, sx, ws[2]), lambda: mm(h8, sh, ws[3])]

    def fn():
        for _ in range(config.depth):
            for i, gemm in enumerate(gemms):
                y = gemm()
                if i == 0:
                    sdpa(q, k, v)
        return y

    return fn


def block_parts(config, B: int, device: str, repeats: int, log=print) -> dict:
    """Each part of one DiT block timed alone at batch ``B`` (bf16 on a GPU; fp32 on a CPU, a smoke test), and
    the block's sum under each kernel variant. The elementwise parts are compiled as the fast path compiles
    them (inductor: each part one or two fused kernels); the GEMMs are cuBLAS / cuBLASLt calls, the fp8 ones
    ``torch._scaled_mm`` with row-wise scales. The attention is timed on the strided q/k/v views of the qkv
    output that the block passes, once per SDPA backend."""
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from .kernels import _fp8_gemm, fp8_matmul, quantize_rows, quantize_weight
    from .models.layers import modulate
    from .triton_ops import act_quant, cudnn_attention, ln_modulate

    on_gpu = device == "cuda"
    dt = torch.bfloat16 if on_gpu else torch.float32
    D, H = config.hidden_size, config.num_heads
    N = (config.input_size // config.patch_size) ** 2
    M, Fh = B * N, int(D * config.mlp_ratio)
    g = torch.Generator(device=device).manual_seed(0)
    r = lambda *shape: torch.randn(*shape, device=device, dtype=dt, generator=g)  # noqa: E731
    x, o, c = r(B, N, D), r(B, N, D), r(B, D)
    mods = r(B, 6 * D) * 0.1
    sh, sc, gt = mods[:, :D], mods[:, D:2 * D], mods[:, 2 * D:3 * D]
    w = {n: r(a, b) * b**-0.5 for n, (a, b) in {"ada": (6 * D, D), "qkv": (3 * D, D), "proj": (D, D), "fc1": (Fh, D), "fc2": (D, Fh)}.items()}
    bias = {n: r(v.shape[0]) * 0.02 for n, v in w.items()}
    a, hid = r(B, N, D), r(M, Fh)
    qkv = F.linear(a, w["qkv"], bias["qkv"]).reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4)  # (3, B, H, N, d)
    comp = (lambda f: torch.compile(f, dynamic=False)) if on_gpu else (lambda f: f)
    ln = lambda v, eps=1e-6: F.layer_norm(v, (D,), eps=eps)  # noqa: E731
    ln_mod = comp(lambda v: modulate(ln(v), sh, sc))
    res_ln_mod = comp(lambda v, u: (lambda h: (h, modulate(ln(h), sh, sc)))(v + gt.unsqueeze(1) * u))
    res = comp(lambda v, u: v + gt.unsqueeze(1) * u)
    gelu = comp(lambda v: F.gelu(v, approximate="tanh"))
    q8 = {n: quantize_weight(v) for n, v in w.items()} if on_gpu else None
    ln_mod_q = comp(lambda v: quantize_rows(modulate(ln(v), sh, sc).reshape(M, D)))
    res_ln_mod_q = comp(lambda v, u: (lambda h: (h, quantize_rows(modulate(ln(h), sh, sc).reshape(M, D))))(v + gt.unsqueeze(1) * u))
    gelu_q = comp(lambda v: quantize_rows(F.gelu(v, approximate="tanh")))
    quant = comp(lambda v: quantize_rows(v.reshape(M, D)))
    xq, hq = quantize_rows(a.reshape(M, D).to(torch.bfloat16)), quantize_rows(hid.to(torch.bfloat16))
    mm8 = lambda qa, n: _fp8_gemm(qa[0], qa[1], *q8[n], bias[n])  # noqa: E731
    parts = {
        "adaLN: SiLU + Linear (B x 6D)": lambda: F.linear(F.silu(c), w["ada"], bias["ada"]),
        "LayerNorm + modulate": lambda: ln_mod(x),
        "qkv GEMM (+bias)": lambda: F.linear(a, w["qkv"], bias["qkv"]),
        **{f"attention: SDPA {be.name.lower()}": (lambda be=be: _sdpa_with(sdpa_kernel, be, qkv))
           for be in (SDPBackend.FLASH_ATTENTION, SDPBackend.CUDNN_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH)},
        "proj GEMM (+bias)": lambda: F.linear(a, w["proj"], bias["proj"]),
        "gate + residual + LayerNorm + modulate": lambda: res_ln_mod(x, o),
        "fc1 GEMM (+bias)": lambda: F.linear(a, w["fc1"], bias["fc1"]),
        "GELU (tanh)": lambda: gelu(hid),
        "fc2 GEMM (+bias)": lambda: F.linear(hid, w["fc2"], bias["fc2"]),
        "gate + residual": lambda: res(x, o),
    }
    if on_gpu:  # CUDA only: on a CPU _addmm_activation's GELU is the exact one, and fp8 GEMMs are emulated
        parts["fc1 GEMM + bias + GELU epilogue (cuBLASLt)"] = lambda: torch._addmm_activation(
            bias["fc1"], a.reshape(M, D), w["fc1"].t(), use_gelu=True)
        parts |= {
            "fp8: LayerNorm + modulate + row quantise": lambda: ln_mod_q(x),
            "fp8: qkv GEMM": lambda: mm8(xq, "qkv"),
            "fp8: attention output row quantise": lambda: quant(o),
            "fp8: proj GEMM": lambda: mm8(xq, "proj"),
            "fp8: gate + residual + LayerNorm + modulate + row quantise": lambda: res_ln_mod_q(x, o),
            "fp8: fc1 GEMM": lambda: mm8(xq, "fc1"),
            "fp8: fc1 GEMM, fast accumulation": lambda: _fp8_gemm(xq[0], xq[1], *q8["fc1"], bias["fc1"], fast_accum=True),
            "fp8: GELU + row quantise": lambda: gelu_q(hid),
            "fp8: fc2 GEMM": lambda: mm8(hq, "fc2"),
            "fp8: qkv GEMM, quantise included (fp8_matmul)": lambda: fp8_matmul(a, *q8["qkv"], bias["qkv"]),
            # the row kernels kernels='fused' / 'fp8' run (triton_ops.py)
            "triton: LayerNorm + modulate": lambda: ln_modulate(x, sh, sc, 1e-6, None, None, False),
            "triton: gate + residual + LayerNorm + modulate": lambda: ln_modulate(x, sh, sc, 1e-6, o, gt, False),
            "triton fp8: LayerNorm + modulate + row quantise": lambda: ln_modulate(x, sh, sc, 1e-6, None, None, True),
            "triton fp8: gate + residual + LayerNorm + modulate + row quantise": lambda: ln_modulate(x, sh, sc, 1e-6, o, gt, True),
            "triton fp8: GELU + row quantise": lambda: act_quant(hid, True),
            "triton fp8: attention output row quantise": lambda: act_quant(o.reshape(M, D), False),
            "attention: cuDNN (aten op, as the fused block calls it)": lambda: cudnn_attention(qkv[0], qkv[1], qkv[2]),
        }
    inner = 10  # calls per timed sample: one part takes tens of microseconds
    ms: dict = {}
    with torch.no_grad():
        for name, fn in parts.items():
            try:
                fn()
                ms[name] = time_fn(lambda: [fn() for _ in range(inner)], device, warmup=2, repeats=repeats)["median_s"] * 1e3 / inner
            except Exception as e:  # an SDPA backend this GPU or these shapes do not support
                ms[name] = None
                log(f"block part {name}: unavailable ({type(e).__name__}: {str(e)[:120]})")
    attn = ms.get("attention: SDPA flash_attention") or ms.get("attention: SDPA math")
    common = ["adaLN: SiLU + Linear (B x 6D)", "gate + residual"]
    sums = {
        "inductor": common + ["LayerNorm + modulate", "qkv GEMM (+bias)", "proj GEMM (+bias)", "gate + residual + LayerNorm + modulate",
                              "fc1 GEMM (+bias)", "GELU (tanh)", "fc2 GEMM (+bias)"],
        "fused": common + ["LayerNorm + modulate", "qkv GEMM (+bias)", "proj GEMM (+bias)", "gate + residual + LayerNorm + modulate",
                           "fc1 GEMM + bias + GELU epilogue (cuBLASLt)", "fc2 GEMM (+bias)"],
        "fused (triton row kernels, cuDNN attention)": common + ["triton: LayerNorm + modulate",
                           "qkv GEMM (+bias)", "proj GEMM (+bias)", "triton: gate + residual + LayerNorm + modulate",
                           "fc1 GEMM + bias + GELU epilogue (cuBLASLt)", "fc2 GEMM (+bias)", "attention: cuDNN (aten op, as the fused block calls it)"],
        "fp8 (triton row kernels, cuDNN attention)": common + ["triton fp8: LayerNorm + modulate + row quantise",
                         "fp8: qkv GEMM", "triton fp8: attention output row quantise", "fp8: proj GEMM",
                         "triton fp8: gate + residual + LayerNorm + modulate + row quantise", "fp8: fc1 GEMM", "triton fp8: GELU + row quantise",
                         "fp8: fc2 GEMM", "attention: cuDNN (aten op, as the fused block calls it)"],
        "fp8 inductor": common + ["fp8: LayerNorm + modulate + row quantise", "fp8: qkv GEMM", "fp8: attention output row quantise", "fp8: proj GEMM",
                         "fp8: gate + residual + LayerNorm + modulate + row quantise", "fp8: fc1 GEMM", "fp8: GELU + row quantise", "fp8: fc2 GEMM"],
    }
    totals = {}
    for kern, names in sums.items():
        if attn is not None and all(ms.get(n) is not None for n in names):
            per_block = sum(ms[n] for n in names) + (0 if any(n.startswith("attention") for n in names) else attn)
            totals[kern] = {"ms_per_block": per_block, "ms_x_depth": per_block * config.depth}
    for name, v in ms.items():
        log(f"block part {name:58s} " + ("unavailable" if v is None else f"{v * 1e3:8.1f} us  x{config.depth} = {v * config.depth:6.2f} ms"))
    for kern, t in totals.items():
        log(f"block sum, kernels={kern:9s} {t['ms_per_block'] * 1e3:8.1f} us  x{config.depth} = {t['ms_x_depth']:6.2f} ms")
    return {"batch": B, "depth": config.depth, "ms_per_block": ms, "sums": totals, "sum_parts": sums}


def _sdpa_with(sdpa_kernel, backend, qkv):
    with sdpa_kernel(backend):
        return torch.nn.functional.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])


def vae_decode_rows(vaes: dict, n: int, latent: tuple[int, int, int], device, repeats: int = 3) -> list[dict]:
    """The VAE decode alone, as end-to-end rows (sampler "—"): ``vaes`` maps a label to a VAE, each decodes the same
    ``n`` bf16 latents of shape ``latent`` (C, H, W), timed as the runs are (warm-up, median). Beside the runs it
    shows how much of an image's time is the decode, which no exit schedule or transformer kernel shortens."""
    z = torch.randn(n, *latent, generator=torch.Generator().manual_seed(0)).to(device=device, dtype=torch.bfloat16)
    rows = []
    with torch.no_grad():
        for label, vae in vaes.items():
            r = time_fn(lambda: vae.decode(z).sample, device, warmup=1, repeats=repeats)
            rows.append({"variant": label, "sampler": "—", "schedule": "—", "images": n, "cfg": None, "seconds": r["median_s"],
                         "images_per_s": n / r["median_s"], "host_syncs": None, "host_sync_sites": None})
    return rows


def _end_to_end(cfg, dm_bf16, compiled, fasts, kd, device, log):
    """Images/s of whole sampling runs (CFG doubles the model batch, SD-config VAE decode), every variant in the
    same run. The compiled-diffusers pipelines get the same compiled channels-last bf16 VAE as eediff (what a
    diffusers user who compiles gets), the eager one the eager VAE. ``host_syncs``: the synchronising calls
    CUDA's sync debug mode reports during one eediff run (the images' copy to the host at the end included)."""
    import warnings

    from diffusers import DiTPipeline

    from .diffusion.process import DiscreteVP
    from .diffusion.sampling import SamplerConfig, make_scheduler
    from .fast import apply_fast_vae
    from .generate import generate

    vae = _sd_vae(cfg.tiny).to(device).to(torch.bfloat16)
    vae_fast = copy.deepcopy(vae)
    apply_fast_vae(vae_fast, compile=device == "cuda")
    n = cfg.e2e_images
    out = []
    labels = list(range(n))
    runs = [("diffusers DiTPipeline bf16", None, "dpm-solver++", 25, None)]
    runs += [(f"diffusers DiTPipeline bf16 + compile {mode}", None, "dpm-solver++", 25, None) for mode in compiled]
    tag = {k: f"eediff fast, kernels={k}" + accum_tag(k, cfg.fp8_fast_accum, cfg.fp8_mlp) for k in fasts}
    for kern in fasts:
        runs += [(tag[kern], kern, "dpm-solver++", 25, None), (tag[kern], kern, "dpm-solver++", 25, "D4-DiT")]
    runs += [(tag[kd], kd, "ddpm", 250, None), (tag[kd], kd, "ddpm", 250, "D4-DiT")]
    for name, kern, sampler, steps, sched in runs:
        sc = SamplerConfig(sampler, steps)
        if kern is None:
            tr = compiled[name.rsplit(" ", 1)[1]] if "compile" in name else dm_bf16
            pipe = DiTPipeline(transformer=tr, vae=vae_fast if "compile" in name else vae,
                               scheduler=make_scheduler(sc, DiscreteVP(), learned_sigma=True))
            pipe.set_progress_bar_config(disable=True)
            fn = lambda: pipe(class_labels=labels, guidance_scale=cfg.e2e_cfg, num_inference_steps=steps, output_type="pt")
        else:
            fn = lambda: generate(fasts[kern][0], DiscreteVP(), sc, n=n, batch_size=n, schedule=sched, cfg_scale=cfg.e2e_cfg,
                                  vae=vae_fast, device=device, progress=False)
        with torch.no_grad():
            r = time_fn(fn, device, warmup=1, repeats=3)
            syncs, where = None, None
            if kern is not None and device == "cuda":
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    torch.cuda.set_sync_debug_mode("warn")
                    try:
                        fn()
                    finally:
                        torch.cuda.set_sync_debug_mode("default")
                found = [w for w in caught if "synchroniz" in str(w.message)]
                syncs = len(found)
                where = sorted({f"{w.filename.rsplit('/', 2)[-1]}:{w.lineno}" for w in found})[:8]
        ips = n / r["median_s"]
        out.append({"variant": name, "sampler": f"{sampler}-{steps}", "schedule": sched or "full", "images": n,
                    "cfg": cfg.e2e_cfg, "seconds": r["median_s"], "images_per_s": ips, "host_syncs": syncs, "host_sync_sites": where})
        log(f"e2e {name:44s} {sampler}-{steps:<4d} {sched or 'full':7s} {ips:7.2f} images/s" + ("" if syncs is None else f"  ({syncs} host syncs: {', '.join(where)})"))
    latent = (dm_bf16.config.in_channels, dm_bf16.config.sample_size, dm_bf16.config.sample_size)
    for r in vae_decode_rows({"VAE decode alone, bf16 eager": vae, "VAE decode alone, bf16 compiled channels-last": vae_fast},
                             n, latent, device):
        out.append(r)
        log(f"e2e {r['variant']:44s} {'':9s} {'':7s} {r['images_per_s']:7.2f} images/s")
    return out


def write_results(res: dict, path: str) -> None:
    from .io import write_atomic

    write_atomic(path, json.dumps(res, indent=2))
    md = path.rsplit(".", 1)[0] + ".md"
    lines = [f"# DiT benchmark ({res['device']}, torch {res['torch']})", "", f"Command: `{res.get('command', '')}`", "",
             f"bf16 matmul peak (measured): {res['bf16_matmul_tflops']:.1f} TFLOP/s; model: {res['config']['model']}, "
             f"{res['gflop_per_image']:.1f} GFLOP per image forward", "",
             "| batch | variant | ms / forward | × floor | TFLOP/s | % of peak | rel. err vs diffusers fp32 |", "|---|---|---|---|---|---|---|"]
    for r in res["forward"]:
        if "error" in r:
            lines.append(f"| {r['batch']} | {r['variant']} | failed: {r['error'][:80]} | | | | |")
            continue
        pct = "—" if r["pct_peak"] is None else f"{r['pct_peak']:.1f}"
        err = "—" if r.get("rel_err_vs_diffusers_fp32") is None else f"{r['rel_err_vs_diffusers_fp32']:.1e}"
        xf = "—" if r.get("x_floor") is None else f"{r['x_floor']:.2f}"
        lines.append(f"| {r['batch']} | {r['variant']} | {r['ms']:.2f} | {xf} | {r['tflops']:.1f} | {pct} | {err} |")
    lines += ["", "| variant | schedule | time ratio | FLOP ratio | time / FLOP ratio | mean ms / forward (DDPM-250 grid) |", "|---|---|---|---|---|---|"]
    for r in res["schedules"]:
        lines.append(f"| {r.get('variant', res.get('exits_variant', 'eediff fast path'))} | {r['schedule']} | {r['time_ratio']:.3f} | "
                     f"{r['flop_ratio']:.3f} | {r['time_over_flop']:.3f} | {r['mean_ms']:.2f} |" if "mean_ms" in r else
                     f"| {res.get('exits_variant', '')} | {r['schedule']} | {r['time_ratio']:.3f} | {r['flop_ratio']:.3f} | {r['time_over_flop']:.3f} | — |")
    if "block_parts" in res:
        bp = res["block_parts"]
        lines += ["", f"One block's parts timed alone at batch {bp['batch']} (each part's own kernels; the sums add one attention "
                  "(flash, unless the sum names its own) and are what the block would cost with no gaps between kernels)", "",
                  f"| part | µs per block | × {bp['depth']} blocks, ms |", "|---|---|---|"]
        for name, v in bp["ms_per_block"].items():
            lines.append(f"| {name} | " + ("unavailable | |" if v is None else f"{v * 1e3:.1f} | {v * bp['depth']:.2f} |"))
        for kern, t in bp["sums"].items():
            lines.append(f"| **sum, kernels={kern}** | {t['ms_per_block'] * 1e3:.1f} | {t['ms_x_depth']:.2f} |")
    if "per_row" in res:
        pr = res["per_row"]
        lines += ["", f"Per-row depths at batch {pr['batch']} (full depth: " + ", ".join(f"{k} {v:.2f} ms" for k, v in pr["full_ms"].items())
                  + f"; {pr['graphs']} CUDA graphs, stats {pr['stats']})", "",
                  "| variant | depths | time / full | FLOP share | time / FLOP share (mean, max) |", "|---|---|---|---|---|"]
        for r in pr["rows"]:
            lines.append(f"| {r['variant']} | {r['case']} ({r['draws']} draws) | {r['time_ratio']:.3f} | {r['flop_share']:.3f} | "
                         f"{r['time_over_flop_mean']:.3f}, {r['time_over_flop_max']:.3f} |")
    if "end_to_end" in res:
        lines += ["", "| end to end | sampler | schedule | images/s | host syncs in one run |", "|---|---|---|---|---|"]
        for r in res["end_to_end"]:
            hs = "—" if r.get("host_syncs") is None else str(r["host_syncs"])
            lines.append(f"| {r['variant']} | {r['sampler']} | {r['schedule']} | {r['images_per_s']:.2f} | {hs} |")
    write_atomic(md, "\n".join(lines) + "\n")
