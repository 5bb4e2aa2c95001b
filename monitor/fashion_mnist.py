"""Fashion-MNIST from the gzipped IDX files of Debian's `dataset-fashion-mnist` package.

Used to train and check the bundled demo classifier and to cut the in-distribution sample
images; nothing is downloaded. Install the data with `apt-get install -y dataset-fashion-mnist`.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from monitor.errors import InputError

FASHION_MNIST_DIR = Path(os.environ.get("MONITOR_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

# The held-out-classes split: models trained without Sandal (5) and Ankle boot (9) face those
# test images as near-OOD (footwear like the Sneakers they know).
HOLDOUT_CLASSES: tuple[int, ...] = (5, 9)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def available(root: Path | str = FASHION_MNIST_DIR) -> bool:
    """True when both splits are on disk."""
    return all((Path(root) / name).is_file() for pair in _FILES.values() for name in pair)


def _read_idx(path: Path, expected_magic: int, header_ints: int) -> tuple[np.ndarray, tuple[int, ...]]:
    with gzip.open(path, "rb") as handle:
        raw = handle.read()
    header = np.frombuffer(raw[: 4 * header_ints], dtype=">u4")
    if int(header[0]) != expected_magic:
        raise InputError(f"{path}: not an IDX file of the expected kind (magic {int(header[0]):#x})")
    dims = tuple(int(d) for d in header[1:])
    data = np.frombuffer(raw[4 * header_ints :], dtype=np.uint8)
    if data.size != int(np.prod(dims)):
        raise InputError(f"{path}: {data.size} bytes of data for shape {dims}; the file is damaged")
    return data.reshape(dims), dims


def load(split: str, root: Path | str = FASHION_MNIST_DIR) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28], labels int64 [N]) of the 'train' or 'test' split."""
    if split not in _FILES:
        raise InputError(f"Fashion-MNIST split must be 'train' or 'test', not {split!r}")
    root = Path(root)
    if not available(root):
        raise InputError(
            f"Fashion-MNIST is not under {root}: run `apt-get install -y dataset-fashion-mnist` "
            "or set MONITOR_FASHION_MNIST_DIR"
        )
    image_file, label_file = _FILES[split]
    images, _ = _read_idx(root / image_file, 0x00000803, 4)
    labels, _ = _read_idx(root / label_file, 0x00000801, 2)
    if len(images) != len(labels):
        raise InputError(f"{root}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels.astype(np.int64)
