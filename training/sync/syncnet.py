"""SyncNet (Chung & Zisserman), the architecture of syncnet_python's published `syncnet_v2.model`.

Two streams to 1024-d embeddings, compared by L2 distance:
- audio: (N, 1, 13, 20) MFCC windows -> `netcnnaud` (2-d convolutions) -> 512 -> `netfcaud` -> 1024
- lip: (N, 3, 5, 224, 224) BGR 0-255 frame windows -> `netcnnlip` (3-d convolutions) -> 512 ->
  `netfclip` -> 1024

The published file is a plain state dict keyed by these module names and their Sequential indices
(`netcnnaud.0.weight`, ...), so the layer order below, no-op pooling included, is part of the
format. The weights are not downloadable from here: pass the file's local path
(`--syncnet-weights PATH`; syncnet_python's download_model.sh fetches it). Loading checks every
key and shape and names what is missing or unexpected; only BatchNorm's `num_batches_tracked`
counters (absent from files saved by old PyTorch, unused in eval mode) may be missing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

EMBED = 1024
VERSION = "syncnet_python-v2"  # the architecture and the reference's scoring rules


def _conv2d(cin: int, cout: int, kernel, stride=1, padding=0, relu_inplace: bool = True) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride, padding), nn.BatchNorm2d(cout), nn.ReLU(inplace=relu_inplace)]


def _conv3d(cin: int, cout: int, kernel, stride=1, padding=0) -> list[nn.Module]:
    return [nn.Conv3d(cin, cout, kernel, stride, padding), nn.BatchNorm3d(cout), nn.ReLU(inplace=True)]


def _head(embed: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(512, 512), nn.BatchNorm1d(512), nn.ReLU(), nn.Linear(512, embed))


class SyncNet(nn.Module):
    """The reference's model `S`: `forward_aud`, `forward_lip` give the embeddings."""

    def __init__(self, embed: int = EMBED):
        super().__init__()
        self.netcnnaud = nn.Sequential(  # (1, 13, 20) -> (512, 1, 1)
            *_conv2d(1, 64, 3, 1, 1), nn.MaxPool2d(1, 1),
            *_conv2d(64, 192, 3, 1, 1), nn.MaxPool2d(3, (1, 2)),
            *_conv2d(192, 384, 3, 1, 1),
            *_conv2d(384, 256, 3, 1, 1),
            *_conv2d(256, 256, 3, 1, 1), nn.MaxPool2d(3, 2),
            *_conv2d(256, 512, (5, 4), 1, 0, relu_inplace=False))
        self.netfcaud = _head(embed)
        self.netfclip = _head(embed)
        self.netcnnlip = nn.Sequential(  # (3, 5, 224, 224) -> (512, 1, 1, 1)
            *_conv3d(3, 96, (5, 7, 7), (1, 2, 2), 0), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv3d(96, 256, (1, 5, 5), (1, 2, 2), (0, 1, 1)),
            nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)),
            *_conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)),
            *_conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)),
            *_conv3d(256, 256, (1, 3, 3), 1, (0, 1, 1)), nn.MaxPool3d((1, 3, 3), (1, 2, 2)),
            *_conv3d(256, 512, (1, 6, 6), 1, 0))

    def forward_aud(self, mfcc: torch.Tensor) -> torch.Tensor:
        """(N, 1, 13, 20) int16-scale MFCC windows -> (N, 1024)."""
        return self.netfcaud(self.netcnnaud(mfcc).flatten(1))

    def forward_lip(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, 5, 224, 224) BGR float 0-255 windows -> (N, 1024)."""
        return self.netfclip(self.netcnnlip(frames).flatten(1))


def folded_lip_trunk(model: SyncNet) -> nn.Sequential:
    """`model.netcnnlip` for inference, as 2-d convolutions over channels-last frames, each
    BatchNorm folded into its convolution: ~1.4x faster on a CPU, same embeddings to ~2e-6.

    The lip trunk's first Conv3d spans all 5 frames (kernel depth 5, output depth 1) and every
    later one has kernel depth 1, so the trunk is a 2-d network on the 15 stacked BGR planes
    (channel = colour * 5 + frame, the Conv3d weight reshaped); eval-mode BatchNorm is an affine
    map per channel and folds into the convolution before it. A copy: training and SyncLoss (which
    need gradients and the BatchNorm modules) keep using `forward_lip`."""
    layers: list[nn.Module] = []
    mods = list(model.netcnnlip)
    i = 0
    while i < len(mods):
        m = mods[i]
        if isinstance(m, nn.Conv3d):
            bn = mods[i + 1]
            assert isinstance(bn, nn.BatchNorm3d) and m.padding[0] == 0 and m.stride[0] == 1
            kt, kh, kw = m.kernel_size
            scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
            conv = nn.Conv2d(m.in_channels * kt, m.out_channels, (kh, kw), m.stride[1:], m.padding[1:])
            conv.weight.data = (m.weight.reshape(m.out_channels, -1, kh, kw) * scale[:, None, None, None]).detach()
            conv.bias.data = ((m.bias - bn.running_mean) * scale + bn.bias).detach()
            layers.append(conv)
            i += 2
            continue
        if isinstance(m, nn.MaxPool3d):
            pad = m.padding if isinstance(m.padding, tuple) else (m.padding,) * 3
            layers.append(nn.MaxPool2d(m.kernel_size[1:], m.stride[1:], pad[1:]))
        else:
            layers.append(m)
        i += 1
    trunk = nn.Sequential(*layers).eval().to(memory_format=torch.channels_last)
    return trunk.to(next(model.parameters()).device)


def fast_forward_lip(model: SyncNet, trunk: nn.Sequential, frames: torch.Tensor) -> torch.Tensor:
    """`model.forward_lip(frames)` through `folded_lip_trunk(model)` (inference only)."""
    n, c, t, h, w = frames.shape
    x = frames.reshape(n, c * t, h, w).contiguous(memory_format=torch.channels_last)
    return model.netfclip(trunk(x).flatten(1))


class WeightsError(RuntimeError):
    """The SyncNet weights file is missing or does not fit the architecture."""


def load_syncnet(path: Path | str, device: torch.device | str = "cpu") -> SyncNet:
    """SyncNet with the state dict at `path` (syncnet_v2.model layout), in eval mode."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"SyncNet weights {path} not found: they cannot be downloaded here; get "
                           "syncnet_v2.model (syncnet_python's download_model.sh) and pass its path "
                           "with --syncnet-weights")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"{path}: not a readable PyTorch state dict ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: holds a {type(state).__name__}, expected a state dict")
    # syncnet_python's trainer saves the model as attribute __S__ of its wrapper
    state = {k.removeprefix("__S__.").removeprefix("module."): v for k, v in state.items()}
    model = SyncNet()
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    missing = sorted(k for k in set(own) - set(state) if not k.endswith("num_batches_tracked"))
    wrong = sorted(k for k in set(own) & set(state) if tuple(own[k].shape) != tuple(state[k].shape))
    if unexpected or missing or wrong:
        raise WeightsError(f"{path} does not fit SyncNet: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                           f"unexpected {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}, "
                           f"wrong shape {wrong[:5]}")
    model.load_state_dict(state, strict=False)
    return model.to(device).eval()


def save_random_weights(path: Path | str, seed: int = 0) -> Path:
    """A randomly initialised SyncNet saved as a state dict in the published key layout, with
    non-trivial BatchNorm running statistics (for tests; its scores mean nothing)."""
    torch.manual_seed(seed)
    model = SyncNet()
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2.0)
    path = Path(path)
    torch.save(model.state_dict(), path)
    return path
