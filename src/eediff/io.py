"""Files, written atomically and read safely; no model code (evaluation and data use it without the backbones).

Writes go to a temporary file in the same folder, then a rename, so a crash never leaves a half-written
file. Weight files are read with ``safetensors`` or ``torch.load(weights_only=True)`` (a pickle that carries
code is refused); any failure is a one-line :class:`CheckpointError`.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import tempfile
import warnings

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open

from .errors import EediffError


class CheckpointError(EediffError):
    """A checkpoint that cannot be used; one-line message naming the problem and the fix."""


_TMP_PREFIX = ".tmp-"


def remove_stale_tmp(folder: str, name: str | None = None) -> list[str]:
    """Remove the temporary files and folders a killed writer left in ``folder`` (those of ``name`` only, if
    given: ``atomic_write`` names them ``.tmp-XXXXXXXX<name>``). Returns what was removed."""
    if not os.path.isdir(folder):
        return []
    pattern = re.compile(re.escape(_TMP_PREFIX) + (r"[A-Za-z0-9_]{8}" + re.escape(name) + "$" if name else ""))
    removed = []
    for entry in os.listdir(folder):
        if pattern.match(entry):
            p = os.path.join(folder, entry)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            else:
                try:
                    os.unlink(p)
                except OSError:
                    continue
            removed.append(p)
    return removed


def unwritable(folder: str) -> str | None:
    """Why nothing can be written in ``folder`` (created if missing), or None: the nearest existing folder on its
    path is a file, or is not writable (tried with a temporary file, which also catches root on a read-only
    file system)."""
    existing = os.path.abspath(folder or ".")
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"'{existing}' is a file, not a folder"
    try:
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=existing)
    except OSError:
        return f"folder '{existing}' is not writable"
    os.close(fd)
    os.unlink(tmp)
    return None


def check_vae_folder(folder: str, flag: str = "--vae") -> None:
    """A one-line CheckpointError unless ``folder`` looks like a diffusers AutoencoderKL folder (has config.json)."""
    if not os.path.isdir(folder):
        raise CheckpointError(f"{flag} '{folder}' is not a folder: pass a diffusers AutoencoderKL folder (config.json + weights)")
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise CheckpointError(f"{flag} '{folder}' has no config.json: pass a diffusers AutoencoderKL folder (config.json + weights)")


def load_vae(folder: str, flag: str = "--vae"):
    """A diffusers AutoencoderKL from a local folder, in eval mode; a folder it cannot load is a one-line CheckpointError."""
    from diffusers import AutoencoderKL
    from diffusers.utils import logging as diffusers_logging

    check_vae_folder(folder, flag)
    level = diffusers_logging.get_verbosity()
    diffusers_logging.set_verbosity_error()  # its notes on a failed try would come before our one line
    try:
        return AutoencoderKL.from_pretrained(folder, local_files_only=True).eval()
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{flag} '{folder}' is not a loadable diffusers AutoencoderKL ({why}): pass an AutoencoderKL "
                              "folder (config.json + weights)") from None
    finally:
        diffusers_logging.set_verbosity(level)


def atomic_write(path: str, write_fn) -> None:
    """Call ``write_fn(tmp_path)`` then rename over ``path``: a crash never leaves a half-written file
    (and the temporary files of an earlier, killed write of ``path`` are removed first)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    remove_stale_tmp(folder, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=os.path.basename(path), dir=folder)
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


def write_atomic(path: str, data: bytes | str) -> None:
    """``data`` (bytes, or text written as UTF-8) into ``path`` through :func:`atomic_write`."""
    def write(tmp):
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)

    atomic_write(path, write)


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


def file_kind(path: str) -> str:
    """What a weights file is by its first bytes: "safetensors" (an 8-byte header length, then JSON), "torch-zip"
    (torch.save's zip archive), "pickle" (a legacy torch.save file) or "other" (text, an image, an empty
    file...), so that a wrong file is named as such instead of as a corrupt checkpoint."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return "other"
    if len(head) == 9 and head[8:9] == b"{":
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch-zip"
    if head[:1] == b"\x80":
        return "pickle"
    return "other"


def _refuse_non_weights(path: str) -> None:
    """After a failed load: a file that is no weights file at all (text, empty...) is named so, not as corrupt."""
    if os.path.isfile(path) and file_kind(path) == "other":
        raise CheckpointError(f"'{path}' is not a weights file (neither safetensors nor torch.save output): pass the "
                              "model's .safetensors / .pt / .pth checkpoint, or a diffusers model folder") from None


def read_safetensors(path: str, fix: str = "re-download or re-save it") -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file; any failure is a one-line CheckpointError ending in ``fix``."""
    try:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata() or {}
        return load_file(path), meta
    except (SafetensorError, OSError, ValueError) as e:
        _refuse_non_weights(path)
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
        _refuse_non_weights(path)
        raise CheckpointError(f"checkpoint '{path}' is corrupt or not a PyTorch weights file: {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError) as e:
        _refuse_non_weights(path)
        raise CheckpointError(f"checkpoint '{path}' is corrupt or truncated ({short_reason(e)}): re-save it, or {fix}") from None


def check_finite_tensors(tensors: dict, what: str, fix: str) -> None:
    """Raise a one-line CheckpointError when any floating-point tensor of ``tensors`` holds NaN or inf."""
    bad = non_finite_count(tensors)
    if bad:
        name, count = bad
        raise CheckpointError(f"{what} holds {count} non-finite (NaN or inf) value(s), e.g. in {name}: {fix}")


def non_finite_count(tensors) -> tuple[str, int] | None:
    """(first tensor name, total count) of the NaN / inf values in a (nested) dict or list of tensors, or None."""
    first, total = None, 0
    stack = [("", tensors)]
    while stack:
        prefix, obj = stack.pop()
        if isinstance(obj, torch.Tensor):
            if obj.is_floating_point() or obj.is_complex():
                n = int((~torch.isfinite(obj)).sum())
                if n:
                    total += n
                    first = first if first is not None else prefix
        elif isinstance(obj, dict):
            stack.extend((f"{prefix}.{k}" if prefix else str(k), v) for k, v in reversed(list(obj.items())))
        elif isinstance(obj, (list, tuple)):
            stack.extend((f"{prefix}[{i}]", v) for i, v in reversed(list(enumerate(obj))))
        elif isinstance(obj, float) and not math.isfinite(obj):
            total += 1
            first = first if first is not None else prefix
    return None if total == 0 else (first, total)
