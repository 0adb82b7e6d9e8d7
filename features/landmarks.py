"""Landmarks field: MediaPipe's 478 x 3 face mesh per frame in 96x96 crop pixels, float16.

IBUG68 picks, in iBUG 68-point order (jaw 17, brows 10, nose 9, eyes 12, outer lips 12, inner
lips 8), the mesh vertex nearest each iBUG point, for code written against 68-point landmarks.
"""
from __future__ import annotations

import numpy as np

from features.codecs import SpilledMember, decode_npy, encode_npy, npy_view, spill_npy, spill_wanted

IBUG68 = [
    127, 234, 93, 58, 172, 136, 150, 176, 152, 400, 379, 365, 397, 288, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # brows (subject's right, then left)
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose bridge, then nostrils
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lips
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lips
]
# The 40 vertices of mediapipe's FACEMESH_LIPS, sorted.
LIPS = [0, 13, 14, 17, 37, 39, 40, 61, 78, 80, 81, 82, 84, 87, 88, 91, 95, 146, 178, 181,
        185, 191, 267, 269, 270, 291, 308, 310, 311, 312, 314, 317, 318, 321, 324, 375, 402,
        405, 409, 415]
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
FOREHEAD, CHIN = 10, 152


BLOCK = 4096  # frames converted and spilled at a time


def encode(landmarks: np.ndarray) -> bytes | SpilledMember:
    """float16 .npy; a long utterance's (when spilling is on) is written to a spill file block
    by block, with the same bytes."""
    shape = landmarks.shape
    if not spill_wanted(int(np.prod(shape, dtype=np.int64)) * 2):
        return encode_npy(landmarks.astype(np.float16))
    blocks = (landmarks[a:a + BLOCK] for a in range(0, len(landmarks), BLOCK))
    member = spill_npy(blocks, shape, np.float16)
    if landmarks.dtype == np.float16:
        member.source = landmarks  # the member's values exactly: `view` needs no read-back
    return member


def decode(data: bytes | SpilledMember) -> np.ndarray:
    return decode_npy(data)


def view(data: bytes | SpilledMember) -> np.ndarray:
    """The member's landmarks without a copy where one can be avoided (read-only for stored
    bytes): for the fields computed from them, which only read (parsing, tdmm)."""
    if isinstance(data, SpilledMember):
        source = getattr(data, "source", None)
        return source if source is not None else decode_npy(data)
    return npy_view(data)


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """Inner-lip gap per frame divided by face height: a scale-free mouth-open signal."""
    lm = landmarks.astype(np.float32)
    gap = np.linalg.norm(lm[:, LOWER_INNER_LIP, :2] - lm[:, UPPER_INNER_LIP, :2], axis=1)
    height = np.linalg.norm(lm[:, CHIN, :2] - lm[:, FOREHEAD, :2], axis=1)
    return gap / np.maximum(height, 1e-6)
