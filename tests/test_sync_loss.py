"""The expert as a loss: a frozen, trained UniSync expert teaches a mouth generator sync.

A small mel_landmarks expert is trained on the trainer's fake store (one loudness envelope drives
mel energy and mouth opening). A generator then makes the mouth of every window from its mel
window alone (the rest of the face stays the utterance's real, mouth-still landmarks); it is trained
only through the expert's BCE loss on training-split windows, and its windows on held-out speakers
must gain p_sync.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from training.sync.loss import SyncLoss
from training.sync.syncnet import save_random_weights


@pytest.fixture(scope="module")
def trained_expert(tmp_path_factory):
    from tests.test_training import make_store
    from training.fit import parse_args, train

    root = tmp_path_factory.mktemp("sync_loss")
    store = make_store(root / "store", utts_per_speaker=4, n_frames=60, broken=False)
    out = root / "run"
    torch.manual_seed(0)
    train(parse_args(["--combo", "mel_landmarks", "--store", str(store), "--out", str(out),
                      "--width", "0.25", "--steps", "80", "--batch-size", "32", "--lr", "1e-3", "--workers", "0",
                      "--eval-every", "0", "--eval-pairs", "100",
                      "--offset-windows", "0", "--log-every", "100", "--threads", "1", "--no-progress"]))
    return store, out / "checkpoint.pt"


def windows(store, split: str, center: bool = True):
    """Every (mel window, landmark window with the mouth held still, mouth direction) of a split."""
    from tests.test_training import LOWER_MOUTH
    from training.data import load_utterances
    from training.windows import window

    mels, still, direction = [], [], np.zeros((478, 3), np.float32)
    direction[LOWER_MOUTH, 1] = 1.0
    for utt in load_utterances(store, ["mel", "landmarks"], [split], center):
        for t in range(utt.n_windows):
            lm = window(utt, "landmarks", t).reshape(5, 478, 3).copy()
            lm[:, LOWER_MOUTH, 1] = lm[:, LOWER_MOUTH, 1].mean()  # the mouth does not move
            mels.append(window(utt, "mel", t))
            still.append(lm.reshape(5, -1))
    return (torch.from_numpy(np.stack(mels)), torch.from_numpy(np.stack(still)),
            torch.from_numpy(direction.reshape(-1)))


class MouthGenerator(nn.Module):
    """mel window -> mouth opening of each of the 5 frames, added along the lower-mouth direction."""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(80 * 16, 32), nn.ReLU(), nn.Linear(32, 5))
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)  # starts with a still mouth

    def forward(self, mel, still, direction):
        return still + self.net(mel)[:, :, None] * direction[None, None, :]


def test_expert_loss_raises_held_out_p_sync(trained_expert):
    store, checkpoint = trained_expert
    loss_fn = SyncLoss.from_checkpoint(checkpoint)
    assert not any(p.requires_grad for p in loss_fn.expert.parameters())
    train_mel, train_still, direction = windows(store, "train")
    held_mel, held_still, _ = windows(store, "val")
    gen = MouthGenerator()
    torch.manual_seed(0)
    opt = torch.optim.Adam(gen.parameters(), lr=3e-3)
    with torch.no_grad():
        before = loss_fn.p_sync(gen(held_mel, held_still, direction), held_mel).mean().item()
    frozen = [p.clone() for p in loss_fn.expert.parameters()]
    for step in range(60):  # held-out p_sync levels off at ~0.81 from about step 15 (0.49 before)
        idx = torch.randint(0, len(train_mel), (64,))
        loss = loss_fn(gen(train_mel[idx], train_still[idx], direction), train_mel[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    loss_fn.train()  # the generator's train mode leaves the expert in eval mode
    assert not loss_fn.expert.training
    with torch.no_grad():
        after = loss_fn.p_sync(gen(held_mel, held_still, direction), held_mel).mean().item()
    assert all(torch.equal(a, b) for a, b in zip(frozen, loss_fn.expert.parameters()))
    print(f"held-out mean p_sync: {before:.3f} -> {after:.3f}")
    assert after > before + 0.15 and after > 0.5


def test_syncnet_expert_loss_has_gradients_for_the_frames(tmp_path):
    loss_fn = SyncLoss.from_syncnet(save_random_weights(tmp_path / "w.model"))
    frames = torch.rand(2, 5, 3, 224, 224, requires_grad=True)
    visual = SyncLoss.syncnet_window(frames)
    assert visual.shape == (2, 3, 5, 224, 224)
    assert torch.allclose(visual[0, 0, 1], frames[0, 1, 2] * 255)  # BGR, 0-255
    loss = loss_fn(visual, torch.randn(2, 1, 13, 20))
    loss.backward()
    assert frames.grad is not None and frames.grad.abs().sum() > 0
    assert all(p.grad is None for p in loss_fn.expert.parameters())
