"""UniSync's margin binary cross-entropy (paper Eq. 1).

    L = -mean[ y log p + (1 - y) log(1 - max(0, p - m)) ]    (+ L2, from the optimiser)

A negative pair whose p_sync is already below its margin m costs nothing, so the model stops
pushing easy negatives to 0 and spends its capacity on the hard ones; m depends on the negative's
kind (same-speaker shifted audio, or another speaker's audio). Positives are plain BCE. The L2
term is Adam's coupled weight decay (torch.optim.Adam(weight_decay=1e-4) adds wd * w to the
gradient, i.e. the gradient of wd/2 * ||w||^2), see `make_optimizer`.
"""
from __future__ import annotations

import math
from typing import Iterable

import torch

from training.sampler import KINDS

EPS = 1e-7  # p is clamped to [EPS, 1 - EPS] so neither log can be -inf
assert KINDS == ("pos", "same", "cross"), "margins_for indexes margins by kind"


def margins_for(kind: torch.Tensor, margins: tuple[float, float]) -> torch.Tensor:
    """Margin per pair from its kind index (sampler.KINDS): 0 for 'pos', then (same, cross)."""
    table = torch.tensor([0.0, *margins], dtype=torch.float32, device=kind.device)
    return table[kind]


def margin_bce(p: torch.Tensor, y: torch.Tensor, m: torch.Tensor | float = 0.0,
               eps: float = EPS) -> torch.Tensor:
    """Eq. 1 averaged over the batch; p, y and m are (B,) (m may be a scalar)."""
    p = p.clamp(eps, 1.0 - eps)
    y = y.to(p.dtype)
    neg = (p - m).clamp(min=0.0)  # max(0, p - m): below the margin a negative is free
    return -(y * torch.log(p) + (1.0 - y) * torch.log1p(-neg)).mean()


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float = 1e-4,
                   weight_decay: float = 1e-4) -> torch.optim.Optimizer:
    """The paper's optimiser: Adam, betas (0.5, 0.999), coupled L2 weight decay.

    The fused implementation (same update) is used where torch has one: on a CPU it cuts the
    optimiser's share of a narrow model's step from ~5 ms to ~1.5 ms.
    """
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay,
                                fused=True)
    except (RuntimeError, TypeError, ValueError):  # a device without a fused kernel
        return torch.optim.Adam(params, lr=lr, betas=(0.5, 0.999), weight_decay=weight_decay)


LR_SCHEDULES = ("constant", "cosine")


def lr_at(step: int, lr: float, steps: int, schedule: str = "constant", floor: float = 0.1) -> float:
    """The learning rate of optimiser step `step` (0-based) of a `steps`-step run: constant, or a
    half cosine from `lr` down to `floor * lr` at the last step. A pure function of the step, so
    --resume needs no scheduler state and lands on the same rate."""
    if schedule == "constant" or steps <= 1:
        return lr
    if schedule != "cosine":
        raise ValueError(f"lr schedule must be one of {LR_SCHEDULES}, got {schedule!r}")
    t = min(max(step, 0), steps - 1) / (steps - 1)
    return lr * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
