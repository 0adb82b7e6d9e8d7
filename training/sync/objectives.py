"""SyncTalklip's stream-level losses for a generator: a frozen AV-SyncNet gives L_cav and L_lip.

    loss_fn = AVSyncLoss.from_checkpoint("runs/avsync/best.pt")   # fit.py --model avsync
    cav = loss_fn.cav(generated_windows, audio_windows)           # Eq. 11-12 over each window's frames
    lip = loss_fn.lip(generated_frames, lengths, transcripts)     # Eq. 4 on whole generated utterances
    total = eq13(cav, l_gan, l_rec, lip, lambda_cav, lambda_gan, lambda_rec, lambda_lip)   # Eq. 13
    total.backward()                                              # gradients reach the frames only

The expert's parameters are frozen and it stays in eval mode (dropout off) whatever the
generator's mode, so gradients flow only into what the generator made. Generated mouth frames go
in as the lip field's layout in [0, 1]: windows (B, 5, 96, 96), utterances (B, T, 96, 96) with
their lengths. f^a comes from the expert's own (frozen) audio encoder by default, the paper's
"frozen audio encoder" variant; a generator with a tunable audio encoder initialised from the
expert passes its embeddings (`audio_embeddings=`). L_cav's Y is every frame of a window unless a
`mask` names the generated ones. The equations and the readings of what the paper leaves open
are in training/objectives.py (re-exported here, so a user's generator loop needs only this
module); p_sync (`AVSyncLoss.p_sync`) is the expert's score, as the sync scorer's.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from training.lipread import BOS, EOS, PAD, CharTokenizer
from training.objectives import (AlignmentHead, eq6, eq13, l_av, l_cav, l_infonce, l_lip,  # noqa: F401
                                 l_rec, theta, theta_matrix, window_theta)


class AVSyncLoss(nn.Module):
    """L_cav (Eq. 12) and L_lip (Eq. 4) of generated mouth frames against a frozen AV-SyncNet."""

    def __init__(self, expert: nn.Module, tokenizer: CharTokenizer | None = None):
        super().__init__()
        self.expert, self.tokenizer = expert.eval(), tokenizer
        for p in self.expert.parameters():
            p.requires_grad_(False)

    @classmethod
    def from_checkpoint(cls, path: Path | str, device: str = "cpu") -> "AVSyncLoss":
        """The expert and tokenizer of a fit.py --model avsync checkpoint (weights_only load)."""
        from training.avsync import AVSyncNet
        from training.avsync_train import tokenizer_of
        from training.runtime import CheckpointError, load_checkpoint

        model, ckpt = load_checkpoint(path, map_location=device)
        if not isinstance(model, AVSyncNet):
            raise CheckpointError(f"{path}: a UniSync checkpoint, not AV-SyncNet (training/fit.py "
                                  "--model avsync); its expert loss is training/sync/loss.py's SyncLoss")
        return cls(model.to(device), tokenizer_of(ckpt))

    def train(self, mode: bool = True) -> "AVSyncLoss":
        """The expert stays in eval mode whatever the generator's mode."""
        super().train(mode)
        self.expert.eval()
        return self

    def p_sync(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The expert's p_sync of (generated visual, audio) windows; differentiable in both."""
        return self.expert(visual, audio)

    def cav(self, visual: torch.Tensor, audio: torch.Tensor | None = None, mask: torch.Tensor | None = None,
            audio_embeddings: torch.Tensor | None = None) -> torch.Tensor:
        """Eq. 12 over the frames of each window: theta(a_i, v_i) down, the mean theta of frame
        i's audio to the window's other generated frames up (training.objectives.l_cav)."""
        fv = self.expert.embed_visual(visual)
        fa = audio_embeddings if audio_embeddings is not None else self.expert.embed_audio(audio)
        return l_cav(theta_matrix(self.expert.head, fa, fv), mask)

    def tokens(self, transcripts: Sequence[str], device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """Decoder input (bos + text) and target (text + eos) ids, PAD-padded."""
        if self.tokenizer is None:
            raise ValueError("this expert has no tokenizer (trained without transcripts): no L_lip")
        ids = [self.tokenizer.encode(t) for t in transcripts]
        s = max(len(i) for i in ids) + 1
        tin = torch.full((len(ids), s), PAD, dtype=torch.long)
        tout = torch.full((len(ids), s), PAD, dtype=torch.long)
        for k, seq in enumerate(ids):
            tin[k, :len(seq) + 1] = torch.tensor([BOS, *seq])
            tout[k, :len(seq) + 1] = torch.tensor([*seq, EOS])
        return tin.to(device), tout.to(device)

    def lip(self, frames: torch.Tensor, lengths: torch.Tensor | None, transcripts: Sequence[str]) -> torch.Tensor:
        """Eq. 4: the frozen lip reader's cross-entropy of the transcripts given generated
        utterances' mouth frames (B, T, H, W) in [0, 1]."""
        tin, tout = self.tokens(transcripts, frames.device)
        return l_lip(self.expert.read_lips(frames, lengths, tin), tout)

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, frames: torch.Tensor | None = None,
                lengths: torch.Tensor | None = None, transcripts: Sequence[str] | None = None,
                lambda_cav: float = 1.0, lambda_lip: float = 1.0) -> torch.Tensor:
        """Eq. 13's stream-level part, lambda_cav L_cav + lambda_lip L_lip (L_lip when `frames`)."""
        loss = lambda_cav * self.cav(visual, audio)
        if frames is not None and lambda_lip:
            loss = loss + lambda_lip * self.lip(frames, lengths, transcripts or [])
        return loss
