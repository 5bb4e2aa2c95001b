"""1C-Sum (paper section 4, eq. 31) and its calibration on uniform noise.

    1C-Sum(x) = sum over members i of  w_i * (h_i(x) - mu_i) / sigma_i

Members: every available indicator except the IN- ones and ODIN (monitor.names). mu_i and
sigma_i are the mean and standard deviation of h_i on U(0, 1) noise at the model's input
size, normalised like real inputs. w_i = 1 unless set (label-driven re-weighting).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from monitor.errors import InputError
from monitor.names import INDICATORS, SUMMARY_MEMBERS_EXCLUDED

CALIBRATION_FORMAT = 1
DEFAULT_CALIBRATION_SAMPLES = 2048
DEFAULT_CALIBRATION_SEED = 0

# Bump when an indicator's definition changes, so cached calibrations stop matching.
INDICATOR_DEFINITIONS_VERSION = "indicators-1"


def summary_members(available: Sequence[str]) -> tuple[str, ...]:
    """The available indicators that 1C-Sum adds up, in canonical order."""
    present = set(available)
    return tuple(
        name for name in INDICATORS if name in present and name not in SUMMARY_MEMBERS_EXCLUDED
    )


def fingerprint(
    model: nn.Module,
    mean: Sequence[float],
    std: Sequence[float],
    input_shape: Sequence[int],
    head: str | None,
) -> str:
    """sha256 (hex) of the model's state_dict tensors and its preprocessing: the identity of
    a calibration. Pure: the same weights and preprocessing give the same value anywhere."""
    digest = hashlib.sha256()
    preprocessing = {
        "definitions": INDICATOR_DEFINITIONS_VERSION,
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "input_shape": [int(v) for v in input_shape],
        "head": head,
        # eps is not in the state_dict but changes every batch-norm indicator.
        "batchnorm_eps": [float(m.eps) for m in model.modules() if isinstance(m, nn.BatchNorm2d)],
    }
    digest.update(json.dumps(preprocessing, sort_keys=True).encode())
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class Calibration:
    """Noise statistics of the 1C-Sum members: inspectable, serialisable, immutable.

    means/stds: member -> mu_i / sigma_i (sample standard deviation, n - 1), in canonical
    order; dropped: members whose values on noise were constant (sigma = 0) or non-finite,
    left out of the sum; n, seed: how many noise draws, from which seed; fingerprint: the
    model and preprocessing it belongs to.
    """

    means: Mapping[str, float]
    stds: Mapping[str, float]
    dropped: tuple[str, ...]
    n: int
    seed: int
    fingerprint: str
    format: int = field(default=CALIBRATION_FORMAT)

    @property
    def members(self) -> tuple[str, ...]:
        """Indicators that enter 1C-Sum (dropped ones excluded), canonical order."""
        return tuple(name for name in INDICATORS if name in self.means)

    def standardize(self, indicators: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """(h_i - mu_i) / sigma_i for every member, as float64 tensors."""
        missing = [name for name in self.members if name not in indicators]
        if missing:
            raise InputError(f"cannot standardise: indicators {missing} are missing")
        return {
            name: (indicators[name].double() - self.means[name]) / self.stds[name]
            for name in self.members
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": self.format,
            "fingerprint": self.fingerprint,
            "n": self.n,
            "seed": self.seed,
            "members": list(self.members),
            "means": {name: self.means[name] for name in self.members},
            "stds": {name: self.stds[name] for name in self.members},
            "dropped": list(self.dropped),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Calibration":
        """Inverse of to_dict; every problem is an InputError naming the key."""
        if not isinstance(data, Mapping):
            raise InputError(f"calibration: expected a mapping, got {type(data).__name__}")
        for key in ("fingerprint", "n", "seed", "means", "stds", "dropped"):
            if key not in data:
                raise InputError(f"calibration: key {key!r} is missing")
        if data.get("format", CALIBRATION_FORMAT) != CALIBRATION_FORMAT:
            raise InputError(
                f"calibration: format {data.get('format')!r} is not {CALIBRATION_FORMAT}"
            )
        means, stds = data["means"], data["stds"]
        if not isinstance(means, Mapping) or not isinstance(stds, Mapping):
            raise InputError("calibration: 'means' and 'stds' must be mappings name -> number")
        if set(means) != set(stds):
            raise InputError(
                f"calibration: 'means' and 'stds' name different indicators: "
                f"{sorted(set(means) ^ set(stds))}"
            )
        for name in means:
            if name not in INDICATORS or name in SUMMARY_MEMBERS_EXCLUDED:
                raise InputError(f"calibration: {name!r} is not a 1C-Sum member indicator")
            if not _finite_number(means[name]):
                raise InputError(f"calibration: means[{name!r}] = {means[name]!r} is not finite")
            if not _finite_number(stds[name]) or float(stds[name]) <= 0:
                raise InputError(f"calibration: stds[{name!r}] = {stds[name]!r} must be > 0")
        dropped = tuple(data["dropped"])
        for name in dropped:
            if name not in INDICATORS:
                raise InputError(f"calibration: dropped names unknown indicator {name!r}")
        n, seed = data["n"], data["seed"]
        if not isinstance(n, int) or n < 2:
            raise InputError(f"calibration: n = {n!r} must be an integer >= 2")
        if not isinstance(seed, int):
            raise InputError(f"calibration: seed = {seed!r} must be an integer")
        if not isinstance(data["fingerprint"], str):
            raise InputError("calibration: 'fingerprint' must be a string")
        ordered = [name for name in INDICATORS if name in means]
        return cls(
            means={name: float(means[name]) for name in ordered},
            stds={name: float(stds[name]) for name in ordered},
            dropped=dropped,
            n=n,
            seed=seed,
            fingerprint=data["fingerprint"],
        )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def fit_calibration(
    values: Mapping[str, np.ndarray], *, n: int, seed: int, fingerprint: str
) -> Calibration:
    """Mean and sample standard deviation of each member's values on noise.

    A member whose values are constant (sigma = 0) or not all finite is dropped.
    """
    means, stds, dropped = {}, {}, []
    for name in INDICATORS:
        if name not in values:
            continue
        column = np.asarray(values[name], dtype=np.float64)
        if not np.all(np.isfinite(column)) or column.max() == column.min():
            dropped.append(name)
            continue
        means[name] = float(column.mean())
        stds[name] = float(column.std(ddof=1))
    return Calibration(
        means=means, stds=stds, dropped=tuple(dropped), n=n, seed=seed, fingerprint=fingerprint
    )


def one_c_sum(
    indicators: Mapping[str, Tensor], calibration: Calibration, weights: Mapping[str, float]
) -> Tensor:
    """Eq. 31 with weights: sum_i w_i (h_i - mu_i) / sigma_i over the calibration's members.

    One matrix product for the batch; float64 keeps the rescaled terms exact enough
    (T1000's sigma on noise is about 1e-5).
    """
    reference = next(iter(indicators.values()))
    members = calibration.members
    if not members:
        # Every member was constant on noise: the sum is empty, hence 0 (logged at calibration).
        return torch.zeros(reference.shape[0], dtype=torch.float64, device=reference.device)
    # sum_i w_i (h_i - mu_i) / sigma_i = sum_i (w_i / sigma_i) h_i - sum_i w_i mu_i / sigma_i
    scale = [float(weights.get(name, 1.0)) / calibration.stds[name] for name in members]
    offset = sum(s * calibration.means[name] for s, name in zip(scale, members))
    values = torch.stack([indicators[name].double() for name in members], dim=1)  # [N, M]
    return values @ torch.tensor(scale, dtype=torch.float64, device=values.device) - offset


def summary_terms(
    names: Sequence[str], calibration: Calibration, weights: Mapping[str, float]
) -> tuple[list[int], list[float], float]:
    """Eq. 31 as a linear form over rows named `names`: 1C-Sum = sum_r scale_r * row[index_r] - offset.

    sum_i w_i (h_i - mu_i) / sigma_i = sum_i (w_i / sigma_i) h_i - sum_i w_i mu_i / sigma_i,
    over the calibration's members (each must be among names).
    """
    members = calibration.members
    index = [list(names).index(name) for name in members]
    scale = [float(weights.get(name, 1.0)) / calibration.stds[name] for name in members]
    offset = sum(s * calibration.means[name] for s, name in zip(scale, members))
    return index, scale, float(offset)
