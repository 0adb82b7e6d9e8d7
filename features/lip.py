"""lip field: grayscale 96x96 mouth ROI per frame (AV-HuBERT / SyncTalklip input; train-time crop 88).

The ROI is a square centred on the lips, rotated so the line between the mouth corners is level,
with a side of one outer-eye-corner distance (about twice the mouth width, fixed by the face's
size rather than the mouth's, so the ROI does not zoom as the mouth spreads). Centre, angle and
side are smoothed with the same centred 5-frame average as the face crop: no lag, no sync shift.

`MouthRois` is the crop maker the face tracker feeds while it streams through a clip (the
tracker settles the smoothed placement; only the JPEG bytes are kept); `mouth_rois` does the same
on frames and landmarks already in memory.
"""
from __future__ import annotations

import numpy as np

from features.codecs import SpilledMember, decode_jpeg_sequence, encode_jpeg_sequence
from features.face import Geometry, smooth
from features.landmarks import LIPS
from features.rgb import JpegSequence

VERSION = "mouth-roi-1"
SIZE = 96
MOUTH_CORNERS = (61, 291)
EYE_CORNERS = (33, 263)
_POINTS = tuple(LIPS) + MOUTH_CORNERS + EYE_CORNERS  # the landmarks the placement reads


def _placement(points: np.ndarray) -> np.ndarray:
    """(k, 4) centre x, centre y, angle (radians, wrapped), side from the _POINTS landmarks."""
    n_lips = len(LIPS)
    centre = points[:, :n_lips, :2].mean(axis=1)
    left, right = points[:, n_lips, :2], points[:, n_lips + 1, :2]
    angle = np.arctan2(right[:, 1] - left[:, 1], right[:, 0] - left[:, 0])
    side = np.linalg.norm(points[:, n_lips + 3, :2] - points[:, n_lips + 2, :2], axis=1)
    return np.column_stack([centre, angle, side])


GEOMETRY = Geometry(_POINTS, _placement, angle_column=2)


def roi_track(points: np.ndarray, window: int = 5) -> np.ndarray:
    """(n, 4) smoothed centre x, centre y, angle (radians), side, from image-pixel landmarks."""
    params = _placement(points[:, list(_POINTS)])
    params[:, 2] = np.unwrap(params[:, 2])
    return smooth(params, window)


def mouth_roi(frame: np.ndarray, cx: float, cy: float, angle: float, side: float) -> np.ndarray:
    """One 96x96 grayscale ROI; only the region the rotated square covers is converted to gray."""
    import cv2

    m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(np.degrees(angle)), SIZE / float(side))
    m[:, 2] += (SIZE / 2 - cx, SIZE / 2 - cy)
    h, w = frame.shape[:2]
    reach = side / np.sqrt(2) + 3  # half-diagonal of the square, plus the interpolation margin
    x0, y0 = max(0, int(cx - reach)), max(0, int(cy - reach))
    x1, y1 = min(w, int(np.ceil(cx + reach)) + 1), min(h, int(np.ceil(cy + reach)) + 1)
    if x1 <= x0 or y1 <= y0:  # the square lies outside the frame: the whole frame, replicated
        x0, y0, x1, y1 = 0, 0, w, h
    gray = cv2.cvtColor(np.ascontiguousarray(frame[y0:y1, x0:x1]), cv2.COLOR_RGB2GRAY)
    m[:, 2] += m[:, :2] @ np.array([x0, y0], np.float64)
    return cv2.warpAffine(gray, m, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE)


def mouth_rois(frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 96, 96) uint8 grayscale mouth ROIs from RGB frames and image-pixel landmarks."""
    return np.stack([mouth_roi(f, *p) for f, p in zip(frames, roi_track(points))])


class MouthRois:
    """Crop maker for the lip field: the levelled mouth ROI of each frame, JPEG q95 (gray)."""

    name = "lip"
    geometry = GEOMETRY

    def __init__(self):
        self.sequence = JpegSequence(95)

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        self.sequence.add(t, np.repeat(mouth_roi(frame, *params)[..., None], 3, axis=2))

    def result(self) -> bytes | SpilledMember:
        return self.sequence.getvalue()


def encode(rois: np.ndarray) -> bytes:
    """Grayscale ROIs as a JPEG sequence (q95), decodable frame by frame like rgb."""
    return encode_jpeg_sequence(np.repeat(rois[..., None], 3, axis=3), 95)


def decode(data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    return decode_jpeg_sequence(data, start, stop)[..., 0]
