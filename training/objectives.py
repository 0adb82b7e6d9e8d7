"""SyncTalklip's objectives (paper section 3): the AV-SyncNet losses and the generator's L_cav.

    theta(x, x') = F(tau * |f^x - f^x'|)                          Eq. 5 / Eq. 11 (`AlignmentHead`)
    L_av         = BCE(sigmoid(-theta(a_t, v_t)), y)              Eq. 5, read as below (`l_av`)
    L_lip        = -sum_t log p(w_t | w_<t, f^v)                  Eq. 4 (`l_lip`)
    L_total      = lambda_av L_av + lambda_lip L_lip              Eq. 6 (`eq6`)
    L_cav        = sum_i theta(a_i, v_i) - sum_{j != i} theta(a_i, v_j) / (|Y| - 1)   Eq. 12 (`l_cav`)
    L_total      = lambda_cav L_cav + lambda_gan L_gan + lambda_rec L_rec + lambda_lip L_lip   Eq. 13 (`eq13`)
    InfoNCE      the conventional contrastive alternative of the paper's ablation (`l_infonce`)

f^a, f^v are (..., T, D) frame embeddings of the audio-only and video-only inputs of a shared
encoder (training/avsync.py). Everything here is a plain function of tensors (or one small
module, F), so a user's own generator loop can call it; the frozen-expert wrapper a generator
trains against is training/sync/objectives.py.

Readings chosen where the paper is ambiguous (tests/test_avsync.py pins each):

- `||f^a - f^v||_1` fed to a linear layer F: the elementwise absolute difference |f^a - f^v| in
  R^D goes into F: R^D -> R (a norm would leave F a scalar affine map, nothing to learn). F's
  weights are kept non-negative (softplus of a free parameter, `AlignmentHead`), so theta is a
  learned weighted L1 distance plus a bias: with all weights 1 and bias 0 it is exactly the L1
  norm, and theta can only grow as two embeddings move apart in any coordinate, which is what
  makes Eq. 12's "pull paired together, push unpaired apart" hold for any F (Sec. 3.1's
  "customized distance metric").
- tau multiplies the absolute difference before F (a fixed scalar, fit.py `--tau`, 5 by default);
  F starts with weights 1/D and bias -tau, so theta starts as tau * (mean_d |d| - 1): tau is the
  sync logit's scale at the start (theta's sharpness), which F's weights would take many steps
  to grow (on the tiny test store, tau 5 reaches half tau 1's L_av in 150 steps), not an extra
  degree of freedom of the trained model.
- L_av (Eq. 5 "= F(...)") minimised on paired frames alone has a trivial solution (every
  embedding equal, or F's bias to -inf). We train it as the sync classifier it is used as: the
  window's theta is the mean of theta over its frames, p_sync = sigmoid(-theta), and L_av is the
  binary cross-entropy of p_sync against the pair's label from the trainer's sampler (in sync:
  softplus(theta), which is Eq. 5's F(...) made bounded below; shifted or foreign audio:
  softplus(-theta)). On positives only (`label=None`) it is softplus of Eq. 5 exactly.
- L_lip is the token cross-entropy of a teacher-forced decoder; the paper sums over the S target
  tokens; `reduction="mean"` (the default) divides by the number of target tokens in the batch so
  the loss scale does not grow with the transcript's length (`"sum"`: the paper's sum per
  sequence, averaged over the batch).
- L_cav: the sign as printed (minimised: theta of paired frames down, the mean theta of a frame's
  unpaired frames up). The paper sums over i in Y; `reduction="mean"` (default) divides by |Y|
  (a constant factor for a fixed Y), `"sum"` keeps the paper's sum; batches average over
  sequences. Y is the set of generated (masked) frames of a sequence (`mask`; all frames when
  None), and needs |Y| >= 2. L_cav is unbounded below (unpaired frames can always move further
  apart): use it with the other terms of Eq. 13, as the paper does.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class AlignmentHead(nn.Module):
    """F of Eq. 5 / 11: theta = b + sum_d w_d * tau * |f^x_d - f^x'_d|, w = softplus(raw) >= 0.

    Broadcasts over leading dimensions, so theta of every (audio frame i, video frame j) pair is
    one call on f^a[..., :, None, :] and f^v[..., None, :, :] (`theta_matrix`)."""

    def __init__(self, dim: int, tau: float = 1.0, init_weight: float | None = None, bias: float | None = None):
        super().__init__()
        # at init theta = tau * (mean_d |d| - 1): about 0 (p_sync 0.5) for two independent
        # embeddings of unit-variance coordinates (E|x - y| = 2 / sqrt(pi) = 1.13), -tau where
        # they meet: tau sets the logit's scale, which F's weights would take long to grow
        w = init_weight if init_weight is not None else 1.0 / dim
        self.raw = nn.Parameter(torch.full((dim,), math.log(math.expm1(w))))
        self.bias = nn.Parameter(torch.tensor(float(-tau if bias is None else bias)))
        self.tau = float(tau)

    @property
    def weight(self) -> torch.Tensor:
        return F.softplus(self.raw)

    def forward(self, fx: torch.Tensor, fy: torch.Tensor) -> torch.Tensor:
        """theta over the last dimension: (..., D), (..., D) -> (...)."""
        return theta(fx, fy, self.weight, self.bias, self.tau)


def theta(fx: torch.Tensor, fy: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | float,
          tau: float = 1.0) -> torch.Tensor:
    """Eq. 11: F(tau * |f^x - f^y|) with F(z) = z . weight + bias, over the last dimension."""
    return (tau * (fx - fy).abs()) @ weight + bias


def theta_matrix(head: AlignmentHead, fa: torch.Tensor, fv: torch.Tensor) -> torch.Tensor:
    """theta(a_i, v_j) for every pair of frames: (B, T, D) x (B, T', D) -> (B, T, T')."""
    return head(fa[..., :, None, :], fv[..., None, :, :])


def window_theta(head: AlignmentHead, fa: torch.Tensor, fv: torch.Tensor) -> torch.Tensor:
    """A window pair's theta: the mean over its T frames of theta(a_t, v_t); (B, T, D) -> (B,)."""
    return head(fa, fv).mean(dim=-1)


def p_sync(theta_window: torch.Tensor) -> torch.Tensor:
    """The expert's probability of sync: sigmoid(-theta) (a small distance is in sync)."""
    return torch.sigmoid(-theta_window)


def l_av(theta_window: torch.Tensor, label: torch.Tensor | None = None) -> torch.Tensor:
    """Eq. 5 as a sync classifier: BCE of sigmoid(-theta) against `label` (1 in sync), mean over
    the batch; without labels every pair is paired: mean softplus(theta)."""
    target = torch.ones_like(theta_window) if label is None else label.to(theta_window.dtype)
    return F.binary_cross_entropy_with_logits(-theta_window, target)


def l_lip(logits: torch.Tensor, targets: torch.Tensor, pad_id: int = 0,
          reduction: str = "mean") -> torch.Tensor:
    """Eq. 4: -sum_t log p(w_t | w_<t, f^v) of teacher-forced decoder logits (B, S, V) against
    target ids (B, S); positions holding `pad_id` are not targets. "mean": per target token;
    "sum": the paper's sum over t per sequence, averaged over the batch."""
    nll = F.cross_entropy(logits.transpose(1, 2).float(), targets, ignore_index=pad_id, reduction="none")
    mask = targets != pad_id
    if reduction == "mean":
        return nll.sum() / mask.sum().clamp(min=1)
    if reduction == "sum":
        return nll.sum() / max(1, targets.shape[0])
    raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def l_ctc(frame_logits: torch.Tensor, lengths: torch.Tensor, targets: torch.Tensor, pad_id: int = 0) -> torch.Tensor:
    """An auxiliary CTC loss on the lip reader's frame logits (B, T, V) (not the paper's: hybrid
    CTC / attention training, as visual speech recognisers commonly use, teaches the monotonic
    alignment Eq. 4's decoder otherwise finds slowly). `targets` (B, S) are the transcript ids
    padded with `pad_id`, which is also CTC's blank; mean over the batch of the loss per target
    token."""
    log_probs = F.log_softmax(frame_logits.float(), dim=-1).transpose(0, 1)  # (T, B, V)
    target_lengths = (targets != pad_id).sum(dim=1)
    flat = targets[targets != pad_id]
    return F.ctc_loss(log_probs, flat, lengths, target_lengths, blank=pad_id, reduction="mean",
                      zero_infinity=True)


def l_cav(theta_ij: torch.Tensor, mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Eq. 12 from theta of every (audio frame i, video frame j) pair, (B, T, T) (`theta_matrix`).

    For each i in Y (mask (B, T), True on generated frames; all frames when None):
    theta(a_i, v_i) - mean_{j in Y, j != i} theta(a_i, v_j); summed over i ("sum", the paper's)
    or averaged over i ("mean"), then averaged over the batch."""
    if theta_ij.dim() == 2:
        theta_ij = theta_ij[None]
    b, t, t2 = theta_ij.shape
    if t != t2:
        raise ValueError(f"L_cav pairs frame i of the audio with frame i of the video: got {t} x {t2}")
    y = torch.ones(b, t, dtype=torch.bool, device=theta_ij.device) if mask is None else mask.bool()
    if y.dim() == 1:
        y = y[None].expand(b, t)
    n = y.sum(dim=1)
    if bool((n < 2).any()):
        raise ValueError("L_cav needs at least two frames in Y (|Y| - 1 divides the unpaired sum)")
    eye = torch.eye(t, dtype=torch.bool, device=theta_ij.device)
    paired = theta_ij.diagonal(dim1=1, dim2=2)  # (B, T)
    unpaired_mask = (y[:, None, :] & ~eye[None]).to(theta_ij.dtype)  # j in Y, j != i
    unpaired = (theta_ij * unpaired_mask).sum(dim=2) / (n[:, None] - 1).to(theta_ij.dtype)
    per_frame = (paired - unpaired) * y.to(theta_ij.dtype)
    total = per_frame.sum(dim=1)
    if reduction == "mean":
        total = total / n.to(theta_ij.dtype)
    elif reduction != "sum":
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
    return total.mean()


def l_infonce(fa: torch.Tensor, fv: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """The conventional contrastive loss (the paper's ablation "w/o novel-contrastive"): cosine
    similarities of N paired embeddings (N, D) over `temperature`, cross-entropy towards the
    diagonal in both directions (audio -> video, video -> audio), averaged."""
    a = F.normalize(fa.float(), dim=-1)
    v = F.normalize(fv.float(), dim=-1)
    logits = a @ v.T / temperature
    target = torch.arange(len(a), device=a.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def cosine_p_sync(fa: torch.Tensor, fv: torch.Tensor) -> torch.Tensor:
    """An InfoNCE-trained expert's p_sync of window pairs (B, T, D): (1 + mean_t cos) / 2."""
    return (1 + F.cosine_similarity(fa, fv, dim=-1).mean(dim=-1)) / 2


def eq6(loss_av: torch.Tensor | float, loss_lip: torch.Tensor | float, lambda_av: float = 1.0,
        lambda_lip: float = 1.0) -> torch.Tensor | float:
    """Eq. 6, AV-SyncNet's loss: lambda_av * L_av + lambda_lip * L_lip."""
    return lambda_av * loss_av + lambda_lip * loss_lip


def eq13(loss_cav, loss_gan=0.0, loss_rec=0.0, loss_lip=0.0, lambda_cav: float = 1.0,
         lambda_gan: float = 1.0, lambda_rec: float = 1.0, lambda_lip: float = 1.0):
    """Eq. 13, SyncTalklip's generator loss from its four terms (pass 0 for a term not used)."""
    return lambda_cav * loss_cav + lambda_gan * loss_gan + lambda_rec * loss_rec + lambda_lip * loss_lip


def l_rec(frames: torch.Tensor, generated: torch.Tensor) -> torch.Tensor:
    """Eq. 7: (1/T) sum_i ||v_i - v^_i||_1 over frames (B, T, ...): the L1 norm of each frame's
    difference, averaged over frames and the batch."""
    return (frames - generated).abs().flatten(2).sum(dim=2).mean()
