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

T1000_TEMPERATURE = 1000.0
ODIN_TEMPERATURE = 1000.0
ODIN_EPSILON = 8e-4

SOFTMAX_FAMILY: tuple[str, ...] = ("MP", "H", "T1000")
LATENT_FAMILY: tuple[str, ...] = ("NORM", "NORM+", "ANG", "ANG++", "PROJ", "ACT", "ACT+")


def tempered_confidence_gap(logits: Tensor, temperature: float) -> Tensor:
    """1 - max softmax(z / T), float64 [N] (eq. 11; MP when T = 1)."""
    probabilities = torch.softmax(logits.double() / temperature, dim=1)
    return 1.0 - probabilities.amax(dim=1)


def softmax_family(logits: Tensor) -> dict[str, Tensor]:
    """MP (eq. 7), H (eq. 8, natural log, 0 log 0 = 0) and T1000 (eq. 11) from logits [N, K]."""
    log_p = torch.log_softmax(logits.double(), dim=1)
    p = log_p.exp()
    # p underflows to exactly 0 where log_p is very negative: those terms are 0 log 0 = 0.
    entropy = -torch.where(p > 0, p * log_p, torch.zeros_like(p)).sum(dim=1)
    return {
        "MP": 1.0 - p.amax(dim=1),
        "H": entropy,
        "T1000": tempered_confidence_gap(logits, T1000_TEMPERATURE),
    }


def _safe_cosine(dot: Tensor, norm_a: Tensor, norm_b: Tensor) -> Tensor:
    """dot / (|a| |b|), 0 where either norm is 0 (the documented zero-norm convention)."""
    denominator = norm_a * norm_b
    positive = denominator > 0
    return torch.where(positive, dot / torch.where(positive, denominator, 1.0), 0.0)


def latent_family(logits: Tensor, latent: Tensor, weight: Tensor) -> dict[str, Tensor]:
    """NORM, NORM+, ANG, ANG++, PROJ, ACT, ACT+ (eqs. 14-17 and their '+' variants).

    logits [N, K], latent u [N, D] (the head's flattened input), weight W [K, D].
    k = argmax of the logits (first index on ties); w_k = W[k]; P = {j : W[k, j] > 0}.
    ACT uses w_k . u without the bias.
    """
    predicted = logits.argmax(dim=1)
    u = latent.double()
    w = weight.detach().double()[predicted]  # [N, D]: w_k of each sample
    positive = w > 0
    u_p = torch.where(positive, u, 0.0)
    w_p = torch.where(positive, w, 0.0)

    norm_u = torch.linalg.vector_norm(u, dim=1)
    norm_w = torch.linalg.vector_norm(w, dim=1)
    norm_u_p = torch.linalg.vector_norm(u_p, dim=1)
    norm_w_p = torch.linalg.vector_norm(w_p, dim=1)
    activation = (w * u).sum(dim=1)
    activation_p = (w_p * u_p).sum(dim=1)

    return {
        "NORM": -norm_u,
        "NORM+": -norm_u_p,
        "ANG": 1.0 - _safe_cosine(activation, norm_u, norm_w),
        "ANG++": 1.0 - _safe_cosine(activation_p, norm_u_p, norm_w_p),
        "PROJ": -torch.where(norm_w > 0, activation / torch.where(norm_w > 0, norm_w, 1.0), 0.0),
        "ACT": -activation,
        "ACT+": -activation_p,
    }


def odin_perturbation(
    forward: Callable[[Tensor], Tensor],
    pixels: Tensor,
    temperature: float = ODIN_TEMPERATURE,
    epsilon: float = ODIN_EPSILON,
) -> Tensor:
    """x' = x - eps * sign(grad_x CE(z(x) / T, k)), k = argmax z(x) (eq. 9, ODIN's sign).

    forward maps pixel-space images to logits (normalisation included), so the gradient is
    taken in pixel space, before normalisation. x' is not clipped to [0, 1] (as in ODIN).
    Only the input's gradient is computed: parameters' .grad are left untouched.
    """
    x = pixels.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logits = forward(x)
        predicted = logits.argmax(dim=1)
        # 'sum' keeps each sample's gradient unscaled by N; the sign is all that matters.
        loss = F.cross_entropy(logits / temperature, predicted, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
    return (x - epsilon * gradient.sign()).detach()
