"""Stored image bytes -> something a browser can show.

PNG, JPEG, WebP and BMP go out as stored. A NumPy .npy array (a valid message format) is
drawn as a PNG for the pages: read with allow_pickle=False, uint8 as is, floats in [0, 1]
scaled to 0..255. Anything else is served as opaque bytes, never as something a browser runs.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

BROWSER_TYPES = frozenset({"image/png", "image/jpeg", "image/webp", "image/bmp", "image/gif"})
NPY_TYPES = frozenset({"application/x-npy", "application/npy", "application/x-numpy"})


class NotDisplayable(ValueError):
    """The stored bytes cannot be drawn; the message says why."""


def array_to_png(data: bytes, max_pixels: int) -> bytes:
    """A .npy array (H x W, H x W x C, C x H x W or 1 x ...; C in 1..4) as PNG bytes."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise NotDisplayable(f"the stored .npy cannot be read ({error})") from None
    if array.ndim == 4 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[0] <= 4 < array.shape[-1]:
        array = np.moveaxis(array, 0, -1)  # C x H x W -> H x W x C
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3 and array.shape[-1] == 2:
        array = array[..., 0]  # no picture has two channels: show the first
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise NotDisplayable(f"an array of shape {array.shape} is not a picture")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise NotDisplayable(f"an array of {array.shape[0] * array.shape[1]} pixels is over the limit of {max_pixels}")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype.kind == "f":
        pixels = (np.clip(np.nan_to_num(array.astype(np.float32)), 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    else:
        raise NotDisplayable(f"arrays of dtype {array.dtype} are not drawn (uint8 or float in [0, 1] are)")
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG")
    return out.getvalue()
