"""Offline scoring: `ood-monitor score` (files and folders -> CSV / JSON lines) and the offline
demo on the bundled sample images (`run_offline_demo`).

Rows come out in input order, one per file: scored rows carry the predicted class and every
indicator; files that cannot become a model input are rows with their reject reason (the same
codes as the stream's dead-letter topic, monitor.imaging.REJECT_REASONS).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Iterable, Iterator, Sequence

import torch
from tqdm import tqdm

from monitor.classifiers import ASSETS_DIR, LoadedClassifier, load_classifier, load_from_args
from monitor.errors import InputError
from monitor.imaging import DEFAULT_LIMITS, ImageLimits, ImageRejected, decode_image, read_limited, stack_images
from monitor.names import INDICATORS, SUMMARY

SAMPLES_DIR = ASSETS_DIR / "samples"
# Files a folder walk picks up (case-insensitive); files named on the command line are always read.
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".npy"})
FIXED_COLUMNS = ("path", "status", "reject_reason", "reject_detail", "predicted", "predicted_name")
COLUMNS = FIXED_COLUMNS + INDICATORS
DEFAULT_BATCH_SIZE = 64
# Exit status of `score` when not one input could be scored (2 stays for usage/model errors).
EXIT_NOTHING_SCORED = 1


# --- inputs ---------------------------------------------------------------------------------


def collect_inputs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Files to score: each file as named, and under each folder (recursively, in sorted order,
    hidden entries skipped) the files with an image suffix. Unknown paths are an InputError."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                candidate
                for candidate in path.rglob("*")
                if candidate.is_file()
                and candidate.suffix.lower() in IMAGE_SUFFIXES
                and not any(part.startswith(".") for part in candidate.relative_to(path).parts)
            )
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(f"input path {str(path)!r} does not exist (give image files or folders)")
    if not files:
        raise InputError(
            "no image files found in " + ", ".join(repr(str(p)) for p in paths)
            + f" (folders are searched for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return files


# --- scoring --------------------------------------------------------------------------------


@dataclass
class ScoredRow:
    """One input's outcome: status 'scored' (predicted class and indicators) or 'rejected'."""

    path: str
    status: str
    reject_reason: str | None = None
    reject_detail: str | None = None
    predicted: int | None = None
    predicted_name: str | None = None
    indicators: dict[str, float] = field(default_factory=dict)

    def as_record(self) -> dict[str, object]:
        record: dict[str, object] = {
            "path": self.path,
            "status": self.status,
            "reject_reason": self.reject_reason,
            "reject_detail": self.reject_detail,
            "predicted": self.predicted,
            "predicted_name": self.predicted_name,
        }
        for name in INDICATORS:
            record[name] = self.indicators.get(name)
        return record


def build_scorer(
    classifier: LoadedClassifier,
    *,
    odin: bool = False,
    head: str | None = None,
    cache_dir: str | os.PathLike,
    calibration_samples: int | None = None,
    progress: bool = True,
):
    """A Scorer for the loaded classifier, its 1C-Sum calibration loaded from (or saved to) `cache_dir`."""
    from monitor import Scorer
    from monitor.calibration_cache import load_or_calibrate

    preprocessing = classifier.preprocessing
    scorer = Scorer(
        classifier.model,
        mean=preprocessing.mean,
        std=preprocessing.std,
        odin=odin,
        head=head,
        input_shape=preprocessing.input_shape,
    )
    directory = Path(cache_dir)
    directory.mkdir(parents=True, exist_ok=True)
    if calibration_samples is None:
        load_or_calibrate(scorer, directory, progress=progress)
    else:
        load_or_calibrate(scorer, directory, n=calibration_samples, progress=progress)
    return scorer


def _batches(items: Sequence[Path], size: int) -> Iterator[Sequence[Path]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def score_files(
    files: Sequence[Path],
    classifier: LoadedClassifier,
    scorer,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    limits: ImageLimits = DEFAULT_LIMITS,
    progress: bool = True,
    apply_exif_orientation: bool = False,
) -> Iterator[ScoredRow]:
    """Decode and score `files` in batches; one row per file, in the order given."""
    if batch_size < 1:
        raise InputError(f"--batch-size must be at least 1, not {batch_size}")
    preprocessing = classifier.preprocessing
    with tqdm(total=len(files), desc="scoring", unit="img", file=sys.stderr, disable=not progress) as bar:
        for chunk in _batches(files, batch_size):
            rows: list[ScoredRow] = []
            decoded: list[torch.Tensor] = []
            decoded_rows: list[ScoredRow] = []
            for path in chunk:
                try:
                    tensor = decode_image(read_limited(path, limits), preprocessing.input_shape, limits=limits,
                                          apply_exif_orientation=apply_exif_orientation)
                except ImageRejected as rejected:
                    rows.append(ScoredRow(str(path), "rejected", rejected.reason, rejected.detail))
                    continue
                except OSError as error:
                    # Unreadable file (permissions, vanished): the same row shape, reason 'corrupt'.
                    rows.append(ScoredRow(str(path), "rejected", "corrupt", f"cannot read the file: {error}"))
                    continue
                row = ScoredRow(str(path), "scored")
                rows.append(row)
                decoded.append(tensor)
                decoded_rows.append(row)
            if decoded:
                batch = scorer.score_batch(stack_images(decoded).to(classifier.device))
                predicted = batch.predicted.tolist()
                columns = {name: values.tolist() for name, values in batch.indicators.items()}
                for index, row in enumerate(decoded_rows):
                    row.predicted = int(predicted[index])
                    row.predicted_name = preprocessing.class_name(row.predicted)
                    row.indicators = {name: float(values[index]) for name, values in columns.items()}
            bar.update(len(chunk))
            yield from rows


# --- output ---------------------------------------------------------------------------------


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return value


def _json_value(value: object) -> object:
    # JSON has no NaN or infinity: such values are written as null.
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class RowWriter:
    """Writes rows as CSV (header: COLUMNS, canonical indicator names) or JSON lines."""

    def __init__(self, stream: IO[str], fmt: str):
        if fmt not in ("csv", "jsonl"):
            raise InputError(f"--format must be csv or jsonl, not {fmt!r}")
        self.stream = stream
        self.fmt = fmt
        self._csv = csv.writer(stream) if fmt == "csv" else None
        if self._csv is not None:
            self._csv.writerow(COLUMNS)

    def write(self, row: ScoredRow) -> None:
        record = row.as_record()
        if self._csv is not None:
            self._csv.writerow([_csv_cell(record[column]) for column in COLUMNS])
        else:
            self.stream.write(json.dumps({k: _json_value(v) for k, v in record.items()}) + "\n")


def output_format(requested: str | None, output: str | None) -> str:
    """--format, else guessed from the output file's suffix (.jsonl/.json -> jsonl), else csv."""
    if requested:
        return requested
    if output and Path(output).suffix.lower() in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    return "csv"


def _configured(args: argparse.Namespace):
    """[model] cache_dir and [imaging] of the settings (file and environment), as the daemon reads them."""
    from monitor.settings import load_settings

    return load_settings(getattr(args, "config", None))


def _limits(args: argparse.Namespace, imaging: Any) -> ImageLimits:
    return ImageLimits(
        max_bytes=getattr(args, "max_bytes", None) or imaging.max_bytes,
        max_pixels=getattr(args, "max_pixels", None) or imaging.max_pixels,
    )


def run_score(args: argparse.Namespace) -> int:
    """`ood-monitor score`: 0 when at least one input was scored, 1 when none could be."""
    files = collect_inputs(args.paths)
    settings = _configured(args)
    limits = _limits(args, settings.imaging)
    progress = not getattr(args, "no_progress", False)
    classifier = load_from_args(args)
    scorer = build_scorer(
        classifier,
        odin=args.odin,
        head=getattr(args, "head", None),
        cache_dir=args.cache_dir or settings.model.cache_dir,
        calibration_samples=getattr(args, "calibration_samples", None),
        progress=progress,
    )
    fmt = output_format(args.format, args.output)
    scored = rejected = 0
    reasons: dict[str, int] = {}
    stream = open(args.output, "w", newline="", encoding="utf-8") if args.output else sys.stdout
    try:
        writer = RowWriter(stream, fmt)
        for row in score_files(files, classifier, scorer, batch_size=args.batch_size, limits=limits, progress=progress,
                               apply_exif_orientation=getattr(args, "apply_exif_orientation", False)
                               or settings.imaging.apply_exif_orientation):
            writer.write(row)
            if row.status == "scored":
                scored += 1
            else:
                rejected += 1
                reasons[row.reject_reason or "?"] = reasons.get(row.reject_reason or "?", 0) + 1
    finally:
        if stream is not sys.stdout:
            stream.close()
        else:
            stream.flush()
    why = f" ({', '.join(f'{k}: {v}' for k, v in sorted(reasons.items()))})" if reasons else ""
    where = f" -> {args.output}" if args.output else ""
    print(f"scored {scored}, rejected {rejected}{why}{where}", file=sys.stderr)
    if scored == 0:
        print("nothing could be scored", file=sys.stderr)
        return EXIT_NOTHING_SCORED
    return 0


# --- the offline demo -----------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """A bundled sample image: kind 'id' (Fashion-MNIST test) or 'ood'."""

    path: Path
    kind: str
    source: str
    detail: str


def bundled_samples(directory: Path | str = SAMPLES_DIR) -> list[Sample]:
    """The sample images listed in `directory`/manifest.csv (written by deploy/make_sample_images.py)."""
    directory = Path(directory)
    manifest = directory / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"{manifest} is missing; run deploy/make_sample_images.py")
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    samples = []
    for number, row in enumerate(rows, start=2):
        if row.get("kind") not in ("id", "ood") or not row.get("file"):
            raise InputError(f"{manifest} line {number}: needs a file and a kind of 'id' or 'ood', got {row}")
        samples.append(Sample(directory / row["file"], row["kind"], row.get("source", ""), row.get("detail", "")))
    return samples


def run_offline_demo(args: argparse.Namespace) -> int:
    """Score the bundled samples with the demo classifier and show which stand out."""
    from monitor.metrics import roc_auc
    from monitor.thresholds import two_means

    progress = not getattr(args, "no_progress", False)
    samples = bundled_samples(getattr(args, "samples", None) or SAMPLES_DIR)
    classifier = load_classifier(getattr(args, "model", None) or "demo", device=getattr(args, "device", None))
    scorer = build_scorer(
        classifier,
        odin=getattr(args, "odin", False),
        cache_dir=getattr(args, "cache_dir", None) or _configured(args).model.cache_dir,
        calibration_samples=getattr(args, "calibration_samples", None),
        progress=progress,
    )
    rows = list(
        score_files([s.path for s in samples], classifier, scorer, batch_size=DEFAULT_BATCH_SIZE, progress=progress)
    )
    kinds = {str(s.path): s for s in samples}
    scored = [r for r in rows if r.status == "scored"]
    rejected = [r for r in rows if r.status != "scored"]
    accuracy = classifier.details.get("test_accuracy")
    counts = {k: sum(s.kind == k for s in samples) for k in ("id", "ood")}
    out = sys.stdout
    print(
        f"ood-monitor demo (offline): {len(samples)} bundled images ({counts['id']} Fashion-MNIST, "
        f"{counts['ood']} out-of-distribution) through the demo classifier"
        + (f" (test accuracy {accuracy:.1%})" if isinstance(accuracy, float) else "")
        + f" on {classifier.device}",
        file=out,
    )
    if not scored:
        print("no sample could be scored", file=out)
        return EXIT_NOTHING_SCORED
    values = [r.indicators[SUMMARY] for r in scored]
    threshold = two_means(values)
    ordered = sorted(scored, key=lambda r: r.indicators[SUMMARY], reverse=True)
    print(f"\n{'rank':>4}  {'1C-Sum':>8}  {'kind':<4}  {'flag':<4}  {'predicted':<12}  {'source':<18}  file", file=out)
    for rank, row in enumerate(ordered, start=1):
        sample = kinds[row.path]
        flag = "OOD" if row.indicators[SUMMARY] > threshold else ""
        print(
            f"{rank:>4}  {row.indicators[SUMMARY]:>8.2f}  {sample.kind:<4}  {flag:<4}  "
            f"{(row.predicted_name or str(row.predicted))[:12]:<12}  {sample.source[:18]:<18}  {row.path and Path(row.path).name}",
            file=out,
        )
    labels = [1 if kinds[r.path].kind == "ood" else 0 for r in scored]
    flagged = [r for r in scored if r.indicators[SUMMARY] > threshold]
    flagged_ood = sum(kinds[r.path].kind == "ood" for r in flagged)
    print(
        f"\ntwo-means threshold on 1C-Sum: {threshold:.2f} -> {len(flagged)} flagged "
        f"({flagged_ood} of {sum(labels)} OOD, {len(flagged) - flagged_ood} of {len(labels) - sum(labels)} in-distribution)",
        file=out,
    )
    if 0 < sum(labels) < len(labels):
        aurocs = {
            name: roc_auc([r.indicators[name] for r in scored], labels)
            for name in INDICATORS
            if name in scored[0].indicators
        }
        print(f"auROC of 1C-Sum, OOD against in-distribution: {aurocs[SUMMARY]:.3f}", file=out)
        print(
            "auROC per indicator: " + ", ".join(f"{name} {value:.2f}" for name, value in aurocs.items() if name != SUMMARY),
            file=out,
        )
    if rejected:
        print(f"rejected: {', '.join(f'{Path(r.path).name} ({r.reject_reason})' for r in rejected)}", file=out)
    return 0
