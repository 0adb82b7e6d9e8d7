"""landmarks68_fan field: face-alignment's 2D-FAN-4 network (68 iBUG points) on our face track, per frame.

The network is face-alignment's own `FAN(4)` (the installed `face_alignment` 1.5.0, models/fan.py),
with its published 2D-FAN-4 weights read from a local file the user gives (`--fan-weights PATH`,
the `2DFAN4-11f355bf06.pth.tar` face-alignment downloads from MODEL_URL; here it is never
downloaded: no file, a bad path or a file that is not 2D-FAN-4 is a `ModelUnavailable`, a job-level
failure of this field alone). The path is recorded per tar and in store.json (`landmarks68_fan`).

Input and decoding are face-alignment's `get_landmarks_from_image`, step by step: the detector box
gives centre (y raised by 0.12 of the box height) and scale (w + h) / 195; `utils.crop` cuts the
256 px input; the heatmaps of the image and of its mirror (face-alignment's default flip_input)
are summed; the peak of each 64 x 64 heatmap, moved a quarter pixel toward the larger
neighbour, maps back to source pixels through `transform_np`'s inverse, truncated to whole
pixels as face-alignment returns them. `decode_heatmaps` is that decoding in numpy (the package's
own is numba-compiled at every process start, ~30 s here); tests/test_fan_landmarks.py checks it
against the package's Python source.

The detector box is not S3FD's (no detector runs): it is OUR face square's centre with a side of
FAN_BOX x the square's, dlib's HOG-box ratio (features/dlib_models.py). It is not measured
against S3FD's boxes (no S3FD weights here). Storage is features/landmarks68.py's: float16
(T, 68, 2) in the rgb crop's 96 px coordinates, iBUG order, unsmoothed.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from features import dlib_models
from features.errors import ModelUnavailable
from features.landmarks68 import Landmarks68

VERSION = "fan2d4-1"
NETWORK, N_MODULES = "2DFAN-4", 4
MODEL_URL = "https://www.adrianbulat.com/downloads/python-fan/2DFAN4-11f355bf06.pth.tar"  # never fetched here
FAN_BOX = dlib_models.DLIB_BOX  # detector box side / our face square side (dlib's, unmeasured for S3FD)
FLIP = True  # face-alignment's default flip_input: the mirror's heatmaps are added
REFERENCE_SCALE, SCALE_FACTOR, CENTER_Y_OFFSET = 195.0, 200.0, 0.12  # face_alignment/utils.py


@lru_cache(maxsize=4)
def load_fan(weights: str | None, device: str = "cpu") -> Any:
    """face-alignment's FAN(4) with the 2D-FAN-4 state dict at `weights` (loaded once per process)."""
    if not weights:
        raise ModelUnavailable(f"landmarks68_fan needs the {NETWORK} weights: --fan-weights PATH (the file "
                               f"face-alignment downloads from {MODEL_URL}; nothing is downloaded here)")
    path = Path(weights)
    if not path.is_file():
        raise ModelUnavailable(f"landmarks68_fan: no {NETWORK} weights file {path} (--fan-weights)")
    import torch
    from face_alignment.models import FAN

    net = FAN(N_MODULES)
    try:
        net.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    except Exception as exc:  # not a state dict, or another network's
        raise ModelUnavailable(f"landmarks68_fan: {path} is not {NETWORK} weights: {str(exc)[:300]}") from None
    return net.to(device).eval()


def detector_box(params: np.ndarray) -> tuple[np.ndarray, float]:
    """face-alignment's (centre, scale) for the detector box of a frame's face square."""
    cx, cy, side = (float(v) for v in params[:3])
    box = side * FAN_BOX
    return np.array([cx, cy - box * CENTER_Y_OFFSET]), 2 * box / REFERENCE_SCALE


def decode_heatmaps(hm: np.ndarray, center: np.ndarray, scale: float) -> np.ndarray:
    """(B, C, 2) float32 source pixels of (B, C, 64, 64) heatmaps: face-alignment's get_preds_fromhm
    (arg-max, quarter-pixel shift, -0.5) and transform_np's inverse, truncated to int as it does."""
    b, c, h, w = hm.shape
    idx = hm.reshape(b, c, h * w).argmax(-1)
    px, py = idx % w, idx // w  # 0-based peak
    preds = np.stack([px + 1, py + 1], -1).astype(np.float32)
    inner = (px > 0) & (px < 63) & (py > 0) & (py < 63)
    xs, ys = np.clip(px, 1, w - 2), np.clip(py, 1, h - 2)
    bi, ci = np.ogrid[:b, :c]
    diff = np.stack([hm[bi, ci, ys, xs + 1] - hm[bi, ci, ys, xs - 1],
                     hm[bi, ci, ys + 1, xs] - hm[bi, ci, ys - 1, xs]], -1)
    preds += np.where(inner[..., None], np.sign(diff) * 0.25, 0).astype(np.float32)
    preds -= 0.5
    side = SCALE_FACTOR * scale
    t = np.array([[h / side, 0, h * (-center[0] / side + 0.5)],
                  [0, h / side, h * (-center[1] / side + 0.5)], [0, 0, 1]])
    inv = np.linalg.pinv(t)
    pts = np.concatenate([preds.astype(np.float64), np.ones((b, c, 1))], -1)
    return (pts @ inv.T)[..., :2].astype(np.int32).astype(np.float32)


class FanLandmarks(Landmarks68):
    """Crop maker for landmarks68_fan: 2D-FAN-4's 68 points in the frame's crop square, crop pixels."""

    name = "landmarks68_fan"

    def __init__(self, weights: str | None):
        import torch

        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.net = load_fan(str(weights) if weights else None, self.device)  # fails the field, not the pass
        self.points = np.zeros((0, 68, 2), np.float16)
        self.done = bytearray()

    def source_points(self, frame: np.ndarray, params: np.ndarray) -> np.ndarray:
        import torch
        from face_alignment.utils import crop, flip

        center, scale = detector_box(params)
        inp = torch.from_numpy(crop(frame, center, scale).transpose(2, 0, 1).astype(np.float32) / 255.0)[None]
        inp = torch.cat([inp, flip(inp)]) if FLIP else inp
        with torch.no_grad():
            out = self.net(inp.to(self.device))[-1].float().cpu()
        hm = out[:1] + flip(out[1:], is_label=True) if FLIP else out
        return decode_heatmaps(hm.numpy(), center, scale)[0]
