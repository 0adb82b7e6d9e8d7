"""lip field: grayscale 96x96 mouth ROI per frame (AV-HuBERT / SyncTalklip input; train-time crop 88).

The ROI is a square centred on the lips, rotated so the line between the mouth corners is level,
with a side of one outer-eye-corner distance (about twice the mouth width, fixed by the face's
size rather than the mouth's, so the ROI does not zoom as the mouth spreads). Centre, angle and
side are smoothed with the same centred 5-frame average as the face crop: no lag, no sync shift.
"""
from __future__ import annotations

import numpy as np

from features.codecs import decode_jpeg_sequence, encode_jpeg_sequence
from features.face import smooth
from features.landmarks import LIPS

VERSION = "mouth-roi-1"
SIZE = 96
MOUTH_CORNERS = (61, 291)
EYE_CORNERS = (33, 263)


def roi_track(points: np.ndarray, window: int = 5) -> np.ndarray:
    """(n, 4) smoothed centre x, centre y, angle (radians), side, from image-pixel landmarks."""
    centre = points[:, LIPS, :2].mean(axis=1)
    left, right = points[:, MOUTH_CORNERS[0], :2], points[:, MOUTH_CORNERS[1], :2]
    angle = np.unwrap(np.arctan2(right[:, 1] - left[:, 1], right[:, 0] - left[:, 0]))
    side = np.linalg.norm(points[:, EYE_CORNERS[1], :2] - points[:, EYE_CORNERS[0], :2], axis=1)
    return smooth(np.column_stack([centre, angle, side]), window)


def mouth_rois(frames: np.ndarray, points: np.ndarray) -> np.ndarray:
    """(n, 96, 96) uint8 grayscale mouth ROIs from RGB frames and image-pixel landmarks."""
    import cv2

    rois = []
    for frame, (cx, cy, angle, side) in zip(frames, roi_track(points)):
        m = cv2.getRotationMatrix2D((float(cx), float(cy)), float(np.degrees(angle)), SIZE / float(side))
        m[:, 2] += (SIZE / 2 - cx, SIZE / 2 - cy)
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        rois.append(cv2.warpAffine(gray, m, (SIZE, SIZE), flags=cv2.INTER_AREA,
                                   borderMode=cv2.BORDER_REPLICATE))
    return np.stack(rois)


def encode(rois: np.ndarray) -> bytes:
    """Grayscale ROIs as a JPEG sequence (q95), decodable frame by frame like rgb."""
    return encode_jpeg_sequence(np.repeat(rois[..., None], 3, axis=3), 95)


def decode(data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    return decode_jpeg_sequence(data, start, stop)[..., 0]
