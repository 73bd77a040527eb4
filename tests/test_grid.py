"""Sample grids: plain tiling, and the class-labelled layout (one named column per class)."""

import numpy as np
import torch
from PIL import Image

from eediff.generate import save_grid, to_uint8


def test_labelled_grid_puts_each_class_in_its_column(tmp_path):
    torch.manual_seed(0)
    imgs = torch.rand(7, 1, 28, 28) * 2 - 1
    labels = torch.tensor([0, 2, 0, 2, 2, 5, 0])
    path = str(tmp_path / "g.png")
    save_grid(imgs, path, labels=labels, class_names=[f"class {i}" for i in range(10)])
    g = np.asarray(Image.open(path))
    scale, pad, head = 3, 2, 18  # tiles upscaled to >= 64 px
    assert g.shape == (head + 3 * (84 + pad) + pad, 3 * (84 + pad) + pad)  # 3 rows (class 0 and 2 have 3), classes 0, 2, 5
    arr = to_uint8(imgs)[..., 0]
    for col, cls in enumerate([0, 2, 5]):
        for row, i in enumerate([i for i in range(7) if int(labels[i]) == cls]):
            y0, x0 = head + pad + row * (84 + pad), pad + col * (84 + pad)
            assert np.array_equal(g[y0:y0 + 84:scale, x0:x0 + 84:scale], arr[i])
    assert (g[:head] < 128).any()  # the names are drawn


def test_plain_grid_and_jpeg(tmp_path):
    imgs = torch.zeros(5, 3, 8, 8)
    save_grid(imgs, str(tmp_path / "g.jpg"), nrow=5)
    with Image.open(tmp_path / "g.jpg") as im:
        assert im.format == "JPEG" and im.size == (5 * 10 + 2, 12)
