"""Scorer: wires the probe, the indicator families and 1C-Sum behind the public contract.

    scorer = Scorer(model, mean=(0.286,), std=(0.353,))
    scores = scorer.score(x)          # dict: canonical name -> float64 CPU tensor [N]
    batch = scorer.score_batch(x)     # .indicators, .predicted [N], .logits [N, K]

Everything except ODIN comes from one batched forward pass on the model's device.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from monitor.errors import ConfigError, InputError, ModelError
from monitor.indicators import kernels
from monitor.indicators.batchnorm import (
    BATCHNORM_FAMILY,
    BatchNormReducer,
    LayerMoments,
    reduce_activation,
)
from monitor.indicators.optimality import (
    LATENT_FAMILY,
    ODIN_EPSILON,
    ODIN_TEMPERATURE,
    SOFTMAX_FAMILY,
    T1000_TEMPERATURE,
    LatentReducer,
    odin_perturbation,
    softmax_family,
    tempered_confidence_gap,
)
from monitor.indicators.probe import Capture, Probe
from monitor.indicators.summary import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_CALIBRATION_SEED,
    Calibration,
    fingerprint,
    fit_calibration,
    summary_members,
    summary_terms,
)
from monitor.names import INDICATORS, SUMMARY

log = logging.getLogger(__name__)

# Resampling (bicubic, Lanczos) overshoots [0, 1] by a hair; anything beyond this is a bug upstream.
PIXEL_TOLERANCE = 1e-3
INPUT_PREFIX = "IN-"
DEFAULT_CALIBRATION_BATCH = 64


@dataclass(frozen=True)
class ScoreBatch:
    """One scored batch, on the CPU.

    indicators: canonical name -> float64 [N], in canonical order, "1C-Sum" last;
    predicted: int64 [N], the model's class (argmax of the logits);
    logits: [N, K] as the model returned them (its dtype).
    """

    indicators: dict[str, Tensor]
    predicted: Tensor
    logits: Tensor


class Scorer:
    """White-box OOD scorer of an image classifier (see docs/indicators.md).

    model: an nn.Module mapping normalised images [N, C, H, W] to logits [N, K]. The scorer
        puts it in eval mode (batch-norm indicators need the running statistics) and hooks
        its head and batch-norm layers; call close() to remove the hooks.
    mean, std: the per-channel input normalisation, (x - mean) / std, one value per channel.
    odin: also compute ODIN (one extra forward and backward pass per batch).
    head: dotted name of the head nn.Linear when it is not the last nn.Linear of the model.
    input_shape: (C, H, W) the model expects; else taken from the first batch scored.
    calibration: a 1C-Sum Calibration (or its to_dict()) to reuse; else one is computed on
        first use, see calibrate() and monitor.calibration_cache.load_or_calibrate.
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        odin: bool = False,
        head: str | None = None,
        input_shape: Sequence[int] | None = None,
        odin_temperature: float = ODIN_TEMPERATURE,
        odin_epsilon: float = ODIN_EPSILON,
        calibration: Calibration | Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self._mean = _channel_values("mean", mean)
        self._std = _channel_values("std", std)
        if len(self._mean) != len(self._std):
            raise ConfigError(
                f"mean has {len(self._mean)} values but std has {len(self._std)}: "
                "give one of each per input channel"
            )
        if any(value <= 0 for value in self._std):
            raise ConfigError(f"std = {self._std}: every value must be > 0")
        self._input_shape = None if input_shape is None else self._check_input_shape(input_shape)
        self._odin = bool(odin)
        self._odin_temperature = _positive("odin_temperature", odin_temperature)
        self._odin_epsilon = _positive("odin_epsilon", odin_epsilon, allow_zero=True)

        reference = next(iter(model.parameters()), None)
        if reference is None:
            reference = next(iter(model.buffers()), None)
        if reference is None:
            raise ModelError("the model has no parameters or buffers: there is nothing to probe")
        self._device = reference.device
        self._dtype = reference.dtype if reference.is_floating_point() else torch.float32

        self._model = model.eval()
        # Checked before every pass; walking the module tree each time costs more than the check.
        self._modules = tuple(model.modules())
        self._probe = Probe(model, head)
        self._batchnorm_reducer = BatchNormReducer()
        self._latent_reducer = LatentReducer()
        if self._probe.head is None:
            log.info("no nn.Linear head found: the latent indicators (%s) are absent",
                     ", ".join(LATENT_FAMILY))
        if not self._probe.batchnorms:
            log.info("no nn.BatchNorm2d found: %s are absent (IN- ones remain)",
                     ", ".join(BATCHNORM_FAMILY))

        channels = len(self._mean)
        self._mean_t = torch.tensor(self._mean, device=self._device, dtype=self._dtype)
        self._std_t = torch.tensor(self._std, device=self._device, dtype=self._dtype)
        self._variance_t = self._std_t.square()
        self._mean_view = self._mean_t.view(1, channels, 1, 1)
        self._std_view = self._std_t.view(1, channels, 1, 1)

        present = set(SOFTMAX_FAMILY)
        present |= {INPUT_PREFIX + name for name in BATCHNORM_FAMILY}
        present.add(SUMMARY)
        if self._odin:
            present.add("ODIN")
        if self._probe.head is not None:
            present |= set(LATENT_FAMILY)
        if self._probe.batchnorms:
            present |= set(BATCHNORM_FAMILY)
        self._available = tuple(name for name in INDICATORS if name in present)
        self._members = summary_members(self._available)
        self._weights = {name: 1.0 for name in self._members}
        self._summary_cache: tuple | None = None
        self._calibration: Calibration | None = None
        self._lock = threading.RLock()
        if calibration is not None:
            self.calibration = calibration

    # --- what the scorer offers ----------------------------------------------------------

    @property
    def available(self) -> tuple[str, ...]:
        """Indicators score() returns, in canonical order ("1C-Sum" included)."""
        return self._available

    @property
    def summary_members(self) -> tuple[str, ...]:
        """Indicators 1C-Sum adds up (before calibration drops constant ones)."""
        return self._members

    @property
    def odin(self) -> bool:
        """Whether score() computes ODIN (an extra backward and forward per batch)."""
        return self._odin

    @property
    def head_name(self) -> str | None:
        return self._probe.head_name

    @property
    def batchnorm_layers(self) -> tuple[str, ...]:
        """Names of the nn.BatchNorm2d layers that make up B (with the input pseudo-layer)."""
        return tuple(name for name, _ in self._probe.batchnorms)

    @property
    def device(self) -> torch.device:
        return self._device

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        return self._input_shape

    @property
    def mean(self) -> tuple[float, ...]:
        return self._mean

    @property
    def std(self) -> tuple[float, ...]:
        return self._std

    def fingerprint(self) -> str:
        """Identity of model weights + preprocessing + head (see summary.fingerprint)."""
        if self._input_shape is None:
            raise ConfigError(
                "input_shape is unknown until the first batch is scored; pass input_shape=(C, H, W)"
            )
        return fingerprint(self._model, self._mean, self._std, self._input_shape, self.head_name)

    def close(self) -> None:
        """Remove the probe's hooks from the model."""
        self._probe.remove()

    # --- 1C-Sum --------------------------------------------------------------------------

    @property
    def calibration(self) -> Calibration | None:
        return self._calibration

    @calibration.setter
    def calibration(self, calibration: Calibration | Mapping[str, Any] | None) -> None:
        """Use this calibration (checked against the model), or None to forget it."""
        if calibration is None:
            self._calibration = None
            return
        if isinstance(calibration, Mapping):
            calibration = Calibration.from_dict(calibration)
        if not isinstance(calibration, Calibration):
            raise InputError(
                f"calibration must be a Calibration or its to_dict(), got {type(calibration).__name__}"
            )
        if self._input_shape is None:
            raise ConfigError(
                "a calibration was given but input_shape was not: pass input_shape=(C, H, W) so "
                "the calibration can be checked against the model"
            )
        expected = self.fingerprint()
        if calibration.fingerprint != expected:
            raise ModelError(
                f"calibration belongs to another model or preprocessing (fingerprint "
                f"{calibration.fingerprint[:12]}..., this scorer {expected[:12]}...): "
                "recalibrate with scorer.calibrate()"
            )
        covered = set(calibration.members) | set(calibration.dropped)
        if covered != set(self._members):
            raise ModelError(
                f"calibration covers {sorted(covered)} but this scorer's 1C-Sum members are "
                f"{list(self._members)}: recalibrate with scorer.calibrate()"
            )
        self._calibration = calibration

    @property
    def summary_weights(self) -> dict[str, float]:
        """w_i of each 1C-Sum member (1 unless set)."""
        return dict(self._weights)

    def set_summary_weights(self, weights: Mapping[str, float]) -> None:
        """Set w_i for the named members; members not named keep their weight."""
        if not isinstance(weights, Mapping):
            raise InputError(
                f"summary weights must be a mapping name -> number, got {type(weights).__name__}"
            )
        checked = {}
        for name, value in weights.items():
            if name not in self._members:
                raise InputError(
                    f"summary weight {name!r}: not a 1C-Sum member of this scorer; members are "
                    f"{', '.join(self._members)}"
                )
            if not _finite_number(value):
                raise InputError(f"summary weight {name!r} = {value!r}: must be a finite number")
            checked[name] = float(value)
        with self._lock:  # a stream may score on another thread meanwhile
            self._weights = {**self._weights, **checked}

    def reset_summary_weights(self) -> None:
        with self._lock:
            self._weights = {name: 1.0 for name in self._members}

    def calibrate(
        self,
        n: int = DEFAULT_CALIBRATION_SAMPLES,
        seed: int = DEFAULT_CALIBRATION_SEED,
        batch_size: int = DEFAULT_CALIBRATION_BATCH,
        progress: bool = True,
    ) -> Calibration:
        """Fit mu_i, sigma_i of the 1C-Sum members on n U(0, 1) images at the input shape.

        The noise depends only on (seed, n): each image is drawn in turn from one CPU
        generator, so batch_size and device do not change it.
        """
        if not isinstance(n, int) or isinstance(n, bool) or n < 2:
            raise InputError(f"calibrate: n = {n!r} must be an integer >= 2")
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise InputError(f"calibrate: seed = {seed!r} must be an integer")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise InputError(f"calibrate: batch_size = {batch_size!r} must be an integer >= 1")
        if self._input_shape is None:
            raise ConfigError(
                "calibrate: the input shape is unknown; pass input_shape=(C, H, W) to Scorer "
                "or score a batch first"
            )
        with self._lock:
            generator = torch.Generator().manual_seed(seed)
            noise = torch.empty((min(batch_size, n), *self._input_shape))
            columns: dict[str, list[np.ndarray]] = {name: [] for name in self._members}
            with tqdm(total=n, desc="1C-Sum calibration", unit="img", disable=not progress) as bar:
                done = 0
                while done < n:
                    count = min(batch_size, n - done)
                    for row in range(count):
                        torch.rand(self._input_shape, generator=generator, out=noise[row])
                    pixels = noise[:count].to(self._device, self._dtype)
                    values, _, _, finite = self._single_pass(pixels)
                    self._check_finite(finite)
                    stacked = torch.stack([values[name] for name in self._members]).cpu().numpy()
                    for index, name in enumerate(self._members):
                        columns[name].append(stacked[index])
                    done += count
                    bar.update(count)
            calibration = fit_calibration(
                {name: np.concatenate(parts) for name, parts in columns.items()},
                n=n,
                seed=seed,
                fingerprint=self.fingerprint(),
            )
            if calibration.dropped:
                log.warning(
                    "1C-Sum: %s constant (or not finite) on uniform noise, dropped from the sum",
                    ", ".join(calibration.dropped),
                )
            if not calibration.members:
                log.warning("1C-Sum: every member is constant on uniform noise; 1C-Sum is 0 (an empty sum)")
            self._calibration = calibration
            return calibration

    # --- scoring -------------------------------------------------------------------------

    def score(self, images: Tensor) -> dict[str, Tensor]:
        """Indicators of a batch: canonical name -> float64 CPU tensor [N] (1C-Sum included).

        images: float [N, C, H, W] in pixel space [0, 1], the model's input size.
        Low values: in-distribution; high: out-of-distribution.
        """
        return self.score_batch(images).indicators

    def score_batch(self, images: Tensor) -> ScoreBatch:
        """Indicators, predicted class and logits of a batch (see ScoreBatch).

        One device-to-host copy per batch (to_host): the checks on the pixels and on the
        logits stay on the device until then, and their errors are raised after it.
        """
        with self._lock:
            pixels, pixel_range = self._validate(images)
            if self._calibration is None:
                # Bad input fails before the one-off calibration runs.
                self._check_pixels(pixels, *pixel_range.tolist())
                log.info(
                    "1C-Sum has no calibration yet: calibrating now on %d noise images "
                    "(reuse one with monitor.calibration_cache.load_or_calibrate)",
                    DEFAULT_CALIBRATION_SAMPLES,
                )
                self.calibrate()
            values, logits, predicted, finite = self._single_pass(pixels)
            if self._odin:
                values["ODIN"] = self._odin_values(pixels)
            # Every indicator in one [A, N] table; 1C-Sum is a linear form of its rows.
            names = self._available[:-1]  # "1C-Sum" comes last
            table = torch.stack([values[name] for name in names])
            index, scale, offset = self._summary_form(names, table.device)
            if index is None:
                # Every member was constant on noise: the sum is empty, hence 0 (logged at calibration).
                summary = table.new_zeros((1, table.shape[1]))
            else:
                summary = (scale @ table[index] - offset).unsqueeze(0)
            table = torch.cat([table, summary])
            table, predicted, logits, finite, pixel_range = to_host(
                [table, predicted, logits, finite, pixel_range]
            )
            self._check_pixels(pixels, *pixel_range.tolist())
            self._check_finite(finite)
            indicators = dict(zip(self._available, table.unbind(0)))
            return ScoreBatch(indicators=indicators, predicted=predicted, logits=logits)

    def _summary_form(
        self, names: tuple[str, ...], device: torch.device
    ) -> tuple[Tensor | None, Tensor | None, float]:
        """(row index, scale, offset) of 1C-Sum over the rows `names` (see summary_terms),
        rebuilt only when the calibration or a weight changes."""
        key = (tuple(self._weights.items()), names, device)
        cached = self._summary_cache
        if cached is not None and cached[0] is self._calibration and cached[1] == key:
            return cached[2]
        index, scale, offset = summary_terms(names, self._calibration, self._weights)
        form = (
            (torch.tensor(index, device=device), torch.tensor(scale, dtype=torch.float64, device=device), offset)
            if index
            else (None, None, 0.0)
        )
        self._summary_cache = (self._calibration, key, form)
        return form

    def _single_pass(self, pixels: Tensor) -> tuple[dict[str, Tensor], Tensor, Tensor, Tensor]:
        """Every indicator but ODIN and 1C-Sum from one forward pass (float64 on device), the
        logits, the predicted classes and whether each sample's logits are finite (bool [N] on
        the device: see _check_finite)."""
        # Any submodule in training mode would use batch statistics and overwrite the running ones.
        if any(module.training for module in self._modules):
            log.warning("part of the monitored model was in training mode; putting it back in eval")
            self._model.eval()
        with torch.inference_mode():
            with self._probe.capture() as capture:
                logits = self._model(self._normalize(pixels))
            finite = self._check_logits(logits, pixels.shape[0])
            values, predicted = self._optimality(capture, logits)
            # The input normalisation is the pseudo batch-norm layer of B (section 2.2).
            mean, variance = reduce_activation(pixels, self._probe.buffers, "input")
            layers = [
                LayerMoments(
                    mean=mean,
                    variance=variance,
                    pixels=int(pixels.shape[2] * pixels.shape[3]),
                    center=self._mean_t,
                    running_var=self._variance_t,
                    eps=0.0,
                )
            ]
            if self._probe.batchnorms:
                if not capture.layers:
                    raise ModelError(
                        f"none of the model's batch-norm layers ({', '.join(self.batchnorm_layers)}) "
                        "ran during the forward pass"
                    )
                layers += capture.layers
            whole = self._probe.buffers.whole(["input", *capture.keys], [layer.mean for layer in layers])
            values.update(self._batchnorm_reducer(layers, whole))
        return values, logits, predicted, finite

    def _optimality(self, capture: Capture, logits: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """The softmax and latent families (float64 [N] each) and the predicted classes."""
        head = self._probe.head
        latent = None if head is None else self._latent(capture, logits)
        if kernels.enabled():
            # One compiled loop on the host: a dozen small tensor operations cost more, on the
            # CPU and as GPU launches alike.
            tables = None if head is None else self._latent_reducer.head_tables(head.weight, host=True)
            table, predicted = kernels.optimality_family(logits, latent, tables, T1000_TEMPERATURE)
            names = SOFTMAX_FAMILY + (LATENT_FAMILY if head is not None else ())
            return dict(zip(names, table.unbind(0))), predicted
        values = softmax_family(logits)
        predicted = logits.argmax(dim=1)
        if head is not None:
            values.update(self._latent_reducer(predicted, latent, head.weight))
        return values, predicted

    def _odin_values(self, pixels: Tensor) -> Tensor:
        # The probe records nothing outside capture(), and eval mode freezes running stats.
        perturbed = odin_perturbation(
            lambda x: self._model(self._normalize(x)),
            pixels,
            temperature=self._odin_temperature,
            epsilon=self._odin_epsilon,
        )
        with torch.inference_mode():
            logits = self._model(self._normalize(perturbed))
        return tempered_confidence_gap(logits, self._odin_temperature)

    def _normalize(self, pixels: Tensor) -> Tensor:
        return (pixels - self._mean_view) / self._std_view

    def _latent(self, capture: Capture, logits: Tensor) -> Tensor:
        latent = capture.latent
        head = self._probe.head
        if latent is None:
            raise ModelError(
                f"the head {self.head_name!r} was not called during the forward pass; "
                "name the classifier's final nn.Linear with head='...'"
            )
        if latent.shape != (logits.shape[0], head.in_features):
            raise ModelError(
                f"the head {self.head_name!r} received input of shape {tuple(latent.shape)}; "
                f"the latent indicators need [N, {head.in_features}]"
            )
        return latent

    def _check_logits(self, logits: Any, batch: int) -> Tensor:
        """Shape checks now; returns whether each sample's logits are finite (bool [N] on the
        device) for _check_finite after the batch's one copy to the host."""
        if not isinstance(logits, Tensor) or logits.dim() != 2 or logits.shape[0] != batch:
            shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
            raise ModelError(f"the model must return logits [N, K] = [{batch}, K]; it returned {shape}")
        if logits.shape[1] < 2:
            raise ModelError(
                f"the model returns {logits.shape[1]} logit per sample; OOD scoring needs K >= 2 classes"
            )
        finite = torch.isfinite(logits).all(dim=1)
        head = self._probe.head
        if head is not None and head.out_features != logits.shape[1]:
            self._check_finite(finite)  # non-finite logits are reported first
            raise ModelError(
                f"the head {self.head_name!r} has {head.out_features} outputs but the model returns "
                f"{logits.shape[1]} logits: name the classifier's final nn.Linear with head='...'"
            )
        return finite

    @staticmethod
    def _check_finite(finite: Tensor) -> None:
        if not bool(finite.all()):
            bad = torch.nonzero(~finite).flatten().tolist()
            raise InputError(
                f"the model returned non-finite logits (NaN or inf) for sample(s) {bad[:10]}: "
                "no indicator can be trusted for them"
            )

    # --- input validation (once, at the boundary) -----------------------------------------

    def _check_input_shape(self, shape: Sequence[int]) -> tuple[int, int, int]:
        try:
            values = tuple(int(v) for v in shape)
        except (TypeError, ValueError):
            raise ConfigError(f"input_shape = {shape!r}: expected (C, H, W) integers") from None
        if len(values) != 3 or any(v < 1 for v in values):
            raise ConfigError(f"input_shape = {shape!r}: expected (C, H, W), positive integers")
        if values[0] != len(self._mean):
            raise ConfigError(
                f"input_shape = {values} has {values[0]} channels but mean/std have {len(self._mean)} values"
            )
        if values[1] * values[2] < 2:
            raise ConfigError(f"input_shape = {values}: images need at least 2 pixels")
        return values  # type: ignore[return-value]

    def _validate(self, images: Any) -> tuple[Tensor, Tensor]:
        """The images on the model's device, and their (min, max) as a device tensor [2]."""
        if isinstance(images, np.ndarray):
            images = torch.from_numpy(images)
        if not isinstance(images, Tensor):
            raise InputError(f"images must be a torch.Tensor [N, C, H, W], got {type(images).__name__}")
        if images.dim() != 4:
            raise InputError(f"images must be a 4-D tensor [N, C, H, W]; got shape {tuple(images.shape)}")
        if not images.is_floating_point():
            raise InputError(
                f"images have dtype {images.dtype}; expected floats in [0, 1] (divide 8-bit images by 255)"
            )
        batch, channels, height, width = images.shape
        if batch == 0:
            raise InputError("images: the batch is empty (N = 0)")
        if channels != len(self._mean):
            raise InputError(
                f"images have {channels} channels; the model takes {len(self._mean)} (mean/std length)"
            )
        if self._input_shape is not None and (height, width) != self._input_shape[1:]:
            raise InputError(
                f"images are {height}x{width}; the model takes "
                f"{self._input_shape[1]}x{self._input_shape[2]} (resize them first)"
            )
        if height * width < 2:
            raise InputError(f"images are {height}x{width}; they need at least 2 pixels")
        pixels = images.to(self._device, self._dtype)
        # (low, high) stays on the device until the batch's one copy; see _check_pixels.
        pixel_range = torch.stack(torch.aminmax(pixels))
        if self._input_shape is None:
            # The shape is taken from valid pixels only: this first batch is checked now.
            self._check_pixels(pixels, *pixel_range.tolist())
            self._input_shape = (channels, height, width)
            log.info("input shape taken from the first batch: %s", self._input_shape)
        return pixels, pixel_range

    @staticmethod
    def _check_pixels(pixels: Tensor, low: float, high: float) -> None:
        if not (math.isfinite(low) and math.isfinite(high)):
            bad = (~torch.isfinite(pixels)).flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise InputError(f"images contain NaN or infinite pixels (samples {_few(bad)})")
        if low < -PIXEL_TOLERANCE or high > 1 + PIXEL_TOLERANCE:
            outside = (pixels < -PIXEL_TOLERANCE) | (pixels > 1 + PIXEL_TOLERANCE)
            bad = outside.flatten(1).any(dim=1).nonzero().flatten().tolist()
            raise InputError(
                f"pixels must lie in [0, 1] (pixel space, before normalisation); found values in "
                f"[{low:.4g}, {high:.4g}] (samples {_few(bad)})"
            )

def to_host(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The tensors on the host: the Scorer's one device-to-host copy of a batch, hence on a GPU
    its one synchronisation. Tensors already on the host (all of them for a CPU model; the
    compiled kernels' results next to a GPU) are returned as they are."""
    on_device = [tensor for tensor in tensors if not tensor.is_cpu]
    if not on_device:
        return list(tensors)
    copied = iter(_one_buffer_copy(on_device))
    return [tensor if tensor.is_cpu else next(copied) for tensor in tensors]


def _one_buffer_copy(tensors: Sequence[Tensor]) -> list[Tensor]:
    """The tensors brought to the host in ONE copy: flattened side by side as float64, which
    holds every float of a narrower type and every integer below 2**53 (class indices, 0/1
    flags) exactly, then cut and cast back to their shapes and dtypes."""
    buffer = torch.cat([tensor.reshape(-1).to(torch.float64) for tensor in tensors]).cpu()
    result, start = [], 0
    for tensor in tensors:
        end = start + tensor.numel()
        result.append(buffer[start:end].view(tensor.shape).to(tensor.dtype))
        start = end
    return result


def _few(indices: list[int], limit: int = 10) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f" and {len(indices) - limit} more" if len(indices) > limit else "")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _channel_values(argument: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (int, float)) and not isinstance(values, bool):
        values = (values,)
    try:
        result = tuple(float(v) for v in values)
    except (TypeError, ValueError):
        raise ConfigError(f"{argument} = {values!r}: expected one number per input channel") from None
    if not result or not all(math.isfinite(v) for v in result):
        raise ConfigError(f"{argument} = {values!r}: expected finite numbers, one per input channel")
    return result


def _positive(argument: str, value: Any, allow_zero: bool = False) -> float:
    if not _finite_number(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{argument} = {value!r}: must be a finite number {bound}")
    return float(value)

