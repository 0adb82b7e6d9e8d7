"""landmarks68 field: dlib's pretrained 68-point iBUG shape predictor on our face track, per frame.

Each frame's points come from dlib's predictor run inside the box of OUR tracked face square
(features/dlib_models.py: `box_of`), not dlib's detector, so the field covers exactly the frames
of the other face fields and follows the same face. Stored like the landmarks field: float16
(T, 68, 2) `.npy`, in the same 96 x 96 crop pixels (x right, y down, of the rgb crop square of
each frame), so `landmarks68[t]` and `landmarks[t][IBUG68, :2]` are directly comparable. The
points are per frame, unsmoothed (dlib's own output); the order is iBUG 300-W's (jaw 0-16,
brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner lips 60-67).

Agreement with the mesh's 68-point subset on the real clips: README ("dlib's 68 points and face
identity"), measured by tests/test_dlib_fields.py as `ibug_error`.

`Landmarks68` is the crop maker the tracker feeds while it streams frames (no frame is kept:
136 float16 per frame, in one growing array).
"""
from __future__ import annotations

import numpy as np

from features import dlib_models
from features import landmarks as landmarks_field
from features.codecs import SpilledMember
from features.face import CROP_SIZE
from features.landmarks import IBUG68

VERSION = "dlib-sp68-1"
RIGHT_EYE, LEFT_EYE = range(36, 42), range(42, 48)  # iBUG indices (the subject's right, left)


class Landmarks68:
    """Crop maker for landmarks68: dlib's 68 points in the frame's crop square, crop pixels."""

    name = "landmarks68"
    geometry = None  # the face square: the crop box the landmarks field is stored in

    def __init__(self):
        dlib_models.shape_predictor()  # load now: a missing model fails the field, not the pass
        self.points = np.zeros((0, 68, 2), np.float16)
        self.done = bytearray()

    def source_points(self, frame: np.ndarray, params: np.ndarray) -> np.ndarray:
        """(68, 2) float32 source-pixel points of one frame (the model's part; the storage is shared
        with features/landmarks_fan.py)."""
        return dlib_models.points_of(dlib_models.shape_68(frame, params))

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        cx, cy, side = (float(v) for v in params[:3])
        image = self.source_points(frame, params)
        crop = (image - np.array([cx - side / 2, cy - side / 2], np.float32)) * np.float32(CROP_SIZE / side)
        if t >= len(self.points):  # doubled: amortised, one array
            grow = max(t + 1, 2 * len(self.points), 256)
            self.points = np.concatenate([self.points, np.zeros((grow - len(self.points), 68, 2), np.float16)])
            self.done.extend(bytes(grow - len(self.done)))
        self.points[t] = crop
        self.done[t] = 1

    def result(self) -> bytes | SpilledMember:
        n = len(self.done) - self.done[::-1].find(1) if 1 in self.done else 0
        if self.done[:n].count(0):
            raise ValueError(f"{self.name} is missing frames: has {n - self.done[:n].count(0)} of {n}")
        return landmarks_field.encode(self.points[:n])


def decode(data: bytes) -> np.ndarray:
    """(T, 68, 2) float16 crop pixels."""
    return landmarks_field.decode(data)


def inter_ocular(points: np.ndarray) -> np.ndarray:
    """(T,) distance between the two eye centres of iBUG-ordered points (..., 68, >=2)."""
    p = points[..., :2].astype(np.float32)
    return np.linalg.norm(p[..., list(RIGHT_EYE), :].mean(-2) - p[..., list(LEFT_EYE), :].mean(-2), axis=-1)


def ibug_error(dlib68: np.ndarray, mesh: np.ndarray) -> np.ndarray:
    """(T,) mean point-to-point distance between dlib's 68 points and the mesh's IBUG68 subset
    (`landmarks` field, same crop pixels), over the inter-ocular distance of the mesh's points
    (the 300-W normalisation, with eye centres)."""
    sub = mesh[:, IBUG68, :2].astype(np.float32)
    err = np.linalg.norm(dlib68.astype(np.float32) - sub, axis=-1).mean(-1)
    return err / np.maximum(inter_ocular(sub), 1e-6)
