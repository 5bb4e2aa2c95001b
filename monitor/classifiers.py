"""Load the monitored classifier from a spec, together with its preprocessing.

A spec is one of:

* ``demo`` (or ``demo-holdout``): the small ResNet bundled in ``monitor/assets`` and trained
  on Fashion-MNIST (the holdout variant never saw two classes; see docs/models.md);
* a torchvision classification architecture name (``resnet18``, ``densenet121``, ...) with a
  weights file and ``num_classes``;
* ``package.module:factory``: a callable returning an ``nn.Module``, with a weights file.

The model comes back in eval mode on the chosen device. Weights are read with
``torch.load(..., weights_only=True)``: a weights file never runs code.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from monitor.errors import ModelError

log = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TORCHVISION_INPUT_SHAPE = (3, 224, 224)

# Bundled models: spec -> file stem under monitor/assets (weights .pt, description .json).
BUNDLED: dict[str, str] = {
    "demo": "demo_fashion_resnet",
    "demo-holdout": "demo_fashion_resnet_holdout",
}

# How many offending keys a mismatch message lists per kind before summarising.
_MISMATCH_SHOWN = 5


# --- the bundled demo architecture ---------------------------------------------------------


class ResidualBlock(nn.Module):
    """Two 3x3 convolutions with batch-norm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class DemoResNet(nn.Module):
    """Small ResNet for 1x28x28 images: a stem, three residual stages (28, 14, 7 pixels),
    global average pooling and one ``nn.Linear`` head (the latent vector of the indicators).

    Takes normalised input, (x - mean) / std; the monitor applies that normalisation.
    """

    def __init__(
        self,
        num_classes: int = 10,
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64),
        strides: Sequence[int] = (1, 2, 2),
    ):
        super().__init__()
        first, second, third = (int(w) for w in widths)
        stride1, stride2, stride3 = (int(s) for s in strides)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, first, 3, padding=1, bias=False),
            nn.BatchNorm2d(first),
            nn.ReLU(inplace=True),
        )
        self.stage1 = ResidualBlock(first, first, stride=stride1)
        self.stage2 = ResidualBlock(first, second, stride=stride2)
        self.stage3 = ResidualBlock(second, third, stride=stride3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(third, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage3(self.stage2(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


# --- preprocessing --------------------------------------------------------------------------


@dataclass(frozen=True)
class Preprocessing:
    """What the model expects: input shape (C, H, W) of pixel-space images in [0, 1], the
    normalisation (x - mean) / std applied before the network, and optional class names."""

    input_shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        shape = tuple(int(v) for v in self.input_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ModelError(f"input_shape must be three positive integers (C, H, W), not {self.input_shape!r}")
        channels = shape[0]
        mean = tuple(float(v) for v in self.mean)
        std = tuple(float(v) for v in self.std)
        if len(mean) != channels or len(std) != channels:
            raise ModelError(
                f"mean and std need one value per input channel ({channels}); got mean {mean}, std {std}"
            )
        if any(not s > 0 for s in std):
            raise ModelError(f"std values must be positive, not {std}")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        if self.class_names is not None:
            object.__setattr__(self, "class_names", tuple(str(n) for n in self.class_names))

    @property
    def channels(self) -> int:
        return self.input_shape[0]

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)."""
        return self.input_shape[1], self.input_shape[2]

    def class_name(self, index: int) -> str | None:
        """Name of a predicted class index, or None when unknown."""
        if self.class_names is None or not 0 <= index < len(self.class_names):
            return None
        return self.class_names[index]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Preprocessing":
        try:
            names = data.get("class_names")
            return cls(
                input_shape=tuple(data["input_shape"]),
                mean=tuple(data["mean"]),
                std=tuple(data["std"]),
                class_names=tuple(names) if names is not None else None,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelError(f"preprocessing description is invalid ({error!r}): {dict(data)}") from None


@dataclass
class LoadedClassifier:
    """The monitored model (eval mode, on `device`) and how to feed it."""

    model: nn.Module
    preprocessing: Preprocessing
    name: str
    spec: str
    device: torch.device
    weights: Path | None = None
    details: dict[str, Any] = field(default_factory=dict)


# --- loading --------------------------------------------------------------------------------


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else CUDA when available, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise ModelError(f"device {device!r} is not a torch device ({error})") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} was asked for but CUDA is not available on this machine")
    return chosen


def torchvision_architectures() -> list[str]:
    """Names of torchvision's image classification architectures."""
    import torchvision.models

    return sorted(torchvision.models.list_models(module=torchvision.models))


def read_state_dict(path: Path | str) -> dict[str, torch.Tensor]:
    """Tensors of a weights file: a state_dict, or a checkpoint holding one under
    'state_dict' / 'model_state_dict' / 'model'. A 'module.' prefix (DataParallel) is removed."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} does not exist")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # pickle, zip and weights_only refusals all mean "not usable weights"
        raise ModelError(
            f"weights file {str(path)!r} cannot be read as tensors with weights_only=True: "
            f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        ) from None
    if isinstance(loaded, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelError(f"weights file {str(path)!r} holds {type(loaded).__name__}, not a state_dict of tensors")
    not_tensors = [k for k, v in loaded.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise ModelError(f"weights file {str(path)!r}: entries that are not tensors: {_first(not_tensors)}")
    state = dict(loaded)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _first(items: Sequence[str]) -> str:
    shown = ", ".join(items[:_MISMATCH_SHOWN])
    more = len(items) - _MISMATCH_SHOWN
    return shown + (f" (and {more} more)" if more > 0 else "")


def load_weights(model: nn.Module, path: Path | str, what: str) -> None:
    """Load a weights file into `model`, or raise ModelError naming what does not match."""
    state = read_state_dict(path)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected
        if k in state and state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_first(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_first(unexpected)}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches: {_first(mismatched)}")
        raise ModelError(f"weights file {str(path)!r} does not match {what}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def _sidecar(weights: Path | None) -> dict[str, Any]:
    """The JSON description saved beside a weights file (same stem), if any."""
    if weights is None:
        return {}
    path = Path(weights).with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise ModelError(f"description file {str(path)!r} is not valid JSON: {error}") from None


def _resolve_factory(target: str) -> Callable[..., nn.Module]:
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise ModelError(f"factory spec must look like 'package.module:factory', not {target!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ModelError(f"cannot import module {module_name!r} of model spec {target!r}: {error}") from None
    factory: Any = module
    for part in attribute.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise ModelError(f"module {module_name!r} has no attribute {attribute!r} (model spec {target!r})")
    if not callable(factory):
        raise ModelError(f"{target!r} is not callable; a model factory must return an nn.Module")
    return factory


def _build(factory: Callable[..., nn.Module], kwargs: Mapping[str, Any], target: str) -> nn.Module:
    try:
        model = factory(**kwargs)
    except Exception as error:  # a user's factory may fail in any way; say which one and why
        raise ModelError(f"model factory {target!r} failed with {kwargs or 'no arguments'}: {error!r}") from None
    if not isinstance(model, nn.Module):
        raise ModelError(f"model factory {target!r} returned {type(model).__name__}, not a torch nn.Module")
    return model


def _from_description(description: Mapping[str, Any], what: str) -> tuple[nn.Module, Preprocessing, dict[str, Any]]:
    """(model without weights, preprocessing, the other entries) of a JSON description as the
    training scripts write it: {"architecture": {"factory", "kwargs"}, "preprocessing", ...}."""
    architecture = description.get("architecture", {})
    target = architecture.get("factory", "monitor.classifiers:DemoResNet")
    model = _build(_resolve_factory(target), architecture.get("kwargs", {}), what)
    if "preprocessing" not in description:
        raise ModelError(f"{what}: its description has no 'preprocessing' entry")
    base = Preprocessing.from_dict(description["preprocessing"])
    details = {k: v for k, v in description.items() if k not in ("architecture", "preprocessing")}
    return model, base, details


def load_described(
    weights: Path | str, *, name: str | None = None, device: str | torch.device | None = None
) -> LoadedClassifier:
    """A model saved with a JSON description beside its weights (same stem, as
    deploy/train_demo_classifier.py and deploy/train_ood_models.py write them), in eval mode."""
    weights = Path(weights)
    description = _sidecar(weights)
    if not description:
        raise ModelError(f"model {str(weights)!r} has no description {str(weights.with_suffix('.json'))!r} beside it")
    name = name or weights.stem
    model, preprocessing, details = _from_description(description, f"model {name!r}")
    load_weights(model, weights, f"model {name!r}")
    chosen = pick_device(device)
    return LoadedClassifier(
        model=model.to(chosen).eval(),
        preprocessing=preprocessing,
        name=name,
        spec=str(weights),
        device=chosen,
        weights=weights,
        details=details,
    )


def load_classifier(
    spec: str,
    *,
    weights: Path | str | None = None,
    num_classes: int | None = None,
    input_shape: Sequence[int] | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    class_names: Sequence[str] | None = None,
    device: str | torch.device | None = None,
) -> LoadedClassifier:
    """Build the model a spec names, load its weights, and put it in eval mode on `device`.

    Preprocessing comes, by priority, from the explicit arguments, then the JSON file beside
    the weights (``<weights stem>.json``, key ``preprocessing``), then defaults: ImageNet's
    3x224x224 mean/std for torchvision architectures; for factories the input shape must be
    given and mean 0 / std 1 (no normalisation) is assumed.
    """
    if not spec or not isinstance(spec, str):
        raise ModelError("model spec is empty; use 'demo', a torchvision architecture name, or 'package.module:factory'")
    weights_path = Path(weights).expanduser() if weights is not None else None
    if num_classes is not None and int(num_classes) < 1:
        raise ModelError(f"num_classes must be a positive integer, not {num_classes!r}")
    details: dict[str, Any] = {}

    if spec in BUNDLED:
        stem = ASSETS_DIR / BUNDLED[spec]
        weights_path = weights_path or stem.with_suffix(".pt")
        description = _sidecar(stem.with_suffix(".pt"))
        if not description:
            raise ModelError(
                f"bundled model {spec!r} is missing {stem.with_suffix('.json')}; "
                "train it with deploy/train_demo_classifier.py"
            )
        bundled_classes = description.get("architecture", {}).get("kwargs", {}).get("num_classes")
        if num_classes is not None and bundled_classes is not None and int(num_classes) != bundled_classes:
            raise ModelError(f"bundled model {spec!r} has {bundled_classes} classes, not num_classes={num_classes}")
        model, base, details = _from_description(description, spec)
        what = f"bundled model {spec!r}"
        name = spec
    elif ":" in spec:
        factory = _resolve_factory(spec)
        kwargs = {"num_classes": int(num_classes)} if num_classes is not None else {}
        model = _build(factory, kwargs, spec)
        what = f"the model built by {spec!r}"
        name = spec.rpartition(":")[2]
        description = _sidecar(weights_path)
        base = Preprocessing.from_dict(description["preprocessing"]) if "preprocessing" in description else None
        if base is None and input_shape is None:
            raise ModelError(
                f"model spec {spec!r}: give the input shape (C,H,W), or a '.json' beside the weights "
                "with a 'preprocessing' entry"
            )
    else:
        names = torchvision_architectures()
        if spec not in names:
            close = [n for n in names if spec.lower()[:4] in n][:8]
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise ModelError(
                f"unknown model spec {spec!r}: not 'demo', not 'package.module:factory', and not a "
                f"torchvision classification architecture.{hint}"
            )
        if weights_path is None:
            raise ModelError(
                f"torchvision architecture {spec!r} needs a weights file (--weights); pretrained "
                "weights are never downloaded"
            )
        if num_classes is None:
            raise ModelError(f"torchvision architecture {spec!r} needs num_classes (--num-classes)")
        import torchvision.models

        model = _build(
            lambda **kw: torchvision.models.get_model(spec, weights=None, **kw),
            {"num_classes": int(num_classes)},
            spec,
        )
        what = f"torchvision {spec}(num_classes={num_classes})"
        name = spec
        description = _sidecar(weights_path)
        base = (
            Preprocessing.from_dict(description["preprocessing"])
            if "preprocessing" in description
            else Preprocessing(TORCHVISION_INPUT_SHAPE, IMAGENET_MEAN, IMAGENET_STD)
        )

    if weights_path is not None:
        load_weights(model, weights_path, what)
    elif spec in BUNDLED or ":" not in spec:
        raise ModelError(f"model spec {spec!r} needs a weights file")
    else:
        log.info("model factory %s: no weights file given, using the weights the factory set", spec)

    shape = tuple(input_shape) if input_shape is not None else (base.input_shape if base else None)
    channels = shape[0] if shape else 1
    preprocessing = Preprocessing(
        input_shape=shape,
        mean=tuple(mean) if mean is not None else (base.mean if base else (0.0,) * channels),
        std=tuple(std) if std is not None else (base.std if base else (1.0,) * channels),
        class_names=(
            tuple(class_names) if class_names is not None else (base.class_names if base else None)
        ),
    )
    chosen = pick_device(device)
    model = model.to(chosen).eval()
    return LoadedClassifier(
        model=model,
        preprocessing=preprocessing,
        name=name,
        spec=spec,
        device=chosen,
        weights=weights_path,
        details=details,
    )


# --- command line -----------------------------------------------------------------------------


def load_from_args(args: argparse.Namespace) -> LoadedClassifier:
    """`load_classifier` with the model options of the command line (monitor.cli.add_model_arguments)."""
    return load_classifier(
        args.model,
        weights=getattr(args, "weights", None),
        num_classes=getattr(args, "num_classes", None),
        input_shape=getattr(args, "input_shape", None),
        mean=getattr(args, "mean", None),
        std=getattr(args, "std", None),
        class_names=getattr(args, "class_names", None),
        device=getattr(args, "device", None),
    )
