"""Lossless packing of the shipped safetensors files (``NAME.eedz``), so that the models fit the package's budget.

A fine-tune differs from its base by a few per cent per weight, so its fp16 bit patterns, taken as integers in
numeric order, differ from the base's by small numbers; a model with no base is stored as it is. Each fp16
tensor is split into its high and low byte planes (the sign and exponent byte repeats a lot), everything goes
through xz (LZMA, Python's standard library), and unpacking rebuilds the original file byte for byte, checked
against its SHA-256. Written here because no library packs safetensors this way: generic compressors see fp16
weights as near-random bytes (xz alone saves 11% on the shipped files; with the byte planes 14-18%, and with the
delta to the base 35-43%).

    python -m eediff.zoo.pack dit-fmnist-D4 --base dit-fmnist     # src/eediff/zoo/dit-fmnist-D4.eedz
    python -m eediff.zoo.pack uvit-fmnist-deediff                  # no base: planes + xz only
    python -m eediff.zoo.pack --file run/final-fp16.safetensors --base dit-fmnist   # any file: run/final-fp16.eedz
    python -m eediff.zoo.pack --unpack run/final-fp16.eedz        # back to run/final-fp16.safetensors
    python -m eediff.zoo.pack --file run/final-fp16.safetensors --base dit-fmnist --coarse-delta 1   # not lossless:
        # run/final-fp16-d1.safetensors, each weight within one fp16 step of the file's (coarse_delta)

File: ``MAGIC``, a 4-byte little-endian length, that many bytes of JSON (the original file's SHA-256 and size,
its safetensors header, the base's zoo name and SHA-256, the tensors stored as deltas), then the xz stream of
the tensors' bytes in the order of their offsets.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import lzma
import struct
import sys

import numpy as np

MAGIC = b"EEDIFF-PACK\x00\x01"
# LZMA2 at its strongest, with no literal-context bits: the byte planes are near-random bytes, whose neighbours
# predict nothing (0.5% smaller packs than the default lc=3, lp=0, pb=2). xz records its filters in the stream, so
# packs made with other settings unpack the same way.
XZ_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "lc": 0, "lp": 0, "pb": 0}]
CODEC = "fp16-ordered-delta, byte planes, xz"


class PackError(ValueError):
    """A pack that cannot be read or does not rebuild its file."""


def _header(raw: bytes) -> tuple[bytes, dict, int]:
    """(header bytes, parsed header, offset of the data) of a safetensors file's bytes."""
    if len(raw) < 8:
        raise PackError("not a safetensors file (shorter than its 8-byte header length)")
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise PackError("not a safetensors file (its header length runs past the end)")
    hb = raw[8:8 + n]
    return hb, json.loads(hb), 8 + n


def file_header(path: str) -> dict:
    """The safetensors header (tensors and ``__metadata__``) of a file, without reading its tensors."""
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        return _header(head + f.read(n))[1]


def _tensors(header: dict) -> list[tuple[str, str, int, int]]:
    """(name, dtype, begin, end) of every tensor, in the order of their data offsets."""
    out = [(k, v["dtype"], *v["data_offsets"]) for k, v in header.items() if k != "__metadata__"]
    return sorted(out, key=lambda t: t[2])


def _ordered(u: np.ndarray) -> np.ndarray:
    """fp16 bit patterns (uint16) -> integers in the numeric order of the values (a bijection on uint16)."""
    return np.where(u & 0x8000, u ^ 0xFFFF, u ^ 0x8000).astype(np.uint16)


def _unordered(o: np.ndarray) -> np.ndarray:
    return np.where(o & 0x8000, o ^ 0x8000, o ^ 0xFFFF).astype(np.uint16)


def _planes(u: np.ndarray) -> bytes:
    b = u.astype("<u2").view(np.uint8).reshape(-1, 2)
    return b[:, 1].tobytes() + b[:, 0].tobytes()


def _unplanes(buf: bytes, n: int) -> np.ndarray:
    hi = np.frombuffer(buf, np.uint8, n, 0)
    lo = np.frombuffer(buf, np.uint8, n, n)
    return (hi.astype(np.uint16) << 8) | lo


def _zigzag(d: np.ndarray) -> np.ndarray:  # int16 differences -> small unsigned codes (0, -1, 1, -2, ...)
    d = d.astype(np.int32)
    return ((d << 1) ^ (d >> 31)).astype(np.uint16)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.int32)
    return ((z >> 1) ^ -(z & 1)).astype(np.int16)


def _base_arrays(base_raw: bytes | None) -> dict[str, tuple[list, np.ndarray]]:
    """name -> (shape, fp16 bit patterns) of the base file's F16 tensors."""
    if base_raw is None:
        return {}
    _, header, start = _header(base_raw)
    return {name: (header[name]["shape"], np.frombuffer(base_raw, np.uint16, (e - b) // 2, start + b))
            for name, dtype, b, e in _tensors(header) if dtype == "F16"}


def pack(raw: bytes, base_raw: bytes | None = None, base_name: str | None = None) -> bytes:
    """The packed form of a safetensors file's bytes (``base_raw``: the file its F16 tensors are deltas of)."""
    hb, header, start = _header(raw)
    base = _base_arrays(base_raw)
    parts, delta = [], []
    for name, dtype, b, e in _tensors(header):
        blob = raw[start + b:start + e]
        if dtype != "F16":
            parts.append(blob)
            continue
        u = np.frombuffer(blob, np.uint16)
        ref = base.get(name)
        if ref is not None and ref[0] == header[name]["shape"]:
            d = (_ordered(u).astype(np.int32) - _ordered(ref[1]).astype(np.int32)).astype(np.uint16).view(np.int16)
            parts.append(_planes(_zigzag(d)))
            delta.append(name)
        else:
            parts.append(_planes(u))
    meta = {"codec": CODEC, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw), "data_start": start,
            "header": base64.b64encode(hb).decode(), "base": base_name if delta else None,
            "base_sha256": hashlib.sha256(base_raw).hexdigest() if delta else None, "delta": delta}
    mj = json.dumps(meta).encode()
    return MAGIC + struct.pack("<I", len(mj)) + mj + lzma.compress(b"".join(parts), format=lzma.FORMAT_XZ, filters=XZ_FILTERS)


def coarse_delta(raw: bytes, base_raw: bytes, k: int) -> tuple[bytes, float]:
    """A safetensors file's bytes with every F16 weight moved to the nearest value whose distance from the base's
    weight, counted in fp16 steps (numeric order, as the delta codec counts), is a multiple of 2**k; and the largest
    relative change of a weight (of magnitude >= 1e-3). Not lossless: the model changes by at most 2**(k-1) fp16
    steps per weight (k = 1: one step, at most 2**-10 relative, a quarter of a bf16 step), and the delta's k low bits
    become zero, which xz then stores almost for free. Measure the model it gives before shipping it."""
    if k < 1:
        raise PackError(f"the delta step 2**{k} changes nothing: give k >= 1")
    hb, header, start = _header(raw)
    base = _base_arrays(base_raw)
    out, worst = bytearray(raw), 0.0
    for name, dtype, b, e in _tensors(header):
        ref = base.get(name)
        if dtype != "F16" or ref is None or ref[0] != header[name]["shape"]:
            continue
        u = np.frombuffer(raw, np.uint16, (e - b) // 2, start + b)
        ob = _ordered(ref[1]).astype(np.int64)
        q = 1 << k
        d = _ordered(u).astype(np.int64) - ob
        o = ob + np.floor(d / q + 0.5).astype(np.int64) * q  # (ties upward in the numeric order: deterministic)
        o = np.clip(o, 0, 0xFFFF).astype(np.uint16)
        u2 = _unordered(o)
        finite = ((u & 0x7C00) != 0x7C00) & ((u2 & 0x7C00) != 0x7C00)  # inf / NaN are kept as they are
        u2 = np.where(finite, u2, u).astype(np.uint16)
        out[start + b:start + e] = u2.astype("<u2").tobytes()
        a, a2 = u.view(np.float16).astype(np.float64), u2.view(np.float16).astype(np.float64)
        big = np.abs(a) >= 1e-3
        if big.any():
            worst = max(worst, float(np.max(np.abs(a2 - a)[big] / np.abs(a[big]))))
    return bytes(out), worst


_HEAD = len(MAGIC) + 4  # the magic bytes and the JSON's length


def _meta_len(head: bytes) -> int:
    if len(head) < _HEAD or not head.startswith(MAGIC):
        raise PackError("not an eediff pack (wrong magic bytes)")
    return struct.unpack("<I", head[len(MAGIC):_HEAD])[0]


def read_meta(packed: bytes) -> tuple[dict, int]:
    """(the pack's JSON, offset of its xz stream)."""
    end = _HEAD + _meta_len(packed)
    try:
        return json.loads(packed[_HEAD:end]), end
    except ValueError:
        raise PackError("the pack's header is not JSON (truncated or damaged)") from None


def read_meta_file(path: str) -> dict:
    """The JSON of a pack file, without reading its data."""
    with open(path, "rb") as f:
        head = f.read(_HEAD)
        return read_meta(head + f.read(_meta_len(head)))[0]


def unpack(packed: bytes, base_raw: bytes | None = None) -> bytes:
    """The original file's bytes, checked against the SHA-256 the pack recorded."""
    meta, at = read_meta(packed)
    if meta["delta"]:
        if base_raw is None:
            raise PackError(f"the pack stores deltas of '{meta['base']}': its base file is needed")
        if hashlib.sha256(base_raw).hexdigest() != meta["base_sha256"]:
            raise PackError(f"the base '{meta['base']}' is not the file the pack was made against (SHA-256 differs)")
    try:
        data = lzma.decompress(packed[at:])
    except lzma.LZMAError:
        raise PackError("the pack's data is damaged (xz cannot decompress it)") from None
    hb = base64.b64decode(meta["header"])
    header = json.loads(hb)
    start = meta["data_start"]
    out = bytearray(meta["size"])
    out[:8] = struct.pack("<Q", len(hb))
    out[8:start] = hb
    base = _base_arrays(base_raw)
    delta = set(meta["delta"])
    pos = 0
    for name, dtype, b, e in _tensors(header):
        n = e - b
        if dtype != "F16":
            out[start + b:start + e] = data[pos:pos + n]
        else:
            u = _unplanes(data[pos:pos + n], n // 2)
            if name in delta:
                o = (_ordered(base[name][1]).astype(np.int32) + _unzigzag(u).astype(np.int32)).astype(np.uint16)
                u = _unordered(o)
            out[start + b:start + e] = u.astype("<u2").tobytes()
        pos += n
    if pos != len(data):
        raise PackError("the pack's data does not match its header (damaged)")
    raw = bytes(out)
    if hashlib.sha256(raw).hexdigest() != meta["sha256"]:
        raise PackError("the unpacked file does not match the SHA-256 the pack recorded (damaged)")
    return raw


def main(argv=None) -> int:
    import os

    from ..io import write_atomic
    from . import HERE, SHIPPED, shipped_bytes

    ap = argparse.ArgumentParser(description="Pack a shipped model (src/eediff/zoo/NAME.safetensors) into NAME.eedz, losslessly.")
    ap.add_argument("name", nargs="?", choices=sorted(SHIPPED))
    ap.add_argument("--base", default=None, choices=sorted(SHIPPED), help="the shipped model it was fine-tuned from")
    ap.add_argument("--file", default=None, help="pack this safetensors file (beside it, as .eedz) instead of a shipped name")
    ap.add_argument("--unpack", default=None, metavar="PACK", help="rebuild PACK's safetensors file beside it (its base from the zoo)")
    ap.add_argument("--coarse-delta", type=int, default=None, metavar="K",
                    help="with --file and --base: write FILE-dK.safetensors, each weight's distance from the base rounded "
                    "to 2**K fp16 steps (not lossless; see coarse_delta), instead of packing")
    a = ap.parse_args(argv)
    if a.unpack:  # (a run folder that travelled packed: the base is named in the pack)
        with open(a.unpack, "rb") as f:
            packed = f.read()
        meta, _ = read_meta(packed)
        dst = os.path.splitext(a.unpack)[0] + ".safetensors"
        write_atomic(dst, unpack(packed, shipped_bytes(meta["base"]) if meta["delta"] else None))
        print(f"{dst}: rebuilt (SHA-256 checked)", file=sys.stderr)
        return 0
    if (a.name is None) == (a.file is None):
        ap.error("give a shipped NAME or --file FILE (or --unpack PACK)")
    if a.coarse_delta is not None:
        if not (a.file and a.base):
            ap.error("--coarse-delta needs --file FILE and --base NAME")
        with open(a.file, "rb") as f:
            out, worst = coarse_delta(f.read(), shipped_bytes(a.base), a.coarse_delta)
        dst = os.path.splitext(a.file)[0] + f"-d{a.coarse_delta}.safetensors"
        write_atomic(dst, out)
        print(f"{dst}: distances from {a.base} rounded to {2 ** a.coarse_delta} fp16 steps (largest relative change "
              f"{worst:.2e}); measure it, then pack it with --file", file=sys.stderr)
        return 0
    src = a.file or os.path.join(HERE, SHIPPED[a.name])
    with open(src, "rb") as f:
        raw = f.read()
    base_raw = shipped_bytes(a.base) if a.base else None
    packed = pack(raw, base_raw, a.base)
    if unpack(packed, base_raw) != raw:  # (unpack checks the SHA-256 too)
        raise SystemExit("the pack does not rebuild the file: not written")
    dst = os.path.splitext(src)[0] + ".eedz"
    write_atomic(dst, packed)
    print(f"{dst}: {len(packed) / 1e6:.2f} MB from {len(raw) / 1e6:.2f} MB ({len(read_meta(packed)[0]['delta'])} tensors as "
          f"deltas of {a.base or '-'}); remove {os.path.basename(src)} to ship the pack", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
