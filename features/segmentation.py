"""Person masks for the parsing field: MediaPipe's selfie segmentation on the face crop's frame.

The model (selfie_segmentation.tflite, the "general" 256x256 one) ships inside the installed
mediapipe wheel: real weights, no download. It separates a person (head, hair, neck, body) from
the background; the parsing field combines that with the mesh geometry into hair, neck and
background (features/parsing.py).

Why a context square and not the 96 px crop itself: the segmenter is trained on head-and-shoulders
views, so it runs on a square twice the face crop's side around the same centre, resized to its
256 px input, and the mask's central half is resampled into the 96x96 crop frame (the frame of the
landmarks, rgb and parsing). `PersonMasks` is the crop maker the face tracker feeds while it
streams through a clip, as rgb's FaceCrops: only a bit-packed mask (1.2 kB) is kept per frame.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from features.face import CROP_SIZE, Geometry, square_warp

VERSION = "selfie-general-1"
CONTEXT = 2.0  # side of the segmented square / side of the face crop
INPUT = 256  # the general model's input side
THRESHOLD = 0.5  # person probability above which a pixel is the person's


@lru_cache(maxsize=1)
def segmenter():
    """The selfie segmenter (legacy MediaPipe solution, general model), once per process; None
    when mediapipe or its packaged model cannot be used (parsing then falls back to the mesh)."""
    try:
        import mediapipe as mp

        return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0)
    except Exception:  # no mediapipe, no packaged model: the landmarks-only path
        return None


def available() -> bool:
    return segmenter() is not None


def person_mask(frame: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """(96, 96) bool: the person's pixels in the face crop of (cx, cy, side) source pixels."""
    context = square_warp(frame, cx, cy, side * CONTEXT, INPUT)
    prob = segmenter().process(np.ascontiguousarray(context)).segmentation_mask
    inner = square_warp(prob, INPUT / 2, INPUT / 2, INPUT / CONTEXT, CROP_SIZE)
    return inner >= THRESHOLD


class PersonMasks:
    """Crop maker for the parsing field: the person mask of each frame in the face crop frame."""

    name = "person"
    geometry: Geometry | None = None  # the aligned face square, as rgb

    def __init__(self):
        self.bits: dict[int, np.ndarray] = {}

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        self.bits[t] = np.packbits(person_mask(frame, *params))

    def result(self) -> np.ndarray:
        """(n, 96, 96) bool masks in frame order."""
        n = len(self.bits)
        if sorted(self.bits) != list(range(n)):
            raise ValueError(f"person masks are missing frames: have {n} of {max(self.bits, default=-1) + 1}")
        if not n:
            return np.zeros((0, CROP_SIZE, CROP_SIZE), bool)
        packed = np.stack([self.bits[t] for t in range(n)])
        return np.unpackbits(packed, axis=1, count=CROP_SIZE * CROP_SIZE).astype(bool).reshape(n, CROP_SIZE, CROP_SIZE)
