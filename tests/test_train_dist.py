"""The same `eediff train` command as two CPU processes (gloo) through `accelerate launch`: ranks stay identical."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

HERE = os.path.dirname(__file__)
SAMPLE = os.path.join(HERE, "data", "fmnist_train_sample.npz")
TINY_DIT = json.dumps(dict(patch_size=4, hidden_size=32, depth=4, num_heads=4))
ACCELERATE = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or shutil.which("accelerate")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(ACCELERATE is None, reason="accelerate's launcher is not installed")
def test_two_cpu_processes_hold_identical_weights(tmp_path):
    out = tmp_path / "run"
    # `--multi_gpu` selects accelerate's torchrun-based launcher; on a machine without GPUs the processes
    # come up as MULTI_CPU with the gloo backend (`--cpu` alone would start a single process).
    cmd = [ACCELERATE, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(free_port()), "-m", "eediff.cli",
           "train", "--dataset", SAMPLE, "--model-config", TINY_DIT, "--steps", "6", "--batch-size", "16", "--lr", "1e-3",
           "--schedule", "4,2", "--save-every", "3", "--log-every", "3", "--sample-every", "-1", "--device", "cpu",
           "--no-progress", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    hashes = json.load(open(out / "rank_hashes.json"))["hashes"]
    assert len(hashes) == 2 and hashes[0] == hashes[1]
    ck = out / "checkpoints" / "step-00000006"
    assert (ck / "rng-rank0.pt").exists() and (ck / "rng-rank1.pt").exists()
    state = json.load(open(ck / "state.json"))
    assert state["world_size"] == 2 and (state["epoch"], state["index"]) == (0, 6 * 16)  # the global data position
    # the per-rank random streams differ (each rank drew its own timesteps and noise)
    r0, r1 = (torch.load(ck / f"rng-rank{r}.pt", weights_only=True) for r in range(2))
    assert not torch.equal(r0["generators"]["noise"], r1["generators"]["noise"])
    # the exported EMA equals the checkpointed one
    final, ema = load_file(str(out / "final.safetensors")), load_file(str(ck / "ema.safetensors"))
    assert all(torch.equal(final[k], ema[k]) for k in final)
