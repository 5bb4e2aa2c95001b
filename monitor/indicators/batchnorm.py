"""Batch-norm family (paper section 2.2, eqs. 18-30): DMS, DMS-AOS, DSS, DSS-EXT.

A batch-norm layer's input z is standardised with the layer's own running statistics,
y = (z - running_mean) / sqrt(running_var + eps), and summarised per (sample, channel):

    M = mean of y over H x W                         (eq. 20)
    S = sqrt(sum (y - M)^2 / (H*W - 1))              (eq. 21)
    V = (H*W - 1) * S^2                              (eq. 22)
    A = mean of y^2 over H x W                       (the inner term of eq. 28)

The probe never keeps activations: at each layer it reduces z to two [N, C] tensors, the
per-channel mean and H*W-denominator variance of z (one compiled read on the CPU, see
monitor.indicators.kernels; one Welford reduction on CUDA), and every quantity
above follows from them exactly. Standardisation is affine per channel, so with m_z, v_z the
mean and (H*W - 1)-denominator variance of z over H x W and s = running_var + eps:

    M = (m_z - running_mean) / sqrt(s),   S^2 = v_z / s,   A = S^2 (H*W - 1) / (H*W) + M^2
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, NamedTuple, Sequence

import numpy as np
import torch
from scipy.stats import chi2
from torch import Tensor

from monitor.indicators import kernels

# Paper section 2.2: "we take alpha = 0.1 for DSS-EXT".
DSS_EXT_ALPHA = 0.1

BATCHNORM_FAMILY: tuple[str, ...] = ("DMS", "DMS-AOS", "DSS", "DSS-EXT")


class LayerMoments(NamedTuple):
    """Per-(sample, channel) moments of one batch-norm input, and its reference statistics.

    mean: [N, C] mean of z over the H x W positions; variance: [N, C] its H*W-denominator
    variance (float32 or float64, on z's device); center: [C] running mean; running_var: [C];
    eps: the layer's eps (0 for the input). A named tuple: one is made per layer and batch,
    inside the forward pass.
    """

    mean: Tensor
    variance: Tensor
    pixels: int
    center: Tensor
    running_var: Tensor
    eps: float

    @property
    def channels(self) -> int:
        return int(self.mean.shape[1])


def reduce_activation(
    z: Tensor, buffers: kernels.MomentBuffers | None = None, key: object = None
) -> tuple[Tensor, Tensor]:
    """[N, C, H, W] -> per-channel mean and H*W-denominator variance, [N, C] each, without
    copying z or materialising y or z^2.

    - CPU: one compiled read with float64 accumulators, split between torch's number of
      threads for a large z (into buffers[key] when given: see kernels.MomentBuffers);
    - other devices (CUDA): one launch of torch's Welford reduction (var_mean);
    - CPU without the compiled kernels: two read-only torch reductions with float64
      accumulators, exact but about 20x slower than the kernel (Numba is a dependency; this
      path is for when it cannot load).
    """
    if kernels.channel_moments_applicable(z):
        return kernels.channel_moments(z, buffers, key)
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()  # half-precision sums of squares overflow and round too coarsely
    if z.is_cpu and kernels.enabled():
        # Another memory layout (channels_last): one contiguous copy, then the kernel.
        return kernels.channel_moments(z.contiguous(), buffers, key)
    if not z.is_cpu:
        # One launch of a Welford reduction (on the CPU, var_mean is many times slower than the
        # two passes below).
        variance, mean = torch.var_mean(z, dim=(2, 3), correction=0)
        return mean, variance
    pixels = z.shape[2] * z.shape[3]
    mean = z.sum(dim=(2, 3), dtype=torch.float64).div_(pixels)
    sum_sq = torch.linalg.vector_norm(z, ord=2, dim=(2, 3), dtype=torch.float64).square_()
    # E[z^2] - E[z]^2 in float64; rounding can leave it a hair below 0.
    return mean, sum_sq.div_(pixels).sub_(mean.square()).clamp_min_(0.0)


@functools.lru_cache(maxsize=256)
def chi2_acceptance(degrees_of_freedom: int, alpha: float = DSS_EXT_ALPHA) -> tuple[float, float]:
    """Two-sided acceptance interval of chi2(dof) at level alpha: V outside it is extreme (eq. 30).

    A two-sided p-value 2 * min(F(V), 1 - F(V)) is below alpha exactly when
    V < F^-1(alpha / 2) or V > F^-1(1 - alpha / 2). Computed once per distinct H*W.
    """
    low, high = chi2.ppf([alpha / 2.0, 1.0 - alpha / 2.0], degrees_of_freedom)
    return float(low), float(high)


@dataclass(frozen=True)
class _Layout:
    """Per-channel constants of a sequence of layers (input pseudo-layer first), float32 on
    the device, built once per distinct layout."""

    channels: int
    device: torch.device
    chi2_middle: Tensor  # [C] centre of the chi2(H*W - 1) acceptance interval, over H*W - 1
    chi2_half_width: Tensor  # [C] its half width, over H*W - 1; inf where H*W < 2 (never extreme)
    spread_mask: Tensor  # [C] 1 for channels of layers with H*W >= 2 (they take part in DSS*)
    # The same constants as float64 NumPy arrays, for the fused CPU kernel.
    host: dict[str, np.ndarray]
    input_channels: int  # the input pseudo-layer's channels come first
    # [8, 1] float64: 1 / C_S of DMS, DMS-AOS, DSS, DSS-EXT over the input alone, then every layer
    scale: Tensor
    host_scale: Tensor  # the same on the CPU
    input_spread: bool  # the input has H*W >= 2
    spread_channels: int  # C_S of DSS and DSS-EXT over every layer


@functools.lru_cache(maxsize=64)
def _layout(
    shape: tuple[tuple[int, int, float], ...], device: torch.device, alpha: float
) -> _Layout:
    """Constants for layers given as ((channels, pixels, eps), ...); cached so a steady
    stream of batches of one model never recomputes them."""
    pixels, eps, low, high = [], [], [], []
    for channels, layer_pixels, layer_eps in shape:
        bounds = chi2_acceptance(layer_pixels - 1, alpha) if layer_pixels >= 2 else (0.0, 0.0)
        pixels += [float(layer_pixels)] * channels
        eps += [float(layer_eps)] * channels
        low += [bounds[0]] * channels
        high += [bounds[1]] * channels
    pixels_t = torch.tensor(pixels, dtype=torch.float64)
    dof = (pixels_t - 1).clamp_min(1.0)
    low_t = torch.tensor(low, dtype=torch.float64)
    high_t = torch.tensor(high, dtype=torch.float64)
    spread = pixels_t >= 2
    input_channels, input_pixels, _ = shape[0]
    spread_channels = int(spread.sum())
    host = {
        "pixels": pixels_t,
        "dof": dof,
        "eps": torch.tensor(eps, dtype=torch.float64),
        "chi2_middle": (low_t + high_t) / 2 / dof,
        "chi2_half_width": torch.where(spread, (high_t - low_t) / 2 / dof, torch.inf),
        "spread_mask": spread.double(),
        "input_mask": (torch.arange(len(pixels)) < input_channels).double(),
    }

    def on_device(values: Tensor) -> Tensor:
        return values.to(device=device, dtype=torch.float32)

    def inverse(count: int) -> float:
        return 1.0 / count if count else 0.0

    input_spread = inverse(input_channels) if input_pixels >= 2 else 0.0
    scale = torch.tensor(
        [[inverse(input_channels)]] * 2
        + [[input_spread]] * 2
        + [[inverse(len(pixels))]] * 2
        + [[inverse(spread_channels)]] * 2,
        dtype=torch.float64,
    )
    return _Layout(
        channels=len(pixels),
        device=device,
        chi2_middle=on_device(host["chi2_middle"]),
        chi2_half_width=on_device(host["chi2_half_width"]),
        spread_mask=on_device(host["spread_mask"]),
        host={name: values.numpy() for name, values in host.items()},
        input_channels=input_channels,
        scale=scale.to(device),
        host_scale=scale,
        input_spread=input_pixels >= 2,
        spread_channels=spread_channels,
    )


def _versions(tensors: Sequence[Tensor]) -> tuple | None:
    """(tensor, version counter) pairs: any in-place change bumps a version. None when a
    tensor has no counter (an inference tensor), so nothing is cached for it."""
    try:
        return tuple((tensor, tensor._version) for tensor in tensors)
    except RuntimeError:
        return None


class BatchNormReducer:
    """Turns the moments of one forward pass into the batch-norm family.

    With the compiled kernels (monitor.indicators.kernels), one float64 loop over the moments
    on the host, whatever the model's device. Without them, all per-(sample, channel)
    arithmetic runs in place in one float32 workspace on the device, kept between batches. Either way the per-channel
    reference statistics are concatenated once and reused until a running statistic changes:
    fresh [N, C_total] temporaries and extra small operations cost more than the arithmetic
    itself. Not thread-safe: one per thread.
    """

    def __init__(self, alpha: float = DSS_EXT_ALPHA) -> None:
        self.alpha = alpha
        self._workspace: Tensor | None = None
        self._reference_key: tuple | None = None
        self._reference: dict[str, Any] | None = None

    def _buffers(self, batch: int, channels: int, device: torch.device) -> Tensor:
        workspace = self._workspace
        if (
            workspace is None
            or workspace.shape[1] < batch
            or workspace.shape[2] != channels
            or workspace.device != device
        ):
            workspace = torch.empty((6, batch, channels), dtype=torch.float32, device=device)
            self._workspace = workspace
        return workspace[:, :batch]

    def _reference_statistics(self, layers: Sequence[LayerMoments], layout: _Layout) -> dict[str, Any]:
        """Per-channel center, 1 / (running_var + eps) and the S^2 scale
        H*W / ((H*W - 1)(running_var + eps)): float32 tensors on the device for the torch path
        and float64 arrays for the fused one; recomputed only when a layer's statistics tensor
        is replaced or modified."""
        key = _versions([t for layer in layers for t in (layer.center, layer.running_var)])
        cached = self._reference_key
        if (
            key is not None
            and cached is not None
            and len(cached) == len(key)
            and all(a[0] is b[0] and a[1] == b[1] for a, b in zip(cached, key))
        ):
            return self._reference
        center = torch.cat([layer.center.detach().double().flatten() for layer in layers])
        running_var = torch.cat([layer.running_var.detach().double().flatten() for layer in layers])
        host = layout.host
        inverse_variance = (running_var.cpu() + torch.from_numpy(host["eps"])).reciprocal()
        spread_scale = inverse_variance * torch.from_numpy(host["pixels"] / host["dof"])
        device = layout.device
        reference = {
            "center": center.to(device, torch.float32),
            "inverse_variance": inverse_variance.to(device, torch.float32),
            "spread_scale": spread_scale.to(device, torch.float32),
            "host": {
                "center": center.cpu().numpy(),
                "inverse_variance": inverse_variance.numpy(),
                "spread_scale": spread_scale.numpy(),
            },
        }
        self._reference_key, self._reference = key, reference
        return reference

    def __call__(
        self,
        layers: Sequence[LayerMoments],
        whole: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> dict[str, Tensor]:
        """IN-DMS ... IN-DSS-EXT over layers[0] (the input pseudo-layer) and, when there is
        more than one layer, DMS ... DSS-EXT over all of them (eqs. 27-30); float64 [N] each,
        on the CPU when the compiled kernels do the arithmetic, else on the layers' device.

        whole: the layers' means and variances already side by side on the CPU, [N, C_total]
        each (see kernels.MomentBuffers.whole); else they are concatenated here.

        C_S counts the channels of the layers that take part in each indicator: every layer
        for DMS and DMS-AOS, only layers with H*W >= 2 for DSS and DSS-EXT (S needs
        H*W - 1 > 0). DSS and DSS-EXT are omitted for a set with no layer of H*W >= 2.
        """
        if not layers:
            raise ValueError("the batch-norm family needs at least the input pseudo-layer")
        device = layers[0].mean.device
        layout = _layout(
            tuple((layer.channels, layer.pixels, float(layer.eps)) for layer in layers),
            device,
            self.alpha,
        )
        with torch.inference_mode():
            reference = self._reference_statistics(layers, layout)
            # Sums over channels, then / C_S in float64 (counts / C_S exactly).
            if kernels.enabled():
                if whole is None:
                    # On a GPU: one small copy to the host, then one loop.
                    both = torch.cat(
                        [layer.mean for layer in layers] + [layer.variance for layer in layers], dim=1
                    ).cpu().numpy()
                    whole = (
                        np.ascontiguousarray(both[:, : layout.channels]),
                        np.ascontiguousarray(both[:, layout.channels :]),
                    )
                sums = kernels.batchnorm_sums(*whole, {**layout.host, **reference["host"]})
                means = sums * layout.host_scale
            else:
                means = self._sums(layers, layout, reference).double() * layout.scale

        names = ("DMS", "DMS-AOS", "DSS", "DSS-EXT")
        sets = [("IN-", 0, layout.input_spread)]
        if len(layers) > 1:
            sets.append(("", 4, layout.spread_channels > 0))
        results = {}
        for prefix, offset, with_spread in sets:
            for index, name in enumerate(names if with_spread else names[:2]):
                results[prefix + name] = means[offset + index]
        return results

    def _sums(self, layers: Sequence[LayerMoments], layout: _Layout, reference: dict[str, Any]) -> Tensor:
        """[8, N] Sum_c M^2, Sum_c A, Sum_c (S - 1)^2 and #extreme over the input layer, then
        over every layer, with torch operations on the layers' device (float32)."""
        center = reference["center"]
        inverse_variance = reference["inverse_variance"]
        spread_scale = reference["spread_scale"]
        device = layers[0].mean.device
        workspace = self._buffers(layers[0].mean.shape[0], layout.channels, device)
        mean_z, variance_z, deviation_sq, spread_sq, distance, flags = workspace
        inputs = slice(0, layout.input_channels)
        torch.cat([layer.mean for layer in layers], dim=1, out=mean_z)
        torch.cat([layer.variance for layer in layers], dim=1, out=variance_z)  # Var_HW(z)

        torch.sub(mean_z, center, out=deviation_sq).square_()
        # Sum_c M^2 = Sum_c (m_z - mu)^2 / s and Sum_c A = Sum_c M^2 + Sum_c Var_HW(z) / s:
        # matrix-vector products with 1 / s, no [N, C] temporaries.
        pair = workspace[1:3]  # Var_HW(z), (m_z - mu)^2
        moments = pair @ inverse_variance  # [2, N]
        input_moments = pair[:, :, inputs] @ inverse_variance[inputs]

        torch.mul(variance_z, spread_scale, out=spread_sq)  # S^2
        # Extreme when V = (H*W - 1) S^2 lies outside the chi2 interval: on S^2, the interval
        # over H*W - 1, half width inf where H*W < 2. On the edge is not extreme.
        torch.sub(spread_sq, layout.chi2_middle, out=distance).abs_()
        # 0/1 as float32: summing floats is several times faster than summing booleans.
        torch.gt(distance, layout.chi2_half_width, out=flags)
        extreme = flags.sum(dim=1)
        input_extreme = flags[:, inputs].sum(dim=1)
        # sqrt of exact zeros (H*W = 1, constant channels) is ~20x slower than of positive
        # numbers on some x86 CPUs; 1e-30 changes (S - 1)^2 by 2e-15 (below float32 resolution).
        spread_sq.clamp_min_(kernels.SMALLEST_SPREAD_SQ).sqrt_().sub_(1.0).square_()  # (S - 1)^2
        spread_gap = spread_sq @ layout.spread_mask  # only layers with H*W >= 2 take part
        input_spread_gap = spread_sq[:, inputs].sum(dim=1)

        return torch.stack([
            input_moments[1],
            input_moments[1] + input_moments[0],
            input_spread_gap,
            input_extreme,
            moments[1], moments[1] + moments[0], spread_gap, extreme,
        ])  # [8, N]: Sum_c over the input layer, then over every layer
