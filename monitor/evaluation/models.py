"""The classifiers of the OOD evaluation: three batch-norm architectures, three seeds each,
plus one held-out-classes variant per architecture (trained by deploy/train_ood_models.py,
shipped under monitor/assets/ood_models/ as <name>.pt with a <name>.json description)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from monitor import fashion_mnist
from monitor.classifiers import ASSETS_DIR, LoadedClassifier, load_described

MODELS_DIR = ASSETS_DIR / "ood_models"
SEEDS = (0, 1, 2)
HOLDOUT_SEED = 0


@dataclass(frozen=True)
class Architecture:
    key: str
    label: str  # how tables and plots name it
    factory: str  # "package.module:callable"
    kwargs: dict[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, Architecture] = {
    a.key: a
    for a in (
        Architecture("resnet", "ResNet-8/16/32", "monitor.classifiers:DemoResNet",
                     {"in_channels": 1, "widths": [8, 16, 32], "strides": [1, 2, 2]}),
        Architecture("densenet", "DenseNet-BC k=4", "monitor.small_networks:SmallDenseNetBC",
                     {"in_channels": 1, "growth": 4, "layers": [3, 3, 3]}),
        Architecture("wrn", "WRN-10-2 (half width)", "monitor.small_networks:SmallWideResNet",
                     {"in_channels": 1, "depth": 10, "widen": 2, "base": [8, 16, 32]}),
    )
}


@dataclass(frozen=True)
class ModelSpec:
    architecture: str
    seed: int
    held_out: tuple[int, ...] = ()

    @property
    def name(self) -> str:
        return f"{self.architecture}-{'holdout-' if self.held_out else ''}seed{self.seed}"

    @property
    def factory(self) -> str:
        return ARCHITECTURES[self.architecture].factory

    @property
    def kwargs(self) -> dict[str, Any]:
        return dict(ARCHITECTURES[self.architecture].kwargs)

    def build(self, num_classes: int) -> nn.Module:
        from monitor.classifiers import _resolve_factory

        return _resolve_factory(self.factory)(**self.kwargs, num_classes=num_classes)


def model_specs(architectures: list[str] | None = None, seeds: tuple[int, ...] = SEEDS) -> list[ModelSpec]:
    """Every model, in training order: seed 0 of each architecture first, then the
    held-out-classes variants, then the other seeds (an interrupted run leaves a usable set)."""
    keys = list(ARCHITECTURES) if architectures is None else list(architectures)
    first = [ModelSpec(a, seeds[0]) for a in keys]
    holdout = [ModelSpec(a, HOLDOUT_SEED, fashion_mnist.HOLDOUT_CLASSES) for a in keys]
    rest = [ModelSpec(a, s) for s in seeds[1:] for a in keys]
    # The held-out-classes variants are trained with one seed whichever seeds are asked for.
    return first + holdout + rest


def load(spec: ModelSpec, models_dir: Path = MODELS_DIR, device=None) -> LoadedClassifier:
    """A trained model of the evaluation, from <models_dir>/<name>.pt and its description."""
    return load_described(Path(models_dir) / f"{spec.name}.pt", name=spec.name, device=device)
