"""Optimality family (paper section 2.1, eqs. 7-17): MP, H, T1000, ODIN and the latent ones.

Plain functions over captured tensors, computed in float64 for the whole batch at once.
T1000 and ODIN live within about 1e-4 of 1 - 1/K, so float32 would keep only three or
four significant digits of what distinguishes two samples; float64 keeps them all.

Zero-norm convention (no NaN, ever): the cosine between u and w_k is taken as 0 when
either vector is zero (nothing points anywhere), so ANG = ANG++ = 1 there; PROJ is 0 when
w_k = 0. When no coordinate of w_k is positive, P is empty: NORM+ = ACT+ = 0 and ANG++ = 1.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from monitor.indicators import kernels

T1000_TEMPERATURE = 1000.0
ODIN_TEMPERATURE = 1000.0
ODIN_EPSILON = 8e-4

SOFTMAX_FAMILY: tuple[str, ...] = ("MP", "H", "T1000")
LATENT_FAMILY: tuple[str, ...] = ("NORM", "NORM+", "ANG", "ANG++", "PROJ", "ACT", "ACT+")


def tempered_confidence_gap(logits: Tensor, temperature: float) -> Tensor:
    """1 - max softmax(z / T), float64 [N] (eq. 11; MP when T = 1)."""
    if kernels.enabled():
        return kernels.tempered_confidence_gap(logits, temperature)
    # exp of the largest log-probability: bit for bit what softmax_family computes for T1000.
    return 1.0 - torch.log_softmax(logits.double() / temperature, dim=1).amax(dim=1).exp()


def softmax_family(logits: Tensor) -> dict[str, Tensor]:
    """MP (eq. 7), H (eq. 8, natural log, 0 log 0 = 0) and T1000 (eq. 11) from finite logits [N, K]."""
    z = logits.double()
    # Both temperatures in one pass: [2, N, K].
    log_p = torch.log_softmax(torch.stack([z, z / T1000_TEMPERATURE]), dim=2)
    p = log_p.exp()
    gaps = 1.0 - log_p.amax(dim=2).exp()
    # Finite logits make log_p finite; where p underflows to 0 the term p log p is 0 * finite = 0.
    entropy = torch.linalg.vecdot(p[0], log_p[0]).neg_()
    return {"MP": gaps[0], "H": entropy, "T1000": gaps[1]}


# Where a norm is 0 its dot product is exactly 0 too, so 0 / tiny = 0 implements the convention.
_TINY = torch.finfo(torch.float64).tiny


def _versions(tensor: Tensor) -> tuple | None:
    try:
        return (tensor, tensor._version)
    except RuntimeError:  # an inference tensor has no version counter: never cached
        return None


class LatentReducer:
    """NORM, NORM+, ANG, ANG++, PROJ, ACT, ACT+ (eqs. 14-17 and their '+' variants).

    What depends only on the head's weight W [K, D] (float64 copies of w_j, w_j,P and of the
    indicator of P, the norms ||w_j|| and ||w_j,P||) is computed once and reused until W is
    replaced or changed in place. Per batch, only the predicted class's rows are gathered:
    O(N D) work whatever the number of classes, and a handful of operations, which is what
    a batch costs on the CPU. Not thread-safe: one per thread.
    """

    def __init__(self) -> None:
        self._key: tuple | None = None
        self._tables: tuple[Tensor, Tensor] | None = None
        self._host_tables: tuple[Tensor, Tensor] | None = None

    def head_tables(self, weight: Tensor, host: bool = False) -> tuple[Tensor, Tensor]:
        """rows [K, 3, D]: w_j, w_j,P (zeros off P), 1_P; norms [K, 3]: ||w_j||, ||w_j,P||,
        1/||w_j||; float64 on W's device, or on the CPU with host=True."""
        key = _versions(weight)
        cached = self._key
        if key is None or cached is None or key[0] is not cached[0] or key[1] != cached[1]:
            self._tables = self._host_tables = None
            self._key = key
        if host:
            if self._host_tables is None:
                self._host_tables = self._build(weight.detach().cpu())
            return self._host_tables
        if self._tables is None:
            self._tables = self._build(weight.detach())
        return self._tables

    @staticmethod
    def _build(weight: Tensor) -> tuple[Tensor, Tensor]:
        w = weight.double()
        # w_j,P padded with zeros, so w_k,P . u_P = w_positive[k] . u
        w_positive = w.clamp_min(0.0)
        rows = torch.stack([w, w_positive, (w > 0).double()], dim=1)
        norms = torch.stack(
            [torch.linalg.vector_norm(w, dim=1), torch.linalg.vector_norm(w_positive, dim=1)], dim=1
        )
        # PROJ's divisor; a zero row gives PROJ = 0 (its dot product is 0).
        norms = torch.cat([norms, norms[:, :1].clamp_min(_TINY).reciprocal()], dim=1)
        return rows, norms

    def __call__(self, predicted: Tensor, latent: Tensor, weight: Tensor) -> dict[str, Tensor]:
        """predicted [N] int64: argmax of the logits (first index on ties); latent u [N, D]
        (the head's flattened input); weight W [K, D]. k = predicted; P = {j : W[k, j] > 0}.
        ACT uses w_k . u without the bias."""
        rows, norms = self.head_tables(weight)
        u = latent.double()
        # [N, 3, D] @ [N, D, 2] -> w_k . u, w_k,P . u (column 0) and ||u_P||^2 (row 2, column 1).
        products = torch.bmm(rows[predicted], torch.stack([u, u.square()], dim=2))
        picked = products.flatten(1)[:, [0, 2, 5]]  # w_k . u, w_k,P . u, ||u_P||^2
        norms_u = torch.stack([torch.linalg.vector_norm(u, dim=1), picked[:, 2].sqrt()], dim=1)
        norms_w = norms[predicted]  # ||w_k||, ||w_k,P||, 1 / ||w_k||
        dots = picked[:, :2]
        cosines = dots / (norms_u * norms_w[:, :2]).clamp_min(_TINY)
        negated = torch.cat([norms_u, cosines, dots[:, :1] * norms_w[:, 2:], dots], dim=1).neg_()
        # NORM, NORM+, ANG = 1 - cos, ANG++ = 1 - cos+, PROJ, ACT, ACT+: all negated, +1 for ANG*.
        negated[:, 2:4] += 1.0
        return dict(zip(LATENT_FAMILY, negated.unbind(1)))


def odin_perturbation(
    forward: Callable[[Tensor], Tensor],
    pixels: Tensor,
    temperature: float = ODIN_TEMPERATURE,
    epsilon: float = ODIN_EPSILON,
) -> Tensor:
    """x' = x - eps * sign(grad_x CE(z(x) / T, k)), k = argmax z(x): ODIN's convention (Liang et al.);
    the paper's eq. 9 prints a "+" step without the temperature (see docs/indicators.md).

    forward maps pixel-space images to logits (normalisation included), so the gradient is
    taken in pixel space, before normalisation. x' is not clipped to [0, 1] (as in ODIN).
    Only the input's gradient is computed: parameters' .grad are left untouched.
    """
    # Autograd must run even when the caller scores under inference_mode() or no_grad().
    with torch.inference_mode(False), torch.enable_grad():
        x = pixels.detach().clone().requires_grad_(True)
        logits = forward(x)
        predicted = logits.argmax(dim=1)
        # 'sum' keeps each sample's gradient unscaled by N; the sign is all that matters.
        loss = F.cross_entropy(logits / temperature, predicted, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
    return (x - epsilon * gradient.sign()).detach()
