"""Hostile and unusual image bytes, as real encoders write them (PIL, NumPy) and patched where an
attacker would patch them: the standing corpus of the imaging unit tests and of the message suite
(tests/integration/test_daemon_hostile_messages.py)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def gradient(height: int = 24, width: int = 16, mode: str = "RGB") -> Image.Image:
    """A smooth picture, taller than wide, whose top and bottom differ (orientation shows)."""
    rows = np.linspace(0, 255, height)[:, None] * np.ones((1, width))
    cols = np.ones((height, 1)) * np.linspace(0, 255, width)[None, :]
    rgb = np.stack([rows, cols, 255 - rows], axis=-1).round().astype(np.uint8)
    return Image.fromarray(rgb, "RGB").convert(mode)


def npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


# --- pixel bombs: a header announcing width x height pixels, a few bytes behind it ----------------


def png_bomb(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_bomb(width: int, height: int) -> bytes:
    """A real baseline JPEG whose SOF0 frame header is patched to announce width x height."""
    data = bytearray(encoded(gradient(), "JPEG"))
    sof = data.index(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, height, width)  # FFC0, length (2), precision (1), height, width
    return bytes(data)


def webp_bomb(width: int, height: int) -> bytes:
    """A real lossless WebP whose VP8L header is patched to width x height (14 bits each, <= 16384)."""
    data = bytearray(encoded(gradient(), "WEBP", lossless=True))
    vp8l = data.index(b"VP8L") + 8  # chunk tag, chunk size, then the 0x2f signature byte
    (bits,) = struct.unpack_from("<I", data, vp8l + 1)
    bits = (bits & ~((1 << 28) - 1)) | (width - 1) | ((height - 1) << 14)
    struct.pack_into("<I", data, vp8l + 1, bits)
    return bytes(data)


def bmp_bomb(width: int, height: int) -> bytes:
    data = bytearray(encoded(gradient(), "BMP"))
    struct.pack_into("<ii", data, 18, width, height)  # BITMAPINFOHEADER: width, height
    return bytes(data)


def npy_bomb(width: int, height: int) -> bytes:
    """A .npy header announcing a height x width uint8 array, with one data byte."""
    header = npy(np.zeros((1, 1), dtype=np.uint8))
    return header.replace(b"(1, 1)", f"({height}, {width})".encode())


# --- unusual but valid pictures ---------------------------------------------------------------------


def exif_with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    return exif.tobytes()


def exif_rotated_jpeg() -> bytes:
    """A JPEG stored sideways with EXIF orientation 6 (display rotated 90 degrees clockwise)."""
    return encoded(gradient(), "JPEG", quality=95, exif=exif_with_orientation(6))


def cmyk_jpeg() -> bytes:
    return encoded(gradient(mode="CMYK"), "JPEG", quality=95)


def palette_png_with_transparency() -> bytes:
    image = gradient().convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    return encoded(image, "PNG", transparency=0)


def sixteen_bit_png() -> bytes:
    values = (np.linspace(0, 65535, 24 * 16).reshape(24, 16)).astype(np.uint16)
    return encoded(Image.fromarray(values), "PNG")


def animated_gif() -> bytes:
    frames = [gradient(mode="P"), gradient(mode="P").rotate(90)]
    return encoded(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def tiff() -> bytes:
    return encoded(gradient(), "TIFF")


def pickled_npy() -> bytes:
    """A .npy of Python objects: loading it with pickle allowed would run code."""
    return npy(np.array([{"not": "pixels"}, print], dtype=object), allow_pickle=True)
