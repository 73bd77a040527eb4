"""The shipped models' lossless packing (eediff/zoo/pack.py): byte-identical round trips, clear errors for
damaged packs, and every shipped pack unpacking to the file it recorded."""

import hashlib
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save

from eediff.zoo import pack as zp


def special_fp16(n=4096, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g).half()
    bits = torch.tensor([0x0000, 0x8000, 0x7C00, 0xFC00, 0x7E00, 0x0001, 0x8001, 0x03FF, 0xFFFF, 0x7BFF], dtype=torch.int32)
    x[: len(bits)] = bits.to(torch.int16).view(torch.float16)  # ±0, ±inf, NaN, subnormals, the largest finite
    return x


def files():
    base = {"a": special_fp16().reshape(64, 64), "b": torch.randn(10).half(), "shape": torch.randn(6).half(),
            "f32": torch.randn(5), "only_base": torch.randn(3).half()}
    ft = dict(base)
    ft["a"] = (base["a"].float() * 1.02 + 0.001).half()  # a fine-tune: close to the base, signs crossing near zero
    ft["a"].view(-1)[:10] = special_fp16()[:10].flip(0)  # special values against other special values
    ft["b"] = -base["b"]  # every sign flipped
    ft["shape"] = torch.randn(2, 3).half()  # same name, other shape: stored as it is
    ft["f32"] = torch.randn(5)  # not fp16: stored as it is
    ft["i64"] = torch.arange(7)
    del ft["only_base"]
    return save(ft, metadata={"eediff": '{"arch": "test"}'}), save(base)


def test_round_trip_is_byte_identical_with_and_without_a_base():
    raw, base = files()
    for b in (None, base):
        packed = zp.pack(raw, b, "base" if b else None)
        assert zp.unpack(packed, b) == raw
    meta, _ = zp.read_meta(zp.pack(raw, base, "base"))
    assert sorted(meta["delta"]) == ["a", "b"] and meta["base"] == "base"
    assert meta["sha256"] == hashlib.sha256(raw).hexdigest()
    assert zp.read_meta(zp.pack(raw))[0]["delta"] == [] and zp.read_meta(zp.pack(raw))[0]["base"] is None


def test_the_ordered_codes_are_a_bijection_in_numeric_order():
    u = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    o = zp._ordered(u)
    assert len(np.unique(o)) == 65536 and (zp._unordered(o) == u).all()
    vals = u.view(np.float16).astype(np.float64)
    finite = np.isfinite(vals) & ~((u & 0x7FFF) == 0)  # (±0 are equal values in two codes)
    order = np.argsort(o[finite], kind="stable")
    assert (np.diff(vals[finite][order]) >= 0).all()
    d = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    assert (zp._unzigzag(zp._zigzag(d)) == d).all() and zp._zigzag(np.array([0, -1, 1], np.int16)).tolist() == [0, 1, 2]


def test_a_fine_tune_packs_smaller_as_a_delta_of_its_base():
    g = torch.Generator().manual_seed(1)
    base = {f"w{i}": torch.randn(256, 256, generator=g).half() for i in range(4)}
    ft = {k: (v.float() + 0.02 * torch.randn(v.shape, generator=g)).half() for k, v in base.items()}
    raw, b = save(ft), save(base)
    assert len(zp.pack(raw, b, "base")) < 0.8 * len(zp.pack(raw))


def test_damaged_or_mismatched_packs_are_refused():
    raw, base = files()
    packed = zp.pack(raw, base, "base")
    with pytest.raises(zp.PackError, match="base file is needed"):
        zp.unpack(packed)
    with pytest.raises(zp.PackError, match="not the file the pack was made against"):
        zp.unpack(packed, base[:-1] + bytes([base[-1] ^ 1]))
    with pytest.raises(zp.PackError, match="wrong magic"):
        zp.unpack(raw)
    broken = bytearray(packed)
    broken[-40] ^= 0xFF
    with pytest.raises(zp.PackError, match="damaged"):
        zp.unpack(bytes(broken), base)
    with pytest.raises(zp.PackError, match="not JSON"):
        zp.read_meta(packed[: len(zp.MAGIC) + 4 + 5] + b"x" * 10)


def test_every_shipped_pack_unpacks_to_the_file_it_recorded(tmp_path, monkeypatch):
    from eediff.checkpoint import _fix_for, load_model
    from eediff.zoo import HERE, SHIPPED, cache_dir, path

    monkeypatch.setenv("EEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    packed = [n for n in SHIPPED if os.path.exists(os.path.join(HERE, os.path.splitext(SHIPPED[n])[0] + ".eedz"))]
    assert packed, "the package ships packed models"
    for name in packed:
        p = path(name)
        assert os.path.dirname(os.path.dirname(p)) == cache_dir() and os.path.basename(p) == SHIPPED[name]  # its own name
        meta = zp.read_meta_file(os.path.join(HERE, os.path.splitext(SHIPPED[name])[0] + ".eedz"))
        with open(p, "rb") as f:
            assert hashlib.sha256(f.read()).hexdigest() == meta["sha256"]
        load_model(p)
        stamp = os.stat(p).st_mtime_ns
        assert path(name) == p and os.stat(p).st_mtime_ns == stamp  # unpacked once, then reused
        assert "delete it" in _fix_for(p)
    assert not [f for _, _, fs in os.walk(cache_dir()) for f in fs if f.startswith(".unpack-")]  # no temporary file left


def test_a_damaged_pack_in_the_package_says_reinstall(tmp_path, monkeypatch):
    import eediff.zoo as zoo
    from eediff.io import CheckpointError

    name = next(n for n in zoo.SHIPPED if os.path.exists(zoo._pack_of(n)))
    fake = tmp_path / "zoo"
    shutil.copytree(zoo.HERE, fake, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    pack_file = fake / os.path.basename(zoo._pack_of(name))
    data = bytearray(pack_file.read_bytes())
    data[-100] ^= 0xFF
    pack_file.write_bytes(bytes(data))
    monkeypatch.setattr(zoo, "HERE", str(fake))
    monkeypatch.setenv("EEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(CheckpointError, match="cannot be unpacked.*damaged.*reinstall eediff"):
        zoo.path(name)
    pack_file.write_bytes(b"EEDIFF-PACK" + bytes(20))  # its header gone too: the same error, not a traceback
    with pytest.raises(CheckpointError, match="cannot be unpacked.*reinstall eediff"):
        zoo.path(name)


def test_models_lists_every_shipped_model_without_unpacking(tmp_path, monkeypatch):
    from eediff.zoo import SHIPPED

    from test_reliability import invoke

    monkeypatch.setenv("EEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    res = invoke("models")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    for name in SHIPPED:
        assert any(line.startswith(name + " ") for line in lines), name
    default = next(line for line in lines if line.startswith(next(iter(SHIPPED))))
    assert default.split()[1] == "*" and "packed, delta of dit-fmnist" in default and "schedule D4-DiT" in default
    assert "DeeDiff, tau" in next(line for line in lines if line.startswith("uvit-fmnist-deediff"))
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.safetensors"))  # nothing unpacked


def test_models_path_prints_the_unpacked_file_and_rejects_other_names(tmp_path, monkeypatch):
    """`eediff models --path NAME` gives tools that take a file the shipped model's safetensors (a packed one is
    unpacked into the cache first, byte-identical to what `zoo.path` gives); a name that is not shipped is a
    one-line error listing the names, exit 2."""
    from eediff import zoo

    from test_reliability import invoke

    monkeypatch.setenv("EEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    res = invoke("models", "--path", "uvit-fmnist-D4")
    assert res.exit_code == 0, res.output
    got = res.output.strip().splitlines()[-1]
    assert got.startswith(str(tmp_path / "cache")) and got == zoo.path("uvit-fmnist-D4")
    with open(got, "rb") as f:
        assert f.read(8) and zoo.info("uvit-fmnist-D4")["bytes"] == os.path.getsize(got)
    res = invoke("models", "--path", "dit-xl")
    assert res.exit_code == 2 and "not a shipped model" in res.output and "dit-fmnist" in res.output


def test_the_command_packs_a_run_file_as_a_delta_and_rebuilds_it(tmp_path, monkeypatch):
    """`python -m eediff.zoo.pack --file F --base NAME` and `--unpack F.eedz`: how run folders travel small."""
    monkeypatch.setenv("EEDIFF_CACHE_DIR", str(tmp_path / "cache"))
    from eediff.zoo import shipped_bytes

    base = shipped_bytes("uvit-fmnist")
    from safetensors.torch import load

    ft = {k: (v.float() * 1.01).to(v.dtype) if v.dtype == torch.float16 else v for k, v in load(base).items()}
    f = tmp_path / "run" / "final-fp16.safetensors"
    f.parent.mkdir()
    f.write_bytes(save(ft))
    raw = f.read_bytes()
    assert zp.main(["--file", str(f), "--base", "uvit-fmnist"]) == 0
    p = f.with_suffix(".eedz")
    assert zp.read_meta_file(str(p))["base"] == "uvit-fmnist"
    f.unlink()
    assert zp.main(["--unpack", str(p)]) == 0
    assert f.read_bytes() == raw
    with pytest.raises(SystemExit):  # neither a name nor a file
        zp.main([])


def test_coarse_delta_moves_each_weight_at_most_one_step_and_packs_smaller():
    """coarse_delta(k=1): every F16 weight within one fp16 step of the fine-tune's (|change| <= 2**-10 relative),
    an even distance from the base in the codec's numeric order, other tensors untouched, and a smaller pack."""
    g = torch.Generator().manual_seed(2)
    base = {f"w{i}": torch.randn(128, 128, generator=g).half() for i in range(3)}
    ft = {k: (v.float() + 0.02 * torch.randn(v.shape, generator=g)).half() for k, v in base.items()}
    ft["f32"] = torch.randn(7)
    raw, b = save(ft), save(base)
    out, worst = zp.coarse_delta(raw, b, 1)
    from safetensors.torch import load

    got = load(out)
    assert torch.equal(got["f32"], ft["f32"]) and 0 < worst <= 2.0 ** -10
    for k, v in base.items():
        o_ft = zp._ordered(ft[k].view(torch.int16).numpy().view(np.uint16)).astype(np.int64)
        o_new = zp._ordered(got[k].view(torch.int16).numpy().view(np.uint16)).astype(np.int64)
        o_base = zp._ordered(v.view(torch.int16).numpy().view(np.uint16)).astype(np.int64)
        assert np.abs(o_new - o_ft).max() <= 1 and ((o_new - o_base) % 2 == 0).all()
    assert len(zp.pack(out, b, "base")) < 0.95 * len(zp.pack(raw, b, "base"))
    with pytest.raises(zp.PackError):
        zp.coarse_delta(raw, b, 0)


def test_the_shipped_models_fit_the_package_budget():
    """Every file the zoo ships (packs, plain safetensors, the classifier) together within 16 MB (16e6 bytes)."""
    from eediff.zoo import HERE

    files = [f for f in os.listdir(HERE) if f.endswith((".eedz", ".safetensors"))]
    assert len(files) >= 7  # six diffusion models and the classifier
    assert sum(os.path.getsize(os.path.join(HERE, f)) for f in files) <= 16_000_000
