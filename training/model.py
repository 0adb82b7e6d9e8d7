"""The UniSync dual-stream sync expert (paper Fig. 2).

    visual window -> eps1 adapter -> adaptive avg pool to (128w, 12, 12) -> eps2 trunk -> v' (512w)
    audio window  -> eps3 adapter -> adaptive avg pool to (128w, 9, 6)   -> eps4 trunk -> a' (512w)
    p_sync = cos(ReLU(v'), ReLU(a'))  in [0, 1]  (both embeddings are non-negative)

Only the adapters know a representation; the pooled shapes are fixed, so the trunks are the same
for every combo. Layers follow Wav2Lip's SyncNet_color (conv + BN + ReLU blocks, residual blocks
inside each stage): the rgb adapter is its face encoder up to the 128-channel stage, the mel
adapter its audio encoder up to the 128-channel stage, and the trunks are the rest, with the visual
trunk's first downsampling done by the pool. At width 1.0, mel_rgb has about 16.3M parameters
(the paper's Table III; Wav2Lip's expert has 16.4M). `width` scales every channel count and
`depth` the residual blocks per stage (by default all of them at width >= 0.5, none below), so
width=0.25 gives a ~0.5M-parameter mel_landmarks model whose batch-64 step takes ~50 ms on 2 CPU
cores.

Small inputs (landmarks, 3DMM coefficients, HuBERT rows) are lifted to a 2D map by a per-row MLP
whose output is reshaped to `k` maps of the pooled size, then stacked over rows on channels, so the
same convolutional trunk sees them.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from training.combos import parse_combo
from training.windows import PARSING_CLASSES

VISUAL_SHAPE = (128, 12, 12)  # (channels at width 1, H, W) after the visual pool
AUDIO_SHAPE = (128, 9, 6)  # after the audio pool (mel's 80 x 16 window comes out at 9 x 6)
LANDMARK_DIM = 478 * 3  # MediaPipe face mesh, flattened per frame
TDMM_DIM = 7 + 64  # pose (rotation 3, translation 3, scale 1) + expression coefficients
HUBERT_DIM = 1024


def channels(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def default_depth(width: float) -> float:
    """Residual blocks kept per stage: all at paper size, none for narrow CPU models.

    The residual blocks are most of the compute; a narrow model keeps the downsampling
    convolutions (same receptive field, same shapes) and drops them, which makes a width-0.25
    mel_landmarks step several times faster with little loss on this task.
    """
    return 1.0 if width >= 0.5 else 0.0


class ConvBlock(nn.Module):
    """Conv2d + BatchNorm + ReLU; with `residual`, the input is added before the ReLU (Wav2Lip)."""

    def __init__(self, cin: int, cout: int, kernel: int | tuple = 3, stride: int | tuple = 1,
                 padding: int | tuple = 1, residual: bool = False):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout))
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return F.relu(out + x if self.residual else out)


class FixedPool(nn.Module):
    """Adaptive average pooling to a fixed (H, W); identity or a plain average pool when it can.

    Same result as nn.AdaptiveAvgPool2d, but the generic adaptive kernel is slow on CPU even when
    the input already has the target size (8 ms a batch for a 12 x 12 identity).
    """

    def __init__(self, size: tuple[int, int]):
        super().__init__()
        self.size = tuple(size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == self.size:
            return x
        if h % self.size[0] == 0 and w % self.size[1] == 0:
            return F.avg_pool2d(x, (h // self.size[0], w // self.size[1]))
        return F.adaptive_avg_pool2d(x, self.size)


def res(c: int, n: int, depth: float = 1.0) -> list[nn.Module]:
    """`n` residual blocks at width-1 depth; `depth` < 1 drops some (narrow CPU models)."""
    return [ConvBlock(c, c, residual=True) for _ in range(int(round(n * depth)))]


# ---------------------------------------------------------------------------------------------
# eps1 / eps3: per-representation adapters
# ---------------------------------------------------------------------------------------------
class ImageAdapter(nn.Sequential):
    """(C, 48, 96) lower-face images (rgb frames, one-hot parsing maps) -> (128w, 24, 24)."""

    def __init__(self, cin: int, width: float, depth: float = 1.0):
        c32, c64, c128 = (channels(c, width) for c in (32, 64, 128))
        super().__init__(
            ConvBlock(cin, c32, 7, 1, 3),
            ConvBlock(c32, c64, 5, (1, 2), 2),  # 48 x 96 -> 48 x 48
            *res(c64, 2, depth),
            ConvBlock(c64, c128, 3, 2, 1),  # -> 24 x 24; the pool halves it again
            *res(c128, 3, depth))


class MelAdapter(nn.Sequential):
    """(1, 80, 16) mel window -> (128w, 9, 6)."""

    def __init__(self, width: float, depth: float = 1.0):
        c32, c64, c128 = (channels(c, width) for c in (32, 64, 128))
        super().__init__(
            ConvBlock(1, c32), *res(c32, 2, depth),
            ConvBlock(c32, c64, 3, (3, 1), 1), *res(c64, 2, depth),  # -> 27 x 16
            ConvBlock(c64, c128, 3, 3, 1), *res(c128, 2, depth))  # -> 9 x 6


class SequenceLift(nn.Module):
    """(T, D) rows (landmark frames, 3DMM frames, HuBERT steps) -> (C, H, W) feature map.

    Each row goes through the same MLP to k maps of H x W; the T*k maps are stacked on channels
    (the time order becomes the channel order, as Wav2Lip stacks frames) and convolved.
    """

    def __init__(self, rows: int, dim: int, shape: tuple[int, int, int], width: float,
                 depth: float = 1.0, k: int = 4):
        super().__init__()
        cout, h, w = shape
        hidden = channels(256, width)
        self.h, self.w, self.k = h, w, k
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, k * h * w))
        cmid = channels(64, width)
        self.convs = nn.Sequential(
            nn.BatchNorm2d(rows * k), nn.ReLU(),
            ConvBlock(rows * k, cmid), *res(cmid, 1, depth),
            ConvBlock(cmid, channels(cout, width)), *res(channels(cout, width), 1, depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        maps = self.mlp(x).reshape(b, t * self.k, self.h, self.w)
        return self.convs(maps)


def visual_adapter(name: str, width: float, depth: float = 1.0, dim: int | None = None) -> nn.Module:
    if name == "rgb":
        return ImageAdapter(15, width, depth)
    if name == "parsing":
        return ImageAdapter(5 * len(PARSING_CLASSES), width, depth)
    if name == "landmarks":
        return SequenceLift(5, dim or LANDMARK_DIM, VISUAL_SHAPE, width, depth)
    if name == "tdmm":
        return SequenceLift(5, dim or TDMM_DIM, VISUAL_SHAPE, width, depth)
    raise ValueError(f"unknown visual representation {name!r}")


def audio_adapter(name: str, width: float, depth: float = 1.0, dim: int | None = None) -> nn.Module:
    if name == "mel":
        return MelAdapter(width, depth)
    if name == "hubert":
        return SequenceLift(10, dim or HUBERT_DIM, AUDIO_SHAPE, width, depth)
    raise ValueError(f"unknown audio representation {name!r}")


# ---------------------------------------------------------------------------------------------
# eps2 / eps4: shared trunks
# ---------------------------------------------------------------------------------------------
class VisualTrunk(nn.Sequential):
    """(128w, 12, 12) -> (512w,) embedding; the last block's ReLU makes it non-negative."""

    def __init__(self, width: float, depth: float = 1.0):
        c128, c256, c512 = (channels(c, width) for c in (128, 256, 512))
        super().__init__(
            ConvBlock(c128, c256, 3, 2, 1), *res(c256, 2, depth),  # -> 6 x 6
            ConvBlock(c256, c512, 3, 2, 1), *res(c512, 3, depth),  # -> 3 x 3
            ConvBlock(c512, c512, 3, 1, 0),  # -> 1 x 1
            ConvBlock(c512, c512, 1, 1, 0), nn.Flatten())


class AudioTrunk(nn.Sequential):
    """(128w, 9, 6) -> (512w,) embedding."""

    def __init__(self, width: float, depth: float = 1.0):
        c128, c256, c512 = (channels(c, width) for c in (128, 256, 512))
        super().__init__(
            ConvBlock(c128, c256, 3, (3, 2), 1), *res(c256, 2, depth),  # -> 3 x 3
            ConvBlock(c256, c512, 3, 1, 0),  # -> 1 x 1
            ConvBlock(c512, c512, 1, 1, 0), nn.Flatten())


class UniSync(nn.Module):
    """p_sync(visual window, audio window) for one `<audio>_<visual>` combo."""

    def __init__(self, combo: str, width: float = 1.0, depth: float | None = None,
                 visual_dim: int | None = None, audio_dim: int | None = None):
        """`visual_dim` / `audio_dim`: row size of landmarks/tdmm/hubert inputs when not the
        defaults (478*3, 71, 1024); fit.py passes what the store holds."""
        super().__init__()
        depth = default_depth(width) if depth is None else depth
        self.combo, self.width, self.depth = combo, width, depth
        self.visual_dim, self.audio_dim = visual_dim, audio_dim
        audio, visual = parse_combo(combo)
        self.visual_adapter = visual_adapter(visual, width, depth, visual_dim)  # eps1
        self.audio_adapter = audio_adapter(audio, width, depth, audio_dim)  # eps3
        self.visual_pool = FixedPool(VISUAL_SHAPE[1:])
        self.audio_pool = FixedPool(AUDIO_SHAPE[1:])
        self.visual_trunk = VisualTrunk(width, depth)  # eps2
        self.audio_trunk = AudioTrunk(width, depth)  # eps4

    def embed_visual(self, visual: torch.Tensor) -> torch.Tensor:
        return F.relu(self.visual_trunk(self.visual_pool(self.visual_adapter(visual))))

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        return F.relu(self.audio_trunk(self.audio_pool(self.audio_adapter(audio))))

    def forward(self, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """p_sync per pair, shape (B,), in [0, 1]."""
        v, a = self.embed_visual(visual), self.embed_audio(audio)
        return F.cosine_similarity(v, a, dim=1, eps=1e-8).clamp(0.0, 1.0)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the paper's "Params" column)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
