"""JPEG messages decoded in batches on the model's device (torchvision's `decode_jpeg`: nvJPEG on a
GPU, libjpeg on the CPU), with the same limits against hostile input as `monitor.imaging`, checked
on the header before any pixel is decoded.

`jpeg_header(data, limits)` reads the frame header (size, components, precision) from the bytes
alone: too many pixels, no pixels or too many bytes is a reject, as on the CPU path. A JPEG that
the device path does not take (progressive or arithmetic-coded, 12-bit, CMYK, or one to be turned
upright by its EXIF orientation) goes the CPU way of `decode_image`, as does every other format.

`assemble(pixels, channels, size, device)` makes one batch [N, C, H, W] in [0, 1] on the device
from a mix of decoded CPU tensors and `DeferredJpeg`s: the CPU tensors through pinned memory
with non-blocking copies, the JPEGs with one batched decode; nothing waits for the device here
(the Scorer's results are the batch's one synchronisation). Resizing on the device is torch's
antialiased bilinear, which agrees with PIL's BILINEAR of the CPU path within rounding.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

from monitor.imaging import ImageLimits, ImageRejected, InputError, decode_image, sniff_format

log = logging.getLogger(__name__)

# Start-of-frame markers and what they say about the coding: only baseline and extended
# sequential Huffman frames (SOF0, SOF1) go to the device decoder.
_SOF_DEVICE = {0xC0, 0xC1}
_SOF_OTHER = {0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length


DEVICE_DECODE_CHOICES = ("auto", "on", "off")


def device_decoding(choice: str, device: torch.device | str) -> bool:
    """`[imaging] device_decode`: "auto" decodes JPEG messages on the model's device when it is a
    GPU; "on" does so on any device (on the CPU, torchvision's batched libjpeg decoder); "off" never."""
    return choice == "on" or (choice == "auto" and torch.device(device).type == "cuda")


@dataclass(frozen=True)
class JpegHeader:
    width: int
    height: int
    components: int
    precision: int
    device_decodable: bool


def jpeg_header(data: bytes, limits: ImageLimits) -> JpegHeader | None:
    """The frame header of a JPEG, checked against `limits`; None when no frame header is found
    before the data ends (the CPU decoder then says what is wrong: truncated or corrupt)."""
    if len(data) > limits.max_bytes:
        raise ImageRejected("too_large", f"{len(data)} bytes, more than the limit of {limits.max_bytes}")
    position, end = 2, len(data)
    while position + 4 <= end:
        if data[position] != 0xFF:
            return None  # not a marker where one must be: let the CPU decoder name it
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in _STANDALONE:
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_DEVICE or marker in _SOF_OTHER:
            if position + 10 > end or length < 8:
                return None
            precision = data[position + 4]
            height = int.from_bytes(data[position + 5:position + 7], "big")
            width = int.from_bytes(data[position + 7:position + 9], "big")
            components = data[position + 9]
            pixels = width * height
            if pixels > limits.max_pixels:
                raise ImageRejected("too_many_pixels",
                                    f"{width}x{height} = {pixels} pixels, more than the limit of {limits.max_pixels}")
            if pixels == 0:
                raise ImageRejected("corrupt", f"the image has no pixels ({width}x{height})")
            return JpegHeader(width, height, components, precision,
                              marker in _SOF_DEVICE and precision == 8 and components in (1, 3))
        if marker in (0xD9, 0xDA):  # end of image, or scan data before any frame header
            return None
        position += 2 + length
    return None


@dataclass(frozen=True)
class DeferredJpeg:
    """A JPEG message that passed its header checks, decoded later with its batch on the device."""

    data: bytes
    header: JpegHeader


def deferring_decoder(decode: Callable[..., torch.Tensor] = decode_image) -> Callable[..., Any]:
    """`decode_image`'s signature; JPEGs the device decodes come back as DeferredJpeg (after every
    check the CPU path makes before decoding), anything else decoded on the CPU as usual."""

    def decode_or_defer(data, input_shape, *, content_type=None, limits: ImageLimits = ImageLimits(),
                        apply_exif_orientation: bool = False):
        channels = int(getattr(input_shape, "input_shape", input_shape)[0])
        if data and not apply_exif_orientation and channels in (1, 3) and sniff_format(bytes(data[:4])) == "jpeg":
            if content_type is None:
                data = bytes(data)
                header = jpeg_header(data, limits)
                if header is not None and header.device_decodable:
                    return DeferredJpeg(data, header)
        return decode(data, input_shape, content_type=content_type, limits=limits,
                      apply_exif_orientation=apply_exif_orientation)

    return decode_or_defer


def _decode_jpegs(items: Sequence[DeferredJpeg], channels: int, device: torch.device) -> list[torch.Tensor]:
    from torchvision.io import ImageReadMode, decode_jpeg

    mode = ImageReadMode.GRAY if channels == 1 else ImageReadMode.RGB
    encoded = [torch.frombuffer(bytearray(item.data), dtype=torch.uint8) for item in items]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torchvision 0.29 announces TorchCodec on every call
        return decode_jpeg(encoded, mode=mode, device=device)


def _fit(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [C, h, w] on the device -> float32 [C, H, W] in [0, 1]."""
    pixels = image.to(torch.float32).div_(255.0)
    if tuple(pixels.shape[1:]) == size:
        return pixels
    return F.interpolate(pixels[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0].clamp_(0.0, 1.0)


def assemble(pixels: Sequence[Any], shape: Sequence[int], device: torch.device | str,
             limits: ImageLimits = ImageLimits()) -> torch.Tensor:
    """One float32 batch [N, C, H, W] on `device` from decoded tensors [C, H, W] and DeferredJpegs.

    When the device decoder refuses a batch (a JPEG whose header passed but whose data is bad), a
    batch of one is decoded by the CPU path instead, which raises ImageRejected with its reason;
    a larger batch raises InputError, so that the caller scores its images one by one.
    """
    device = torch.device(device)
    channels, height, width = (int(v) for v in shape)
    batch = torch.empty((len(pixels), channels, height, width), dtype=torch.float32, device=device)
    deferred = [(index, item) for index, item in enumerate(pixels) if isinstance(item, DeferredJpeg)]
    decoded = [(index, item) for index, item in enumerate(pixels) if not isinstance(item, DeferredJpeg)]
    if decoded:
        host = torch.stack([item for _, item in decoded])
        if device.type == "cuda":
            host = host.pin_memory()  # a copy from pinned memory does not hold up the host thread
        batch[[index for index, _ in decoded]] = host.to(device, non_blocking=True)
    if deferred:
        try:
            images = _decode_jpegs([item for _, item in deferred], channels, device)
        except RuntimeError as error:
            if len(pixels) == 1:
                return decode_image(deferred[0][1].data, (channels, height, width), limits=limits)[None].to(device)
            raise InputError(f"the device's JPEG decoder refused the batch: {error}") from None
        for (index, _), image in zip(deferred, images):
            batch[index] = _fit(image, (height, width))
    return batch
