"""Loading the monitored classifier from each kind of spec, and the errors a user sees."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from monitor.classifiers import (
    DemoResNet,
    LoadedClassifier,
    Preprocessing,
    load_classifier,
    pick_device,
    read_state_dict,
)
from monitor.errors import ModelError

CPU = "cpu"


class TinyNet(nn.Module):
    """A small factory-built model: conv, batch-norm, pooling, a Linear head."""

    def __init__(self, num_classes: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_factory(num_classes: int = 4) -> nn.Module:
    torch.manual_seed(7)
    return TinyNet(num_classes)


def not_a_module_factory():
    return "a string"


def failing_factory(num_classes: int = 4):
    raise RuntimeError("out of coffee")


FACTORY = f"{__name__}:tiny_factory"


def trained_like(model: nn.Module) -> dict[str, torch.Tensor]:
    """A state_dict that differs from any fresh initialisation."""
    torch.manual_seed(123)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    for key, value in state.items():
        if value.is_floating_point():
            state[key] = torch.randn_like(value)
    for key in state:
        if key.endswith("running_var"):
            state[key] = state[key].abs() + 0.5
    return state


# --- demo -------------------------------------------------------------------------------


def test_demo_spec_loads_the_bundled_model_in_eval_mode():
    loaded = load_classifier("demo", device=CPU)
    assert isinstance(loaded, LoadedClassifier)
    assert isinstance(loaded.model, DemoResNet)
    assert not loaded.model.training
    assert loaded.device == torch.device("cpu")
    assert next(loaded.model.parameters()).device.type == "cpu"
    prep = loaded.preprocessing
    assert prep.input_shape == (1, 28, 28)
    assert prep.mean == pytest.approx((0.286,), abs=0.002) and prep.std == pytest.approx((0.353,), abs=0.002)
    assert prep.class_names is not None and len(prep.class_names) == 10 and prep.class_name(9) == "Ankle boot"
    assert prep.class_name(10) is None
    assert loaded.details["test_accuracy"] >= 0.88
    assert any(isinstance(m, nn.BatchNorm2d) for m in loaded.model.modules())
    with torch.no_grad():
        logits = loaded.model(torch.zeros(2, 1, 28, 28))
    assert tuple(logits.shape) == (2, 10)


def test_device_defaults_to_cuda_when_available():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device(None).type == expected
    assert pick_device("auto").type == expected
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            pick_device("cuda")
    with pytest.raises(ModelError, match="not a torch device"):
        pick_device("toaster")


# --- torchvision -------------------------------------------------------------------------


def test_torchvision_architecture_with_weights(tmp_path):
    import torchvision

    # A small architecture keeps the test fast; every torchvision name goes the same way.
    reference = torchvision.models.mobilenet_v3_small(num_classes=3)
    state = trained_like(reference)
    path = tmp_path / "mobilenet.pt"
    torch.save(state, path)
    loaded = load_classifier("mobilenet_v3_small", weights=path, num_classes=3, device=CPU)
    assert loaded.name == "mobilenet_v3_small" and not loaded.model.training
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, state[key]), key
    # Without a description beside the weights: ImageNet's input size and normalisation.
    assert loaded.preprocessing.input_shape == (3, 224, 224)
    assert loaded.preprocessing.mean == (0.485, 0.456, 0.406)


def test_a_description_beside_the_weights_and_explicit_arguments_set_the_preprocessing(tmp_path):
    import torchvision

    path = tmp_path / "small.pt"
    torch.save(torchvision.models.mobilenet_v3_small(num_classes=2).state_dict(), path)
    (tmp_path / "small.json").write_text(
        json.dumps({"preprocessing": {"input_shape": [3, 64, 64], "mean": [0.5] * 3, "std": [0.25] * 3,
                                      "class_names": ["cat", "dog"]}})
    )
    loaded = load_classifier("mobilenet_v3_small", weights=path, num_classes=2, device=CPU)
    assert loaded.preprocessing == Preprocessing((3, 64, 64), (0.5,) * 3, (0.25,) * 3, ("cat", "dog"))
    overridden = load_classifier("mobilenet_v3_small", weights=path, num_classes=2, device=CPU, input_shape=(3, 32, 32))
    assert overridden.preprocessing.input_shape == (3, 32, 32)
    assert overridden.preprocessing.class_names == ("cat", "dog")


def test_torchvision_needs_weights_and_num_classes(tmp_path):
    with pytest.raises(ModelError, match="needs a weights file"):
        load_classifier("resnet18", num_classes=3, device=CPU)
    path = tmp_path / "w.pt"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(ModelError, match="num_classes"):
        load_classifier("resnet18", weights=path, device=CPU)


def test_unknown_architecture_is_a_clear_error():
    with pytest.raises(ModelError, match=r"unknown model spec 'resnet1800'.*Close names: .*resnet18"):
        load_classifier("resnet1800", weights="x.pt", num_classes=3, device=CPU)


# --- factories ---------------------------------------------------------------------------


def test_factory_spec_with_weights(tmp_path):
    state = trained_like(TinyNet(5))
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    loaded = load_classifier(
        FACTORY, weights=path, num_classes=5, input_shape=(3, 16, 16), mean=(0.1, 0.2, 0.3), std=(1, 1, 1),
        device=CPU,
    )
    assert isinstance(loaded.model, TinyNet) and loaded.name == "tiny_factory"
    assert torch.equal(loaded.model.head.weight, state["head.weight"])
    assert loaded.preprocessing.mean == (0.1, 0.2, 0.3)


def test_factory_without_weights_keeps_its_own_and_defaults_to_no_normalisation():
    loaded = load_classifier(FACTORY, input_shape=(3, 8, 8), device=CPU)
    assert torch.equal(loaded.model.head.weight, tiny_factory().head.weight)
    assert loaded.preprocessing.mean == (0.0, 0.0, 0.0) and loaded.preprocessing.std == (1.0, 1.0, 1.0)


def test_factory_needs_an_input_shape():
    with pytest.raises(ModelError, match="input shape"):
        load_classifier(FACTORY, device=CPU)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_package.models:build", "cannot import module 'no_such_package.models'"),
        (f"{__name__}:missing_factory", "has no attribute 'missing_factory'"),
        (f"{__name__}:CPU", "is not callable"),
        (f"{__name__}:not_a_module_factory", "returned str, not a torch nn.Module"),
        (f"{__name__}:failing_factory", "out of coffee"),
        (":build", "package.module:factory"),
    ],
)
def test_bad_factory_paths_are_clear_errors(spec, message):
    with pytest.raises(ModelError, match=message.replace("(", r"\(")):
        load_classifier(spec, input_shape=(3, 8, 8), device=CPU)


# --- weights files -----------------------------------------------------------------------


def test_weights_that_do_not_match_name_the_keys_and_shapes(tmp_path):
    state = DemoResNet(num_classes=10).state_dict()
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(2)
    path = tmp_path / "demo10.pt"
    torch.save(state, path)
    with pytest.raises(ModelError) as caught:
        load_classifier("monitor.classifiers:DemoResNet", weights=path, num_classes=7, input_shape=(1, 28, 28),
                        device=CPU)
    message = str(caught.value)
    assert "1 missing keys: fc.bias" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "fc.weight: file (10, 64) vs model (7, 64)" in message
    assert str(path) in message


def test_a_wholly_different_model_lists_the_first_few_keys(tmp_path):
    path = tmp_path / "demo.pt"
    torch.save(DemoResNet(num_classes=10).state_dict(), path)
    with pytest.raises(ModelError, match=r"missing keys: .*\(and \d+ more\)"):
        load_classifier(FACTORY, weights=path, input_shape=(3, 8, 8), device=CPU)


def test_missing_weights_file_is_a_clear_error(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        load_classifier("resnet18", weights=tmp_path / "nope.pt", num_classes=3, device=CPU)


class _Arbitrary:
    pass


def test_weights_are_read_without_running_code(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"model": _Arbitrary()}, path)
    with pytest.raises(ModelError, match="weights_only=True"):
        read_state_dict(path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a zip file")
    with pytest.raises(ModelError, match="cannot be read"):
        read_state_dict(garbage)
    not_dict = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), not_dict)
    with pytest.raises(ModelError, match="not a state_dict"):
        read_state_dict(not_dict)


def test_checkpoints_and_data_parallel_prefixes_are_understood(tmp_path):
    state = trained_like(TinyNet(4))
    path = tmp_path / "checkpoint.pt"
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    loaded = load_classifier(FACTORY, weights=path, input_shape=(3, 8, 8), device=CPU)
    assert torch.equal(loaded.model.conv.weight, state["conv.weight"])


# --- preprocessing -----------------------------------------------------------------------


def test_preprocessing_is_validated_and_frozen():
    prep = Preprocessing((3, 32, 32), (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert prep.channels == 3 and prep.size == (32, 32)
    with pytest.raises(Exception):
        prep.mean = (0.0,)  # type: ignore[misc]
    with pytest.raises(ModelError, match="one value per input channel"):
        Preprocessing((3, 32, 32), (0.5,), (0.2,))
    with pytest.raises(ModelError, match="positive"):
        Preprocessing((1, 28, 28), (0.5,), (0.0,))
    with pytest.raises(ModelError, match="input_shape"):
        Preprocessing((28, 28), (0.5,), (0.2,))
    assert Preprocessing.from_dict(prep.to_dict()) == prep
