"""results/dit_fmnist_grids.png: the shipped DiT at full depth, at D4-DiT zero-shot, and fine-tuned for D4-DiT,
same seeds and labels. Usage: python benchmarks/grids.py"""

import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

RUNS = [("dit-fmnist", "full", "dit-fmnist, full depth"),
        ("dit-fmnist", "D4-DiT", "dit-fmnist, D4-DiT zero-shot"),
        ("dit-fmnist-D4", "D4-DiT", "dit-fmnist-D4 (ASE fine-tuned), D4-DiT")]

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        fig, axes = plt.subplots(1, 3, figsize=(12, 4.6))
        for i, (model, sched, title) in enumerate(RUNS):
            out = f"{d}/{i}.png"
            subprocess.run([sys.executable, "-m", "eediff.cli", "sample", "--model", model, "--schedule", sched, "--sampler",
                            "dpm-solver++", "--steps", "20", "-n", "40", "--batch-size", "40", "--seed", "0", "--out", out,
                            "--no-progress"], check=True)
            axes[i].imshow(Image.open(out), cmap="gray")
            axes[i].set_title(title, fontsize=10)
            axes[i].axis("off")
        fig.suptitle("Same seeds and labels, DPM-Solver++ 20 steps (python benchmarks/grids.py)", fontsize=10)
        fig.tight_layout()
        fig.savefig("results/dit_fmnist_grids.png", dpi=110)
