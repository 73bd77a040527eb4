"""FD-FMNIST-Classifier: a cheap Fashion-MNIST Fréchet distance (*not* FID).

The Fréchet distance of :mod:`eediff.eval.fid` computed in the 128-d penultimate layer of a small CNN
trained on Fashion-MNIST (:class:`FMNISTClassifier`; weights shipped as
``eediff/zoo/fmnist_classifier.safetensors``) instead of Inception pool_3.  Cheap on CPU; numbers are not
comparable with FID values from the literature.

Command line (``eediff fid --metric fd-classifier`` / ``eediff eval --metric fd-classifier`` use it)::

    python -m eediff.eval.classifier train-classifier --epochs 2   # (re)trains the shipped weights
    python -m eediff.eval.classifier fp16 --out FILE               # fp16 copy of the Inception network
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..io import atomic_write
from .fid import file_sha256, fid_from_images, load_fashion_mnist, save_inception_fp16, to_nchw_uint8

__all__ = [
    "FMNISTClassifier", "ClassifierFeatures", "train_fmnist_classifier", "save_fmnist_classifier",
    "load_fmnist_classifier", "fd_classifier", "FD_CLASSIFIER_NAME", "DEFAULT_CLASSIFIER_PATH",
]

FD_CLASSIFIER_NAME = "FD-FMNIST-Classifier"
DEFAULT_CLASSIFIER_PATH = Path(__file__).resolve().parent.parent / "zoo" / "fmnist_classifier.safetensors"


def _to_gray28(images: Any) -> torch.Tensor:
    """uint8 images -> float32 (N, 1, 28, 28) in [-1, 1] (RGB averaged, other sizes resized with antialias)."""
    x = to_nchw_uint8(images).to(torch.float32)
    if x.shape[1] == 3:
        x = x.mean(1, keepdim=True)
    if x.shape[-2:] != (28, 28):
        x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    return x / 127.5 - 1.0


class FMNISTClassifier(nn.Module):
    """Small CNN for Fashion-MNIST; ``features()`` is the 128-d penultimate (post-ReLU) layer."""

    feature_dim = 128

    def __init__(self, width: int = 16):
        super().__init__()
        w = width  # small on purpose: one epoch on 60k images is ~50 s on a 2-core CPU

        def block(cin, cout, stride=1):
            return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                    nn.ReLU(inplace=True)]

        self.body = nn.Sequential(
            *block(1, w, stride=2),                   # 14x14
            *block(w, 2 * w), nn.MaxPool2d(2),        # 7x7
            *block(2 * w, 2 * w), nn.MaxPool2d(2),    # 3x3
            nn.Flatten(),
            nn.Linear(2 * w * 9, self.feature_dim), nn.ReLU(inplace=True),
        )
        self.drop = nn.Dropout(0.2)
        self.head = nn.Linear(self.feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x: float (N, 1, 28, 28) in [-1, 1]."""
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


def save_fmnist_classifier(model: FMNISTClassifier, out_path: str | os.PathLike, meta: dict | None = None) -> Path:
    """fp16 safetensors of the classifier (integer buffers dropped), written atomically."""
    from safetensors.torch import save_file

    sd = {k: v.detach().cpu().to(torch.float16).contiguous()
          for k, v in model.state_dict().items() if v.is_floating_point()}
    out = Path(out_path)
    atomic_write(out, lambda tmp: save_file(sd, tmp, metadata={k: str(v) for k, v in (meta or {}).items()}))
    return out


def load_fmnist_classifier(path: str | os.PathLike | None = None, device: Any = "cpu") -> FMNISTClassifier:
    from safetensors.torch import load_file

    p = Path(path) if path is not None else DEFAULT_CLASSIFIER_PATH
    if not p.is_file():
        raise FileNotFoundError(f"{FD_CLASSIFIER_NAME} weights not found: {p} "
                                "(train them with `python -m eediff.eval.classifier train-classifier`)")
    model = FMNISTClassifier()
    sd = {k: v.to(torch.float32) for k, v in load_file(str(p)).items()}
    model.load_state_dict(sd, strict=False)  # num_batches_tracked is not stored
    return model.to(device).eval()


@torch.no_grad()
def _classifier_eval(model: FMNISTClassifier, images: np.ndarray, labels: np.ndarray, bs: int = 1000) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(images), bs):
        logits = model(_to_gray28(images[i:i + bs]))
        correct += int((logits.argmax(1).numpy() == labels[i:i + bs]).sum())
    return correct / len(images)


def train_fmnist_classifier(images: Any, labels: Any, epochs: int = 2, out_path: str | os.PathLike | None = None, *,
                            batch_size: int = 128, lr: float = 3e-3, seed: int = 0,
                            test: tuple[Any, Any] | None = None, log: Callable[[str], None] | None = print
                            ) -> tuple[FMNISTClassifier, dict]:
    """Train :class:`FMNISTClassifier` (AdamW + one-cycle LR, flip augmentation) on CPU.

    Returns (model in eval mode, info dict with test accuracy if ``test`` is
    given).  ``out_path`` -> fp16 safetensors via :func:`save_fmnist_classifier`.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x_all = _to_gray28(images)
    y_all = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    model = FMNISTClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps_per_epoch = (len(x_all) + batch_size - 1) // batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(1, epochs * steps_per_epoch))
    t0 = time.time()
    for ep in range(epochs):
        model.train()
        perm = torch.randperm(len(x_all), generator=gen)
        tot, n = 0.0, 0
        for i in range(0, len(perm), batch_size):
            idx = perm[i:i + batch_size]
            xb, yb = x_all[idx], y_all[idx]
            flip = torch.rand(len(idx), generator=gen) < 0.5
            xb = torch.where(flip.view(-1, 1, 1, 1), xb.flip(-1), xb)
            loss = F.cross_entropy(model(xb), yb, label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
            n += len(idx)
        if log:
            log(f"epoch {ep + 1}/{epochs}: loss {tot / n:.4f} ({time.time() - t0:.1f}s)")
    model.eval()
    info: dict[str, Any] = {"epochs": epochs, "train_seconds": round(time.time() - t0, 1), "n_train": len(x_all)}
    if test is not None:
        info["test_accuracy"] = _classifier_eval(model, np.asarray(test[0]), np.asarray(test[1]))
        if log:
            log(f"test accuracy {info['test_accuracy']:.4f}")
    if out_path is not None:
        save_fmnist_classifier(model, out_path, info)
    return model, info


class ClassifierFeatures(nn.Module):
    """uint8 images -> (N, 128) float64 penultimate features of :class:`FMNISTClassifier`."""

    num_features = FMNISTClassifier.feature_dim

    def __init__(self, path: str | os.PathLike | None = None, device: Any = "cpu", batch_size: int = 500,
                 model: FMNISTClassifier | None = None):
        super().__init__()
        if model is not None:
            self.model = model.to(device).eval()
            h = hashlib.sha256()
            for k, v in sorted(model.state_dict().items()):
                h.update(k.encode())
                h.update(v.detach().cpu().to(torch.float32).numpy().tobytes())
            self.identity = f"fmnist-clf-mem-{h.hexdigest()[:16]}"
        else:
            p = Path(path) if path is not None else DEFAULT_CLASSIFIER_PATH
            self.model = load_fmnist_classifier(p, device)
            self.identity = f"fmnist-clf-{file_sha256(p)[:16]}"
        for prm in self.model.parameters():
            prm.requires_grad_(False)
        self.batch_size = int(batch_size)

    def train(self, mode: bool = True) -> "ClassifierFeatures":
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: Any) -> torch.Tensor:
        x = to_nchw_uint8(images)
        dev = next(self.model.parameters()).device
        out = [self.model.features(_to_gray28(x[i:i + self.batch_size]).to(dev)).to(torch.float64)
               for i in range(0, x.shape[0], self.batch_size)]
        if not out:
            return torch.zeros(0, self.num_features, dtype=torch.float64, device=dev)
        return torch.cat(out)


def fd_classifier(real_uint8: Any, fake_uint8: Any, classifier: ClassifierFeatures | None = None,
                  **kw: Any) -> float:
    """FD-FMNIST-Classifier: Fréchet distance in the classifier's penultimate features (not FID).

    Sensitive to class balance and to degradation of real images (blur/noise),
    but pure noise images land near the centre of the feature cloud: real vs
    uniform noise (~90 on balanced sets) scores *lower* than real vs a
    single-class set (~120).  Use FID when garbage samples are a possibility.
    """
    return fid_from_images(real_uint8, fake_uint8, classifier if classifier is not None else ClassifierFeatures(), **kw)


# --------------------------------------------------------------------------------------------
# tiny CLI: python -m eediff.eval.classifier {train-classifier, fp16}
# --------------------------------------------------------------------------------------------

def _main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m eediff.eval.classifier")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train-classifier", help=f"train the {FD_CLASSIFIER_NAME} network on Fashion-MNIST")
    t.add_argument("--epochs", type=int, default=2)
    t.add_argument("--out", default=str(DEFAULT_CLASSIFIER_PATH))
    t.add_argument("--data", default=None, help="folder with the IDX .gz files")
    h = sub.add_parser("fp16", help="write an fp16 copy of the Inception file")
    h.add_argument("--inception", default=None, help="source TorchScript file (default: packaged default_1.pt)")
    h.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    if a.cmd == "train-classifier":
        xtr, ytr = load_fashion_mnist("train", a.data)
        xte, yte = load_fashion_mnist("test", a.data)
        _, info = train_fmnist_classifier(xtr, ytr, a.epochs, a.out, test=(xte, yte))
        print(json.dumps({**info, "out": a.out, "bytes": os.path.getsize(a.out)}))
    else:
        out = save_inception_fp16(a.inception, a.out)
        print(f"wrote {out} ({os.path.getsize(out)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
