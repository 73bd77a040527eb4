"""Files, written atomically and read safely; no model code (evaluation and data use it without the backbones).

Writes go to a temporary file in the same folder, then a rename, so a crash never leaves a half-written
file. Weight files are read with ``safetensors`` or ``torch.load(weights_only=True)`` (a pickle that carries
code is refused); any failure is a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import warnings

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from .errors import EediffError


class CheckpointError(EediffError):
    """A checkpoint that cannot be used; one-line message naming the problem and the fix."""


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; results and weights are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json_atomic(path: str, obj) -> None:
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)

    atomic_write(path, write)


def short_reason(e: Exception, limit: int = 90) -> str:
    """The first sentence of an exception message, cut at a word boundary (for one-line errors)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    text = text.split(". ")[0]
    return text if len(text) <= limit else text[:limit].rsplit(" ", 1)[0] + "..."


def read_safetensors(path: str, fix: str = "re-download or re-save it") -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; any failure is a one-line CheckpointError ending in ``fix``."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(path), meta
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({short_reason(e)}): {fix}") from None


def safe_torch_load(path: str, fix: str = "convert it to safetensors or a plain state dict in a trusted environment"):
    """``torch.load(weights_only=True)``; a pickle carrying code or a broken file is a one-line CheckpointError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise CheckpointError(
                f"checkpoint '{path}' is not a plain tensor file: the safe loader refused it, so it may carry code; {fix}"
            ) from None
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a PyTorch weights file: {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({short_reason(e)}): {fix}") from None
