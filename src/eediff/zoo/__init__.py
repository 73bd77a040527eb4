"""Models shipped inside the package (safetensors, fp16; some packed losslessly as ``.eedz``: ``pack.py``)."""

from __future__ import annotations

import functools
import os

HERE = os.path.dirname(__file__)
# name -> file; the first entry is what `eediff sample` uses when no --model is given.
# Trained on Fashion-MNIST (60k train images, pixel space) on one H100; how, with the exact commands and configs,
# in src/eediff/zoo/README.md. "-D4" = ASE fine-tuned for the D4 schedule (recorded inside).
# The default is the fine-tuned DiT: the 29,000-step DiT's D4 fine-tune, classifier Frechet distance 1.56 at D4-DiT
# against its base's 0.96 at full depth (DPM-Solver++ 25), where the 42,500-step U-ViT's distilled D4 fine-tune is
# 0.71 against 0.35 (results/converge/v2/dit-ft/, uvit-ft/; README.md here).
SHIPPED: dict[str, str] = {
    "dit-fmnist-D4": "dit-fmnist-D4.safetensors",
    "dit-fmnist": "dit-fmnist.safetensors",
    "uvit-fmnist-D4": "uvit-fmnist-D4.safetensors",
    "uvit-fmnist": "uvit-fmnist.safetensors",
    # DeeDiff heads + backbone fine-tuned from the base models, threshold calibrated for 40% fewer layers
    "dit-fmnist-deediff": "dit-fmnist-deediff.safetensors",
    "uvit-fmnist-deediff": "uvit-fmnist-deediff.safetensors",
}


def _pack_of(name: str) -> str:
    return os.path.join(HERE, os.path.splitext(SHIPPED[name])[0] + ".eedz")


def cache_dir() -> str:
    """Where packed models are unpacked: $EEDIFF_CACHE_DIR, else ~/.cache/eediff (or a temporary folder where the
    home folder cannot be written)."""
    d = os.environ.get("EEDIFF_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "eediff")
    return os.path.join(_writable_root(d), "zoo")


@functools.lru_cache(maxsize=None)
def _writable_root(d: str) -> str:
    """``d``, or a temporary folder where ``d`` cannot be written (probed once per process: the probe writes a file)."""
    from ..io import unwritable

    if unwritable(d):
        import tempfile

        d = os.path.join(tempfile.gettempdir(), f"eediff-cache-{os.getuid() if hasattr(os, 'getuid') else 0}")
    return d


def file_of(name: str) -> str:
    """The file a shipped name loads from: the package's .safetensors, or (a packed model) its unpacked copy in
    :func:`cache_dir` (under its SHA-256), which may not exist yet (:func:`path` makes it)."""
    raw = os.path.join(HERE, SHIPPED[name])
    pack = _pack_of(name)
    if os.path.exists(raw) or not os.path.exists(pack):
        return raw
    from .pack import PackError, read_meta_file

    try:
        return _unpacked_file(name, read_meta_file(pack))
    except PackError as e:
        raise _damaged(name, e) from None


def _unpacked_file(name: str, meta: dict) -> str:
    # (the hash as a folder, so that the file keeps its name: titles and search names are made of it)
    return os.path.join(cache_dir(), meta["sha256"][:16], SHIPPED[name])


def _damaged(name: str, why) -> Exception:
    from ..io import CheckpointError

    return CheckpointError(f"the shipped model '{name}' ({_pack_of(name)}) cannot be unpacked: {why}; "
                           "reinstall eediff (pip install --force-reinstall eediff)")


def available(name: str) -> bool:
    return os.path.exists(os.path.join(HERE, SHIPPED[name])) or os.path.exists(_pack_of(name))


def info(name: str) -> dict:
    """What ``eediff models`` shows of a shipped model, read from its header alone (nothing is unpacked)."""
    import base64
    import json

    from .pack import PackError, file_header, read_meta_file

    raw, pack = os.path.join(HERE, SHIPPED[name]), _pack_of(name)
    try:
        if os.path.exists(raw):
            header, stored, meta = file_header(raw), raw, {}
        else:
            meta = read_meta_file(pack)
            header, stored = json.loads(base64.b64decode(meta["header"])), pack
    except (PackError, OSError, ValueError) as e:
        raise _damaged(name, e) from None
    md = header.get("__metadata__", {})
    tuned = json.loads(md["tuned_schedule"])["name"] if "tuned_schedule" in md else None
    deediff = json.loads(md["deediff"]) if "deediff" in md else None
    return {"name": name, "arch": md.get("arch", "?"), "trained_steps": md.get("trained_steps"),
            "exits": f"schedule {tuned}" if tuned else (f"DeeDiff, tau {deediff['tau']:.4f}" if deediff else "full depth"),
            "stored": stored, "stored_bytes": os.path.getsize(stored), "bytes": meta.get("size", os.path.getsize(stored)),
            "delta_of": meta.get("base"), "unpacked": bool(meta) and os.path.exists(_unpacked_file(name, meta))}


def shipped_bytes(name: str) -> bytes:
    """A shipped model's safetensors bytes (unpacked if the package holds it packed)."""
    with open(path(name), "rb") as f:
        return f.read()


def path(name: str) -> str:
    """The safetensors file of a shipped name; a packed one is unpacked into :func:`cache_dir` once (checked
    against its recorded SHA-256, written under a temporary name and renamed, so processes that unpack it at the
    same time each see a whole file)."""
    target = file_of(name)
    if os.path.exists(target) or target == os.path.join(HERE, SHIPPED[name]):
        return target
    import tempfile

    from .pack import PackError, read_meta, unpack

    with open(_pack_of(name), "rb") as f:
        packed = f.read()
    try:
        meta, _ = read_meta(packed)
        raw = unpack(packed, shipped_bytes(meta["base"]) if meta["delta"] else None)
    except (PackError, KeyError) as e:
        raise _damaged(name, e) from None
    os.makedirs(os.path.dirname(target), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".unpack-", suffix=".safetensors", dir=os.path.dirname(target))
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def default_model():
    """The shipped default model, or (until one is shipped) a small randomly initialised DiT."""
    from ..checkpoint import LoadedModel, load_model
    from ..models.registry import build_model, default_process

    for name in SHIPPED:
        if available(name):
            return load_model(path(name))
    import sys

    print("note: no shipped model yet: sampling from a small RANDOMLY INITIALISED DiT (28 blocks, width 128, 28x28x1)", file=sys.stderr)
    model = build_model("DiT", input_size=28, patch_size=4, in_channels=1, hidden_size=128, depth=28, num_heads=4, num_classes=10)
    return LoadedModel(model, default_process(model), None, {}, "random 28-block DiT (no shipped model yet)")


def resolve_model(spec: str | None):
    """A checkpoint path, a diffusers folder, a shipped name, a registry name (random weights) or the shipped default."""
    import sys

    from ..checkpoint import LoadedModel, load_model
    from ..models.registry import REGISTRY, build_model, default_process

    if spec is None:
        return default_model()
    if spec in SHIPPED:
        return load_model(path(spec))
    if spec in REGISTRY and not os.path.exists(spec):
        print(f"note: '{spec}' is a registry name: sampling from RANDOM weights (pass a checkpoint path for real images)", file=sys.stderr)
        model = build_model(spec)
        return LoadedModel(model, default_process(model), None, {}, spec)
    return load_model(spec)
