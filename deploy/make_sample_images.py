#!/usr/bin/env python
"""Write the bundled sample images (monitor/assets/samples/) and their manifest.

    .venv/bin/python deploy/make_sample_images.py

28x28 greyscale PNGs for the demo classifier:

* id:  Fashion-MNIST test images, two per class (the first two of each class in the test split);
* ood: scikit-learn digits (8x8, upscaled), uniform noise U(0, 1), Gaussian noise
       (mean 0.5, std 0.25, clipped to [0, 1]), and crops of scikit-image textures
       (brick, grass, gravel), downscaled 3x.

Deterministic (fixed seed). Needs Fashion-MNIST (`apt-get install -y dataset-fashion-mnist`),
scikit-learn and scikit-image (the test extra). manifest.csv lists file, kind, source, detail.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor import fashion_mnist  # noqa: E402
from monitor.classifiers import ASSETS_DIR  # noqa: E402

SIZE = 28
SEED = 20240607
PER_CLASS = 2
DIGITS = 6
NOISE_EACH = 4
TEXTURE_CROPS = 2  # per texture


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def to_png(array01: np.ndarray, path: Path) -> None:
    pixels = np.clip(np.round(array01 * 255.0), 0, 255).astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path, format="PNG", optimize=True)


def shrink(array01: np.ndarray) -> np.ndarray:
    image = Image.fromarray(np.clip(np.round(array01 * 255.0), 0, 255).astype(np.uint8), mode="L")
    return np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR / "samples")
    args = parser.parse_args(argv)
    out = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.png"):
        old.unlink()
    rng = np.random.default_rng(SEED)
    rows: list[dict[str, str]] = []

    def add(kind: str, name: str, array01: np.ndarray, source: str, detail: str) -> None:
        file = f"{kind}-{len(rows):02d}-{slug(name)}.png"
        to_png(array01, out / file)
        rows.append({"file": file, "kind": kind, "source": source, "detail": detail})

    images, labels = fashion_mnist.load("test")
    for label, name in enumerate(fashion_mnist.CLASS_NAMES):
        for index in np.flatnonzero(labels == label)[:PER_CLASS]:
            add("id", name, images[index] / 255.0, "fashion-mnist-test", f"index {index}, class {label} {name}")

    from sklearn.datasets import load_digits

    digits = load_digits()
    for index in range(DIGITS):
        small = Image.fromarray((digits.images[index] / 16.0 * 255).astype(np.uint8), mode="L")
        big = np.asarray(small.resize((SIZE, SIZE), Image.Resampling.BILINEAR), dtype=np.float64) / 255.0
        add("ood", f"digit {digits.target[index]}", big, "sklearn-digits", f"index {index}, digit {digits.target[index]}")

    for draw in range(NOISE_EACH):
        add("ood", "uniform noise", rng.uniform(0.0, 1.0, (SIZE, SIZE)), "uniform-noise", f"U(0, 1), draw {draw}")
    for draw in range(NOISE_EACH):
        gaussian = np.clip(rng.normal(0.5, 0.25, (SIZE, SIZE)), 0.0, 1.0)
        add("ood", "gaussian noise", gaussian, "gaussian-noise", f"N(0.5, 0.25^2) clipped, draw {draw}")

    import skimage.data

    for texture in ("brick", "grass", "gravel"):
        full = getattr(skimage.data, texture)().astype(np.float64) / 255.0
        for _ in range(TEXTURE_CROPS):
            top, left = (int(v) for v in rng.integers(0, full.shape[0] - 3 * SIZE, 2))
            crop = full[top : top + 3 * SIZE, left : left + 3 * SIZE]
            add("ood", texture, shrink(crop), f"skimage-{texture}", f"crop at ({top}, {left}), 84x84 -> 28x28")

    with open(out / "manifest.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["file", "kind", "source", "detail"])
        writer.writeheader()
        writer.writerows(rows)
    kinds = {k: sum(r["kind"] == k for r in rows) for k in ("id", "ood")}
    print(f"wrote {len(rows)} images to {out} ({kinds['id']} id, {kinds['ood']} ood) and manifest.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main())
