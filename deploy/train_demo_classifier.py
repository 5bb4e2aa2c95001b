#!/usr/bin/env python
"""Train the bundled demo classifier (monitor.classifiers.DemoResNet) on Fashion-MNIST.

    .venv/bin/python deploy/train_demo_classifier.py            # -> monitor/assets/demo_fashion_resnet.{pt,json}
    .venv/bin/python deploy/train_demo_classifier.py --holdout  # -> demo_fashion_resnet_holdout.{pt,json}

Reads the gzipped IDX files of Debian's `dataset-fashion-mnist` package
(`apt-get install -y dataset-fashion-mnist`). Deterministic for a given seed, torch version
and thread count; CPU is enough (about 1.5 to 3 minutes an epoch on 2 cores).

`--holdout` trains on eight classes only, leaving out Sandal (5) and Ankle boot (9): those
test images are then near-OOD for that model (footwear like the Sneakers it knows), which the
evaluation benchmark uses.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from monitor import fashion_mnist  # noqa: E402
from monitor.classifiers import ASSETS_DIR, DemoResNet, Preprocessing  # noqa: E402

HOLDOUT_CLASSES = fashion_mnist.HOLDOUT_CLASSES  # Sandal, Ankle boot


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (SGD, one-cycle)")
    parser.add_argument("--holdout", action="store_true", help=f"leave out classes {HOLDOUT_CLASSES}")
    parser.add_argument("--data-dir", type=Path, default=fashion_mnist.FASHION_MNIST_DIR)
    parser.add_argument("--out-dir", type=Path, default=ASSETS_DIR)
    parser.add_argument("--limit", type=int, default=None, help="train on the first N images (quick check)")
    return parser.parse_args(argv)


def to_tensor(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    return ((torch.from_numpy(images).float() / 255.0 - mean) / std).unsqueeze(1)


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in tqdm(range(0, len(images), batch_size), desc="test", leave=False):
            logits = model(images[start : start + batch_size])
            correct += int((logits.argmax(1) == labels[start : start + batch_size]).sum())
    return correct / len(images)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    train_images, train_labels = fashion_mnist.load("train", args.data_dir)
    test_images, test_labels = fashion_mnist.load("test", args.data_dir)

    kept = [c for c in range(10) if not (args.holdout and c in HOLDOUT_CLASSES)]
    remap = np.full(10, -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    train_mask = np.isin(train_labels, kept)
    test_mask = np.isin(test_labels, kept)
    train_images, train_labels = train_images[train_mask], remap[train_labels[train_mask]]
    test_images, test_labels = test_images[test_mask], remap[test_labels[test_mask]]
    if args.limit:
        train_images, train_labels = train_images[: args.limit], train_labels[: args.limit]

    # Normalisation statistics of the training pixels, rounded so the JSON reads cleanly.
    pixels = train_images.astype(np.float64) / 255.0
    mean, std = round(float(pixels.mean()), 4), round(float(pixels.std()), 4)
    del pixels
    x_train = to_tensor(train_images, mean, std)
    y_train = torch.from_numpy(train_labels)
    x_test = to_tensor(test_images, mean, std)
    y_test = torch.from_numpy(test_labels)

    model = DemoResNet(num_classes=len(kept), widths=(16, 32, 64), strides=(1, 2, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4, nesterov=True)
    steps_per_epoch = (len(x_train) + args.batch_size - 1) // args.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=args.lr, epochs=args.epochs, steps_per_epoch=steps_per_epoch
    )
    generator = torch.Generator().manual_seed(args.seed)
    started = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch}/{args.epochs}")
        running = 0.0
        for step in bar:
            index = order[step * args.batch_size : (step + 1) * args.batch_size]
            batch = x_train[index]
            # Random horizontal flips: clothing stays clothing when mirrored.
            flip = torch.rand(len(batch), generator=generator) < 0.5
            batch = torch.where(flip[:, None, None, None], batch.flip(3), batch)
            loss = F.cross_entropy(model(batch), y_train[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
            bar.set_postfix(loss=f"{running:.3f}")
        accuracy = evaluate(model, x_test, y_test)
        print(f"epoch {epoch}: test accuracy {accuracy:.4f} ({time.time() - started:.0f} s)", flush=True)

    stem = "demo_fashion_resnet_holdout" if args.holdout else "demo_fashion_resnet"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    torch.save(state, args.out_dir / f"{stem}.pt")
    preprocessing = Preprocessing(
        input_shape=(1, 28, 28),
        mean=(mean,),
        std=(std,),
        class_names=tuple(fashion_mnist.CLASS_NAMES[c] for c in kept),
    )
    description = {
        "architecture": {
            "factory": "monitor.classifiers:DemoResNet",
            "kwargs": {"num_classes": len(kept), "in_channels": 1, "widths": [16, 32, 64], "strides": [1, 2, 2]},
        },
        "preprocessing": preprocessing.to_dict(),
        "dataset": "Fashion-MNIST (Debian dataset-fashion-mnist)",
        "trained_classes": kept,
        "held_out_classes": [c for c in range(10) if c not in kept],
        "test_accuracy": round(accuracy, 4),
        "test_images": int(len(x_test)),
        "train_images": int(len(x_train)),
        "epochs": args.epochs,
        "seed": args.seed,
        "batch_size": args.batch_size,
        "optimizer": f"SGD nesterov momentum 0.9, weight decay 5e-4, one-cycle peak lr {args.lr}",
        "augmentation": "random horizontal flip",
        "torch_version": torch.__version__,
        "trained_on": dt.date.today().isoformat(),
        "training_seconds": round(time.time() - started),
        "script": "deploy/train_demo_classifier.py" + (" --holdout" if args.holdout else ""),
    }
    (args.out_dir / f"{stem}.json").write_text(json.dumps(description, indent=2) + "\n")
    size_kb = (args.out_dir / f"{stem}.pt").stat().st_size / 1024
    print(f"wrote {args.out_dir / stem}.pt ({size_kb:.0f} KiB) and .json; test accuracy {accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
