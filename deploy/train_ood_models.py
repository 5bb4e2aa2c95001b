#!/usr/bin/env python
"""Train the classifiers of the OOD evaluation (`ood-monitor bench ood`) on Fashion-MNIST.

    .venv/bin/python deploy/train_ood_models.py             # all 12 models -> monitor/assets/ood_models/
    nice -n 19 .venv/bin/python deploy/train_ood_models.py --models resnet-seed0 wrn-holdout-seed0

Three small batch-norm architectures with a linear head, sized for 1x28x28 input
(monitor.classifiers.DemoResNet at widths 8/16/32, monitor.small_networks.SmallDenseNetBC,
monitor.small_networks.SmallWideResNet), each trained with seeds 0, 1 and 2 on the
Fashion-MNIST training split, plus one held-out-classes variant per architecture (seed 0,
trained without Sandal and Ankle boot, fashion_mnist.HOLDOUT_CLASSES).

One fixed recipe for all (see RECIPE): SGD with Nesterov momentum, one-cycle learning rate,
random horizontal flips, two epochs over the first 20,000 training images. That is short,
chosen so that the twelve models train in about 45 minutes on one CPU thread; the test
accuracies reached are written in each model's JSON description and in docs/evaluation.md.

Resumable: a model whose .pt and .json are both present is skipped (--force retrains).
Deterministic for a given seed, torch version and thread count (one thread by default).
Prints one progress line every `--log-every` steps, for a log file as well as a terminal.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor import fashion_mnist  # noqa: E402
from monitor.classifiers import Preprocessing  # noqa: E402
from monitor.evaluation.models import ARCHITECTURES, MODELS_DIR, ModelSpec, model_specs  # noqa: E402

RECIPE = {
    "epochs": 2,
    "train_images": 20000,  # the first 20,000 images of the training split (before dropping held-out classes)
    "batch_size": 128,
    "lr": 0.1,
    "momentum": 0.9,
    "weight_decay": 5e-4,
    "augmentation": "random horizontal flip",
}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=None, help="model names (default: all 12), e.g. resnet-seed0")
    parser.add_argument("--out-dir", type=Path, default=MODELS_DIR)
    parser.add_argument("--data-dir", type=Path, default=fashion_mnist.FASHION_MNIST_DIR)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the result depends on it)")
    parser.add_argument("--epochs", type=int, default=RECIPE["epochs"])
    parser.add_argument("--train-images", type=int, default=RECIPE["train_images"])
    parser.add_argument("--log-every", type=int, default=50, help="steps between progress lines")
    parser.add_argument("--force", action="store_true", help="retrain models already on disk")
    return parser.parse_args(argv)


@dataclass
class Data:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: float
    std: float
    kept: list[int]


def load_data(spec: ModelSpec, data_dir: Path, train_images: int) -> Data:
    images, labels = fashion_mnist.load("train", data_dir)
    test_images, test_labels = fashion_mnist.load("test", data_dir)
    kept = [c for c in range(10) if c not in spec.held_out]
    remap = np.full(10, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    keep = np.isin(labels, kept)
    # Normalisation statistics of all training pixels of the kept classes (as the demo model),
    # rounded so the JSON reads cleanly; the same for every seed of an architecture.
    pixels = images[keep].astype(np.float64) / 255.0
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    del pixels
    subset = np.arange(len(images)) < train_images
    train_mask = keep & subset
    test_mask = np.isin(test_labels, kept)

    def tensor(values: np.ndarray) -> torch.Tensor:
        return ((torch.from_numpy(values).float() / 255.0 - mean) / std).unsqueeze(1)

    return Data(
        x_train=tensor(images[train_mask]),
        y_train=torch.from_numpy(remap[labels[train_mask]]),
        x_test=tensor(test_images[test_mask]),
        y_test=torch.from_numpy(remap[test_labels[test_mask]]),
        mean=mean,
        std=std,
        kept=kept,
    )


def accuracy(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            correct += int((model(images[start : start + batch_size]).argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def train_one(spec: ModelSpec, args: argparse.Namespace, position: str) -> dict:
    data = load_data(spec, args.data_dir, args.train_images)
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)
    model = spec.build(num_classes=len(data.kept))
    batch_size = RECIPE["batch_size"]
    optimizer = torch.optim.SGD(
        model.parameters(), lr=RECIPE["lr"], momentum=RECIPE["momentum"],
        weight_decay=RECIPE["weight_decay"], nesterov=True,
    )
    steps_per_epoch = (len(data.x_train) + batch_size - 1) // batch_size
    total_steps = steps_per_epoch * args.epochs
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=RECIPE["lr"], epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    generator = torch.Generator().manual_seed(spec.seed)
    started = time.time()
    done = 0
    running = float("nan")
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(data.x_train), generator=generator)
        for step in range(steps_per_epoch):
            index = order[step * batch_size : (step + 1) * batch_size]
            batch = data.x_train[index]
            # Random horizontal flips: clothing stays clothing when mirrored.
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            loss = F.cross_entropy(model(batch), data.y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running = loss.item() if done == 0 else 0.95 * running + 0.05 * loss.item()
            done += 1
            if done % args.log_every == 0 or done == total_steps:
                elapsed = time.time() - started
                eta = elapsed / done * (total_steps - done)
                print(
                    f"{position} {spec.name}: epoch {epoch}/{args.epochs} step {done}/{total_steps} "
                    f"loss {running:.3f}, {elapsed:.0f} s elapsed, about {eta:.0f} s left",
                    flush=True,
                )
    test_accuracy = accuracy(model, data.x_test, data.y_test)
    seconds = round(time.time() - started)
    preprocessing = Preprocessing(
        input_shape=(1, 28, 28),
        mean=(data.mean,),
        std=(data.std,),
        class_names=tuple(fashion_mnist.CLASS_NAMES[c] for c in data.kept),
    )
    description = {
        "architecture": {"factory": spec.factory, "kwargs": {**spec.kwargs, "num_classes": len(data.kept)}},
        "preprocessing": preprocessing.to_dict(),
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "trained_classes": data.kept,
        "held_out_classes": list(spec.held_out),
        "test_accuracy": round(test_accuracy, 4),
        "test_images": int(len(data.x_test)),
        "train_images": int(len(data.x_train)),
        "epochs": args.epochs,
        "seed": spec.seed,
        "recipe": {**RECIPE, "epochs": args.epochs, "train_images": args.train_images},
        "optimizer": f"SGD nesterov momentum {RECIPE['momentum']}, weight decay {RECIPE['weight_decay']}, "
        f"one-cycle peak lr {RECIPE['lr']}",
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "torch_version": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "trained_on": dt.date.today().isoformat(),
        "training_seconds": seconds,
        "script": f"deploy/train_ood_models.py --models {spec.name}",
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    weights, sidecar = args.out_dir / f"{spec.name}.pt", args.out_dir / f"{spec.name}.json"
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    # Written to temporary names and renamed: an interrupted run never leaves a model that looks finished.
    torch.save(state, weights.with_suffix(".pt.part"))
    sidecar.with_suffix(".json.part").write_text(json.dumps(description, indent=2) + "\n")
    os.replace(weights.with_suffix(".pt.part"), weights)
    os.replace(sidecar.with_suffix(".json.part"), sidecar)
    print(
        f"{position} {spec.name}: done, test accuracy {test_accuracy:.4f} in {seconds} s "
        f"({weights.stat().st_size / 1024:.0f} KiB)",
        flush=True,
    )
    return description


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    specs = model_specs()
    if args.models:
        by_name = {s.name: s for s in specs}
        unknown = [n for n in args.models if n not in by_name]
        if unknown:
            print(f"unknown model(s) {unknown}; known: {', '.join(by_name)}", file=sys.stderr)
            return 2
        specs = [by_name[n] for n in args.models]
    if not fashion_mnist.available(args.data_dir):
        print(f"Fashion-MNIST is not in {args.data_dir}: apt-get install -y dataset-fashion-mnist", file=sys.stderr)
        return 2
    started = time.time()
    for index, spec in enumerate(specs, 1):
        position = f"[{index}/{len(specs)}]"
        if not args.force and (args.out_dir / f"{spec.name}.pt").is_file() and (args.out_dir / f"{spec.name}.json").is_file():
            print(f"{position} {spec.name}: already trained, skipped", flush=True)
            continue
        print(f"{position} {spec.name}: training ({ARCHITECTURES[spec.architecture].label})", flush=True)
        train_one(spec, args, position)
    print(f"all done in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
