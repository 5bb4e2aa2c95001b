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
    z = logits.double()
    log_p = torch.log_softmax(z, dim=1)
    p = log_p.exp()
    # Where p underflows to 0, log_p is finite or -inf; 0 * -inf = NaN is the 0 log 0 = 0 term.
    entropy = (p * log_p).nan_to_num_(nan=0.0).sum(dim=1).neg_()
    return {
        "MP": 1.0 - p.amax(dim=1),
        "H": entropy,
        "T1000": 1.0 - torch.softmax(z / T1000_TEMPERATURE, dim=1).amax(dim=1),
    }


# Where a norm is 0 its dot product is exactly 0 too, so 0 / tiny = 0 implements the convention.
_TINY = torch.finfo(torch.float64).tiny


def latent_family(logits: Tensor, latent: Tensor, weight: Tensor) -> dict[str, Tensor]:
    """NORM, NORM+, ANG, ANG++, PROJ, ACT, ACT+ (eqs. 14-17 and their '+' variants).

    logits [N, K], latent u [N, D] (the head's flattened input), weight W [K, D].
    k = argmax of the logits (first index on ties); w_k = W[k]; P = {j : W[k, j] > 0}.
    ACT uses w_k . u without the bias.
    """
    classes = weight.shape[0]
    predicted = logits.argmax(dim=1, keepdim=True)  # [N, 1]
    u = latent.double()
    w = weight.detach().double()
    w_positive = w.clamp_min(0.0)  # w_j,P padded with zeros, so w_k,P . u_P = w_positive[k] . u
    # Every class against every sample in two matrix products, then pick class k per sample.
    products = u @ torch.cat([w, w_positive]).T  # [N, 2K]: w_j . u, w_j,P . u_P
    dots = products.gather(1, torch.cat([predicted, predicted + classes], dim=1))  # [N, 2]
    u_sq = u.square()
    norm_u_p = (u_sq @ (w > 0).double().T).gather(1, predicted).sqrt_()  # ||u_P||, [N, 1]
    norms_u = torch.cat([u_sq.sum(dim=1, keepdim=True).sqrt_(), norm_u_p], dim=1)  # [N, 2]
    row_norms = torch.stack(
        [torch.linalg.vector_norm(w, dim=1), torch.linalg.vector_norm(w_positive, dim=1)], dim=1
    )
    norms_w = row_norms[predicted[:, 0]]  # [N, 2]: ||w_k||, ||w_k,P||
    cosines = dots / (norms_u * norms_w).clamp_min(_TINY)
    return {
        "NORM": -norms_u[:, 0],
        "NORM+": -norms_u[:, 1],
        "ANG": 1.0 - cosines[:, 0],
        "ANG++": 1.0 - cosines[:, 1],
        "PROJ": -dots[:, 0] / norms_w[:, 0].clamp_min(_TINY),
        "ACT": -dots[:, 0],
        "ACT+": -dots[:, 1],
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
    # Autograd must run even when the caller scores under inference_mode() or no_grad().
    with torch.inference_mode(False), torch.enable_grad():
        x = pixels.detach().clone().requires_grad_(True)
        logits = forward(x)
        predicted = logits.argmax(dim=1)
        # 'sum' keeps each sample's gradient unscaled by N; the sign is all that matters.
        loss = F.cross_entropy(logits / temperature, predicted, reduction="sum")
        (gradient,) = torch.autograd.grad(loss, x)
    return (x - epsilon * gradient.sign()).detach()
