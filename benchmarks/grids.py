"""results/fmnist_grids.png: each shipped architecture at full depth, at its D4 schedule zero-shot, and ASE
fine-tuned for D4, with the same seeds and labels. Usage: python benchmarks/grids.py"""

import subprocess
import sys
import tempfile

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from PIL import Image

ROWS = [[("dit-fmnist", "full", "dit-fmnist, full depth"),
         ("dit-fmnist", "D4-DiT", "dit-fmnist, D4-DiT zero-shot"),
         ("dit-fmnist-D4", "D4-DiT", "dit-fmnist-D4 (ASE fine-tuned), D4-DiT")],
        [("uvit-fmnist", "full", "uvit-fmnist, full depth"),
         ("uvit-fmnist", "D4-U-ViT", "uvit-fmnist, D4-U-ViT zero-shot"),
         ("uvit-fmnist-D4", "D4-U-ViT", "uvit-fmnist-D4 (ASE fine-tuned), D4-U-ViT")]]

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as d:
        fig, axes = plt.subplots(len(ROWS), 3, figsize=(12, 4.4 * len(ROWS)))
        for r, row in enumerate(ROWS):
            for i, (model, sched, title) in enumerate(row):
                out = f"{d}/{r}-{i}.png"
                subprocess.run([sys.executable, "-m", "eediff.cli", "sample", "--model", model, "--schedule", sched, "--sampler",
                                "dpm-solver++", "--steps", "20", "-n", "40", "--batch-size", "40", "--seed", "0", "--out", out,
                                "--no-progress"], check=True)
                axes[r][i].imshow(Image.open(out), cmap="gray")
                axes[r][i].set_title(title, fontsize=10)
                axes[r][i].axis("off")
        fig.suptitle("Same seeds and labels, DPM-Solver++ 20 steps (python benchmarks/grids.py)", fontsize=10)
        fig.tight_layout()
        fig.savefig("results/fmnist_grids.png", dpi=100)
