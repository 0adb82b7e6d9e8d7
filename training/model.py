"""The UniSync dual-stream sync expert (paper Fig. 2), for all eight `<audio>_<visual>` combos.

    visual window -> eps1 adapter -> adaptive avg pool to (128w, 24, 24) -> eps2 trunk -> v' (512w)
    audio window  -> eps3 adapter -> adaptive avg pool to (128w, 9, 6)   -> eps4 trunk -> a' (512w)
    p_sync = cos(ReLU(v'), ReLU(a'))  in [0, 1]  (both embeddings are non-negative)

Only the adapters know a representation; the pooled shapes are fixed, so the two trunks are the
same modules for every combo (a checkpoint's trunks can be moved between combos). Layers follow
Wav2Lip's SyncNet_color: Conv2d + BatchNorm + ReLU blocks with residual blocks inside each stage.

Adapters (eps1 visual, eps3 audio), window inputs as windows.py cuts them:

| representation | window input | adapter |
|---|---|---|
| rgb | (15, 48, 96) lower half, 5 frames on channels | Wav2Lip face encoder up to its 128-channel stage (7x7, 5x5 stride (1, 2), 64-channel residual stage, stride 2) |
| parsing | (5, 48, 96) class ids 0..18 | a learned 3-d embedding per CelebAMask-HQ class (a 1x1 conv on the 19-way one-hot), then the rgb adapter's layers |
| landmarks | (5, 478*3) | per-frame MLP lifted to 4 maps of 12x12, frames on channels, conv, upsample x2, convs at 24x24 |
| tdmm | (5, 7 + 64) | as landmarks |
| mel | (1, 80, 16) | Wav2Lip audio encoder up to its 128-channel stage |
| hubert | (10, 1024) | per-step MLP lifted to 4 maps of 9x6, steps on channels, convs |

Size at width 1.0 (python training/fit.py --print-model --combo all prints it): 15.4M-16.8M
parameters and 1.61-1.70 G multiply-adds per pair for every combo (the paper's Table III: 16.3M,
1.73G). The paper's FLOPs follow the thop convention, one multiply-add = one FLOP: Wav2Lip's expert
(SyncNet_color) has 16.44M parameters and 1.21 G multiply-adds by the same counter, and the paper
lists 16.4M and 1.22G for it. The image adapters are costly at 48 x 96 and the geometry adapters
cheap, so the geometry adapters carry residual blocks at 24 x 24 that keep every combo near the
paper's budget; the visual trunk spends its compute at 24 x 24 (8 residual blocks at 128
channels) rather than on 512-channel blocks, which is how 1.7 G fits in ~16M parameters.

`width` scales every channel count and `depth` the residual blocks per stage (all at width >= 0.5,
none below by default), so width=0.25 gives a model of a few hundred thousand parameters whose
batch-64 step takes well under 0.1 s on a CPU core for the geometry combos.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from features.face import N_LANDMARKS
from features.fields import FIELDS
from features.timebase import CROP_SIZE, WINDOW, window_slice
from training.combos import AUDIO, VISUAL, parse_combo

VISUAL_SHAPE = (128, 24, 24)  # (channels at width 1, H, W) after the visual pool
AUDIO_SHAPE = (128, 9, 6)  # after the audio pool (mel's 80 x 16 window comes out at 9 x 6)
IMAGE_SIZE = (CROP_SIZE // 2, CROP_SIZE)  # the lower half of a face crop: 48 x 96
RGB_CHANNELS = 3
MEL_BINS = 80
LANDMARK_DIM = N_LANDMARKS * 3  # MediaPipe face mesh, flattened per frame
TDMM_DIM = 7 + 64  # pose (rotation 3, translation 3, scale 1) + expression coefficients
HUBERT_DIM = 1024
# Row size of the sequence representations, which a per-row MLP lifts (`SequenceLift`): the
# defaults; fit.py passes what the store holds (`UniSync(visual_dim=..., audio_dim=...)`).
SEQUENCE_DIMS = {"landmarks": LANDMARK_DIM, "tdmm": TDMM_DIM, "hubert": HUBERT_DIM}
PARSING_CLASSES = 19  # CelebAMask-HQ ids 0..18
PARSING_EMBED = 3  # channels per frame after the class embedding (as rgb's 3)

# Residual blocks per stage at depth 1 (tuned so every combo is near 16.3M params, 1.73 GMAC).
VISUAL_TRUNK_BLOCKS = (8, 3, 1)  # at 24x24 (128 ch), 12x12 (256 ch), 6x6 (512 ch)
GEOMETRY_BLOCKS = 5  # landmarks / tdmm adapter, at 24x24 (128 ch)


def window_rows(name: str) -> int:
    """Rows of field `name` in one sync window, from its rate in the field registry (mel 16,
    hubert 10, video-rate fields 5)."""
    rows = window_slice(FIELDS[name].rate, 0)
    return rows.stop - rows.start


def channels(c: int, width: float) -> int:
    return max(4, int(round(c * width)))


def default_depth(width: float) -> float:
    """Residual blocks kept per stage: all at paper size, none for narrow CPU models.

    The residual blocks are most of the compute; a narrow model keeps the downsampling
    convolutions (same receptive field, same shapes) and drops them, which makes a width-0.25
    step several times faster with little loss on the synthetic corpus.
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
    """`n` residual blocks at depth 1; `depth` < 1 keeps round(n * depth) of them."""
    return [ConvBlock(c, c, residual=True) for _ in range(int(round(n * depth)))]


# ---------------------------------------------------------------------------------------------
# eps1 / eps3: per-representation adapters
# ---------------------------------------------------------------------------------------------
class ImageAdapter(nn.Sequential):
    """(C, 48, 96) lower-face images -> (128w, 24, 24) (Wav2Lip's face encoder, first stages)."""

    def __init__(self, cin: int, width: float, depth: float = 1.0):
        c32, c64, c128 = (channels(c, width) for c in (32, 64, 128))
        super().__init__(
            ConvBlock(cin, c32, 7, 1, 3),
            ConvBlock(c32, c64, 5, (1, 2), 2),  # 48 x 96 -> 48 x 48
            *res(c64, 2, depth),
            ConvBlock(c64, c128, 3, 2, 1))  # -> 24 x 24


class ParsingAdapter(nn.Module):
    """(5, 48, 96) CelebAMask-HQ class ids -> (128w, 24, 24).

    Each class id gets a learned 3-d vector (the same as a 1x1 convolution of the 19-way one-hot,
    without materialising it); the 5 frames' maps are stacked on channels like rgb's.
    """

    def __init__(self, width: float, depth: float = 1.0, frames: int = WINDOW):
        super().__init__()
        self.embed = nn.Embedding(PARSING_CLASSES, PARSING_EMBED)
        self.image = ImageAdapter(frames * PARSING_EMBED, width, depth)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t, h, w = ids.shape
        x = self.embed(ids.long().clamp_(0, PARSING_CLASSES - 1))  # (B, T, H, W, E)
        x = x.permute(0, 1, 4, 2, 3).reshape(b, t * PARSING_EMBED, h, w)
        if ids.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)
        return self.image(x)


class MelAdapter(nn.Sequential):
    """(1, 80, 16) mel window -> (128w, 9, 6) (Wav2Lip's audio encoder, first stages)."""

    def __init__(self, width: float, depth: float = 1.0):
        c32, c64, c128 = (channels(c, width) for c in (32, 64, 128))
        super().__init__(
            ConvBlock(1, c32), *res(c32, 2, depth),
            ConvBlock(c32, c64, 3, (3, 1), 1), *res(c64, 2, depth),  # -> 27 x 16
            ConvBlock(c64, c128, 3, 3, 1), *res(c128, 2, depth))  # -> 9 x 6


class SequenceLift(nn.Module):
    """(T, D) rows (landmark frames, 3DMM frames, HuBERT steps) -> (C, H, W) feature map.

    Each row goes through the same MLP to k maps of the lift size; the T*k maps are stacked on
    channels (the time order becomes the channel order, as Wav2Lip stacks frames), convolved,
    upsampled to the output size when it is larger, and convolved again ("dimensionality
    increase", paper Sec. III-A).
    """

    def __init__(self, rows: int, dim: int, out: tuple[int, int, int], width: float,
                 depth: float = 1.0, lift: tuple[int, int] | None = None, blocks: int = 1,
                 k: int = 4):
        super().__init__()
        cout, h, w = out
        self.lift = tuple(lift or (h, w))
        self.k = k
        hidden = channels(256, width)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(),
                                 nn.Linear(hidden, k * self.lift[0] * self.lift[1]))
        cmid, cout = channels(64, width), channels(cout, width)
        self.pre = nn.Sequential(nn.BatchNorm2d(rows * k), nn.ReLU(), ConvBlock(rows * k, cmid),
                                 *res(cmid, 1, depth))
        self.up = nn.Identity() if self.lift == (h, w) else nn.Upsample(size=(h, w), mode="nearest")
        self.post = nn.Sequential(ConvBlock(cmid, cout), *res(cout, blocks, depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        maps = self.mlp(x).reshape(b, t * self.k, *self.lift)
        if x.device.type == "cpu":
            maps = maps.contiguous(memory_format=torch.channels_last)
        return self.post(self.up(self.pre(maps)))


def visual_adapter(name: str, width: float, depth: float = 1.0, dim: int | None = None) -> nn.Module:
    """eps1 for one visual representation; output (128w, 24, 24) for the standard inputs."""
    if name == "rgb":
        return ImageAdapter(RGB_CHANNELS * window_rows(name), width, depth)
    if name == "parsing":
        return ParsingAdapter(width, depth, frames=window_rows(name))
    if name in SEQUENCE_DIMS and name in VISUAL:
        return SequenceLift(window_rows(name), dim or SEQUENCE_DIMS[name], VISUAL_SHAPE, width, depth,
                            lift=(12, 12), blocks=GEOMETRY_BLOCKS)
    raise ValueError(f"unknown visual representation {name!r}")


def audio_adapter(name: str, width: float, depth: float = 1.0, dim: int | None = None) -> nn.Module:
    """eps3 for one audio representation; output (128w, 9, 6)."""
    if name == "mel":
        return MelAdapter(width, depth)
    if name in SEQUENCE_DIMS and name in AUDIO:
        return SequenceLift(window_rows(name), dim or SEQUENCE_DIMS[name], AUDIO_SHAPE, width, depth, blocks=2)
    raise ValueError(f"unknown audio representation {name!r}")


# ---------------------------------------------------------------------------------------------
# eps2 / eps4: shared trunks
# ---------------------------------------------------------------------------------------------
class VisualTrunk(nn.Sequential):
    """(128w, 24, 24) -> (512w,) embedding; the last block's ReLU makes it non-negative."""

    def __init__(self, width: float, depth: float = 1.0):
        c128, c256, c512 = (channels(c, width) for c in (128, 256, 512))
        n24, n12, n6 = VISUAL_TRUNK_BLOCKS
        super().__init__(
            *res(c128, n24, depth),
            ConvBlock(c128, c256, 3, 2, 1), *res(c256, n12, depth),  # -> 12 x 12
            ConvBlock(c256, c512, 3, 2, 1), *res(c512, n6, depth),  # -> 6 x 6
            ConvBlock(c512, c512, 3, 2, 1),  # -> 3 x 3
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
        audio, visual = parse_combo(combo, "unisync")
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
        """p_sync per pair, shape (B,), in [0, 1] (computed in float32 under autocast)."""
        v, a = self.embed_visual(visual).float(), self.embed_audio(audio).float()
        return F.cosine_similarity(v, a, dim=1, eps=1e-8).clamp(0.0, 1.0)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (the paper's "Params" column)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def input_shapes(combo: str, visual_dim: int | None = None,
                 audio_dim: int | None = None) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Shapes of one pair's (visual, audio) window inputs, as windows.py makes them."""
    audio, visual = parse_combo(combo)
    return input_shape(visual, visual_dim), input_shape(audio, audio_dim)


def input_shape(name: str, dim: int | None = None) -> tuple[int, ...]:
    """One window's model input shape for representation `name` (see the module table)."""
    if name in SEQUENCE_DIMS:
        return window_rows(name), dim or SEQUENCE_DIMS[name]
    if name == "rgb":  # frames on channels
        return RGB_CHANNELS * window_rows(name), *IMAGE_SIZE
    if name == "parsing":
        return window_rows(name), *IMAGE_SIZE
    if name == "mel":
        return 1, MEL_BINS, window_rows(name)
    raise ValueError(f"unknown representation {name!r}")


def example_inputs(model: UniSync, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A zero batch of the right shapes and dtypes for `model` (parsing ids are integers)."""
    v, a = input_shapes(model.combo, model.visual_dim, model.audio_dim)
    vdtype = torch.uint8 if parse_combo(model.combo)[1] == "parsing" else torch.float32
    return torch.zeros(batch, *v, dtype=vdtype), torch.zeros(batch, *a)


@torch.no_grad()
def count_macs(model: UniSync) -> dict[str, int]:
    """Multiply-adds of one pair's forward pass, per part, from torch's FLOP counter.

    torch.utils.flop_counter counts 2 FLOPs per multiply-add of convolutions and matrix products
    (BatchNorm, ReLU, pooling and the cosine are not counted, as in thop); halved here, so a
    returned count is in the paper's convention (1 multiply-add = 1 FLOP).
    """
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    visual, audio = example_inputs(model)
    device = next(model.parameters()).device
    visual, audio = visual.to(device), audio.to(device)
    parts = {}
    for name, fn, x in (("visual", model.embed_visual, visual), ("audio", model.embed_audio, audio)):
        with FlopCounterMode(display=False) as counter:
            fn(x)
        parts[name] = counter.get_total_flops() // 2
    model.train(was_training)
    parts["total"] = parts["visual"] + parts["audio"]
    return parts


def describe(model: UniSync | str, width: float = 1.0, depth: float | None = None) -> dict:
    """Parameters (per part) and multiply-adds per pair of `model`: what --print-model shows.

    Given a combo name, the model is built on the meta device (no memory, no compute: shapes and
    counts only), which makes this instant even at paper size.
    """
    if isinstance(model, str):
        with torch.device("meta"):
            model = UniSync(model, width, depth)
    def n(m: nn.Module) -> int:
        return count_parameters(m)

    macs = count_macs(model)
    return {
        "combo": model.combo, "width": model.width, "depth": model.depth,
        "params": n(model),
        "params_by_part": {"eps1_visual_adapter": n(model.visual_adapter),
                           "eps2_visual_trunk": n(model.visual_trunk),
                           "eps3_audio_adapter": n(model.audio_adapter),
                           "eps4_audio_trunk": n(model.audio_trunk)},
        "macs_per_pair": macs["total"],
        "macs_by_stream": {"visual": macs["visual"], "audio": macs["audio"]},
        "flops_per_pair_2x": 2 * macs["total"],
        "paper": {"params": 16.3e6, "flops": 1.73e9, "flops_convention": "1 multiply-add = 1 FLOP"},
    }
