#!/usr/bin/env python3
"""How many search images does `eediff search` need? The schedule found from small batches, judged on a large one.

For every search batch size ``n`` in ``--ns`` and every batch seed in ``--seeds``, the proxy table is measured
as ``eediff search`` measures it (``-n n --seed seed``; batch seeds far apart, so the batches share no image),
and the exact search stops at the compute saving of ``--saving-of``. Every schedule found is then scored on
a held-out table of ``--ref-n`` other images (seed ``--ref-seed``), with the schedule the held-out table itself
finds and the ``--saving-of`` preset beside them: a batch size is large enough when the schedules it finds
score on the held-out images about as well as the held-out table's own choice. CPU-sized; no sampling with
the schedules (that is what ``--confirm`` / ``search_eval.py`` do).

    python benchmarks/search_stability.py --model dit-fmnist --saving-of D6-DiT --ns 16,32,64,128 --seeds 0,100000 \
        --ref-n 128 --ref-seed 500000 --out results/search_stability/dit_d6.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="dit-fmnist")
    ap.add_argument("--saving-of", default="D6-DiT", help="the preset whose compute saving every search stops at")
    ap.add_argument("--sampler", default="dpm-solver++")
    ap.add_argument("--steps", type=int, default=25)
    ap.add_argument("--ns", default="16,32,64,128", help="search batch sizes")
    ap.add_argument("--seeds", default="0,100000", help="first seed of each search batch")
    ap.add_argument("--ref-n", type=int, default=128, help="held-out images the found schedules are scored on")
    ap.add_argument("--ref-seed", type=int, default=500000)
    ap.add_argument("--intervals", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)

    import torch

    from eediff.diffusion.sampling import SamplerConfig
    from eediff.exits.schedule import get_schedule
    from eediff.exits.search import equal_boundaries, measure_proxy, pareto_path
    from eediff.io import write_atomic
    from eediff.zoo import resolve_model

    torch.manual_seed(0)
    loaded = resolve_model(a.model)
    model, process = loaded.model.eval(), loaded.process
    sampler = SamplerConfig(a.sampler, a.steps)
    boundaries = equal_boundaries(a.intervals)
    preset = get_schedule(a.saving_of).check(model.num_exit_blocks)

    def table(n, seed):
        t0 = time.perf_counter()
        tab = measure_proxy(model, process, sampler, n=n, batch_size=min(n, a.batch_size), seed=seed)
        return tab, time.perf_counter() - t0

    ref, ref_s = table(a.ref_n, a.ref_seed)
    target = ref.compute_saving(preset)
    own = pareto_path(ref, boundaries, stop_saving=target)[-1]
    best = ref.proxy(own.schedule(boundaries))
    res = {"command": "python " + " ".join(sys.argv), "model": a.model, "sampler": f"{a.sampler}-{a.steps}", "saving_of": a.saving_of,
           "target_saving": target, "intervals": a.intervals, "device": "cpu", "torch": torch.__version__,
           "held_out": {"n": a.ref_n, "seed": a.ref_seed, "seconds": round(ref_s, 1), "own_schedule": list(own.blocks),
                        "own_proxy": best, "own_saving": own.compute_saving, "preset_proxy": ref.proxy(preset)},
           "rows": []}
    print(f"held out ({a.ref_n} images): own {','.join(map(str, own.blocks))} proxy {best:.4f}; {a.saving_of} {ref.proxy(preset):.4f}",
          flush=True)
    for n in [int(v) for v in a.ns.split(",")]:
        for seed in [int(v) for v in a.seeds.split(",")]:
            tab, secs = table(n, seed)
            found = pareto_path(tab, boundaries, stop_saving=tab.compute_saving(preset))[-1]
            held = ref.proxy(found.schedule(boundaries))
            row = {"n": n, "seed": seed, "schedule": list(found.blocks), "compute_saving": found.compute_saving,
                   "proxy_own_batch": found.proxy, "proxy_held_out": held, "excess_over_best": held / best - 1,
                   "seconds": round(secs, 1)}
            res["rows"].append(row)
            print(f"n {n:4d} seed {seed:6d}: {','.join(map(str, found.blocks)):32s} saving {100 * found.compute_saving:.1f}%  "
                  f"held-out proxy {held:.4f} (+{100 * row['excess_over_best']:.1f}% over the best)  {secs:.0f} s", flush=True)
            write_atomic(a.out, json.dumps(res, indent=1) + "\n")
    write_atomic(a.out, json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
