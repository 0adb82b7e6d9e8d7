"""Cut the 5-frame sync windows of a batch of pairs out of in-memory utterances, as model inputs.

Every field is sliced on the shared timebase (`features.timebase.window_slice`), so the audio and
visual windows of a positive pair cover exactly the same 0.2 s. Only the window's rows are
converted (and, for rgb, decoded). Input shapes per representation:

| field | window | model input |
|---|---|---|
| mel | (80, 16) | (1, 80, 16) float32 |
| hubert | (10, 1024) | (10, 1024) float32 |
| rgb | 5 x 96x96x3 JPEG frames | (15, 48, 96) lower half, frames stacked on channels, in [0, 1] |
| parsing | (5, 96, 96) class ids | (5, 48, 96) uint8 lower half (the model embeds the ids) |

rgb and parsing windows can be cut at a lower resolution (`Utterance.image_scale`, fit.py
--image-scale 0.5: 24 x 48, area-averaged pixels / subsampled class ids): the adapters are
convolutional and the pool that follows them is adaptive, so the same model takes them, about four
times cheaper in its image adapter (a CPU setting; paper size is scale 1).
| landmarks | (5, 478, 3) crop pixels | (5, 1434) float32, normalised (data.norm_of) |
| tdmm | (5, 71) | (5, 71) float32, normalised (data.norm_of) |
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


def window(utt: Utterance, name: str, t: int) -> np.ndarray:
    """One field's window starting at video frame t, in the model's layout (see the table)."""
    value = utt.data[name]
    if name == "rgb":
        lower = _lower_frames(utt, value, t)  # (5, 48, 96, 3) uint8
        x = lower.transpose(0, 3, 1, 2).reshape(-1, *lower.shape[1:3]).astype(np.float32)
        return x * np.float32(1 / 255.0)
    rows = window_slice(rate_of(name), t)
    if name == "mel":
        return value[None, :, rows].astype(np.float32)  # (1, 80, 16)
    if name == "parsing":
        step = _step(utt.image_scale)  # class ids are subsampled (nearest), never averaged
        return np.ascontiguousarray(value[rows, value.shape[1] // 2::step, ::step])  # (5, 48, 96) ids
    x = value[rows].astype(np.float32)
    norm = utt.norm.get(name)
    if norm is not None:
        offset, scale = norm
        x = (x - offset) * scale
    if name == "landmarks":
        return x.reshape(WINDOW, -1)  # (5, 1434)
    return x  # hubert (10, 1024), tdmm (5, 71)


def _lower_frames(utt: Utterance, data: bytes, t: int) -> np.ndarray:
    """Lower halves of frames [t, t+5): only these JPEGs are decoded; with the utterance's frame
    cache on (fit.py --cache-frames), each frame is decoded once and kept."""
    cache = utt.frame_cache
    if cache is None:
        return _lower(rgb_codec.decode(data, t, t + WINDOW), utt.image_scale)
    missing = [i for i in range(t, t + WINDOW) if i not in cache]
    if missing:
        lo, hi = missing[0], missing[-1] + 1
        for i, frame in zip(range(lo, hi), _lower(rgb_codec.decode(data, lo, hi), utt.image_scale)):
            cache.setdefault(i, frame)
    return np.stack([cache[i] for i in range(t, t + WINDOW)])


def _step(scale: float) -> int:
    step = int(round(1 / scale))
    if scale <= 0 or abs(step * scale - 1) > 1e-6:
        raise ValueError(f"image scale {scale} is not 1/k for an integer k")
    return step


def _lower(frames: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """(k, 96, 96, 3) frames -> their lower halves (k, 48, 96, 3) (Wav2Lip: the sync expert
    sees the lower half), area-averaged down by 1/scale."""
    lower = frames[:, frames.shape[1] // 2:]
    step = _step(scale)
    if step > 1:
        k, h, w, c = lower.shape
        lower = lower[:, :h - h % step, :w - w % step].reshape(k, h // step, step, w // step, step, c)
        lower = lower.mean(axis=(2, 4)).round().astype(np.uint8)
    return np.ascontiguousarray(lower)


@dataclass
class Batch:
    visual: torch.Tensor
    audio: torch.Tensor
    label: torch.Tensor  # float 0/1
    kind: torch.Tensor  # index into sampler.KINDS

    def to(self, device: torch.device | str) -> "Batch":
        """On `device`; float image-like inputs go channels-last on a CPU, where oneDNN
        convolutions run about twice as fast in that layout (values are unchanged)."""
        device = torch.device(device)
        nb = device.type == "cuda"
        return Batch(_layout(self.visual.to(device, non_blocking=nb)),
                     _layout(self.audio.to(device, non_blocking=nb)),
                     self.label.to(device, non_blocking=nb), self.kind.to(device, non_blocking=nb))

    def __len__(self) -> int:
        return len(self.label)


def _layout(x: torch.Tensor) -> torch.Tensor:
    if x.device.type == "cpu" and x.dim() == 4 and x.is_floating_point():
        return x.contiguous(memory_format=torch.channels_last)
    return x


def stack_windows(utts: Sequence[Utterance], name: str, starts: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Windows of field `name` at (utterance index, start frame) pairs, stacked."""
    return torch.from_numpy(np.stack([window(utts[i], name, t) for i, t in starts]))


def make_batch(pairs: Sequence[Pair], utts: Sequence[Utterance], pool: Sequence[Utterance],
               audio: str, visual: str) -> Batch:
    """Stack the windows of `pairs` (visual from `utts`, audio from the sampler's `pool`)."""
    v = stack_windows(utts, visual, [(p.v_utt, p.v_t) for p in pairs])
    a = stack_windows(pool, audio, [(p.a_utt, p.a_t) for p in pairs])
    return Batch(v, a, torch.tensor([p.label for p in pairs], dtype=torch.float32),
                 torch.tensor([KINDS.index(p.kind) for p in pairs], dtype=torch.long))
