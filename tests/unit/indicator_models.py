"""Small models and an independent float64 reference of every indicator, for the tests.

The reference follows the paper's equations literally: it captures FULL activations with its
own hooks, materialises y = (z - running_mean) / sqrt(running_var + eps), and computes each
quantity in float64 numpy, with scipy's chi2 p-values (not the quantiles the implementation
uses). It shares no code with monitor.indicators.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2
from torch import nn

ALPHA = 0.1


def perturb_batchnorm(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm2d non-trivial running statistics and affine parameters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                channels = module.num_features
                module.running_mean.copy_(0.3 * torch.randn(channels, generator=generator))
                module.running_var.copy_(0.5 + 1.5 * torch.rand(channels, generator=generator))
                module.weight.copy_(0.5 + torch.rand(channels, generator=generator))
                module.bias.copy_(0.1 * torch.randn(channels, generator=generator))
    return model.eval()


def small_cnn(channels: int = 1, classes: int = 10) -> nn.Module:
    """Fashion-MNIST-sized CNN with batch-norm; its last BN sees 1x1 maps at 28x28 input."""
    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.BatchNorm2d(16),
        nn.Flatten(),
        nn.Linear(16, classes),
    )
    return perturb_batchnorm(model, seed=1)


def no_batchnorm_cnn(channels: int = 3, classes: int = 5) -> nn.Module:
    torch.manual_seed(2)
    return nn.Sequential(
        nn.Conv2d(channels, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, classes),
    ).eval()


class GatedHeadCNN(nn.Module):
    """The head is `classifier`; the last nn.Linear in module order is `gate`, applied before it."""

    def __init__(self, classes: int = 5) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(16, classes)
        self.gate = nn.Linear(16, 16)

    def forward(self, x):
        u = self.features(x)
        return self.classifier(u * torch.sigmoid(self.gate(u)))


def gated_head_cnn() -> nn.Module:
    torch.manual_seed(3)
    return perturb_batchnorm(GatedHeadCNN(), seed=3)


def convolutional_head_cnn(classes: int = 4) -> nn.Module:
    """No nn.Linear at all: a 1x1 convolution and global pooling make the logits."""
    torch.manual_seed(4)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, classes, 1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return perturb_batchnorm(model, seed=4)


def _last_linear(model: nn.Module, head: str | None) -> nn.Linear | None:
    if head is not None:
        return dict(model.named_modules())[head]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _batchnorm_reference(layers: list[np.ndarray]) -> dict[str, np.ndarray]:
    """layers: standardised activations y, [N, C, H, W] float64 each. Eqs. 20-30 literally."""
    n = layers[0].shape[0]
    dms, aos, dss, ext, borderline = (np.zeros(n) for _ in range(5))
    channels_all = sum(y.shape[1] for y in layers)
    channels_spread = sum(y.shape[1] for y in layers if y.shape[2] * y.shape[3] >= 2)
    for y in layers:
        pixels = y.shape[2] * y.shape[3]
        flat = y.reshape(n, y.shape[1], pixels)
        m = flat.mean(axis=2)
        dms += (m**2).sum(axis=1)
        aos += (flat**2).mean(axis=2).sum(axis=1)
        if pixels >= 2:
            s = np.sqrt(((flat - m[:, :, None]) ** 2).sum(axis=2) / (pixels - 1))
            v = (pixels - 1) * s**2
            p_value = 2 * np.minimum(chi2.cdf(v, pixels - 1), chi2.sf(v, pixels - 1))
            dss += ((s - 1) ** 2).sum(axis=1)
            ext += (p_value < ALPHA).sum(axis=1)
            # Channels this close to the cut may flip between float32 and float64.
            borderline += (np.abs(p_value - ALPHA) < 1e-4).sum(axis=1)
    result = {"DMS": dms / channels_all, "DMS-AOS": aos / channels_all}
    if channels_spread:
        result["DSS"] = dss / channels_spread
        result["DSS-EXT"] = ext / channels_spread
        result["DSS-EXT borderline"] = borderline / channels_spread
    return result


def reference_indicators(model: nn.Module, x: torch.Tensor, mean, std, head: str | None = None):
    """Float64 reference of every indicator but ODIN and 1C-Sum, from the paper's equations.

    Returns (indicators: name -> float64 [N] numpy, logits float64 [N, K]).
    """
    model.eval()
    captured_bn: list[tuple[np.ndarray, nn.BatchNorm2d]] = []
    captured_latent: list[np.ndarray] = []
    handles = []
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            handles.append(
                module.register_forward_pre_hook(
                    lambda m, args: captured_bn.append((args[0].detach().double().numpy(), m))
                )
            )
    linear = _last_linear(model, head)
    if linear is not None:
        handles.append(
            linear.register_forward_pre_hook(
                lambda m, args: captured_latent.append(args[0].detach().double().numpy())
            )
        )
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    with torch.no_grad():
        logits = model((x - mean_t) / std_t).double().numpy()
    for handle in handles:
        handle.remove()

    n, k_classes = logits.shape
    result: dict[str, np.ndarray] = {name: np.zeros(n) for name in ("MP", "H", "T1000")}
    for i in range(n):
        p = _softmax(logits[i])
        result["MP"][i] = 1 - p.max()
        result["H"][i] = -sum(pj * np.log(pj) for pj in p if pj > 0)
        result["T1000"][i] = 1 - _softmax(logits[i] / 1000.0).max()

    if linear is not None:
        u_all = captured_latent[-1].reshape(n, -1)
        weight = linear.weight.detach().double().numpy()
        names = ("NORM", "NORM+", "ANG", "ANG++", "PROJ", "ACT", "ACT+")
        for name in names:
            result[name] = np.zeros(n)
        for i in range(n):
            u = u_all[i]
            k = int(np.argmax(logits[i]))
            w = weight[k]
            positive = w > 0
            u_p, w_p = u[positive], w[positive]
            result["NORM"][i] = -np.linalg.norm(u)
            result["NORM+"][i] = -np.linalg.norm(u_p)
            result["ANG"][i] = 1 - w @ u / (np.linalg.norm(w) * np.linalg.norm(u))
            result["ANG++"][i] = 1 - w_p @ u_p / (np.linalg.norm(w_p) * np.linalg.norm(u_p))
            result["PROJ"][i] = -(w @ u) / np.linalg.norm(w)
            result["ACT"][i] = -(w @ u)
            result["ACT+"][i] = -(w_p @ u_p)

    x64 = x.double().numpy()
    input_layer = (x64 - np.asarray(mean)[None, :, None, None]) / np.asarray(std)[None, :, None, None]
    for name, value in _batchnorm_reference([input_layer]).items():
        result["IN-" + name] = value
    if captured_bn:
        layers = [input_layer]
        for z, module in captured_bn:
            rm = module.running_mean.double().numpy()[None, :, None, None]
            rv = module.running_var.double().numpy()[None, :, None, None]
            layers.append((z - rm) / np.sqrt(rv + module.eps))
        result.update(_batchnorm_reference(layers))
    return result, logits


def reference_odin(model64: nn.Module, x: torch.Tensor, mean, std, temperature=1000.0, epsilon=8e-4):
    """ODIN in float64 (model64 is a float64 copy of the model), eq. 9-12 with DESIGN's sign."""
    mean_t = torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1)
    pixels = x.double().clone().requires_grad_(True)
    logits = model64((pixels - mean_t) / std_t)
    k = logits.argmax(dim=1)
    loss = torch.nn.functional.cross_entropy(logits / temperature, k, reduction="sum")
    (gradient,) = torch.autograd.grad(loss, pixels)
    perturbed = (pixels - epsilon * gradient.sign()).detach()
    with torch.no_grad():
        z = model64((perturbed - mean_t) / std_t).numpy()
    return np.array([1 - _softmax(row / temperature).max() for row in z])
