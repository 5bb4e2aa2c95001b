"""The device decode path (monitor.imaging_device) on the CPU: torchvision's batched JPEG decoder runs
the same code on the CPU as nvJPEG does on a GPU, so everything but the device itself is tested here:
the header checks before decoding, what goes the CPU way, the batch assembly, and that the scores
agree with the CPU path's. The GPU's own figures come from tests/benchmarks/gpu_checks.sh."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from monitor.imaging import ImageLimits, ImageRejected, InputError, decode_image
from monitor.imaging_device import DeferredJpeg, assemble, deferring_decoder, device_decoding, jpeg_header


def _jpeg(width: int = 16, height: int = 16, mode: str = "RGB", seed: int = 0, **options) -> bytes:
    rng = np.random.default_rng(seed)
    shape = (height, width, 3) if mode == "RGB" else (height, width)
    # Smooth content: JPEG's rounding then stays small, as on photographs.
    base = rng.integers(0, 256, (2, 2, 3) if mode == "RGB" else (2, 2), dtype=np.uint8)
    picture = Image.fromarray(base, mode).resize((width, height), Image.BILINEAR)
    assert picture.size == (width, height) and np.asarray(picture).shape == shape
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=95, **options)
    return buffer.getvalue()


def _png(side: int = 16) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_the_header_gives_size_and_coding_without_decoding():
    header = jpeg_header(_jpeg(40, 24), ImageLimits())
    assert (header.width, header.height, header.components, header.precision) == (40, 24, 3, 8)
    assert header.device_decodable
    assert jpeg_header(_jpeg(8, 8, mode="L"), ImageLimits()).components == 1
    assert not jpeg_header(_jpeg(16, 16, progressive=True), ImageLimits()).device_decodable


def test_the_limits_are_checked_on_the_header_before_any_pixel_is_decoded():
    data = _jpeg(64, 64)
    with pytest.raises(ImageRejected) as pixels:
        jpeg_header(data, ImageLimits(max_pixels=64 * 64 - 1))
    assert pixels.value.reason == "too_many_pixels"
    with pytest.raises(ImageRejected) as size:
        jpeg_header(data, ImageLimits(max_bytes=len(data) - 1))
    assert size.value.reason == "too_large"
    # The same reasons as the CPU path gives for the same bytes.
    with pytest.raises(ImageRejected) as cpu:
        decode_image(data, (3, 8, 8), limits=ImageLimits(max_pixels=64 * 64 - 1))
    assert cpu.value.reason == pixels.value.reason


def test_what_the_device_does_not_take_goes_the_cpu_way():
    decode = deferring_decoder()
    shape = (3, 8, 8)
    assert isinstance(decode(_jpeg(), shape), DeferredJpeg)
    for data, options in ((_png(), {}), (_jpeg(progressive=True), {}), (_jpeg(), {"apply_exif_orientation": True}),
                          (_jpeg(), {"content_type": "image/jpeg"})):
        decoded = decode(data, shape, **options)
        assert isinstance(decoded, torch.Tensor) and tuple(decoded.shape) == shape


def test_a_batch_assembled_from_deferred_jpegs_agrees_with_the_cpu_path():
    shape = (3, 12, 12)
    messages = [_jpeg(12, 12, seed=1), _jpeg(30, 20, seed=2), _png(12), _jpeg(12, 12, mode="L", seed=3)]
    decode = deferring_decoder()
    batch = assemble([decode(data, shape) for data in messages], shape, "cpu")
    expected = torch.stack([decode_image(data, shape) for data in messages])
    assert batch.shape == expected.shape and batch.dtype == torch.float32
    same_size = [0, 2, 3]  # decoded at the input size: the same libjpeg rounding
    assert torch.allclose(batch[same_size], expected[same_size], atol=2 / 255)
    assert (batch[1] - expected[1]).abs().mean() < 4 / 255  # resized: torch's bilinear against PIL's


def test_device_decoding_is_chosen_by_the_setting_and_the_device():
    assert device_decoding("auto", torch.device("cuda")) and not device_decoding("auto", torch.device("cpu"))
    assert device_decoding("on", torch.device("cpu")) and not device_decoding("off", torch.device("cuda"))
