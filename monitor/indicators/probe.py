"""White-box probe: forward hooks that capture what the indicators need in one forward pass.

- the head's input u (flattened) through a forward pre-hook on the head nn.Linear;
- per-(sample, channel) moments of the input of every nn.BatchNorm2d, reduced inside a
  forward pre-hook the moment the activation exists (full activations are never kept).

Hooks record only inside `capture()`; any other forward of the model (ODIN's, the user's
own) passes through them untouched.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor, nn

from monitor.errors import ModelError
from monitor.indicators.batchnorm import LayerMoments, reduce_activation
from monitor.indicators.kernels import MomentBuffers

log = logging.getLogger(__name__)


def find_head(model: nn.Module, head: str | None) -> tuple[str | None, nn.Linear | None]:
    """The classifier head: the module named `head`, else the last nn.Linear in module order.

    Returns (None, None) for a model without any nn.Linear (the latent family is then absent).
    """
    modules = dict(model.named_modules())
    if head is not None:
        if head not in modules:
            linears = [name for name, module in modules.items() if isinstance(module, nn.Linear)]
            raise ModelError(
                f"head={head!r}: the model has no module of that name; its nn.Linear modules are: "
                f"{', '.join(linears) or 'none'}"
            )
        module = modules[head]
        if not isinstance(module, nn.Linear):
            raise ModelError(
                f"head={head!r} is a {type(module).__name__}, not an nn.Linear: the latent "
                "indicators need the head's weight matrix W and its input u"
            )
        return head, module
    last: tuple[str | None, nn.Linear | None] = (None, None)
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            last = (name, module)
    return last


def find_batchnorms(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """Every nn.BatchNorm2d that standardises with running statistics, in module order."""
    found = []
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d):
            if module.running_mean is None or module.running_var is None:
                log.warning(
                    "batch-norm layer %r keeps no running statistics (track_running_stats=False); "
                    "it cannot take part in the batch-norm indicators",
                    name,
                )
                continue
            found.append((name, module))
    return found


@dataclass
class Capture:
    """What one forward pass left behind: the head's input and each batch-norm input's moments."""

    latent: Tensor | None = None
    layers: list[LayerMoments] = field(default_factory=list)
    # How often each batch-norm module ran in this pass: a module applied twice keeps both.
    calls: dict[int, int] = field(default_factory=dict)
    # The MomentBuffers key of each entry of layers.
    keys: list = field(default_factory=list)


class Probe:
    """Hooks on a model's head and batch-norm layers; use `with probe.capture() as c: model(x)`."""

    def __init__(self, model: nn.Module, head: str | None = None) -> None:
        self.head_name, self.head = find_head(model, head)
        self.batchnorms = find_batchnorms(model)
        self._capture: Capture | None = None
        # Reused between passes: a capture's moments are consumed before the next capture.
        self.buffers = MomentBuffers()
        self._handles = []
        if self.head is not None:
            self._handles.append(self.head.register_forward_pre_hook(self._on_head_input))
        for _, module in self.batchnorms:
            self._handles.append(module.register_forward_pre_hook(self._on_batchnorm_input))

    @contextlib.contextmanager
    def capture(self) -> Iterator[Capture]:
        self._capture = Capture()
        try:
            yield self._capture
        finally:
            self._capture = None

    def remove(self) -> None:
        """Detach every hook from the model."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _on_head_input(self, module: nn.Module, args: tuple) -> None:
        if self._capture is not None:
            # A head applied twice keeps its last input, the one the logits come from.
            # A copy: the model may change u in place after the head (an inplace ReLU on a skip).
            self._capture.latent = (args[0].flatten(1) if args[0].dim() > 1 else args[0]).clone()

    def _on_batchnorm_input(self, module: nn.BatchNorm2d, args: tuple) -> None:
        # Runs at every batch-norm layer of every batch: kept lean (its cost is the probe's).
        capture = self._capture
        if capture is None:
            return
        z = args[0]
        calls = capture.calls
        call = calls.get(id(module), 0)
        calls[id(module)] = call + 1
        key = (id(module), call)
        capture.keys.append(key)
        mean, variance = reduce_activation(z, self.buffers, key)
        statistics = module._buffers  # running_mean, running_var (faster than module.__getattr__)
        capture.layers.append(
            LayerMoments(
                mean,
                variance,
                z.shape[2] * z.shape[3],
                statistics["running_mean"],
                statistics["running_var"],
                module.eps,
            )
        )
