"""`ood-monitor bench ood`: the paper's evaluation on the OOD sets available offline.

In-distribution: Fashion-MNIST test images, classified by the bundled demo model. OOD: the
far-OOD sets of `monitor.evaluation.datasets`, and a near-OOD split (the holdout model,
which never saw two Fashion-MNIST classes, faced with those two classes). Writes
ood.json, ood.md and the plots under the output directory.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from monitor.errors import InputError, ModelError
from monitor.evaluation import class_thresholds, datasets, machine, protocol, report
from monitor.names import SUMMARY
from monitor.thresholds import DEFAULT_MIN_CLASS_SAMPLES

log = logging.getLogger(__name__)

FULL_ID, FULL_OOD = 2000, 2000
QUICK_ID, QUICK_OOD = 300, 150
QUICK_CALIBRATION = 256  # --quick is a smoke run: a rougher 1C-Sum calibration is enough
QUICK_MIN_CLASS_SAMPLES = 20  # --quick: about 30 ID images per class, so own thresholds still appear
STREAM_OOD_SHARE = 0.10
SUMMARY_RANK_GOAL = 3.0


@dataclass
class OodOptions:
    id_count: int = FULL_ID
    ood_count: int = FULL_OOD
    sets: Sequence[str] | None = None  # far-OOD sets by name; None: all
    near_ood: bool = True
    odin: bool = True
    batch_size: int = 250
    seed: int = 0
    device: str | None = None
    progress: bool = True
    model: str = "demo"
    near_model: str = "demo-holdout"
    calibration_samples: int = 2048  # 1C-Sum's uniform-noise draws (the service default)
    min_class_samples: int = DEFAULT_MIN_CLASS_SAMPLES  # an own threshold per predicted class from this many


def _scorer(loaded, options: OodOptions, scorer_factory: Callable | None):
    from monitor import Scorer

    factory = scorer_factory or Scorer
    pre = loaded.preprocessing
    scorer = factory(loaded.model, mean=pre.mean, std=pre.std, input_shape=pre.input_shape, odin=options.odin)
    scorer.calibrate(n=options.calibration_samples, progress=options.progress)  # 1C-Sum on uniform noise
    return scorer


def _score_set(scorer, loaded, image_set: datasets.ImageSet, options: OodOptions) -> protocol.Scores:
    inputs = datasets.to_model_input(image_set.images, loaded.preprocessing.input_shape)
    return protocol.score_images(
        scorer.score,
        inputs,
        batch_size=options.batch_size,
        device=loaded.device,
        description=f"scoring {image_set.name} ({len(image_set)})",
        progress=options.progress,
    )


def _accuracy(model, loaded, image_set: datasets.ImageSet, label_map: dict[int, int] | None = None) -> float:
    """Top-1 accuracy of the model on a labelled Fashion-MNIST set (a sanity figure for the report)."""
    labels = np.asarray(image_set.extra["labels"])
    if label_map is not None:
        labels = np.array([label_map[int(v)] for v in labels])
    inputs = datasets.to_model_input(image_set.images, loaded.preprocessing.input_shape)
    pre = loaded.preprocessing
    mean = torch.tensor(pre.mean).view(1, -1, 1, 1)
    std = torch.tensor(pre.std).view(1, -1, 1, 1)
    predictions = []
    with torch.no_grad():
        for start in range(0, len(inputs), 500):
            batch = ((inputs[start : start + 500] - mean) / std).to(loaded.device)
            predictions.append(model(batch).argmax(1).cpu().numpy())
    return float(np.mean(np.concatenate(predictions) == labels))


def _stream_section(id_scores, ood_scores: dict[str, protocol.Scores], seed: int) -> dict:
    stream, is_ood, counts = protocol.mixed_stream(id_scores, ood_scores, STREAM_OOD_SHARE, seed)
    thresholds = protocol.stream_thresholds(stream, is_ood)
    per_set = {}
    for name, scores in ood_scores.items():
        single, single_is_ood, single_counts = protocol.mixed_stream(id_scores, {name: scores}, STREAM_OOD_SHARE, seed)
        per_set[name] = {
            "ood": single_counts[name],
            "thresholds": protocol.stream_thresholds(single, single_is_ood, [m for m in (SUMMARY,) if m in single]),
        }
    return {
        "ood_share": float(np.mean(is_ood)),
        "id": int((~is_ood).sum()),
        "ood_per_set": counts,
        "thresholds": thresholds,
        "per_set_summary": per_set,
    }


def run_ood_benchmark(options: OodOptions, scorer_factory: Callable | None = None) -> dict:
    """Load, score, evaluate; returns the JSON-ready result (writes nothing)."""
    from monitor.classifiers import load_classifier

    started = time.perf_counter()
    loaded = load_classifier(options.model, device=options.device)
    scorer = _scorer(loaded, options, scorer_factory)

    in_dist = datasets.fashion_mnist_test(options.id_count, options.seed)
    far = datasets.load_far_ood(options.sets, options.ood_count, options.seed + 1)
    id_scores = _score_set(scorer, loaded, in_dist, options)
    ood_scores = {s.name: _score_set(scorer, loaded, s, options) for s in far}
    results = [
        protocol.evaluate_set(id_scores, ood_scores[s.name], s.name, seed=options.seed + index)
        for index, s in enumerate(far)
    ]

    output: dict = {
        "machine": machine.describe(loaded.device),
        "settings": {
            "id_count": len(in_dist),
            "ood_count_cap": options.ood_count,
            "odin": options.odin,
            "batch_size": options.batch_size,
            "seed": options.seed,
            "stream_ood_share": STREAM_OOD_SHARE,
            "calibration_samples": options.calibration_samples,
        },
        "model": {
            "spec": options.model,
            "input_shape": list(loaded.preprocessing.input_shape),
            "test_accuracy_on_id_sample": _accuracy(loaded.model, loaded, in_dist),
            "indicators": protocol.ordered_methods(id_scores),
        },
        "in_distribution": {"name": in_dist.name, "size": len(in_dist), "source": in_dist.source},
        "sets": [{"name": s.name, "size": len(s), "source": s.source, "notes": s.notes} for s in far],
        "results": [r.to_dict() for r in results],
        "average_rank": protocol.average_ranks(results),
        "summary_rank_among_indicators": protocol.summary_rank_among_indicators(results),
        "stream": _stream_section(id_scores, ood_scores, options.seed),
        "class_thresholds": class_thresholds.section(
            loaded, in_dist, far, id_scores, ood_scores, ood_share=STREAM_OOD_SHARE, seed=options.seed,
            min_class_samples=options.min_class_samples,
        ),
    }

    if options.near_ood:
        output["near_ood"] = _near_ood(options, scorer_factory)
    summary_rank = output["summary_rank_among_indicators"]["average"]
    output["goals"] = {
        "summary_rank_among_indicators": {
            "goal": f"1C-Sum's average rank among the individual indicators is at most {SUMMARY_RANK_GOAL:g}",
            "value": summary_rank,
            "met": bool(summary_rank <= SUMMARY_RANK_GOAL),
        }
    }
    output["machine"] = machine.describe(loaded.device)  # at the end: the load average covers the run
    output["seconds"] = round(time.perf_counter() - started, 1)
    return output


def _near_ood(options: OodOptions, scorer_factory: Callable | None) -> dict:
    """The holdout model: ID = test images of its eight classes, OOD = the two it never saw."""
    from monitor.classifiers import load_classifier

    try:
        loaded = load_classifier(options.near_model, device=options.device)
    except ModelError as error:
        log.warning("near-OOD split skipped: %s", error)
        return {"skipped": str(error)}
    trained = loaded.details.get("trained_classes")
    held_out = loaded.details.get("held_out_classes")
    if not trained or not held_out:
        return {"skipped": f"model {options.near_model!r} does not say which classes it held out"}
    scorer = _scorer(loaded, options, scorer_factory)
    in_dist = datasets.fashion_mnist_test(options.id_count, options.seed + 100, classes=trained)
    ood = datasets.fashion_mnist_test(options.ood_count, options.seed + 101, classes=held_out)
    ood.name = "Fashion-MNIST held-out classes"
    id_scores = _score_set(scorer, loaded, in_dist, options)
    ood_scores = _score_set(scorer, loaded, ood, options)
    result = protocol.evaluate_set(id_scores, ood_scores, "near-OOD", seed=options.seed)
    return {
        "model": options.near_model,
        "trained_classes": trained,
        "held_out_classes": held_out,
        "held_out_names": [datasets.fashion_mnist.CLASS_NAMES[c] for c in held_out],
        "test_accuracy_on_id_sample": _accuracy(
            loaded.model, loaded, in_dist, {c: i for i, c in enumerate(trained)}
        ),
        "id_size": len(in_dist),
        "result": result.to_dict(),
        "summary_rank_among_indicators": protocol.summary_rank_among_indicators([result])["average"],
    }


def options_from_args(args: argparse.Namespace) -> OodOptions:
    if args.limit is not None and args.limit < 4:
        raise InputError(f"--limit must be at least 4 (half of each set trains the supervised baseline), not {args.limit}")
    unknown = [name for name in args.sets or () if name not in datasets.FAR_OOD]
    if unknown:
        raise InputError(f"--sets: unknown OOD set(s) {unknown}; available: {', '.join(datasets.FAR_OOD)}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, not {args.batch_size}")
    id_count, ood_count = (QUICK_ID, QUICK_OOD) if args.quick else (FULL_ID, FULL_OOD)
    if args.limit is not None:
        id_count, ood_count = min(id_count, args.limit), min(ood_count, args.limit)
    return OodOptions(
        id_count=id_count,
        ood_count=ood_count,
        sets=args.sets,
        near_ood=not args.no_near_ood,
        odin=not args.no_odin,
        batch_size=args.batch_size,
        seed=0 if args.seed is None else args.seed,
        device=args.device,
        progress=not args.no_progress,
        calibration_samples=QUICK_CALIBRATION if args.quick else OodOptions.calibration_samples,
        min_class_samples=QUICK_MIN_CLASS_SAMPLES if args.quick else OodOptions.min_class_samples,
    )


def command_line(args: argparse.Namespace, flags: Sequence[tuple[str, str]]) -> str:
    """The command that regenerates a report: `ood-monitor bench KIND` and the options given
    (flags: (attribute, option) pairs; booleans print as bare options)."""
    words = ["ood-monitor", "bench", args.bench_kind]
    for attribute, option in flags:
        value = getattr(args, attribute, None)
        if value is None or value is False:
            continue
        if value is True:
            words.append(option)
        elif isinstance(value, (list, tuple)):
            words += [option, *(str(v) for v in value)]
        else:
            words += [option, str(value)]
    return " ".join(shlex.quote(w) for w in words)


OOD_FLAGS = (("quick", "--quick"), ("limit", "--limit"), ("sets", "--sets"), ("no_near_ood", "--no-near-ood"),
             ("no_odin", "--no-odin"), ("seed", "--seed"), ("output_dir", "--output-dir"))


def main(args: argparse.Namespace) -> int:
    """Entry point of `ood-monitor bench ood`."""
    options = options_from_args(args)
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--output-dir {str(output_dir)!r} cannot be created: {error}") from None
    result = run_ood_benchmark(options)
    result["command"] = command_line(args, OOD_FLAGS)
    paths = report.write_ood(result, output_dir) + class_thresholds.write(result, output_dir)
    print(report.ood_console_summary(result))
    print(class_thresholds.console_summary(result["class_thresholds"]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
