"""`eediff search`: an exit schedule found for one model and one sampler, instead of a hand-written preset.

**Proxy.** A schedule's harm is estimated without sampling with it. A fixed batch of seeds (``n`` images,
image i from seed ``seed + i``, label ``i % classes``) is sampled at full depth, and every network input
``x_s`` of every step s is recorded with the full-depth prediction ``eps_full(x_s)``. On those very states
the network is run again at every depth k (``min_depth <= k < K``; one pass per state, the head read after
each block, ``Denoiser.at_depths``: K blocks instead of K^2 / 2, each depth's prediction bit for bit what a
fixed depth k gives) and the mean squared difference

    e[s, k] = mean over images and elements of (eps_k(x_s, t_s) - eps_full(x_s, t_s))^2

is stored (``e[s, K] = 0``). A schedule runs depth ``k(t_s)`` at step s, so its proxy is

    proxy = sum_s w_s * e[s, k(t_s)].

Three weights ``w_s``, which say how much an epsilon error at step s reaches the sample (``weighting``):

- ``step`` (the default): ``w_s = b_s^2``, the sampler's own coefficient on eps. The first-order (DDIM)
  update from (alpha_s, sigma_s) to the next step's (alpha', sigma') is ``x' = alpha' x0_hat + sigma' eps_hat``
  with ``x0_hat = (x - sigma_s eps_hat) / alpha_s``, so ``b_s = sigma' - alpha' sigma_s / alpha_s`` (after the
  last step the sampler lands on the data: alpha' = 1, sigma' = 0). DPM-Solver++ adds a second-order
  correction to the same leading term; Euler–Maruyama's coefficient is 2 b_s (a constant factor, which no
  ranking depends on). The proxy is then the variance that independent errors add to the states, to first
  order: an error counts little where the sampler takes small steps in sigma/alpha and much where it takes
  large ones. What this leaves out is the transport of a state error from step s to the sample; for Gaussian
  data of scale sigma_d that multiplies it by sigma_d / sqrt(alpha^2 sigma_d^2 + sigma^2), between sigma_d
  and 1 along the whole trajectory, a factor of a few at most. Free (no model evaluation).
- ``propagated``: ``w_s`` is measured instead: the batch is sampled again at full depth with an eps error of
  RMS ``probe`` (0.1, Gaussian, per image from its seed) added at step s only, and ``w_s`` is the mean squared
  change of the final (clipped) sample per unit of squared error. This includes the transport, multistep
  history, clipping and the SDE's noise (same generators), exactly for the sampler used; it costs one
  sampling run per step (steps^2 evaluations: fine for 25 steps, heavy for 1000).
- ``uniform``: ``w_s = 1``, the bare epsilon error; kept for comparison.

All three measure how far a truncated model moves *each sample* from its full-depth self; FID judges the
distribution, which forgives a change of sample near the noise more than these weights do.
``benchmarks/search_eval.py`` reports the rank correlation of each with FID.

Why this is a good proxy: the states are the ones the sampler really visits (not training noise levels),
the error is measured against the model's own full-depth prediction (what an exit gives up, not what the
model gets wrong anyway), and e[s, k] is computed once per (step, depth), so every schedule, searched or
preset, is scored by a table lookup. It is first order: it ignores that a truncated trajectory drifts away
from the recorded states, which is why the search can confirm its candidates by FID/FD (below).

**After fine-tuning: ``--adapted``.** The table above is zero-shot: it says how far each truncation is from
full depth *before* any fine-tune, and a fine-tune then recovers some truncations far better than others.
Measured on the converged Fashion-MNIST U-ViT (classifier FD of 5,000 images, DPM-Solver++ 25, after the same
5,000-step fine-tune): the zero-shot search's ``6,6,5,5,1,...`` (one decoder block over 60% of t) reaches
1.46 where D4-U-ViT's gradual ``5,4,2,2,1`` reaches 0.90, though zero-shot the order was the reverse (proxy
0.76 vs 0.87). ``--adapted A`` measures the same errors on ``A``, a copy of the model fine-tuned once at
every depth for every t (``eediff finetune --schedule full --depth-sampling uniform``), along the base
model's trajectories and against the base model's full-depth prediction: ``e[s, k]`` is then what depth k
still costs at step s once the weights have adapted to running k blocks there (and ``e[s, K]`` what
adapting cost full depth). One such fine-tune serves every target saving and sampler. The weights are
shared across depths, so this is an estimate of what a dedicated fine-tune of one schedule reaches, not that
number; with ``--max-fid-ratio`` / ``--confirm`` the candidates are sampled on ``A`` (full depth on the
base model).

**Search.** The t axis is cut into ``intervals`` equal intervals (the presets' grid: [0, 0.1), [0.1, 0.2),
..., closed on the left, the last one containing 1). The proxy and the FLOPs of a schedule are sums over
the intervals, so the best schedule at every compute can be found exactly (``pareto_path``, ``--method
exact``, the default): a dynamic programme over the intervals keeps, for each depth the last interval
took, the (FLOPs, proxy) pairs no other pair beats, and its result is the Pareto frontier, every schedule
that has the lowest proxy of all that save at least as much, under the same constraints. On the converged
Fashion-MNIST U-ViT (64 images) the frontier's schedule at D4's compute saving has proxy 0.761 where D4 has
0.865 and the greedy path's schedule, which overshoots to 26% in one move, 0.789.
``--method greedy`` (``greedy_path``): starting from full depth everywhere, each greedy step
lowers the depth of one interval, choosing the interval and the new depth with the lowest increase in proxy
per FLOP saved. A move may remove several blocks at once: an interval's proxy need not grow steadily as
blocks go (a DiT truncated after 16 blocks can be closer to its full output than one truncated after 18),
and with one block at a time the greedy would stop in front of such a bump. Taking the cheapest ratio over
all depths follows the lower convex hull of every interval's (FLOPs, proxy) curve: without the monotone
constraint every candidate on the path then has the lowest proxy of all schedules that save at least as
much (each minimises proxy + lambda * FLOPs for some lambda, the Lagrangian argument for separable costs);
the constraint couples neighbouring intervals, and there it is a good heuristic. FLOPs are the model's analytic count, ``model.flops(k)`` at every step the sampler evaluates, so the
compute saving of a candidate is ``1 - ExitSchedule.compute_fraction`` over the sampler's own timesteps, the
number ``generate`` reports. Constraints: depth never below ``min_depth`` (>= 1); with ``monotone`` the
depth does not increase as t grows (lowering interval i also lowers every interval on its noise side that
would otherwise be deeper: one move, costed as a whole, so the greedy never stalls behind the constraint);
with ``data_full`` the interval nearest the data keeps every block. Ties go to the interval nearest the
noise, then to the smaller move. The steps form the *greedy path*, from full depth to ``min_depth``
everywhere; intervals the sampler never visits cost nothing and save nothing, and keep the largest depth
monotonicity leaves them.

**Stopping.** ``target_saving``: the path stops at the first candidate whose compute saving reaches the
target; for that last move, of all the moves that reach the target, the one leaving the lowest proxy is taken
(the candidate before it is below the target). ``saving_of``: the target is the compute saving another
schedule (a preset) has over the same sampler steps, so that the searched schedule and the preset are
compared at the same cost. ``max_fid_ratio``: the whole path is built, then candidates are
*confirmed*: ``confirm_n`` held-out images (seeds ``seed + n`` onwards, disjoint from the search batch) are
generated with the candidate's schedule and with full depth, same seeds and labels, and their Fréchet
distance to the reference set is measured (``fd-classifier`` by default, Inception FID with an Inception
file); the ratio FD(candidate) / FD(full) is bisected along the path (about log2(path length) evaluations),
which assumes the distance grows along the path, and the deepest-saving confirmed candidate under the ratio
is returned. In target mode the confirmation is optional (``confirm``) and only reports the chosen
candidate's ratio. Everything is deterministic under the seed (per-image generators, a fixed label rule,
and ties broken by position).
"""

from __future__ import annotations

import bisect
import json
import math
import os
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import torch

from ..errors import EediffError
from ..io import write_json_atomic
from .schedule import ExitSchedule, ScheduleError, get_schedule


class SearchError(EediffError):
    """An unusable search setting or an unreachable target; one-line message."""


WEIGHTINGS = ("step", "propagated", "uniform")
DEFAULT_WEIGHTING = "step"
PROBE = 0.1  # RMS of the eps perturbation whose effect on the final sample gives the "propagated" weight


# ---- the proxy --------------------------------------------------------------------------------------------


def signal_noise(process, t_model: float) -> tuple[float, float]:
    """(alpha, sigma) of x_t = alpha x_0 + sigma eps at network time ``t_model``."""
    if hasattr(process, "alphas_cumprod"):  # discrete DDPM chain: the network takes the training index
        acp = process.alphas_cumprod()
        a = float(acp[min(max(int(round(t_model)), 0), len(acp) - 1)])
        return math.sqrt(a), math.sqrt(1 - a)
    return process.alpha_sigma(process.unit_time(t_model))


def eps_coefficients(process, t_models: Sequence[float]) -> list[float]:
    """b_s = sigma' - alpha' sigma_s / alpha_s: the first-order (DDIM) coefficient on eps of the update from
    step s to the next evaluated step (after the last one: the data, alpha' = 1, sigma' = 0)."""
    levels = [signal_noise(process, t) for t in t_models] + [(1.0, 0.0)]
    return [s1 - a1 * s0 / a0 for (a0, s0), (a1, s1) in zip(levels, levels[1:])]


@dataclass
class ProxyTable:
    """Per-step truncation errors along recorded full-depth trajectories (see the module docstring)."""

    t_model: list[float]  # network time of every model evaluation, in sampling order
    t_unit: list[float]  # the same as normalised training time (what schedules key on)
    coef: list[float]  # b_s, the sampler's first-order coefficient on eps at that step
    error: list[list[float]]  # error[s][k]: mean squared eps difference of depth k to full depth; nan below min_depth
    flops: list[float]  # model.flops(k), k = 0..K
    num_blocks: int
    n: int  # images the errors are averaged over
    seed: int
    weighting: str = DEFAULT_WEIGHTING
    gain: list[float] | None = None  # G_s^2, measured (weighting "propagated"); None when not measured

    def weights(self, weighting: str | None = None) -> list[float]:
        w = weighting or self.weighting
        if w not in WEIGHTINGS:
            raise SearchError(f"unknown weighting '{w}': use {', '.join(WEIGHTINGS)}")
        if w == "propagated":
            if self.gain is None:
                raise SearchError("this proxy table has no measured gains: measure it with weighting 'propagated'")
            return list(self.gain)
        return [b * b for b in self.coef] if w == "step" else [1.0] * len(self.coef)

    def depths(self, schedule: ExitSchedule) -> list[int]:
        """The depth ``schedule`` runs at every recorded step."""
        return [int(schedule.active_blocks(t, self.num_blocks)) for t in self.t_unit]

    def proxy(self, schedule: ExitSchedule, weighting: str | None = None) -> float:
        """sum_s w_s error[s][k(t_s)]; nan if the schedule goes below the depths that were measured."""
        schedule.check(self.num_blocks)
        return sum(w * self.error[s][k] for s, (w, k) in enumerate(zip(self.weights(weighting), self.depths(schedule))))

    def compute_saving(self, schedule: ExitSchedule) -> float:
        """1 - analytic FLOPs over the recorded steps relative to full depth (what ``generate`` reports)."""
        return 1 - schedule.compute_fraction(self.flops.__getitem__, self.num_blocks, self.t_unit)

    def to_dict(self) -> dict:
        """JSON-ready: the depths that were not measured (nan) as null."""
        d = asdict(self)
        d["error"] = [[None if math.isnan(v) else v for v in row] for row in self.error]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ProxyTable":
        return cls(**{**d, "error": [[math.nan if v is None else v for v in row] for row in d["error"]]})


def check_adapted(model, adapted) -> None:
    """One-line refusal for an ``adapted`` model that is not a copy of ``model``'s architecture."""
    mine = (model.arch, model.num_exit_blocks, model.in_channels, model.input_size, model.num_classes, model.learn_sigma)
    theirs = (adapted.arch, adapted.num_exit_blocks, adapted.in_channels, adapted.input_size, adapted.num_classes, adapted.learn_sigma)
    if mine != theirs:
        raise SearchError(f"--adapted is not the same architecture as --model ({theirs} vs {mine}: arch, blocks, channels, "
                          "size, classes, learned sigma): give a copy of --model fine-tuned with --depth-sampling uniform")


def probe_noise(shape, image_seeds: Sequence[int], step: int, device) -> torch.Tensor:
    """(len(image_seeds), *shape) standard normal probe for step ``step``, image i's drawn from its own seed
    (so a weight does not depend on the batching)."""
    gens = [torch.Generator().manual_seed((int(s) * 10007 + step) % 2**63) for s in image_seeds]
    return torch.stack([torch.randn(shape, generator=g) for g in gens]).to(device)


@torch.no_grad()
def measure_proxy(model, process, sampler, n: int = 256, batch_size: int = 256, seed: int = 0, cfg_scale: float = 1.0,
                  min_depth: int = 1, weighting: str = DEFAULT_WEIGHTING, device="cpu", autocast_dtype=None, probe: float = PROBE,
                  progress: bool = False, adapted=None) -> ProxyTable:
    """Sample ``n`` images at full depth, then measure every depth in [min_depth, K) on every recorded state;
    with ``weighting="propagated"`` also each step's measured gain (one more sampling run per step).

    ``adapted``: a copy of ``model`` trained at every depth (``eediff finetune --depth-sampling uniform``). The
    trajectories and the reference prediction stay ``model``'s full depth; the depths are run on ``adapted``,
    its full depth included (so ``error[s][K]`` is what adapting moved the full prediction, not 0)."""
    from tqdm.auto import tqdm

    from ..diffusion.sampling import Denoiser, sample_loop
    from ..generate import image_noise, resolve_labels
    from .policy import FullDepth

    K = model.num_exit_blocks
    if not 1 <= min_depth <= K:
        raise SearchError(f"min depth {min_depth} is outside [1, {K}] for this model")
    if weighting not in WEIGHTINGS:
        raise SearchError(f"unknown weighting '{weighting}': use {', '.join(WEIGHTINGS)}")
    device = torch.device(device)
    model = model.to(device).eval()
    C = model.in_channels
    full = Denoiser(model, process, FullDepth(K), cfg_scale=cfg_scale)
    if adapted is not None:
        check_adapted(model, adapted)
        adapted = adapted.to(device).eval()
    runner, top = (model, K) if adapted is None else (adapted, K + 1)
    truncated = list(range(min_depth, top))  # the depths measured, all in one pass per state (Denoiser.at_depths)
    at_depths = Denoiser(runner, process, None, cfg_scale=cfg_scale).at_depths
    labels = resolve_labels(range(n), model.num_classes, None)
    shape = (C, model.input_size, model.input_size)
    n_batches = math.ceil(n / batch_size)
    propagate = weighting == "propagated"
    per_batch = lambda steps: steps * (1 + len(truncated)) + (steps * steps if propagate else 0)  # noqa: E731 -- model evaluations
    bar = tqdm(total=n_batches * per_batch(sampler.steps), desc=f"proxy {sampler.sampler} x{sampler.steps}", unit="eval",
               disable=not progress, leave=False)
    tick = bar.update if progress else None
    amp = dict(device_type=device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)
    times: list[float] | None = None
    sums = gains = None
    for b in range(n_batches):
        idx = list(range(b * batch_size, min(n, (b + 1) * batch_size)))
        y = None if labels is None else labels[idx].to(device)
        states: list = []  # (network input, network time, full-depth eps) of every evaluation of this batch

        def recording(x, t, y_, states=states):
            out = full(x, t, y_)
            states.append((x.clone(), t, out[:, :C].float()))
            return out

        def run(fn):
            noise, gens = image_noise(shape, [seed + i for i in idx], device)
            with torch.autocast(**amp):
                x = sample_loop(fn, process, sampler, noise, y, gens, learned_sigma=model.learn_sigma, progress=tick)
            return x.float().clamp(-1, 1)

        x_full = run(recording)
        if times is None:
            times = [t for _, t, _ in states]
            sums = torch.zeros(len(times), K + 1, dtype=torch.float64)
            gains = torch.zeros(len(times), dtype=torch.float64)
            bar.total = n_batches * per_batch(len(times))
        elif [t for _, t, _ in states] != times:
            raise SearchError("the sampler visited different timesteps for different batches: use a deterministic timestep grid")
        for s, (x, t, eps) in enumerate(states):
            acc = torch.zeros(K + 1, dtype=torch.float64, device=device)  # on the device: one host read per state
            with torch.autocast(**amp):
                for k, out in at_depths(x, t, y, truncated):
                    acc[k] = ((out[:, :C].float() - eps) ** 2).flatten(1).mean(1).double().sum()
            sums[s] += acc.cpu()
            bar.update(len(truncated))
        if propagate:  # the final sample's response to an eps error of RMS `probe` at step s, the sampler run through
            for s, t_s in enumerate(times):
                delta = probe * probe_noise(shape, [seed + i for i in idx], s, device)

                def perturbed(x, t, y_, t_s=t_s, delta=delta):
                    out = full(x, t, y_)
                    if t != t_s:
                        return out
                    return torch.cat([out[:, :C] + delta.to(out.dtype), out[:, C:]], dim=1)

                gains[s] += ((run(perturbed) - x_full) ** 2).flatten(1).mean(1).double().sum().cpu() / probe**2
    bar.close()
    err = sums / n
    err[:, :min_depth] = float("nan")
    return ProxyTable(
        t_model=[float(t) for t in times], t_unit=[float(process.unit_time(t)) for t in times],
        coef=eps_coefficients(process, times), error=err.tolist(), flops=[float(model.flops(k)) for k in range(K + 1)],
        num_blocks=K, n=n, seed=seed, weighting=weighting, gain=(gains / n).tolist() if propagate else None,
    )


# ---- the search paths: exact (Pareto frontier) and greedy --------------------------------------------------


def equal_boundaries(intervals: int) -> tuple[float, ...]:
    """0 = b_0 < ... < b_n = 1, equal intervals (the presets' grid)."""
    if intervals < 1:
        raise SearchError(f"--intervals must be at least 1, got {intervals}")
    return tuple(i / intervals for i in range(intervals + 1))


def interval_of(t_unit: float, boundaries: Sequence[float]) -> int:
    """The interval holding ``t_unit``, with ``ExitSchedule``'s convention (closed on the left, 1 in the last)."""
    return bisect.bisect_right(list(boundaries[1:-1]), t_unit)


@dataclass
class Candidate:
    """One point of a search path."""

    blocks: tuple[int, ...]
    compute_saving: float
    proxy: float
    fid: float | None = None  # the confirmation's distance (FD of the metric used), when it was measured
    fid_ratio: float | None = None  # fid / the full-depth fid on the same held-out seeds
    realised_saving: float | None = None  # the compute saving generate() reported for the confirmation images

    def schedule(self, boundaries: Sequence[float], name: str = "searched") -> ExitSchedule:
        return ExitSchedule(name, tuple(boundaries), tuple(self.blocks), "found by eediff search")


def _interval_costs(table: ProxyTable, boundaries: Sequence[float], min_depth: int, weighting: str | None):
    """(members, cost, flop, total): the recorded steps in each interval, and per interval and depth its proxy
    contribution and FLOPs (inf proxy below ``min_depth``), and the full-depth FLOPs of all steps."""
    K = table.num_blocks
    if not 1 <= min_depth <= K:
        raise SearchError(f"min depth {min_depth} is outside [1, {K}] for this model")
    m = len(boundaries) - 1
    w = table.weights(weighting)
    members: list[list[int]] = [[] for _ in range(m)]
    for s, t in enumerate(table.t_unit):
        members[interval_of(t, boundaries)].append(s)
    cost = [[sum(w[s] * table.error[s][k] for s in members[i]) if k >= min_depth else math.inf for k in range(K + 1)] for i in range(m)]
    flop = [[len(members[i]) * table.flops[k] for k in range(K + 1)] for i in range(m)]
    return members, cost, flop, len(table.t_unit) * table.flops[K]


def pareto_path(table: ProxyTable, boundaries: Sequence[float], min_depth: int = 1, monotone: bool = True,
                data_full: bool = True, stop_saving: float | None = None, weighting: str | None = None) -> list[Candidate]:
    """The exact trade-off: full depth, then every schedule on the Pareto frontier of (compute saving, proxy),
    by increasing saving; each has the lowest proxy of all schedules (under the same constraints) that save at
    least as much. With ``stop_saving`` the path ends at the first one that reaches it.

    Why by hand: a dynamic programme over the intervals, data side first. The state after interval i is its
    depth (what monotonicity lets the next interval take) and the FLOPs so far; for every depth only the
    (FLOPs, proxy) pairs that no other pair beats in both are kept, so the search is exact and small (the
    FLOP sums take few distinct values: the blocks are alike). Unlike the greedy it does not jump past the
    schedules between two moves."""
    K, m = table.num_blocks, len(boundaries) - 1
    members, cost, flop, total = _interval_costs(table, boundaries, min_depth, weighting)
    states: dict[int, list] = {K: [(0.0, 0.0, ())]}  # depth bound -> frontier of (flops, proxy, blocks so far)
    for i in range(m):
        nxt: dict[int, list] = {}
        for bound, pts in states.items():
            if not members[i]:  # never visited: free, keeps the largest depth allowed
                options = [bound]
            elif data_full and i == 0:
                options = [K]
            else:
                options = range(min_depth, (bound if monotone else K) + 1)
            for d in options:
                nxt.setdefault(d if monotone else K, []).extend((f + flop[i][d], p + cost[i][d], blocks + (d,)) for f, p, blocks in pts)
        states = {b: _frontier(pts, total) for b, pts in nxt.items()}
    every = _frontier([v for pts in states.values() for v in pts], total)
    path = [Candidate(tuple(b), 1 - f / total, p) for f, p, b in reversed(every)]  # by increasing saving
    if path[0].blocks != (K,) * m:  # full depth first, as on the greedy path (it is the frontier's zero-saving end)
        path.insert(0, Candidate((K,) * m, 0.0, sum(cost[i][K] for i in range(m))))  # (0 but on an --adapted table)
    if stop_saving is not None:
        reach = next((j for j, c in enumerate(path) if c.compute_saving >= stop_saving - 1e-12), len(path) - 1)
        path = path[: reach + 1]
    return path


def _frontier(pts: list, total: float) -> list:
    """The (flops, proxy, blocks) of ``pts`` that no other beats (no more FLOPs and a lower proxy), by
    increasing FLOPs. FLOP sums equal up to rounding count as equal (the lowest proxy, then the deeper
    schedule, is kept)."""
    keep, best = [], math.inf
    for v in sorted(pts, key=lambda v: (round(v[0] / total, 12), v[1], tuple(-d for d in v[2]))):
        if v[1] < best:
            keep.append(v)
            best = v[1]
    return keep


def greedy_path(table: ProxyTable, boundaries: Sequence[float], min_depth: int = 1, monotone: bool = True,
                data_full: bool = True, stop_saving: float | None = None, weighting: str | None = None) -> list[Candidate]:
    """Full depth, then one move (one interval to a lower depth, see the module docstring) at a time, until the
    compute saving reaches ``stop_saving`` or no move saves anything. Candidate 0 is full depth."""
    K, m = table.num_blocks, len(boundaries) - 1
    members, cost, flop, total = _interval_costs(table, boundaries, min_depth, weighting)

    def candidate(blocks: list[int]) -> Candidate:
        return Candidate(tuple(blocks), 1 - sum(flop[i][k] for i, k in enumerate(blocks)) / total,
                         sum(cost[i][k] for i, k in enumerate(blocks)))

    blocks = [K] * m
    path = [candidate(blocks)]
    while stop_saving is None or path[-1].compute_saving < stop_saving:
        moves = []  # (proxy added per FLOP saved, -interval, new depths, resulting candidate)
        for i in range(m):
            if data_full and i == 0:
                continue
            for d in range(blocks[i] - 1, min_depth - 1, -1):
                new = list(blocks)
                new[i] = d
                if monotone:
                    new[i + 1:] = [min(k, d) for k in new[i + 1:]]
                saved = sum(flop[j][blocks[j]] - flop[j][new[j]] for j in range(m))
                if saved <= 0:
                    continue
                added = sum(cost[j][new[j]] - cost[j][blocks[j]] for j in range(m))
                moves.append((added / saved, -i, new, candidate(new)))
        if not moves:
            break
        best = min(moves, key=lambda mv: mv[:2])  # cheapest per FLOP; ties: nearest the noise, then fewest blocks off
        if stop_saving is not None and best[3].compute_saving >= stop_saving:
            # the last move: of those that reach the target, the one that leaves the lowest proxy
            best = min((mv for mv in moves if mv[3].compute_saving >= stop_saving), key=lambda mv: (mv[3].proxy, mv[3].compute_saving, mv[1]))
        blocks = best[2]
        path.append(best[3])
    return path


SEARCH_PATHS = {"exact": pareto_path, "greedy": greedy_path}  # --method


# ---- confirmation by FID / FD -----------------------------------------------------------------------------


@dataclass
class Confirmation:
    """Fréchet distance of a schedule's held-out images, paired with full depth on the same seeds."""

    model: object
    process: object
    sampler: object
    n: int
    seed: int  # image i of every confirmation set uses seed + i
    batch_size: int
    features: object
    reference: object  # FeatureStats of the reference set
    device: str = "cpu"
    autocast_dtype: object = None
    cfg_scale: float = 1.0
    progress: bool = False
    full_model: object = None  # with --adapted: full depth is judged on the base model, every other schedule on ``model``

    def __call__(self, schedule: ExitSchedule) -> tuple[float, float]:
        """(distance, realised compute saving)."""
        from ..eval import fid
        from ..generate import generate, to_uint8

        model = self.model
        if self.full_model is not None and schedule.is_full(model.num_exit_blocks):
            model = self.full_model
        res = generate(model, self.process, self.sampler, n=self.n, batch_size=self.batch_size, seed=self.seed,
                       schedule=schedule, cfg_scale=self.cfg_scale, device=self.device, autocast_dtype=self.autocast_dtype,
                       progress=self.progress)
        value = fid.fid_against_stats(to_uint8(res.images), self.reference, self.features, backend="eigh")
        return value, 1 - res.compute_fraction


def confirm(path: list[Candidate], index: int, judge: Callable, boundaries, log=None) -> Candidate:
    """Measure ``path[index]`` (and full depth, path[0], first) unless already measured."""
    for i in dict.fromkeys([0, index]):
        c = path[i]
        if c.fid is None:
            c.fid, c.realised_saving = judge(c.schedule(boundaries))
            c.fid_ratio = c.fid / path[0].fid if path[0].fid else float("nan")
            if log is not None:
                log(f"  confirmed candidate {i}: compute saving {100 * c.compute_saving:.1f}%, proxy {c.proxy:.4g}, "
                    f"FD {c.fid:.3f} (ratio {c.fid_ratio:.3f})")
    return path[index]


def bisect_ratio(path: list[Candidate], judge: Callable, boundaries, max_ratio: float, log=None) -> int:
    """The last candidate of the path whose confirmed ratio is <= ``max_ratio``, found by bisection."""
    lo, hi = 0, len(path) - 1
    confirm(path, 0, judge, boundaries, log)
    if hi == 0 or confirm(path, hi, judge, boundaries, log).fid_ratio <= max_ratio:
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if confirm(path, mid, judge, boundaries, log).fid_ratio <= max_ratio:
            lo = mid
        else:
            hi = mid
    return lo


# ---- the command ------------------------------------------------------------------------------------------


def reference_points(table: ProxyTable, extra: ExitSchedule | None = None) -> list[dict]:
    """The paper's presets (D1-D6) that fit this model, and ``extra`` (``--saving-of``) if it is not one of them,
    scored on the same table as the search path: what the plot and the report set the path against."""
    from .schedule import PRESETS

    schedules = [s for name, s in PRESETS.items() if name[:1] == "D" and name[1:2].isdigit()]
    if extra is not None and extra.name not in [s.name for s in schedules]:
        schedules.append(extra)
    out = []
    for s in schedules:
        try:
            s.check(table.num_blocks)
        except ScheduleError:
            continue  # a preset defined for another depth
        proxy = table.proxy(s)
        out.append({"name": s.name, "boundaries": list(s.boundaries), "blocks": list(s.blocks),
                    "compute_saving": table.compute_saving(s), "proxy": None if math.isnan(proxy) else proxy})
    return out


@dataclass
class SearchResult:
    table: ProxyTable
    boundaries: tuple[float, ...]
    path: list[Candidate]
    chosen: int
    settings: dict = field(default_factory=dict)
    references: list[dict] = field(default_factory=list)  # reference_points(): presets scored on the same table

    @property
    def best(self) -> Candidate:
        return self.path[self.chosen]

    def schedule(self, name: str = "searched") -> ExitSchedule:
        return self.best.schedule(self.boundaries, name)

    def report(self) -> dict:
        return {**self.settings, "boundaries": list(self.boundaries), "chosen": self.chosen,
                "schedule": json.loads(self.schedule(self.settings.get("name", "searched")).to_spec()),
                "path": [asdict(c) for c in self.path], "references": self.references, "proxy_table": self.table.to_dict()}


def check_config(cfg) -> None:
    """One-line refusals for a SearchConfig that cannot run (before any model is loaded)."""
    if sum(v is not None for v in (cfg.target_saving, cfg.max_fid_ratio, cfg.saving_of)) != 1:
        raise SearchError("give exactly one of --target-saving (e.g. 0.4), --max-fid-ratio (e.g. 1.02) or --saving-of (e.g. D4-DiT)")
    if cfg.saving_of is not None:
        get_schedule(cfg.saving_of)  # a one-line ScheduleError for a bad name or file, before any model is loaded
    if cfg.target_saving is not None and not 0 < cfg.target_saving < 1:
        raise SearchError(f"--target-saving {cfg.target_saving} must lie in (0, 1): the fraction of the FLOPs to save")
    if cfg.max_fid_ratio is not None and not (math.isfinite(cfg.max_fid_ratio) and cfg.max_fid_ratio >= 1):
        raise SearchError(f"--max-fid-ratio {cfg.max_fid_ratio} must be a finite number >= 1 (FD of the schedule / FD at full depth)")
    for flag, v in (("-n", cfg.n), ("--batch-size", cfg.batch_size), ("--intervals", cfg.intervals),
                    ("--steps", cfg.steps), ("--min-depth", cfg.min_depth)):
        if v < 1:
            raise SearchError(f"{flag} must be at least 1, got {v}")
    if cfg.confirm_n < 2:
        raise SearchError(f"--confirm-n must be at least 2 (a Fréchet distance needs a covariance), got {cfg.confirm_n}")
    if not (math.isfinite(cfg.cfg) and 0 <= cfg.cfg <= 100):
        raise SearchError(f"--cfg {cfg.cfg} is not a usable guidance scale: give a finite value in [0, 100] (1 = off)")
    if cfg.method not in SEARCH_PATHS:
        raise SearchError(f"--method '{cfg.method}' is unknown: use {' or '.join(SEARCH_PATHS)}")
    if cfg.weighting not in WEIGHTINGS:
        raise SearchError(f"--weighting '{cfg.weighting}' is unknown: use {', '.join(WEIGHTINGS)}")
    if cfg.metric not in ("auto", "fid", "fd-classifier"):
        raise SearchError(f"--metric '{cfg.metric}' is unknown: use auto, fid or fd-classifier")
    if not 0 <= cfg.seed < 2**63 - cfg.n - cfg.confirm_n:
        raise SearchError(f"--seed {cfg.seed} is out of range: use 0 <= seed < 2**63 - n - confirm_n")
    for flag, path, ext in (("--out", cfg.out, ".json"), ("--report", cfg.report, ".json"), ("--plot", cfg.plot, ".png")):
        if path is not None and (os.path.isdir(path) or not path.lower().endswith(ext)):
            raise SearchError(f"{flag} '{path}' must be a file name ending in {ext}")
    if cfg.report is not None and os.path.abspath(cfg.report) == os.path.abspath(cfg.out):
        raise SearchError("--report and --out are the same file: give the report another name")


def run_search(cfg, log=print) -> SearchResult:
    """`eediff search` with a SearchConfig: measure, build the path (exact or greedy), stop, confirm, write the files."""
    from ..config import EvalConfig, autocast_dtype, resolve_device
    from ..diffusion.sampling import SAMPLERS, SamplerConfig, _scheduler_class
    from ..zoo import resolve_model

    check_config(cfg)
    if cfg.sampler not in SAMPLERS:
        _scheduler_class(cfg.sampler)  # a one-line SamplerError for unknown names
    device = resolve_device(cfg.device)
    amp = autocast_dtype(cfg.precision, device)
    loaded = resolve_model(cfg.model)
    model, process = loaded.model.to(device).eval(), loaded.process
    K = model.num_exit_blocks
    grid = getattr(process, "num_train_timesteps", None) or getattr(process, "grid_size", None)
    if cfg.sampler != "euler-maruyama" and grid and cfg.steps > grid:
        raise SearchError(f"--steps {cfg.steps} is more than the {grid} training timesteps the sampler can use: give at most {grid}")
    if cfg.min_depth > K:
        raise SearchError(f"--min-depth {cfg.min_depth} is more than the model's {K} schedulable blocks")
    other = None
    if cfg.saving_of is not None:  # refused before the proxy is measured when it cannot run on this model
        other = get_schedule(cfg.saving_of)
        try:
            other.check(K, flag="--saving-of")
        except ScheduleError as e:
            raise SearchError(f"--saving-of '{cfg.saving_of}' does not fit this model: {e}") from None
    if cfg.min_depth == K or (cfg.data_full and cfg.intervals == 1):
        raise SearchError("nothing to search: every interval is held at full depth (lower --min-depth, or give more --intervals)")
    if loaded.tuned_for is not None:
        log(f"note: '{loaded.source}' was fine-tuned for {loaded.tuned_for.name}; the search measures against its full depth")
    adapted = None
    if cfg.adapted is not None:  # errors after adapting: the depths run on a copy trained at every depth
        adapted = resolve_model(cfg.adapted).model.to(device).eval()
        check_adapted(model, adapted)
    boundaries = equal_boundaries(cfg.intervals)
    sampler = SamplerConfig(cfg.sampler, cfg.steps)
    metric = cfg.metric if cfg.metric != "auto" else ("fid" if cfg.inception else "fd-classifier")
    judge = None
    if cfg.max_fid_ratio is not None or cfg.confirm:  # the feature network and reference first: a bad one fails before the work
        from ..eval.evaluate import feature_network, reference

        ecfg = EvalConfig(metric=metric, inception=cfg.inception, reference=cfg.reference, cache_dir=cfg.cache_dir)
        features = feature_network(ecfg, device)
        judge = Confirmation(model if adapted is None else adapted, process, sampler, n=cfg.confirm_n, seed=cfg.seed + cfg.n,
                             batch_size=cfg.batch_size, features=features, reference=reference(ecfg, features), device=device,
                             autocast_dtype=amp, cfg_scale=cfg.cfg, progress=cfg.progress, full_model=None if adapted is None else model)
    start = time.perf_counter()
    if not cfg.progress:  # (with progress bars the bars say it): what the minutes ahead are spent on
        log(f"search: {cfg.n} trajectories of {cfg.sampler} x{cfg.steps} at full depth, every depth read off one pass "
            f"per recorded state ({device})")
    table = measure_proxy(model, process, sampler, n=cfg.n, batch_size=cfg.batch_size, seed=cfg.seed, cfg_scale=cfg.cfg,
                          min_depth=cfg.min_depth, weighting=cfg.weighting, device=device, autocast_dtype=amp,
                          progress=cfg.progress, adapted=adapted)
    kw = dict(min_depth=cfg.min_depth, monotone=cfg.monotone, data_full=cfg.data_full)
    target, flag = cfg.target_saving, f"--target-saving {cfg.target_saving}"
    if other is not None:  # the other schedule's saving over the same sampler steps (the FLOPs generate reports)
        target = table.compute_saving(other)
        flag = f"--saving-of {other.name} (a saving of {target:.3f})"
        log(f"target: the compute saving of {other.name} on {cfg.sampler} x{cfg.steps}, {100 * target:.1f}%")
        if target <= 0:
            raise SearchError(f"--saving-of '{cfg.saving_of}' saves nothing on {cfg.sampler} x{cfg.steps}: give a schedule that drops blocks")
    path = SEARCH_PATHS[cfg.method](table, boundaries, stop_saving=target, **kw)
    if target is not None and path[-1].compute_saving < target:
        raise SearchError(f"{flag} is beyond the {path[-1].compute_saving:.3f} this search can reach "
                          f"(--min-depth {cfg.min_depth}{', the interval nearest the data at full depth' if cfg.data_full else ''}, "
                          f"{cfg.sampler} x{cfg.steps}): ask for less")
    if cfg.max_fid_ratio is not None:
        chosen = bisect_ratio(path, judge, boundaries, cfg.max_fid_ratio, log)
    else:
        chosen = len(path) - 1
        if judge is not None:
            confirm(path, chosen, judge, boundaries, log)
    name = cfg.name or f"search-{os.path.basename(str(loaded.source)).split('.')[0]}-{round(100 * path[chosen].compute_saving)}"
    settings = {
        "name": name, "model": loaded.source, "adapted": cfg.adapted, "arch": model.arch, "num_blocks": K, "sampler": f"{cfg.sampler}-{cfg.steps}",
        "cfg": cfg.cfg, "n": cfg.n, "seed": cfg.seed, "intervals": cfg.intervals, "min_depth": cfg.min_depth,
        "monotone": cfg.monotone, "data_full": cfg.data_full, "weighting": cfg.weighting, "method": cfg.method,
        "mode": "max-fid-ratio" if cfg.max_fid_ratio is not None else "target-saving",
        "target_saving": target, "saving_of": cfg.saving_of, "max_fid_ratio": cfg.max_fid_ratio,
        "confirmation": None if judge is None else {
            "metric": metric, "reference": cfg.reference, "n": cfg.confirm_n, "seeds": [cfg.seed + cfg.n, cfg.seed + cfg.n + cfg.confirm_n - 1],
            "evaluated": [i for i, c in enumerate(path) if c.fid is not None]},
        "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
        "seconds": round(time.perf_counter() - start, 2), "date": time.strftime("%Y-%m-%d"),
        "command": "eediff " + shlex.join(sys.argv[1:]) if os.path.basename(sys.argv[0]).startswith("eediff") else shlex.join(sys.argv),
    }
    result = SearchResult(table, boundaries, path, chosen, settings, reference_points(table, other))
    best = result.best
    spec = json.loads(result.schedule(name).to_spec())
    spec["search"] = {"model": loaded.source, "sampler": settings["sampler"], "compute_saving": best.compute_saving,
                      "proxy": best.proxy, "fid_ratio": best.fid_ratio, "report": cfg.report}
    write_json_atomic(cfg.out, spec)
    if cfg.report is not None:
        write_json_atomic(cfg.report, result.report())
    if cfg.plot is not None:
        from ..eval.plots import save_search_plot

        save_search_plot(result.report(), cfg.plot)
    return result
