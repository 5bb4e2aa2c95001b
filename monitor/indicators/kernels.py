"""Compiled kernels of the indicator engine (Numba, compiled on first use, cached on disk).

On the CPU, the indicators' cost is not arithmetic but passes over memory and the fixed cost
of many small tensor operations:

- per-channel moments of an activation z [N, C, H, W]: torch needs two passes (a sum, then a
  sum of squares); `channel_moments` reads z once and accumulates both in float64;
- the batch-norm family from the [N, C_total] moments of every layer: about twenty small
  torch operations per batch; `batchnorm_sums` is one loop over the moments;
- the softmax and latent families: a dozen small operations more; `optimality_family` is one
  loop over the samples.

The arithmetic kernels also serve a model on a GPU: its [N, C_total] moments, logits and head
input are copied to the host, where one loop costs less than launching dozens of tiny GPU
kernels. The torch code in monitor.indicators.batchnorm and .optimality computes the same
equations; it is the path when the kernels are switched off (`MONITOR_FUSED_KERNELS=0`) or
Numba is missing, and the tests hold both paths to the same float64 reference.

The kernels release the GIL. `channel_moments` splits a large activation's samples between
as many threads as torch uses; the other loops run on the calling thread.
"""

from __future__ import annotations

import concurrent.futures
import functools
import logging
import os
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

ENVIRONMENT_SWITCH = "MONITOR_FUSED_KERNELS"
# sqrt of exact zeros is ~20x slower than of positive numbers on some x86 CPUs; 1e-30 changes
# (S - 1)^2 by 2e-15 (the torch path does the same).
SMALLEST_SPREAD_SQ = 1e-30


def _switched_on() -> bool:
    return os.environ.get(ENVIRONMENT_SWITCH, "1").strip().lower() not in ("0", "false", "no", "off")


# Read once: the check runs at every batch-norm layer of every batch.
_use_kernels = _switched_on()


def enabled() -> bool:
    """Whether the fused kernels may be used: not switched off (MONITOR_FUSED_KERNELS=0 when
    the process starts, or use_kernels(False)) and Numba importable."""
    return _use_kernels and _compiled() is not None


def use_kernels(on: bool | None) -> None:
    """Switch the fused kernels on or off for this process; None: as MONITOR_FUSED_KERNELS says."""
    global _use_kernels
    _use_kernels = _switched_on() if on is None else bool(on)


@functools.lru_cache(maxsize=1)
def _compiled():
    """The compiled kernels, or None when Numba cannot be used here (logged once)."""
    try:
        import numba

        return _define_kernels(numba)
    except Exception as error:  # no Numba, a broken LLVM binding, no place to cache compiled code
        log.warning("Numba cannot be used (%s): the indicators use torch operations only", error)
        return None


def _define_kernels(numba):
    """The jitted functions (each compiled on its first call, cached on disk)."""

    @numba.njit(cache=True, nogil=True, fastmath=True)
    def moments(activation, means, variances):
        # activation [N, C, H, W] float32/64, C-contiguous; means, variances [N, C] float64:
        # mean and H*W-denominator variance over H x W. One read, float64 accumulators.
        batch, channels = activation.shape[0], activation.shape[1]
        planes = activation.reshape(batch, channels, -1)
        pixels = planes.shape[2]
        for sample in range(batch):
            for channel in range(channels):
                plane = planes[sample, channel]
                total = 0.0
                square = 0.0
                for position in range(pixels):
                    value = np.float64(plane[position])
                    total += value
                    square += value * value
                mean = total / pixels
                # E[z^2] - E[z]^2 in float64; rounding can leave it a hair below 0.
                variance = square / pixels - mean * mean
                means[sample, channel] = mean
                variances[sample, channel] = variance if variance > 0.0 else 0.0

    # Reassociation lets LLVM vectorise the sums; no 'ninf'/'nnan' flags: the comparison with
    # an infinite half width (layers with H*W < 2 are never extreme) must keep its IEEE meaning.
    @numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract", "nsz", "arcp"})
    def family(means, variances, center, inverse_variance, spread_scale,
               chi2_middle, chi2_half_width, spread_mask, input_mask, sums):
        # means, variances [N, C] (H*W-denominator); per-channel constants [C]; sums [8, N]:
        # Sum_c M^2, Sum_c A, Sum_c (S - 1)^2, #extreme over the input (input_mask = 1 on its
        # channels), then over every layer. The inner loop has no calls, branches or 2-D
        # indexing so that LLVM vectorises it (with any of them it runs scalar, several times
        # slower than torch).
        for sample in range(means.shape[0]):
            sample_means = means[sample]
            sample_variances = variances[sample]
            moment = spread = gap = extreme = 0.0
            input_moment = input_spread = input_gap = input_extreme = 0.0
            for channel in range(sample_means.shape[0]):
                variance = np.float64(sample_variances[channel])
                deviation = sample_means[channel] - center[channel]
                moment_term = deviation * deviation * inverse_variance[channel]
                spread_term = variance * inverse_variance[channel]
                spread_sq = variance * spread_scale[channel]
                extreme_term = np.float64(
                    abs(spread_sq - chi2_middle[channel]) > chi2_half_width[channel]
                )
                spread_sq = spread_sq if spread_sq > SMALLEST_SPREAD_SQ else SMALLEST_SPREAD_SQ
                distance = np.sqrt(spread_sq) - 1.0
                gap_term = distance * distance * spread_mask[channel]
                moment += moment_term
                spread += spread_term
                extreme += extreme_term
                gap += gap_term
                inside = input_mask[channel]
                input_moment += moment_term * inside
                input_spread += spread_term * inside
                input_extreme += extreme_term * inside
                input_gap += gap_term * inside
            sums[0, sample] = input_moment
            sums[1, sample] = input_moment + input_spread
            sums[2, sample] = input_gap
            sums[3, sample] = input_extreme
            sums[4, sample] = moment
            sums[5, sample] = moment + spread
            sums[6, sample] = gap
            sums[7, sample] = extreme

    # Plain IEEE arithmetic (no fastmath): these are per-sample loops over K and D, and the
    # tempered gap must come out bit for bit the same wherever it is computed (T1000, ODIN).
    @numba.njit(cache=True, nogil=True)
    def tempered_gap(row, temperature):
        # 1 - max softmax(z / T) = 1 - exp(-log sum_j exp(z_j / T - max_j z_j / T)).
        top = row[0] / temperature
        for j in range(1, row.shape[0]):
            top = max(top, row[j] / temperature)
        total = 0.0
        for j in range(row.shape[0]):
            total += np.exp(row[j] / temperature - top)
        return 1.0 - np.exp(-np.log(total))

    @numba.njit(cache=True, nogil=True)
    def tempered_gaps(logits, temperature, out):
        for sample in range(logits.shape[0]):
            out[sample] = tempered_gap(logits[sample].astype(np.float64), temperature)

    @numba.njit(cache=True, nogil=True)
    def optimality(logits, latent, rows, norms, t1000, tiny, out, predicted):
        # logits [N, K]; latent [N, D] (D = 0: no head); rows [K, 3, D]: w_j, w_j,P, 1_P;
        # norms [K, 3]: ||w_j||, ||w_j,P||, 1 / ||w_j||; out [10, N]: MP, H, T1000, then NORM,
        # NORM+, ANG, ANG++, PROJ, ACT, ACT+; predicted [N]: argmax, first index on ties.
        for sample in range(logits.shape[0]):
            z = logits[sample].astype(np.float64)
            k = 0
            for j in range(1, z.shape[0]):
                if z[j] > z[k]:
                    k = j
            predicted[sample] = k
            total = 0.0
            for j in range(z.shape[0]):
                total += np.exp(z[j] - z[k])
            log_total = np.log(total)
            entropy = 0.0
            for j in range(z.shape[0]):
                log_p = (z[j] - z[k]) - log_total
                entropy -= np.exp(log_p) * log_p  # finite logits: 0 * finite where p underflows
            out[0, sample] = 1.0 - np.exp(-log_total)
            out[1, sample] = entropy
            out[2, sample] = tempered_gap(z, t1000)
            if latent.shape[1] == 0:
                continue
            dot = 0.0
            dot_positive = 0.0
            norm_sq = 0.0
            norm_positive_sq = 0.0
            for j in range(latent.shape[1]):
                u = np.float64(latent[sample, j])
                dot += rows[k, 0, j] * u
                dot_positive += rows[k, 1, j] * u
                norm_sq += u * u
                norm_positive_sq += rows[k, 2, j] * u * u
            norm = np.sqrt(norm_sq)
            norm_positive = np.sqrt(norm_positive_sq)
            # Zero norms: the dot product is 0 too, and 0 / tiny = 0 (see optimality.py).
            out[3, sample] = -norm
            out[4, sample] = -norm_positive
            out[5, sample] = 1.0 - dot / max(norm * norms[k, 0], tiny)
            out[6, sample] = 1.0 - dot_positive / max(norm_positive * norms[k, 1], tiny)
            out[7, sample] = -dot * norms[k, 2]
            out[8, sample] = -dot
            out[9, sample] = -dot_positive

    return moments, family, optimality, tempered_gaps


_KERNEL_DTYPES = (torch.float32, torch.float64)
# From this many elements up, channel_moments splits an activation between torch's number of
# threads; below it, handing work to threads costs more than it saves.
PARALLEL_REDUCTION_ELEMENTS = 1 << 18


def channel_moments_applicable(z: Tensor) -> bool:
    """The compiled moments kernel takes z: on the CPU, contiguous, float32/float64."""
    # Cheapest checks first: this runs at every batch-norm layer of every batch.
    return (
        _use_kernels
        and z.is_cpu
        and z.dtype in _KERNEL_DTYPES
        and z.is_contiguous()
        and _compiled() is not None
    )


@functools.lru_cache(maxsize=None)
def _reduction_pool(workers: int) -> concurrent.futures.ThreadPoolExecutor:
    return concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="moments")


class MomentBuffers:
    """Output arrays of channel_moments kept between batches, one pair per key.

    Allocating and wrapping fresh arrays at every batch-norm layer costs more than the
    reduction of a small activation, and so does concatenating a batch's [N, C] moments
    into the [N, C_total] ones the family needs. So a pair is reused by the next call with
    the same key, and once a pass has shown the keys in order (`whole`), every pair becomes
    a column block of one [N, C_total] arena: the next pass writes its moments in place,
    already concatenated. Each result must be consumed before the next call with its key
    (the Scorer reduces a batch's moments before it scores the next). Not thread-safe:
    one per probe.
    """

    def __init__(self) -> None:
        self._pairs: dict[object, tuple[np.ndarray, np.ndarray, Tensor, Tensor]] = {}
        self._arena_keys: tuple = ()
        self._arena: tuple[np.ndarray, np.ndarray] | None = None
        self._arena_views: tuple[Tensor, ...] = ()  # each key's means inside the arena

    def get(self, key: object, batch: int, channels: int) -> tuple[np.ndarray, np.ndarray, Tensor, Tensor]:
        pair = self._pairs.get(key)
        if pair is None or pair[0].shape != (batch, channels):
            means = np.empty((batch, channels), dtype=np.float64)
            variances = np.empty((batch, channels), dtype=np.float64)
            pair = (means, variances, torch.from_numpy(means), torch.from_numpy(variances))
            self._pairs[key] = pair
        return pair

    def whole(self, keys: Sequence[object], means: Sequence[Tensor]) -> tuple[np.ndarray, np.ndarray] | None:
        """The [N, C_total] means and variances of the layers with these keys, in this order,
        when this pass wrote them into the arena; else None (concatenate them), and the
        arena is laid out for these keys so that the next pass does."""
        keys = tuple(keys)
        ours = len(keys) == len(means) and all(
            key in self._pairs and self._pairs[key][2] is mean for key, mean in zip(keys, means)
        )
        if not ours:
            return None  # some layer was reduced by torch: no arena can hold it
        if keys == self._arena_keys and all(
            mean is view for mean, view in zip(means, self._arena_views)
        ):
            return self._arena
        batch = self._pairs[keys[0]][0].shape[0]
        widths = [self._pairs[key][0].shape[1] for key in keys]
        if any(self._pairs[key][0].shape[0] != batch for key in keys):
            return None
        arena = (np.empty((batch, sum(widths))), np.empty((batch, sum(widths))))
        start = 0
        for key, width in zip(keys, widths):
            columns = slice(start, start + width)
            views = (arena[0][:, columns], arena[1][:, columns])
            self._pairs[key] = (*views, torch.from_numpy(views[0]), torch.from_numpy(views[1]))
            start += width
        self._arena_keys, self._arena = keys, arena
        self._arena_views = tuple(self._pairs[key][2] for key in keys)
        return None


def channel_moments(
    z: Tensor, buffers: MomentBuffers | None = None, key: object = None
) -> tuple[Tensor, Tensor]:
    """[N, C, H, W] -> per-channel mean and H*W-denominator variance, float64 [N, C] each,
    in one read of z (see channel_moments_applicable); into buffers[key] when given."""
    moments = _compiled()[0]
    batch, channels = z.shape[0], z.shape[1]
    if buffers is None:
        buffers, key = MomentBuffers(), None
    means, variances, means_t, variances_t = buffers.get(key, batch, channels)
    activation = (z.detach() if z.requires_grad else z).numpy()
    workers = min(torch.get_num_threads(), batch) if z.numel() >= PARALLEL_REDUCTION_ELEMENTS else 1
    if workers <= 1:
        moments(activation, means, variances)
    else:
        # The kernel releases the GIL: slices of samples on torch's number of threads, as torch's
        # own reductions would use them (a float64-accumulating torch sum is 20x slower).
        bounds = np.linspace(0, batch, workers + 1).astype(int)
        pool = _reduction_pool(workers)
        jobs = [
            pool.submit(moments, activation[start:stop], means[start:stop], variances[start:stop])
            for start, stop in zip(bounds[:-1], bounds[1:])
            if stop > start
        ]
        for job in jobs:
            job.result()
    return means_t, variances_t


def batchnorm_sums(
    means: np.ndarray,
    variances: np.ndarray,
    constants: dict[str, np.ndarray],
) -> Tensor:
    """The [8, N] float64 sums of the batch-norm family (see BatchNormReducer), in one loop.

    means, variances: [N, C_total] per-channel mean and H*W-denominator variance of every
    layer, input pseudo-layer first; constants: float64 [C_total] arrays center,
    inverse_variance, spread_scale, chi2_middle, chi2_half_width, spread_mask and
    input_mask (1 on the input pseudo-layer's channels, else 0).
    """
    family = _compiled()[1]
    sums = np.empty((8, means.shape[0]), dtype=np.float64)
    family(
        means,
        variances,
        constants["center"],
        constants["inverse_variance"],
        constants["spread_scale"],
        constants["chi2_middle"],
        constants["chi2_half_width"],
        constants["spread_mask"],
        constants["input_mask"],
        sums,
    )
    return torch.from_numpy(sums)


def optimality_family(
    logits: Tensor,
    latent: Tensor | None,
    head_tables: tuple[Tensor, Tensor] | None,
    t1000: float,
) -> tuple[Tensor, Tensor]:
    """MP, H, T1000 and, with a head, NORM ... ACT+ in one loop over the samples: float64
    [10, N] (rows in that order; the latent rows are unset without a head) and the
    predicted classes [N], on the CPU whatever the device of logits and latent (they are
    copied: [N, K] and [N, D] are small beside a dozen operations on a GPU). The same
    equations as monitor.indicators.optimality; head_tables as
    LatentReducer.head_tables(weight, host=True) gives them."""
    optimality = _compiled()[2]
    batch = logits.shape[0]
    out = np.empty((10, batch), dtype=np.float64)
    predicted = np.empty(batch, dtype=np.int64)
    if latent is None or head_tables is None:
        latent_array = np.empty((batch, 0), dtype=np.float64)
        rows, norms = np.empty((1, 3, 0)), np.empty((1, 3))
    else:
        latent_array = latent.detach().cpu().numpy()
        rows, norms = head_tables[0].numpy(), head_tables[1].numpy()
    optimality(
        np.ascontiguousarray(logits.detach().cpu().numpy()),
        np.ascontiguousarray(latent_array),
        rows,
        norms,
        t1000,
        np.finfo(np.float64).tiny,
        out,
        predicted,
    )
    return torch.from_numpy(out), torch.from_numpy(predicted)


def tempered_confidence_gap(logits: Tensor, temperature: float) -> Tensor:
    """1 - max softmax(z / T), float64 [N] on the CPU: bit for bit what optimality_family
    gives for T1000."""
    out = np.empty(logits.shape[0], dtype=np.float64)
    _compiled()[3](np.ascontiguousarray(logits.detach().cpu().numpy()), float(temperature), out)
    return torch.from_numpy(out)
