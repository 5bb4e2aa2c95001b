"""Batch-norm family (paper section 2.2, eqs. 18-30): DMS, DMS-AOS, DSS, DSS-EXT.

A batch-norm layer's input z is standardised with the layer's own running statistics,
y = (z - running_mean) / sqrt(running_var + eps), and summarised per (sample, channel):

    M = mean of y over H x W                         (eq. 20)
    S = sqrt(sum (y - M)^2 / (H*W - 1))              (eq. 21)
    V = (H*W - 1) * S^2                              (eq. 22)
    A = mean of y^2 over H x W                       (the inner term of eq. 28)

The probe never keeps activations: at each layer it reduces z to two [N, C] tensors, the
per-channel sum and sum of squares (two fast read-only passes), and every quantity above
follows from them exactly. Standardisation is affine per channel, so with
m_z, v_z the mean and (H*W - 1)-denominator variance of z over H x W and s = running_var + eps:

    M = (m_z - running_mean) / sqrt(s),   S^2 = v_z / s,   A = S^2 (H*W - 1) / (H*W) + M^2
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Sequence

import torch
from scipy.stats import chi2
from torch import Tensor

# Paper section 2.2: "we take alpha = 0.1 for DSS-EXT".
DSS_EXT_ALPHA = 0.1

BATCHNORM_FAMILY: tuple[str, ...] = ("DMS", "DMS-AOS", "DSS", "DSS-EXT")


@dataclass(frozen=True)
class LayerMoments:
    """Raw per-(sample, channel) moments of one batch-norm input, and its reference statistics.

    total, total_sq: [N, C] sums of z and z^2 over the H x W positions (float32 or float64).
    center: [C] running mean; variance: [C] running variance + eps (the standardising scale^2).
    """

    total: Tensor
    total_sq: Tensor
    pixels: int
    center: Tensor
    variance: Tensor

    @property
    def channels(self) -> int:
        return int(self.total.shape[1])


def reduce_activation(z: Tensor) -> tuple[Tensor, Tensor]:
    """[N, C, H, W] -> per-channel sum and sum of squares, [N, C] each, without copying z.

    Two read-only reductions are several times faster on CPU than torch.var_mean (Welford)
    and never materialise y or z^2.
    """
    if z.dtype not in (torch.float32, torch.float64):
        z = z.float()  # half-precision sums of squares overflow and round too coarsely
    total = z.sum(dim=(2, 3))
    total_sq = torch.linalg.vector_norm(z, ord=2, dim=(2, 3)).square()
    return total, total_sq


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
    """Per-channel constants of a sequence of layers, built once per distinct layout."""

    spread_mask: Tensor  # [C_total] bool: channel's layer has H*W >= 2 (takes part in DSS*)
    dof: Tensor  # [C_total] H*W - 1 (float64)
    pixels: Tensor  # [C_total] H*W (float64)
    chi2_low: Tensor  # [C_total]
    chi2_high: Tensor  # [C_total]
    spread_channels: int


@functools.lru_cache(maxsize=64)
def _layout(shape: tuple[tuple[int, int], ...], device: torch.device, alpha: float) -> _Layout:
    """Constants for layers given as ((channels, pixels), ...); cached so a steady stream of
    batches of one model never recomputes them."""
    pixels, low, high = [], [], []
    for channels, layer_pixels in shape:
        bounds = chi2_acceptance(layer_pixels - 1, alpha) if layer_pixels >= 2 else (0.0, 0.0)
        pixels += [float(layer_pixels)] * channels
        low += [bounds[0]] * channels
        high += [bounds[1]] * channels
    pixels_t = torch.tensor(pixels, dtype=torch.float64, device=device)
    mask = pixels_t >= 2
    return _Layout(
        spread_mask=mask,
        dof=pixels_t - 1,
        pixels=pixels_t,
        chi2_low=torch.tensor(low, dtype=torch.float64, device=device),
        chi2_high=torch.tensor(high, dtype=torch.float64, device=device),
        spread_channels=int(mask.sum().item()),
    )


def batchnorm_family(
    layers: Sequence[LayerMoments], alpha: float = DSS_EXT_ALPHA
) -> dict[str, Tensor]:
    """DMS, DMS-AOS, DSS, DSS-EXT over the set of layers S (eqs. 27-30), each a float64 [N].

    C_S counts the channels of the layers that take part in each indicator: every layer for
    DMS and DMS-AOS, only layers with H*W >= 2 for DSS and DSS-EXT (S needs H*W - 1 > 0).
    DSS and DSS-EXT are omitted when no layer has H*W >= 2.
    """
    if not layers:
        raise ValueError("batchnorm_family needs at least one layer")
    device = layers[0].total.device
    layout = _layout(tuple((layer.channels, layer.pixels) for layer in layers), device, alpha)

    # One concatenation per quantity, then whole-batch arithmetic in float64.
    total = torch.cat([layer.total for layer in layers], dim=1).double()
    total_sq = torch.cat([layer.total_sq for layer in layers], dim=1).double()
    center = torch.cat([layer.center for layer in layers]).double()
    variance = torch.cat([layer.variance for layer in layers]).double()

    mean_z = total / layout.pixels
    # Sum of squared deviations from the channel mean; rounding can make it slightly negative.
    deviations_sq = (total_sq - total * mean_z).clamp_min(0.0)
    standard_mean = (mean_z - center) / variance.sqrt()  # M
    mean_square = deviations_sq / layout.pixels / variance + standard_mean.square()  # A

    results = {
        "DMS": standard_mean.square().mean(dim=1),
        "DMS-AOS": mean_square.mean(dim=1),
    }
    if layout.spread_channels:
        mask = layout.spread_mask
        spread_sq = deviations_sq[:, mask] / layout.dof[mask] / variance[mask]  # S^2
        v_statistic = deviations_sq[:, mask] / variance[mask]  # V = (HW - 1) S^2
        extreme = (v_statistic < layout.chi2_low[mask]) | (v_statistic > layout.chi2_high[mask])
        results["DSS"] = (spread_sq.sqrt() - 1.0).square().mean(dim=1)
        results["DSS-EXT"] = extreme.to(torch.float64).mean(dim=1)
    return results
