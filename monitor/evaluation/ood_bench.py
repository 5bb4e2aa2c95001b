"""`ood-monitor bench ood`: the paper's evaluation on the OOD sets available offline.

In-distribution: Fashion-MNIST test images. Models: the evaluation's three architectures,
three seeds each, and their held-out-classes variants (`monitor.evaluation.models`). OOD:
the far-OOD sets of `monitor.evaluation.datasets` (the same images for every model) and the
held-out classes. Every model's ID and OOD samples are split into halves once: the supervised
linear SVM learns on the first halves, and every row is scored on the second.

The work is in stages that other analyses can reuse: `load_sets`, `score_runs` (the scores
of every model, full sets), `test_halves` (what the tables read), `tables.compute_table`.
Writes ood.json, ood.md and the plots under the output directory (`ood_report`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from monitor.errors import InputError
from monitor.evaluation import class_thresholds, datasets, machine, models, ood_report, protocol, tables
from monitor.names import SUMMARY
from monitor.thresholds import DEFAULT_MIN_CLASS_SAMPLES

log = logging.getLogger(__name__)

# 2,000 ID images (1,000 in the test half) shared by every set; 1,000 per OOD set (500 tested):
# twelve models with ODIN's backward pass then score in about 20 minutes on two shared cores.
FULL_ID, FULL_OOD, FULL_DRAWS = 2000, 1000, 1000
QUICK_ID, QUICK_OOD, QUICK_DRAWS = 300, 150, 100
QUICK_CALIBRATION = 256  # --quick is a smoke run: a rougher 1C-Sum calibration is enough
QUICK_MIN_CLASS_SAMPLES = 20  # --quick: about 30 ID images per class, so own thresholds still appear
STREAM_OOD_SHARE = 0.10
NEAR = "Held-out classes"


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
    models_dir: Path = models.MODELS_DIR
    architectures: Sequence[str] | None = None  # None: all
    seeds: Sequence[int] = models.SEEDS
    draws: int = FULL_DRAWS
    calibration_samples: int = 2048  # 1C-Sum's uniform-noise draws (the service default)
    min_class_samples: int = DEFAULT_MIN_CLASS_SAMPLES  # an own threshold per predicted class from this many


@dataclass
class Sets:
    in_distribution: datasets.ImageSet
    far: list[datasets.ImageSet]
    near_id: datasets.ImageSet | None = None
    near_ood: datasets.ImageSet | None = None


@dataclass
class Run:
    """One trained model's scores: on the ID set and on each OOD set (all samples)."""

    spec: models.ModelSpec
    accuracy: float
    id_scores: protocol.Scores
    ood_scores: dict[str, protocol.Scores]
    details: dict = field(default_factory=dict)
    loaded: object = None  # the LoadedClassifier, for analyses that need the model itself


class Progress:
    """One line per model with the elapsed time and an estimate of what is left."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.enabled, self.done, self.started = total, enabled, 0, time.perf_counter()

    def step(self, text: str) -> None:
        self.done += 1
        if not self.enabled:
            return
        elapsed = time.perf_counter() - self.started
        left = elapsed / self.done * (self.total - self.done)
        print(f"[{self.done}/{self.total}] {text} ({elapsed:.0f} s elapsed, about {left:.0f} s left)",
              file=sys.stderr, flush=True)


def load_sets(options: OodOptions) -> Sets:
    in_dist = datasets.fashion_mnist_test(options.id_count, options.seed)
    far = datasets.load_far_ood(options.sets, options.ood_count, options.seed + 1)
    sets = Sets(in_dist, far)
    if options.near_ood:
        trained = [c for c in range(10) if c not in datasets.fashion_mnist.HOLDOUT_CLASSES]
        sets.near_id = datasets.fashion_mnist_test(options.id_count, options.seed + 100, classes=trained)
        sets.near_ood = datasets.fashion_mnist_test(
            options.ood_count, options.seed + 101, classes=datasets.fashion_mnist.HOLDOUT_CLASSES
        )
        sets.near_ood.name = NEAR
    return sets


def _scorer(loaded, options: OodOptions, scorer_factory: Callable | None):
    from monitor import Scorer

    factory = scorer_factory or Scorer
    pre = loaded.preprocessing
    scorer = factory(loaded.model, mean=pre.mean, std=pre.std, input_shape=pre.input_shape, odin=options.odin)
    scorer.calibrate(n=options.calibration_samples, progress=False)  # 1C-Sum on uniform noise
    return scorer


def _score_set(scorer, loaded, image_set: datasets.ImageSet, options: OodOptions) -> protocol.Scores:
    inputs = datasets.to_model_input(image_set.images, loaded.preprocessing.input_shape)
    return protocol.score_images(
        scorer.score, inputs, batch_size=options.batch_size, device=loaded.device,
        description=f"scoring {image_set.name} ({len(image_set)})", progress=options.progress,
    )


def accuracy(loaded, image_set: datasets.ImageSet, label_map: dict[int, int] | None = None) -> float:
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
            predictions.append(loaded.model(batch).argmax(1).cpu().numpy())
    return float(np.mean(np.concatenate(predictions) == labels))


def model_list(options: OodOptions) -> tuple[list[models.ModelSpec], list[models.ModelSpec]]:
    """(main models, held-out-classes models) asked for; refuses with the training command
    when one is not on disk."""
    specs = models.model_specs(list(options.architectures) if options.architectures else None, tuple(options.seeds))
    main = [s for s in specs if not s.held_out]
    near = [s for s in specs if s.held_out] if options.near_ood else []
    missing = [s.name for s in main + near if not (Path(options.models_dir) / f"{s.name}.pt").is_file()]
    if missing:
        raise InputError(
            f"trained model(s) missing from {options.models_dir}: {', '.join(missing)}; train them with "
            f"`python deploy/train_ood_models.py --models {' '.join(missing)}`"
        )
    return main, near


def score_runs(options: OodOptions, sets: Sets, scorer_factory: Callable | None = None) -> tuple[list[Run], list[Run]]:
    """Score every model on its sets: (main runs, held-out-classes runs)."""
    main, near = model_list(options)
    progress = Progress(len(main) + len(near), options.progress)
    runs, near_runs = [], []
    for spec in main:
        loaded = models.load(spec, options.models_dir, options.device)
        scorer = _scorer(loaded, options, scorer_factory)
        id_scores = _score_set(scorer, loaded, sets.in_distribution, options)
        ood_scores = {s.name: _score_set(scorer, loaded, s, options) for s in sets.far}
        runs.append(Run(spec, accuracy(loaded, sets.in_distribution), id_scores, ood_scores, loaded.details, loaded))
        progress.step(f"{spec.name} scored (accuracy {100 * runs[-1].accuracy:.1f} %)")
    for spec in near:
        loaded = models.load(spec, options.models_dir, options.device)
        trained = loaded.details.get("trained_classes") or []
        scorer = _scorer(loaded, options, scorer_factory)
        id_scores = _score_set(scorer, loaded, sets.near_id, options)
        ood_scores = {NEAR: _score_set(scorer, loaded, sets.near_ood, options)}
        near_accuracy = accuracy(loaded, sets.near_id, {c: i for i, c in enumerate(trained)})
        near_runs.append(Run(spec, near_accuracy, id_scores, ood_scores, loaded.details))
        progress.step(f"{spec.name} scored (accuracy {100 * near_accuracy:.1f} % on its eight classes)")
    return runs, near_runs


def test_halves(run: Run, seed: int) -> dict[str, tables.SetScores]:
    """Per OOD set: every row on the test halves. The ID split depends on `seed` only (the
    same for every set and model), the OOD split on `seed` and the set's position."""
    n_id = len(run.id_scores[SUMMARY])
    id_train, id_test = protocol.halves(n_id, seed)
    result = {}
    for index, (name, ood) in enumerate(run.ood_scores.items()):
        ood_train, ood_test = protocol.halves(len(ood[SUMMARY]), seed + 1 + index)
        svm = protocol.fit_linear_svm(
            protocol.subset(run.id_scores, id_train), protocol.subset(ood, ood_train), tables.SUPERVISED_FEATURES
        )
        test_id, test_ood = protocol.subset(run.id_scores, id_test), protocol.subset(ood, ood_test)
        test_id[tables.SUPERVISED], test_ood[tables.SUPERVISED] = svm(test_id), svm(test_ood)
        result[name] = tables.SetScores(id=test_id, ood=test_ood)
    return result


def _stream_section(run: Run, seed: int) -> dict:
    stream, is_ood, counts = protocol.mixed_stream(run.id_scores, run.ood_scores, STREAM_OOD_SHARE, seed)
    thresholds = protocol.stream_thresholds(stream, is_ood)
    per_set = {}
    for name, scores in run.ood_scores.items():
        single, single_is_ood, single_counts = protocol.mixed_stream(run.id_scores, {name: scores}, STREAM_OOD_SHARE, seed)
        per_set[name] = {
            "ood": single_counts[name],
            "thresholds": protocol.stream_thresholds(single, single_is_ood, [SUMMARY]),
        }
    return {
        "model": run.spec.name,
        "ood_share": float(np.mean(is_ood)),
        "id": int((~is_ood).sum()),
        "ood_per_set": counts,
        "thresholds": thresholds,
        "per_set_summary": per_set,
    }


def run_ood_benchmark(options: OodOptions, scorer_factory: Callable | None = None) -> dict:
    """Load, score, evaluate; returns the JSON-ready result (writes nothing)."""
    started = time.perf_counter()
    sets = load_sets(options)
    runs, near_runs = score_runs(options, sets, scorer_factory)
    by_architecture: dict[str, list[dict[str, tables.SetScores]]] = {}
    for run in runs:
        by_architecture.setdefault(run.spec.architecture, []).append(test_halves(run, options.seed))
    near = {run.spec.architecture: test_halves(run, options.seed)[NEAR] for run in near_runs}
    set_names = [s.name for s in sets.far]
    if options.progress:
        print(f"bootstrap: {options.draws} draws of {len(runs)} models x {len(set_names)} sets ...", file=sys.stderr, flush=True)
    resampled = tables.resample(by_architecture, set_names, options.draws, options.seed, near=near)
    computed = {spec.key: tables.compute_table(spec, resampled) for spec in tables.TABLES}
    n_id = len(sets.in_distribution)
    output: dict = {
        "settings": {
            "id_count": n_id,
            "id_test_half": n_id - n_id // 2,
            "ood_count_cap": options.ood_count,
            "odin": options.odin,
            "batch_size": options.batch_size,
            "seed": options.seed,
            "draws": options.draws,
            "calibration_samples": options.calibration_samples,
            "stream_ood_share": STREAM_OOD_SHARE,
        },
        "architectures": {
            key: models.ARCHITECTURES[key].label for key in dict.fromkeys(r.spec.architecture for r in runs)
        },
        "models": [_model_entry(run) for run in runs + near_runs],
        "in_distribution": {"name": sets.in_distribution.name, "size": n_id, "source": sets.in_distribution.source},
        "sets": [
            {"name": s.name, "size": len(s), "test_half": len(s) - len(s) // 2, "source": s.source, "notes": s.notes}
            for s in sets.far
        ],
        "tables": computed,
        "goals": {key: tables.goal(table) for key, table in computed.items()},
        "stream": _stream_section(runs[0], options.seed),
        # One global threshold against one per predicted class, on the same stream and model.
        "class_thresholds": {
            "model": runs[0].spec.name,
            **class_thresholds.section(
                runs[0].loaded, sets.in_distribution, sets.far, runs[0].id_scores, runs[0].ood_scores,
                ood_share=STREAM_OOD_SHARE, seed=options.seed, min_class_samples=options.min_class_samples,
            ),
        },
    }
    if near_runs:
        output["near_ood"] = {
            "name": NEAR,
            "held_out_names": [datasets.fashion_mnist.CLASS_NAMES[c] for c in datasets.fashion_mnist.HOLDOUT_CLASSES],
            "id_size": len(sets.near_id),
            "ood_size": len(sets.near_ood),
        }
    output["machine"] = machine.describe(torch.device(options.device or ("cuda" if torch.cuda.is_available() else "cpu")))
    output["seconds"] = round(time.perf_counter() - started, 1)
    return output


def _model_entry(run: Run) -> dict:
    return {
        "name": run.spec.name,
        "architecture": run.spec.architecture,
        "seed": run.spec.seed,
        "held_out_classes": list(run.spec.held_out),
        "accuracy_on_id_sample": run.accuracy,
        "test_accuracy": run.details.get("test_accuracy"),
        "parameters": run.details.get("parameters"),
        "training_seconds": run.details.get("training_seconds"),
    }


def options_from_args(args: argparse.Namespace) -> OodOptions:
    if args.limit is not None and args.limit < 8:
        raise InputError(f"--limit must be at least 8 (half of each set trains the supervised reference), not {args.limit}")
    unknown = [name for name in args.sets or () if name not in datasets.FAR_OOD]
    if unknown:
        raise InputError(f"--sets: unknown OOD set(s) {unknown}; available: {', '.join(datasets.FAR_OOD)}")
    unknown = [name for name in args.architectures or () if name not in models.ARCHITECTURES]
    if unknown:
        raise InputError(f"--architectures: unknown {unknown}; available: {', '.join(models.ARCHITECTURES)}")
    if args.batch_size < 1:
        raise InputError(f"--batch-size must be a positive integer, not {args.batch_size}")
    unknown = [seed for seed in args.seeds or () if seed not in models.SEEDS]
    if unknown:
        raise InputError(f"--seeds: no models trained with seed(s) {unknown}; available: {list(models.SEEDS)}")
    if args.threads < 1:
        raise InputError(f"--threads must be a positive integer, not {args.threads}")
    if args.draws is not None and args.draws < 10:
        raise InputError(f"--draws must be at least 10, not {args.draws}")
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
        models_dir=Path(args.models_dir) if args.models_dir else models.MODELS_DIR,
        architectures=args.architectures,
        seeds=tuple(dict.fromkeys(args.seeds)) if args.seeds else models.SEEDS,
        draws=args.draws or (QUICK_DRAWS if args.quick else FULL_DRAWS),
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


OOD_FLAGS = (("quick", "--quick"), ("limit", "--limit"), ("sets", "--sets"), ("architectures", "--architectures"), ("seeds", "--seeds"),
             ("no_near_ood", "--no-near-ood"), ("no_odin", "--no-odin"), ("draws", "--draws"), ("seed", "--seed"),
             ("models_dir", "--models-dir"), ("output_dir", "--output-dir"))
# --threads is left out of the regenerate line on purpose: it changes the time, not the figures.


def main(args: argparse.Namespace) -> int:
    """Entry point of `ood-monitor bench ood`."""
    options = options_from_args(args)
    output_dir = Path(args.output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--output-dir {str(output_dir)!r} cannot be created: {error}") from None
    torch.set_num_threads(args.threads)
    result = run_ood_benchmark(options)
    result["command"] = command_line(args, OOD_FLAGS)
    paths = ood_report.write(result, output_dir) + class_thresholds.write(result, output_dir)
    print(ood_report.console_summary(result))
    print(class_thresholds.console_summary(result["class_thresholds"]))
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
