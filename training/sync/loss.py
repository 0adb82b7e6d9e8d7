"""A frozen sync expert as a differentiable loss for generator training (Wav2Lip's expert loss).

    expert = SyncLoss.from_checkpoint("runs/mel_rgb/best.pt")          # or SyncLoss.from_syncnet(W)
    visual = expert.rgb_window(generated)      # (B, 5, 3, 96, 96) in [0, 1] -> the expert's input
    loss = expert(visual, mel_windows)         # BCE(p_sync, 1): low when the mouth follows the audio
    (recon_loss + 0.03 * loss).backward()      # Wav2Lip weights it 0.03 after warm-up

The expert's parameters are frozen (requires_grad False) and it runs in eval mode (BatchNorm uses
its running statistics), so gradients flow only into the generator's output. p_sync is the
expert's own probability: for a UniSync checkpoint the cosine of its ReLU embeddings (in [0, 1],
exactly what it was trained on), for syncnet_python's SyncNet (trained on L2 distances, linear
last layer) (1 + cos) / 2 of its embeddings, so that the BCE has a probability with gradient
everywhere (each scorer's `p_sync` in training/sync/scorers.py; any registered scorer is an expert).
The rgb expert sees the lower half of the face, as Wav2Lip's.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

EPS = 1e-6


class SyncLoss(nn.Module):
    """BCE of a frozen expert's p_sync of (visual, audio) windows against label 1 (in sync)."""

    def __init__(self, expert: nn.Module, kind: str):
        from training.sync.scorers import SCORERS

        super().__init__()
        if kind not in SCORERS:
            raise ValueError(f"kind must be one of {', '.join(SCORERS)}, got {kind!r}")
        self.expert, self.kind = expert.eval(), kind
        self._p_sync = SCORERS[kind].p_sync
        for p in self.expert.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_scorer(cls, kind: str, path: Path | str, device: str = "cpu") -> "SyncLoss":
        """The expert of registered scorer `kind` (training/sync/scorers.py), loaded from `path`."""
        from training.sync.scorers import scorer_class

        return cls(scorer_class(kind).load_model(path, device), kind)

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str = "cpu") -> "SyncLoss":
        return cls.from_scorer("unisync", path, device)

    @classmethod
    def from_syncnet(cls, weights: Path | str, device: str = "cpu") -> "SyncLoss":
        return cls.from_scorer("syncnet", weights, device)

    def train(self, mode: bool = True) -> "SyncLoss":
        """The expert stays in eval mode whatever the generator's mode."""
        super().train(mode)
        self.expert.eval()
        return self

    def p_sync(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) in (0, 1); differentiable in both inputs."""
        return self._p_sync(self.expert, visual, audio)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        p = self.p_sync(visual, audio).clamp(EPS, 1 - EPS)
        return F.binary_cross_entropy(p, torch.ones_like(p))

    @staticmethod
    def rgb_window(frames: torch.Tensor) -> torch.Tensor:
        """UniSync rgb input from generated frames (B, 5, 3, 96, 96) in [0, 1]: the lower halves,
        frames stacked on channels in time order -> (B, 15, 48, 96) (training.windows' layout)."""
        b, t, c, h, w = frames.shape
        return frames[:, :, :, h // 2:, :].reshape(b, t * c, h - h // 2, w)

    @staticmethod
    def syncnet_window(frames: torch.Tensor) -> torch.Tensor:
        """SyncNet input from generated 224 x 224 RGB frames (B, 5, 3, 224, 224) in [0, 1]:
        BGR, 0-255, (B, 3, 5, 224, 224)."""
        return (frames.flip(2) * 255.0).transpose(1, 2)
