"""Image bytes -> the model's input tensor, with limits against hostile input.

`decode_image(data, input_shape)` returns a float32 tensor [C, H, W] in [0, 1] at the model's
input shape, or raises `ImageRejected` carrying a stable reason code (one of `REJECT_REASONS`)
that the stream sends to the dead-letter topic and stores in the reject row.

* Type: sniffed from magic bytes (PNG, JPEG, WebP, BMP, NumPy .npy); a declared content type
  may confirm it, and one that names another type is rejected (`content_type_mismatch`).
* Arrays (.npy, read with allow_pickle=False): uint8 in [0, 255] or float16/32/64 in [0, 1];
  shapes H x W, H x W x C (last axis <= 4 entries), else C x H x W (first axis <= 4), with an
  optional leading batch axis of 1.
* Channels: grey is repeated to RGB; RGB becomes grey by luminance (ITU-R 601-2:
  0.299 R + 0.587 G + 0.114 B, PIL's "L"); alpha is dropped.
* Size: resized to the model's H x W with antialiased bilinear interpolation (PIL's BILINEAR
  for images, torch's matching `antialias=True` bilinear for arrays); the aspect ratio is not kept.
* EXIF orientation: ignored by default, as torchvision's `decode_image`/`read_image` and PIL's
  `Image.open` do (the pixels as stored); `apply_exif_orientation=True` turns the picture upright
  first, as `PIL.ImageOps.exif_transpose` does (`[imaging] apply_exif_orientation`).
"""

from __future__ import annotations

import io
import logging
import math
import re
import struct
import warnings
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFile, ImageOps

from monitor.errors import InputError
from monitor.settings import ImagingSettings

log = logging.getLogger(__name__)

REJECT_REASONS: tuple[str, ...] = (
    "empty",  # no bytes at all
    "too_large",  # more bytes than limits.max_bytes
    "unknown_format",  # magic bytes of none of PNG, JPEG, WebP, BMP, .npy
    "content_type_mismatch",  # the declared content type names another (or no supported) type
    "corrupt",  # the decoder refuses the data
    "truncated",  # the data ends before the image does
    "too_many_pixels",  # width x height above limits.max_pixels (checked before decoding)
    "bad_channels",  # a channel count that cannot become the model's
    "bad_array",  # .npy with an unsupported dtype, rank, size or value range
    "non_finite",  # NaN or infinity in a float array
)

FORMATS: tuple[str, ...] = ("png", "jpeg", "webp", "bmp", "npy")

# Declared content types that confirm a sniffed format (parameters such as '; q=1' are ignored).
CONTENT_TYPES: dict[str, str] = {
    "image/png": "png",
    "image/x-png": "png",
    "image/jpeg": "jpeg",
    "image/jpg": "jpeg",
    "image/pjpeg": "jpeg",
    "image/webp": "webp",
    "image/bmp": "bmp",
    "image/x-bmp": "bmp",
    "image/x-ms-bmp": "bmp",
    "application/x-npy": "npy",
    "application/npy": "npy",
    "application/x-numpy": "npy",
}
# Declared types that say nothing about the content: treated as if no type was declared.
UNSPECIFIC_CONTENT_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})

_PIL_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP", "bmp": "BMP"}
_LUMINANCE = (0.299, 0.587, 0.114)
# Arrays' float values may overshoot [0, 1] by rounding; more than this is a caller's mistake.
_FLOAT_RANGE_TOLERANCE = 1e-4
# The configured max_pixels decides, checked on the header before decoding; Pillow's warning for
# pictures between its two limits would only repeat it. Its error (twice its limit) is still caught.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
_PIL_BOMB_PIXELS = re.compile(r"\((\d+) pixels\)")


class ImageRejected(InputError):
    """An input that cannot become a valid model input; `reason` is one of REJECT_REASONS."""

    def __init__(self, reason: str, detail: str):
        if reason not in REJECT_REASONS:
            raise ValueError(f"unknown reject reason {reason!r}")
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


# The defaults are [imaging]'s, so the daemon and the offline scorer refuse the same inputs.
_CONFIGURED = ImagingSettings()


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on one input; anything above is rejected before it costs memory."""

    max_bytes: int = _CONFIGURED.max_bytes
    max_pixels: int = _CONFIGURED.max_pixels

    def __post_init__(self):
        for name in ("max_bytes", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"image limit {name} must be a positive integer, not {value!r}")


DEFAULT_LIMITS = ImageLimits()


def sniff_format(data: bytes) -> str | None:
    """The format the magic bytes announce ('png', 'jpeg', 'webp', 'bmp', 'npy'), or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data.startswith(b"BM"):
        return "bmp"
    if data.startswith(b"\x93NUMPY"):
        return "npy"
    return None


def _confirm_content_type(sniffed: str, content_type: str | bytes | None) -> None:
    if content_type is None:
        return
    if isinstance(content_type, bytes):
        content_type = content_type.decode("latin-1")
    declared = content_type.split(";", 1)[0].strip().lower()
    if declared in UNSPECIFIC_CONTENT_TYPES:
        return
    declared_format = CONTENT_TYPES.get(declared)
    if declared_format != sniffed:
        said = f"names {declared_format}" if declared_format else "is not a supported image type"
        raise ImageRejected(
            "content_type_mismatch",
            f"declared content type {content_type!r} {said}, but the bytes are {sniffed}",
        )


def _input_shape(input_shape) -> tuple[int, int, int]:
    shape = getattr(input_shape, "input_shape", input_shape)  # a Preprocessing works too
    channels, height, width = (int(v) for v in shape)
    return channels, height, width


def decode_image(
    data: bytes | bytearray | memoryview,
    input_shape,
    *,
    content_type: str | bytes | None = None,
    limits: ImageLimits = DEFAULT_LIMITS,
    apply_exif_orientation: bool = False,
) -> torch.Tensor:
    """Bytes of one image -> float32 tensor [C, H, W] in [0, 1] at `input_shape` (C, H, W),
    or `ImageRejected`. `input_shape` may also be a `Preprocessing`. `apply_exif_orientation`:
    turn a picture upright by its EXIF orientation first (off: as torchvision decodes)."""
    shape = _input_shape(input_shape)
    if data is None or len(data) == 0:
        raise ImageRejected("empty", "the input has no bytes")
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes, more than the limit of {limits.max_bytes}")
    data = bytes(data)
    sniffed = sniff_format(data)
    if sniffed is None:
        raise ImageRejected(
            "unknown_format",
            f"the first bytes {data[:8]!r} are not PNG, JPEG, WebP, BMP or NumPy .npy",
        )
    _confirm_content_type(sniffed, content_type)
    if sniffed == "npy":
        tensor = _array_to_tensor(_read_npy(data, limits), shape[0])
    else:
        tensor = _decode_picture(data, sniffed, shape, limits, apply_exif_orientation)
    return _resize(tensor, shape)


def read_limited(path, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """A file's bytes, reading at most one byte past the limit (then `too_large`)."""
    with open(path, "rb") as handle:
        data = handle.read(limits.max_bytes + 1)
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", f"{path}: more than the limit of {limits.max_bytes} bytes")
    return data


def decode_file(path, input_shape, *, limits: ImageLimits = DEFAULT_LIMITS,
                apply_exif_orientation: bool = False) -> torch.Tensor:
    """`decode_image` of a file's bytes (its name's extension is not trusted)."""
    return decode_image(read_limited(path, limits), input_shape, limits=limits,
                        apply_exif_orientation=apply_exif_orientation)


def stack_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Decoded images [C, H, W] -> one batch [N, C, H, W]; they must share a shape."""
    if not images:
        raise InputError("cannot stack an empty list of images into a batch")
    first = tuple(images[0].shape)
    for index, image in enumerate(images):
        if image.dim() != 3 or tuple(image.shape) != first:
            raise InputError(
                f"image {index} has shape {tuple(image.shape)}; every image of a batch must be {first} (C, H, W)"
            )
    return torch.stack(list(images))


# --- pictures (PIL) ------------------------------------------------------------------------


def _pil_failure(error: Exception) -> ImageRejected:
    text = str(error) or type(error).__name__
    lowered = text.lower()
    if "truncated" in lowered or "end of file" in lowered or "premature end" in lowered or isinstance(error, EOFError):
        return ImageRejected("truncated", f"the data ends before the image does ({text})")
    return ImageRejected("corrupt", f"the decoder refused the data ({type(error).__name__}: {text})")


def _too_many_pixels(error: Image.DecompressionBombError, limits: ImageLimits) -> ImageRejected:
    """Pillow refused the header itself (over twice Image.MAX_IMAGE_PIXELS): say it against the
    configured limit, which is what the operator set, with Pillow's own only when it is the lower."""
    found = _PIL_BOMB_PIXELS.search(str(error))
    pixels = int(found.group(1)) if found else None
    if pixels is None or pixels > limits.max_pixels:
        counted = f"{pixels} pixels" if pixels is not None else "the image's size"
        return ImageRejected("too_many_pixels", f"{counted}, more than the limit of {limits.max_pixels}")
    pil_limit = 2 * (Image.MAX_IMAGE_PIXELS or 0)
    return ImageRejected("too_many_pixels", f"{pixels} pixels: within the limit of {limits.max_pixels}, but above "
                                            f"the {pil_limit} pixels the picture decoder accepts at most")


def _decode_picture(data: bytes, sniffed: str, shape: tuple[int, int, int], limits: ImageLimits,
                    apply_exif_orientation: bool = False) -> torch.Tensor:
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # Something in this process switched PIL to padding truncated images with grey.
        log.warning("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True: truncated images may pass as whole ones")
    channels, height, width = shape
    if sniffed == "webp":
        declared = int.from_bytes(data[4:8], "little") + 8
        if declared > len(data):
            raise ImageRejected("truncated", f"the WebP container announces {declared} bytes, {len(data)} arrived")
    try:
        # Only the sniffed format's parser runs: no guessing among PIL's many plugins.
        with Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[sniffed]]) as image:
            pixels = image.size[0] * image.size[1]
            # The per-call limit, checked on the header before any pixel is decoded.
            if pixels > limits.max_pixels:
                raise ImageRejected(
                    "too_many_pixels",
                    f"{image.size[0]}x{image.size[1]} = {pixels} pixels, more than the limit of {limits.max_pixels}",
                )
            if pixels == 0:
                raise ImageRejected("corrupt", f"the image has no pixels ({image.size[0]}x{image.size[1]})")
            image.load()  # decode now, so truncation and corruption surface here
            if apply_exif_orientation:
                ImageOps.exif_transpose(image, in_place=True)
            return _picture_to_tensor(image, channels, (height, width))
    except ImageRejected:
        raise
    except Image.UnidentifiedImageError:
        raise ImageRejected("corrupt", f"not a readable {sniffed.upper()} image behind its magic bytes") from None
    except Image.DecompressionBombError as error:
        raise _too_many_pixels(error, limits) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, KeyError, struct.error) as error:
        raise _pil_failure(error) from None
    except MemoryError:
        raise ImageRejected("too_many_pixels", "decoding the image ran out of memory") from None


def _picture_to_tensor(image: Image.Image, channels: int, size: tuple[int, int]) -> torch.Tensor:
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        # 16-bit grey (PNG): scale by 65535 and go the array way.
        array = np.asarray(image, dtype=np.float64) / 65535.0
        return _array_to_tensor(np.clip(array, 0.0, 1.0).astype(np.float32), channels)
    if channels == 1:
        target_mode = "L"  # luminance, ITU-R 601-2
    elif channels == 3:
        target_mode = "RGB"
    elif channels == 4:
        target_mode = "RGBA"
    else:
        raise ImageRejected(
            "bad_channels",
            f"the model takes {channels} channels; pictures give 1, 3 or 4, send a .npy array instead",
        )
    if image.mode not in ("L", "RGB", "RGBA") and "A" in image.mode and target_mode != "RGBA":
        image = image.convert("RGBA")  # palette/LA with transparency: keep colours, drop alpha next
    converted = image.convert(target_mode) if image.mode != target_mode else image
    if converted.size[::-1] != size:
        # PIL's BILINEAR widens its kernel when shrinking, i.e. it is antialiased.
        converted = converted.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    array = np.asarray(converted, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    # One NumPy pass to contiguous [C, H, W] float32 (correctly rounded, as torch's division):
    # per image, in the decode threads, four torch operations cost several times more.
    pixels = np.empty((array.shape[2], array.shape[0], array.shape[1]), dtype=np.float32)
    np.divide(array.transpose(2, 0, 1), 255.0, out=pixels)
    return torch.from_numpy(pixels)


# --- arrays (.npy) -------------------------------------------------------------------------


def _read_npy(data: bytes, limits: ImageLimits) -> np.ndarray:
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            array_shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            array_shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ImageRejected("bad_array", f".npy format version {version} is not supported (1.0 and 2.0 are)")
    except ImageRejected:
        raise
    except Exception as error:  # numpy parses the header with ast/tokenize: any failure means a bad header
        lowered = str(error).lower()
        reason = "truncated" if "ended" in lowered or "eof" in lowered or "truncat" in lowered else "corrupt"
        raise ImageRejected(reason, f".npy header cannot be read ({error})") from None
    if dtype.hasobject:
        raise ImageRejected("bad_array", ".npy holds Python objects; only numeric arrays are read (allow_pickle=False)")
    if not (dtype == np.uint8 or dtype.kind == "f"):
        raise ImageRejected("bad_array", f".npy dtype {dtype} is not supported: send uint8 in [0, 255] or float in [0, 1]")
    height, width = _spatial_size(array_shape)
    if height * width > limits.max_pixels:
        raise ImageRejected(
            "too_many_pixels",
            f"array of shape {array_shape}: {height * width} pixels, more than the limit of {limits.max_pixels}",
        )
    expected = math.prod(array_shape) * dtype.itemsize
    remaining = len(data) - stream.tell()
    if remaining < expected:
        raise ImageRejected("truncated", f".npy of shape {array_shape} needs {expected} data bytes, has {remaining}")
    if remaining > expected:
        raise ImageRejected("corrupt", f".npy of shape {array_shape} has {remaining - expected} bytes after its data")
    array = np.frombuffer(data, dtype=dtype, count=math.prod(array_shape), offset=stream.tell())
    return array.reshape(array_shape, order="F" if fortran_order else "C")


def _spatial_size(array_shape: tuple[int, ...]) -> tuple[int, int]:
    """(H, W) of an accepted array shape, or bad_array / bad_channels."""
    shape = tuple(array_shape)
    if len(shape) == 4:
        if shape[0] != 1:
            raise ImageRejected("bad_array", f"array of shape {shape}: one image per message (a batch axis must be 1)")
        shape = shape[1:]
    if len(shape) == 2:
        height, width = shape
    elif len(shape) == 3:
        if shape[-1] <= 4:
            height, width = shape[0], shape[1]
        elif shape[0] <= 4:
            height, width = shape[1], shape[2]
        else:
            raise ImageRejected(
                "bad_channels",
                f"array of shape {shape}: neither H x W x C nor C x H x W with at most 4 channels",
            )
    else:
        raise ImageRejected("bad_array", f"array of shape {shape}: expected H x W, H x W x C or C x H x W")
    if height < 1 or width < 1:
        raise ImageRejected("bad_array", f"array of shape {tuple(array_shape)} has no pixels")
    return int(height), int(width)


def _channels_first(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        array = array[0]
    if array.ndim == 2:
        return array[None]
    if array.shape[-1] <= 4:
        return np.moveaxis(array, -1, 0)
    return array


def _array_to_tensor(array: np.ndarray, channels: int) -> torch.Tensor:
    """uint8 or float array (any accepted layout) -> float32 [channels, H, W] in [0, 1]."""
    array = _channels_first(array)
    if array.dtype == np.uint8:
        values = array.astype(np.float32) / 255.0
    else:
        values = array.astype(np.float32)
        if not np.isfinite(values).all():
            raise ImageRejected("non_finite", f"the array holds {int((~np.isfinite(values)).sum())} NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < -_FLOAT_RANGE_TOLERANCE or high > 1 + _FLOAT_RANGE_TOLERANCE:
            raise ImageRejected(
                "bad_array",
                f"float values must lie in [0, 1] (uint8 for [0, 255]); found {low:g} to {high:g}",
            )
        values = np.clip(values, 0.0, 1.0)
    have = values.shape[0]
    if have == 4 and channels != 4:
        values, have = values[:3], 3  # drop alpha
    if have == channels:
        pass
    elif have == 1 and channels == 3:
        values = np.repeat(values, 3, axis=0)
    elif have == 3 and channels == 1:
        weights = np.asarray(_LUMINANCE, dtype=np.float32)[:, None, None]
        values = (values * weights).sum(axis=0, keepdims=True)
    else:
        raise ImageRejected("bad_channels", f"the array has {have} channels; the model takes {channels}")
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))


def _resize(tensor: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    _, height, width = shape
    if tuple(tensor.shape[1:]) == (height, width):
        return tensor.contiguous()
    resized = F.interpolate(tensor[None], size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return resized[0].clamp_(0.0, 1.0)
