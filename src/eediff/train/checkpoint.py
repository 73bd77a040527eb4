"""Training checkpoints that lose nothing, written atomically.

``RUN/checkpoints/step-00001000/`` holds:

- ``model.safetensors`` (the student θ_S) and ``ema.safetensors`` (the teacher θ_T), fp32, each with the
  eediff model metadata (so ``eediff sample --model .../ema.safetensors`` works on any checkpoint);
- ``train_state.pt``: optimizer and LR-scheduler state (``torch.save``; read back with
  ``torch.load(weights_only=True)``, so a pickle that carries code is refused);
- ``rng-rank{r}.pt``: every random state of process r (Python, NumPy, torch CPU, CUDA, and the run's own
  timestep/noise generators);
- ``state.json``: step, data position (epoch, index), world size, elapsed time. Written last.

The folder is first written as ``.tmp-step-...`` and renamed when complete, so a crash at any moment
leaves either the whole checkpoint or none; stale temporary folders are removed on the next save.
Loading validates everything (architecture and config, tensor names and shapes, readability) before
anything is changed, and reports any problem as a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from dataclasses import asdict

import numpy as np
import torch
from safetensors.torch import save_file

from ..checkpoint import model_metadata
from ..io import CheckpointError, non_finite_count, read_safetensors
from ..io import safe_torch_load as _safe_torch_load

FORMAT = "eediff-train/1"
_STEP_RE = re.compile(r"^step-(\d+)$")


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RESUME_FIX = "continue from an earlier checkpoint with --resume-from STEP, or --resume-from intact for the newest one that loads"


def safe_torch_load(path: str):
    return _safe_torch_load(path, _RESUME_FIX)


def _read_weights(path: str) -> tuple[dict, dict]:
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file '{path}' is missing: the checkpoint is incomplete")
    return read_safetensors(path, _RESUME_FIX)


def _check_fits(path: str, sd: dict, meta: dict, model) -> None:
    arch, cfg = meta.get("arch"), meta.get("config")
    want = asdict(model.config)
    if arch is not None and (arch != model.arch or (cfg is not None and json.loads(cfg) != want)):
        got = json.loads(cfg) if cfg else {}
        if arch != model.arch:
            raise CheckpointError(f"'{path}' holds a {arch}, but this run trains a {model.arch}: wrong architecture for this run")
        diff = sorted(k for k in set(got) | set(want) if got.get(k) != want.get(k))[:3]
        theirs = ", ".join(f"{k}={got.get(k)}" for k in diff)
        ours = ", ".join(f"{k}={want.get(k)}" for k in diff)
        raise CheckpointError(f"'{path}' holds a {arch} with {theirs}, but this run trains {ours}: wrong architecture for this run")
    own = model.state_dict()
    missing, unexpected = set(own) - set(sd), set(sd) - set(own)
    if missing or unexpected:
        raise CheckpointError(
            f"'{path}' does not fit this run's {model.arch} ({len(missing)} missing, {len(unexpected)} unexpected tensors, "
            f"e.g. {sorted(missing or unexpected)[0]}): wrong architecture for this run"
        )
    for k, v in own.items():
        if tuple(sd[k].shape) != tuple(v.shape) or sd[k].dtype != v.dtype:
            raise CheckpointError(f"'{path}': {k} is {sd[k].dtype} {tuple(sd[k].shape)}, this run's model has {v.dtype} {tuple(v.shape)}: wrong architecture for this run")


# ---- random states --------------------------------------------------------------------------------
def capture_rng(generators: dict[str, torch.Generator], device: torch.device) -> dict:
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "torch": torch.get_rng_state(),
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def restore_rng(state: dict, generators: dict[str, torch.Generator], device: torch.device, path: str) -> None:
    try:
        v, internal, gauss = state["python"]
        random.setstate((v, tuple(internal), gauss))
        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
        torch.set_rng_state(state["torch"])
        for k, g in generators.items():
            g.set_state(state["generators"][k])
        if device.type == "cuda" and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], device)
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"'{path}' does not hold this run's random states ({type(e).__name__}: {str(e)[:80]}): {_RESUME_FIX}") from None


# ---- the run's checkpoint folder ------------------------------------------------------------------
class RunCheckpoints:
    def __init__(self, run_dir: str, keep_last: int = 3):
        self.run_dir = run_dir
        self.root = os.path.join(run_dir, "checkpoints")
        self.keep_last = keep_last

    def list(self) -> list[str]:
        """Complete checkpoints (state.json present), oldest first."""
        if not os.path.isdir(self.root):
            return []
        found = []
        for name in os.listdir(self.root):
            m = _STEP_RE.match(name)
            if m and os.path.exists(os.path.join(self.root, name, "state.json")):
                found.append((int(m.group(1)), os.path.join(self.root, name)))
        return [p for _, p in sorted(found)]

    def latest(self) -> str | None:
        found = self.list()
        return found[-1] if found else None

    def find(self, spec: str) -> str:
        """The checkpoint that ``--resume-from`` names: a step number or a checkpoint folder."""
        found = self.list()
        steps = ", ".join(str(int(_STEP_RE.match(os.path.basename(p)).group(1))) for p in found) or "none"
        if spec.strip().isdigit():
            path = os.path.join(self.root, f"step-{int(spec):08d}")
            if path not in found:
                raise CheckpointError(f"--resume-from {spec}: '{self.run_dir}' holds no complete checkpoint of step {int(spec)} "
                                      f"(steps: {steps})")
            return path
        if not os.path.isfile(os.path.join(spec, "state.json")):
            raise CheckpointError(f"--resume-from '{spec}' is not a checkpoint folder (no state.json): give a step number "
                                  f"({steps}), a checkpoints/step-NNNNNNNN folder, or 'intact'")
        return spec

    def last_finite(self) -> str | None:
        """The newest checkpoint whose weights and optimizer state, read back from disk, are all finite."""
        for path in reversed(self.list()):
            try:
                parts = [read_safetensors(os.path.join(path, f))[0] for f in ("model.safetensors", "ema.safetensors")]
                parts.append(safe_torch_load(os.path.join(path, "train_state.pt")))
            except CheckpointError:
                continue
            if non_finite_count(parts) is None:
                return path
        return None

    def set_aside_after(self, path: str) -> list[str]:
        """Move the checkpoints newer than ``path`` (a run continued from an earlier one) to ``abandoned-step-...``,
        where ``list`` no longer sees them and nothing of them is lost. Returns the new names."""
        found = self.list()
        if path not in found:
            return []
        moved = []
        for newer in found[found.index(path) + 1:]:
            dst = os.path.join(self.root, "abandoned-" + os.path.basename(newer))
            n = 1
            while os.path.exists(dst):
                n += 1
                dst = os.path.join(self.root, f"abandoned-{n}-{os.path.basename(newer)}")
            os.replace(newer, dst)
            moved.append(dst)
        return moved

    def save(self, accelerator, step: int, model, ema, optimizer, lr_scheduler, process, tuned_for, state: dict, rng: dict) -> str:
        """Collective: every process writes its random states, the main process the rest, then renames."""
        name = f"step-{step:08d}"
        final = os.path.join(self.root, name)
        tmp = os.path.join(self.root, ".tmp-" + name)
        main = accelerator.is_main_process
        if main:
            os.makedirs(self.root, exist_ok=True)
            for stale in os.listdir(self.root):
                if stale.startswith(".tmp-"):
                    shutil.rmtree(os.path.join(self.root, stale), ignore_errors=True)
            os.makedirs(tmp)
        accelerator.wait_for_everyone()
        rng_path = os.path.join(tmp, f"rng-rank{accelerator.process_index}.pt")
        torch.save(rng, rng_path)
        _fsync(rng_path)
        accelerator.wait_for_everyone()
        if main:
            for fname, net in (("model.safetensors", model), ("ema.safetensors", ema)):
                sd = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
                p = os.path.join(tmp, fname)
                save_file(sd, p, metadata=model_metadata(net, process, tuned_for))
                _fsync(p)
            p = os.path.join(tmp, "train_state.pt")
            torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}, p)
            _fsync(p)
            p = os.path.join(tmp, "state.json")
            with open(p, "w") as f:
                json.dump({"format": FORMAT, "step": step, **state, "world_size": accelerator.num_processes}, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            if os.path.exists(final):  # re-saving a step (e.g. a finished run resumed with the same --steps)
                shutil.rmtree(final)
            os.replace(tmp, final)
            _fsync(self.root)
            for old in self.list()[: -self.keep_last] if self.keep_last > 0 else []:
                shutil.rmtree(old, ignore_errors=True)
        accelerator.wait_for_everyone()
        return final

    def load(self, path: str, model, ema, optimizer, lr_scheduler, rank: int, world_size: int) -> tuple[dict, dict | None]:
        """Read and validate the whole checkpoint, then load it. Returns (state.json, this rank's RNG state or None)."""
        sp = os.path.join(path, "state.json")
        try:
            with open(sp) as f:
                state = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"'{sp}' is unreadable ({str(e)[:80]}): {_RESUME_FIX}") from None
        if not isinstance(state, dict) or state.get("format") != FORMAT or not isinstance(state.get("step"), int):
            raise CheckpointError(f"'{sp}' is not an eediff training checkpoint state")
        weights = {}
        for fname, net in (("model.safetensors", model), ("ema.safetensors", ema)):
            p = os.path.join(path, fname)
            sd, meta = _read_weights(p)
            _check_fits(p, sd, meta, net)
            weights[fname] = sd
        ts = safe_torch_load(os.path.join(path, "train_state.pt"))
        if not isinstance(ts, dict) or "optimizer" not in ts or "lr_scheduler" not in ts:
            raise CheckpointError(f"'{os.path.join(path, 'train_state.pt')}' lacks the optimizer or scheduler state: {_RESUME_FIX}")
        for what, tensors in (("weights", weights), ("optimizer state", ts["optimizer"])):
            bad = non_finite_count(tensors)
            if bad:
                raise CheckpointError(f"checkpoint '{path}' holds {bad[1]} non-finite (NaN or inf) value(s) in its {what} "
                                      f"(e.g. {bad[0]}): it cannot continue the run; {_RESUME_FIX}")
        rng = None
        rp = os.path.join(path, f"rng-rank{rank}.pt")
        if state.get("world_size") == world_size and os.path.exists(rp):
            rng = safe_torch_load(rp)
            if not isinstance(rng, dict):
                raise CheckpointError(f"'{rp}' does not hold random states")
        # everything read and checked: now change the live objects
        try:
            optimizer.load_state_dict(ts["optimizer"])
            lr_scheduler.load_state_dict(ts["lr_scheduler"])
        except (ValueError, KeyError, RuntimeError, TypeError) as e:
            raise CheckpointError(f"'{path}': the optimizer state does not fit this run ({str(e).splitlines()[0][:100]}): wrong architecture or options") from None
        model.load_state_dict(weights["model.safetensors"], strict=True)
        ema.load_state_dict(weights["ema.safetensors"], strict=True)
        return state, rng

