"""Real parts for the stream's unit tests: a tiny classifier, a real SQLite store, encoded test images."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

from monitor.indicators import Scorer
from monitor.store import Store, connect, upgrade

INPUT_SHAPE = (1, 8, 8)


def tiny_classifier() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    with torch.no_grad():  # non-trivial running statistics, as a trained model has
        model[1].running_mean.uniform_(-0.2, 0.2)
        model[1].running_var.uniform_(0.5, 1.5)
    return model.eval()


def tiny_scorer() -> Scorer:
    scorer = Scorer(tiny_classifier(), mean=(0.5,), std=(0.25,), input_shape=INPUT_SHAPE)
    scorer.calibrate(n=64, progress=False)
    return scorer


def sqlite_store(path: Path) -> Store:
    engine = connect(f"sqlite:///{path}")
    upgrade(engine)
    return Store(engine)


def png(side: int = 8, seed: int = 0, mode: str = "L") -> bytes:
    rng = np.random.default_rng(seed)
    channels = {"L": (side, side), "RGB": (side, side, 3)}[mode]
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, channels, dtype=np.uint8), mode).save(buffer, format="PNG")
    return buffer.getvalue()


def npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def corpus() -> dict[str, tuple[bytes, str | None]]:
    """Message name -> (value, expected reject reason or None when it must be scored)."""
    valid = png(seed=1)
    return {
        "valid": (valid, None),
        "valid-npy": (npy(np.full((8, 8), 0.5, dtype=np.float32)), None),
        "wrong-size": (png(side=20, seed=2, mode="RGB"), None),  # resized and made grey, then scored
        "corrupt": (b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "corrupt"),
        "empty": (b"", "empty"),
        "truncated": (valid[: len(valid) // 2], "truncated"),
        "not-an-image": (b"hello, world", "unknown_format"),
        "oversized": (png(side=64, seed=3), "too_large"),  # above the 2000-byte limit the tests set
        "nan-array": (npy(np.full((8, 8), np.nan, dtype=np.float32)), "non_finite"),
    }
