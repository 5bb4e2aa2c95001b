"""Reuse 1C-Sum calibrations across restarts: one JSON file per model fingerprint.

The science (monitor.indicators) does no I/O; this module is the thin file layer around it.
A file is named after the fingerprint (weights + preprocessing + head), the number of noise
draws and the seed, so a changed model, a changed preprocessing or another n never reuses a
stale calibration. Unreadable or mismatching files are recomputed and replaced, not trusted.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from monitor.errors import MonitorError
from monitor.indicators.scorer import DEFAULT_CALIBRATION_BATCH, Scorer
from monitor.indicators.summary import (
    DEFAULT_CALIBRATION_SAMPLES,
    DEFAULT_CALIBRATION_SEED,
    Calibration,
)

log = logging.getLogger(__name__)


def cache_path(cache_dir: str | os.PathLike, fingerprint: str, n: int, seed: int) -> Path:
    return Path(cache_dir) / f"calibration-{fingerprint}-n{n}-seed{seed}.json"


def load_or_calibrate(
    scorer: Scorer,
    cache_dir: str | os.PathLike,
    *,
    n: int = DEFAULT_CALIBRATION_SAMPLES,
    seed: int = DEFAULT_CALIBRATION_SEED,
    batch_size: int = DEFAULT_CALIBRATION_BATCH,
    progress: bool = True,
) -> Calibration:
    """Give `scorer` its calibration from cache_dir, computing and storing it when absent."""
    fingerprint = scorer.fingerprint()
    path = cache_path(cache_dir, fingerprint, n, seed)
    if path.exists():
        try:
            calibration = Calibration.from_dict(json.loads(path.read_text()))
            if (calibration.fingerprint, calibration.n, calibration.seed) != (fingerprint, n, seed):
                raise MonitorError("its fingerprint, n or seed does not match its file name")
            scorer.calibration = calibration
            log.info("1C-Sum calibration loaded from %s", path)
            return calibration
        except (OSError, ValueError, TypeError, KeyError, MonitorError) as error:  # any damaged file
            log.warning("ignoring calibration cache %s (%s); recomputing it", path, error)
    calibration = scorer.calibrate(n=n, seed=seed, batch_size=batch_size, progress=progress)
    _write_atomically(path, json.dumps(calibration.to_dict(), indent=2, sort_keys=True) + "\n")
    log.info("1C-Sum calibration saved to %s", path)
    return calibration


def _write_atomically(path: Path, text: str) -> None:
    # A crash mid-write must never leave a truncated file that a restart would then read.
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
