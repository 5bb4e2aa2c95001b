"""Bytes -> model input: every format, the content-type check, and each rejection reason."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

from monitor.errors import InputError
from monitor.imaging import (
    REJECT_REASONS,
    ImageLimits,
    ImageRejected,
    decode_file,
    decode_image,
    sniff_format,
    stack_images,
)
from tests import hostile_images as hostile

GREY_28 = (1, 28, 28)
RGB_32 = (3, 32, 32)


def gradient_rgb(height: int = 32, width: int = 32) -> np.ndarray:
    """A smooth RGB uint8 image (survives lossy codecs well)."""
    rows = np.linspace(0, 255, height, dtype=np.float64)[:, None]
    cols = np.linspace(0, 255, width, dtype=np.float64)[None, :]
    red = np.broadcast_to(rows, (height, width))
    green = np.broadcast_to(cols, (height, width))
    blue = (red + green) / 2
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


def encode(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt, **options)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def reason_of(data, shape=RGB_32, **kwargs) -> str:
    with pytest.raises(ImageRejected) as caught:
        decode_image(data, shape, **kwargs)
    assert caught.value.reason in REJECT_REASONS
    assert caught.value.detail
    return caught.value.reason


# --- formats round-trip ------------------------------------------------------------------


@pytest.mark.parametrize(
    "fmt, options, tolerance",
    [
        ("PNG", {}, 1e-6),
        ("BMP", {}, 1e-6),
        ("WEBP", {"lossless": True}, 1e-6),
        ("JPEG", {"quality": 95}, 0.05),
    ],
)
def test_each_picture_format_round_trips_at_the_model_size(fmt, options, tolerance):
    original = gradient_rgb()
    tensor = decode_image(encode(original, fmt, **options), RGB_32)
    assert tensor.dtype == torch.float32 and tuple(tensor.shape) == RGB_32
    expected = torch.from_numpy(original).permute(2, 0, 1).float() / 255
    assert (tensor - expected).abs().mean() < tolerance
    assert 0.0 <= tensor.min() and tensor.max() <= 1.0


def test_sniffing_uses_magic_bytes_not_names():
    assert sniff_format(encode(gradient_rgb(), "PNG")) == "png"
    assert sniff_format(encode(gradient_rgb(), "JPEG")) == "jpeg"
    assert sniff_format(encode(gradient_rgb(), "WEBP")) == "webp"
    assert sniff_format(encode(gradient_rgb(), "BMP")) == "bmp"
    assert sniff_format(npy_bytes(np.zeros((2, 2), np.uint8))) == "npy"
    assert sniff_format(b"GIF89a....") is None


def test_a_file_is_decoded_by_content_whatever_its_extension(tmp_path):
    path = tmp_path / "really_a_png.jpg"
    path.write_bytes(encode(gradient_rgb(), "PNG"))
    assert tuple(decode_file(path, RGB_32).shape) == RGB_32


# --- content type --------------------------------------------------------------------------


def test_a_matching_content_type_confirms_the_format():
    png = encode(gradient_rgb(), "PNG")
    for declared in ("image/png", "IMAGE/PNG; charset=binary", b"image/png", "application/octet-stream", None):
        assert tuple(decode_image(png, RGB_32, content_type=declared).shape) == RGB_32
    assert tuple(decode_image(npy_bytes(gradient_rgb()), RGB_32, content_type="application/x-npy").shape) == RGB_32


def test_a_content_type_naming_another_format_is_rejected():
    png = encode(gradient_rgb(), "PNG")
    assert reason_of(png, content_type="image/jpeg") == "content_type_mismatch"
    assert reason_of(png, content_type="text/plain") == "content_type_mismatch"


# --- rejections ----------------------------------------------------------------------------


def test_empty_input_is_rejected():
    assert reason_of(b"") == "empty"


def test_oversized_input_is_rejected_before_decoding():
    png = encode(gradient_rgb(), "PNG")
    assert reason_of(png, limits=ImageLimits(max_bytes=len(png) - 1)) == "too_large"
    assert tuple(decode_image(png, RGB_32, limits=ImageLimits(max_bytes=len(png))).shape) == RGB_32


def test_oversized_file_is_not_read_whole(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(encode(gradient_rgb(), "PNG") + b"\0" * 5000)
    with pytest.raises(ImageRejected) as caught:
        decode_file(path, RGB_32, limits=ImageLimits(max_bytes=1000))
    assert caught.value.reason == "too_large"


def test_unknown_format_is_rejected():
    assert reason_of(b"GIF89a" + b"\0" * 100) == "unknown_format"
    assert reason_of(b"hello, world") == "unknown_format"


def test_pixel_bomb_is_rejected_from_its_header():
    # 48 megapixels announced in 100 bytes: above the 40-megapixel default, below PIL's own ceiling.
    assert reason_of(hostile.png_bomb(8000, 6000), GREY_28) == "too_many_pixels"  # (each format: below)
    # 400 megapixels: past PIL's global decompression-bomb ceiling too; same reason.
    assert reason_of(hostile.png_bomb(20000, 20000), GREY_28) == "too_many_pixels"
    small = encode(gradient_rgb(64, 64), "PNG")
    assert reason_of(small, limits=ImageLimits(max_pixels=64 * 64 - 1)) == "too_many_pixels"


def test_truncated_png_is_rejected_not_padded():
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    noisy = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    png = encode(noisy, "PNG")
    assert reason_of(png[: len(png) // 2]) == "truncated"


def test_truncated_jpeg_is_rejected_not_padded():
    noisy = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    jpeg = encode(noisy, "JPEG", quality=90)
    assert reason_of(jpeg[: len(jpeg) // 2]) == "truncated"


def test_truncated_webp_is_rejected():
    webp = encode(gradient_rgb(), "WEBP", lossless=True)
    assert reason_of(webp[: len(webp) - 20]) == "truncated"


# Damaged BMP headers can announce 100+ megapixels: Pillow warns, our own limit then rejects.
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "npy-uint8", "npy-float"])
def test_damaged_inputs_are_rejected_with_a_reason_never_a_crash(fmt):
    rng = np.random.default_rng(5)
    image = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    if fmt == "npy-uint8":
        original = npy_bytes(image)
    elif fmt == "npy-float":
        original = npy_bytes(image.astype(np.float32) / 255)
    else:
        original = encode(image, fmt)
    for trial in range(120):
        data = bytearray(original)
        if trial % 2:
            data = data[: int(rng.integers(1, len(data)))]
        else:
            for position in rng.integers(0, len(data), int(rng.integers(1, 8))):
                data[position] = int(rng.integers(0, 256))
        try:
            tensor = decode_image(bytes(data), RGB_32)
        except ImageRejected as rejected:
            assert rejected.reason in REJECT_REASONS
        else:  # flipped bytes inside compressed pixels can still decode: then it is a valid input
            assert tuple(tensor.shape) == RGB_32 and 0.0 <= tensor.min() and tensor.max() <= 1.0


def test_corrupt_data_behind_valid_magic_is_rejected():
    png = bytearray(encode(gradient_rgb(), "PNG"))
    png[40:60] = b"\xAA" * 20  # damages the IHDR/IDAT chunks: CRC and zlib fail
    assert reason_of(bytes(png)) in ("corrupt", "truncated")
    assert reason_of(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64) in ("corrupt", "truncated")
    assert reason_of(b"\xff\xd8\xff" + b"\x13" * 300) == "corrupt"
    # A BMP header announcing more pixels than follow reads as the file ending early.
    assert reason_of(b"BM" + b"\xff" * 60) in ("corrupt", "truncated")


def test_every_reason_code_is_documented_and_stable():
    assert REJECT_REASONS == (
        "empty",
        "too_large",
        "unknown_format",
        "content_type_mismatch",
        "corrupt",
        "truncated",
        "too_many_pixels",
        "bad_channels",
        "bad_array",
        "non_finite",
    )
    assert issubclass(ImageRejected, InputError)
    with pytest.raises(ValueError):
        ImageRejected("not-a-reason", "x")


# --- .npy arrays ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape",
    [(28, 28), (28, 28, 1), (1, 28, 28), (1, 1, 28, 28)],
    ids=["HxW", "HxWx1", "1xHxW", "1x1xHxW"],
)
def test_npy_uint8_grey_layouts_give_the_same_tensor(shape):
    grey = gradient_rgb(28, 28)[:, :, 0]
    tensor = decode_image(npy_bytes(grey.reshape(shape)), GREY_28)
    assert torch.allclose(tensor, torch.from_numpy(grey).float()[None] / 255)


def test_npy_float_and_channel_layouts():
    rgb = gradient_rgb(32, 32).astype(np.float32) / 255
    from_hwc = decode_image(npy_bytes(rgb), RGB_32)
    from_chw = decode_image(npy_bytes(np.ascontiguousarray(rgb.transpose(2, 0, 1))), RGB_32)
    from_f64 = decode_image(npy_bytes(rgb.astype(np.float64)), RGB_32)
    from_fortran = decode_image(npy_bytes(np.asfortranarray(rgb)), RGB_32)
    assert torch.allclose(from_hwc, from_chw) and torch.allclose(from_hwc, from_f64)
    assert torch.allclose(from_hwc, from_fortran)
    assert torch.allclose(from_hwc, torch.from_numpy(rgb).permute(2, 0, 1))


def test_npy_wrong_channel_count_is_rejected():
    assert reason_of(npy_bytes(np.zeros((28, 28, 2), np.uint8))) == "bad_channels"
    assert reason_of(npy_bytes(np.zeros((6, 28, 28), np.uint8))) == "bad_channels"
    assert reason_of(npy_bytes(np.zeros((9, 28, 28), np.uint8))) == "bad_channels"


def test_npy_unsupported_arrays_are_rejected():
    assert reason_of(npy_bytes(np.zeros((28, 28), np.int32))) == "bad_array"
    assert reason_of(npy_bytes(np.zeros((2, 3, 28, 28), np.uint8))) == "bad_array"
    assert reason_of(npy_bytes(np.zeros((28,), np.uint8))) == "bad_array"
    assert reason_of(npy_bytes(np.zeros((0, 28), np.uint8))) == "bad_array"
    assert reason_of(npy_bytes(np.full((8, 8), 255.0, np.float32))) == "bad_array"  # float outside [0, 1]
    objects = io.BytesIO()
    np.save(objects, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    assert reason_of(objects.getvalue()) == "bad_array"


def test_npy_non_finite_values_are_rejected():
    for bad in (np.nan, np.inf, -np.inf):
        array = np.full((8, 8), 0.5, np.float32)
        array[3, 4] = bad
        assert reason_of(npy_bytes(array), GREY_28) == "non_finite"


def test_npy_truncated_and_padded_are_rejected():
    data = npy_bytes(np.zeros((28, 28), np.uint8))
    assert reason_of(data[:-10], GREY_28) == "truncated"
    assert reason_of(data[:9], GREY_28) in ("truncated", "corrupt")
    assert reason_of(data + b"extra", GREY_28) == "corrupt"


def test_npy_pixel_limit_is_checked_from_the_header():
    data = npy_bytes(np.zeros((100, 100), np.uint8))
    assert reason_of(data, GREY_28, limits=ImageLimits(max_pixels=9999)) == "too_many_pixels"


# --- channels and size ---------------------------------------------------------------------


def test_rgb_becomes_grey_by_luminance():
    red = np.zeros((28, 28, 3), np.uint8)
    red[..., 0] = 255
    for data in (encode(red, "PNG"), npy_bytes(red)):
        tensor = decode_image(data, GREY_28)
        assert tuple(tensor.shape) == GREY_28
        assert tensor.mean().item() == pytest.approx(0.299, abs=0.004)


def test_grey_becomes_rgb_by_repetition():
    grey = gradient_rgb(32, 32)[:, :, 1]
    for data in (encode(grey, "PNG"), npy_bytes(grey)):
        tensor = decode_image(data, RGB_32)
        assert tuple(tensor.shape) == RGB_32
        assert torch.equal(tensor[0], tensor[1]) and torch.equal(tensor[1], tensor[2])


def test_alpha_and_palette_pictures_are_accepted():
    rgba = np.concatenate([gradient_rgb(), np.full((32, 32, 1), 128, np.uint8)], axis=-1)
    tensor = decode_image(encode(rgba, "PNG"), RGB_32)
    assert torch.allclose(tensor, torch.from_numpy(gradient_rgb()).permute(2, 0, 1).float() / 255)
    palette = Image.fromarray(gradient_rgb()).convert("P")
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG")
    assert tuple(decode_image(buffer.getvalue(), GREY_28).shape) == GREY_28


def test_sixteen_bit_grey_png_keeps_its_scale():
    array = np.full((28, 28), 65535 // 2, np.uint16)
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    tensor = decode_image(buffer.getvalue(), GREY_28)
    assert tensor.mean().item() == pytest.approx(0.5, abs=0.01)


def test_resize_to_the_model_input_is_antialiased_bilinear():
    # A fine checkerboard shrunk 4x averages to grey with antialiasing (plain sampling would alias).
    board = (np.indices((112, 112)).sum(axis=0) % 2 * 255).astype(np.uint8)
    for data in (encode(board, "PNG"), npy_bytes(board)):
        tensor = decode_image(data, GREY_28)
        assert tuple(tensor.shape) == GREY_28
        assert tensor.std().item() < 0.05 and tensor.mean().item() == pytest.approx(0.5, abs=0.05)
    # Upscaling keeps a constant image constant and any aspect ratio is stretched to fit.
    wide = np.full((10, 40), 200, np.uint8)
    tensor = decode_image(encode(wide, "PNG"), GREY_28)
    assert torch.allclose(tensor, torch.full(GREY_28, 200 / 255), atol=1e-6)


def test_pictures_and_arrays_resize_alike():
    rgb = gradient_rgb(97, 61)
    from_png = decode_image(encode(rgb, "PNG"), RGB_32)
    from_npy = decode_image(npy_bytes(rgb), RGB_32)
    assert (from_png - from_npy).abs().max() < 0.02


def test_a_picture_for_a_two_channel_model_is_rejected():
    assert reason_of(encode(gradient_rgb(), "PNG"), (2, 32, 32)) == "bad_channels"


# --- batching ------------------------------------------------------------------------------


def test_stack_images_builds_a_batch_and_refuses_mixed_shapes():
    images = [decode_image(encode(gradient_rgb(), "PNG"), RGB_32) for _ in range(3)]
    batch = stack_images(images)
    assert tuple(batch.shape) == (3, *RGB_32)
    with pytest.raises(InputError, match="shape"):
        stack_images([images[0], torch.zeros(GREY_28)])
    with pytest.raises(InputError, match="empty"):
        stack_images([])


def test_limits_are_validated():
    with pytest.raises(InputError, match="max_bytes"):
        ImageLimits(max_bytes=0)
    with pytest.raises(InputError, match="max_pixels"):
        ImageLimits(max_pixels=-5)


# --- hostile pictures from tests/hostile_images.py -----------------------------------------------


@pytest.mark.parametrize("bomb", [hostile.png_bomb, hostile.jpeg_bomb, hostile.webp_bomb, hostile.bmp_bomb,
                                  hostile.npy_bomb], ids=["png", "jpeg", "webp", "bmp", "npy"])
@pytest.mark.parametrize("side", [2000, 16384], ids=["below-pillow-ceiling", "above-pillow-ceiling"])
def test_a_pixel_bomb_in_each_format_quotes_the_configured_limit(bomb, side):
    # 4 and 268 megapixels announced in a few hundred bytes; the second is past Pillow's own ceiling
    # (178956970 pixels), which must not be what the operator reads.
    with pytest.raises(ImageRejected) as caught:
        decode_image(bomb(side, side), GREY_28, limits=ImageLimits(max_pixels=1_000_000))
    assert caught.value.reason == "too_many_pixels"
    assert f"{side * side} pixels" in caught.value.detail
    assert "more than the limit of 1000000" in caught.value.detail
    assert "178956970" not in caught.value.detail


def test_a_limit_above_pillows_ceiling_is_not_what_refuses_the_picture():
    with pytest.raises(ImageRejected) as caught:
        decode_image(hostile.png_bomb(20000, 20000), GREY_28, limits=ImageLimits(max_pixels=500_000_000))
    assert caught.value.reason == "too_many_pixels"
    assert "within the limit of 500000000" in caught.value.detail and "178956970" in caught.value.detail


@pytest.mark.filterwarnings("ignore:The image decoding:DeprecationWarning")  # torchvision 0.29's own notice
def test_exif_orientation_is_ignored_by_default_as_torchvision_decodes_and_applied_when_asked():
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as torchvision_decode

    data = hostile.exif_rotated_jpeg()  # stored 16 wide x 24 high, EXIF says: turn 90 degrees clockwise
    stored = decode_image(data, (3, 24, 16))
    reference = torchvision_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB)
    assert tuple(reference.shape) == (3, 24, 16)
    torch.testing.assert_close(stored, reference.float() / 255, atol=2 / 255, rtol=0)

    upright = decode_image(data, (3, 16, 24), apply_exif_orientation=True)
    turned = torchvision_decode(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB,
                                apply_exif_orientation=True)
    assert tuple(turned.shape) == (3, 16, 24)
    torch.testing.assert_close(upright, turned.float() / 255, atol=2 / 255, rtol=0)
    # A picture without EXIF is the same either way.
    plain = hostile.encoded(hostile.gradient(), "PNG")
    torch.testing.assert_close(decode_image(plain, (3, 24, 16), apply_exif_orientation=True),
                               decode_image(plain, (3, 24, 16)))


@pytest.mark.parametrize("data, reason", [
    (hostile.cmyk_jpeg(), None),
    (hostile.palette_png_with_transparency(), None),
    (hostile.sixteen_bit_png(), None),
    (hostile.animated_gif(), "unknown_format"),
    (hostile.tiff(), "unknown_format"),
    (hostile.pickled_npy(), "bad_array"),
], ids=["cmyk-jpeg", "palette-png-transparency", "16-bit-png", "animated-gif", "tiff", "pickled-npy"])
def test_unusual_pictures_are_scored_or_rejected_with_their_reason(data, reason):
    if reason is None:
        assert decode_image(data, RGB_32).shape == (3, 32, 32)
    else:
        assert reason_of(data) == reason
