"""Cut the 5-frame sync windows of a batch of pairs out of in-memory utterances, as model inputs.

Every field is sliced on the shared timebase (`features.timebase.window_slice`), so the audio and
visual windows of a positive pair cover exactly the same 0.2 s. Input shapes per representation:

| field | window | model input |
|---|---|---|
| mel | (80, 16) | (1, 80, 16) |
| hubert | (10, 1024) | (10, 1024) |
| rgb | 5 x 96x96x3 JPEG frames | (15, 48, 96) lower half, frames stacked on channels, in [0, 1] |
| parsing | (5, 96, 96) class ids | (5 * len(PARSING_CLASSES), 48, 96) lower half, one-hot |
| landmarks | (5, 478, 3) (normalised by the loader) | (5, 1434) |
| tdmm | (5, 71) | (5, 71) |
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from features import rgb as rgb_codec
from features.timebase import WINDOW, window_slice
from training.data import Utterance, rate_of
from training.sampler import KINDS, Pair

# Parsing classes the lower face shows (CelebAMask-HQ ids): skin, nose, inner mouth, upper lip, lower lip.
PARSING_CLASSES = (1, 10, 11, 12, 13)


def window(utt: Utterance, name: str, t: int) -> np.ndarray:
    """One field's window starting at video frame t, as float32 in the model's layout."""
    value = utt.data[name]
    if name == "rgb":
        frames = rgb_codec.decode(value, t, t + WINDOW)  # (5, 96, 96, 3): only these JPEGs
        lower = frames[:, frames.shape[1] // 2:]  # Wav2Lip: the sync expert sees the lower half
        return (lower.transpose(0, 3, 1, 2).reshape(-1, *lower.shape[1:3]) / 255.0).astype(np.float32)
    rows = window_slice(rate_of(name), t)
    if name == "mel":
        return value[None, :, rows].astype(np.float32)  # (1, 80, 16)
    if name == "parsing":
        labels = value[rows, value.shape[1] // 2:]
        onehot = labels[:, None] == np.array(PARSING_CLASSES, dtype=labels.dtype)[None, :, None, None]
        return onehot.reshape(-1, *labels.shape[1:]).astype(np.float32)
    if name == "landmarks":
        return value[rows].reshape(WINDOW, -1).astype(np.float32)  # (5, 1434)
    return value[rows].astype(np.float32)  # hubert (10, 1024), tdmm (5, 71)


@dataclass
class Batch:
    visual: torch.Tensor
    audio: torch.Tensor
    label: torch.Tensor  # float 0/1
    kind: torch.Tensor  # index into sampler.KINDS

    def to(self, device: torch.device | str) -> "Batch":
        """On `device`; image-like inputs go channels-last on a CPU, where oneDNN convolutions
        run about twice as fast in that layout (values are unchanged)."""
        device = torch.device(device)
        return Batch(_layout(self.visual.to(device)), _layout(self.audio.to(device)),
                     self.label.to(device), self.kind.to(device))


def _layout(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.dim() == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def make_batch(pairs: Sequence[Pair], utts: Sequence[Utterance], pool: Sequence[Utterance],
               audio: str, visual: str) -> Batch:
    """Stack the windows of `pairs` (visual from `utts`, audio from the sampler's `pool`)."""
    v = np.stack([window(utts[p.v_utt], visual, p.v_t) for p in pairs])
    a = np.stack([window(pool[p.a_utt], audio, p.a_t) for p in pairs])
    return Batch(torch.from_numpy(v), torch.from_numpy(a),
                 torch.tensor([p.label for p in pairs], dtype=torch.float32),
                 torch.tensor([KINDS.index(p.kind) for p in pairs], dtype=torch.long))
