"""parsing field: per-frame face parsing label maps (96x96 uint8, CelebAMask-HQ class ids)
drawn from the face mesh geometry in crop coordinates.

Regions are filled as polygons in painting order (skin first, then features on top), so a
pixel has the label of the last region covering it. Left/right follow MediaPipe's naming: the
subject's own left (2 = left brow, 4 = left eye).

Hair, neck, cloth and background come from a person mask (features/segmentation.py: MediaPipe's
selfie segmentation, run on the frames during the tracking pass) under the mesh regions: outside
the person is background (0); a person pixel outside the face oval is hair (17) above the line
through the cheek extremes (234, 454) and at the sides down to the chin, neck (14) below that
line within the jaw's width (172 .. 397), cloth (18) below the chin outside it. The field always
has the mask: `parse` / `encode` require it, and a selfie model that cannot load fails the field
(features/segmentation.py SegmenterUnavailable) rather than store a mesh-only map under this
version. `parse_frame(person=None)` still draws the mesh alone (mesh-geometry-1's map), for
inspection and tests.
"""
from __future__ import annotations

import gzip
import zlib

import numpy as np

from features.codecs import decode_npy, npy_header

VERSION = "mesh-selfie-2"
SIZE = 96
BACKGROUND, SKIN, L_BROW, R_BROW, L_EYE, R_EYE, NOSE, MOUTH, U_LIP, L_LIP = 0, 1, 2, 3, 4, 5, 10, 11, 12, 13
NECK, HAIR, CLOTH = 14, 17, 18
CHEEKS, CHIN, JAW = (234, 454), 152, (172, 397)  # mesh points of the hair / neck / cloth lines

FACE_OVAL = [10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
             152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109]
LEFT_EYE = [263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466]
RIGHT_EYE = [33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246]
LEFT_BROW = [276, 283, 282, 295, 285, 336, 296, 334, 293, 300]
RIGHT_BROW = [46, 53, 52, 65, 55, 107, 66, 105, 63, 70]
NOSE_POINTS = [1, 2, 4, 5, 6, 19, 45, 48, 64, 94, 97, 98, 115, 168, 195, 197, 220, 275, 278, 294,
               326, 327, 344, 440]  # filled as their convex hull
OUTER_UPPER = [61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291]
OUTER_LOWER = [61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291]
INNER_UPPER = [78, 191, 80, 81, 82, 13, 312, 311, 310, 415, 308]
INNER_LOWER = [78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308]

REGIONS = [  # (label, polygon vertex indices), in painting order
    (SKIN, FACE_OVAL),
    (L_BROW, LEFT_BROW), (R_BROW, RIGHT_BROW),
    (L_EYE, LEFT_EYE), (R_EYE, RIGHT_EYE),
    (U_LIP, OUTER_UPPER + INNER_UPPER[::-1]),
    (L_LIP, OUTER_LOWER + INNER_LOWER[::-1]),
    (MOUTH, INNER_UPPER + INNER_LOWER[::-1]),
]


def person_labels(landmarks: np.ndarray, person: np.ndarray) -> np.ndarray:
    """(size, size) uint8: hair, neck and cloth on the person mask, background elsewhere (the
    face regions are painted over it by parse_frame)."""
    size = person.shape[0]
    lm = landmarks[:, :2].astype(np.float32)
    yy, xx = np.mgrid[:size, :size] + 0.5
    cheek_y, chin_y = lm[list(CHEEKS), 1].mean(), lm[CHIN, 1]
    jaw_x0, jaw_x1 = sorted(lm[list(JAW), 0])
    within_jaw = (xx >= jaw_x0) & (xx <= jaw_x1)
    labels = np.where(person, HAIR, BACKGROUND).astype(np.uint8)
    labels[person & (yy > cheek_y) & within_jaw] = NECK
    labels[person & (yy > chin_y) & ~within_jaw] = CLOTH
    return labels


def parse_frame(landmarks: np.ndarray, size: int = SIZE, person: np.ndarray | None = None) -> np.ndarray:
    """(size, size) uint8 labels from one frame's (478, 3) crop-pixel landmarks, over the
    person mask's hair / neck / cloth / background when one is given."""
    import cv2

    labels = np.zeros((size, size), np.uint8) if person is None else person_labels(landmarks, person)
    pts = np.round(landmarks[:, :2].astype(np.float32) * 4).astype(np.int32)  # 2 bits of subpixel
    for label, index in REGIONS[:5]:
        cv2.fillPoly(labels, [pts[index]], int(label), lineType=cv2.LINE_8, shift=2)
    cv2.fillPoly(labels, [cv2.convexHull(pts[NOSE_POINTS])], NOSE, lineType=cv2.LINE_8, shift=2)
    for label, index in REGIONS[5:]:
        cv2.fillPoly(labels, [pts[index]], int(label), lineType=cv2.LINE_8, shift=2)
    return labels


def parse(landmarks: np.ndarray, person: np.ndarray) -> np.ndarray:
    """(n, 96, 96) uint8 label maps for (n, 478, 3) landmarks (and (n, 96, 96) person masks)."""
    out = np.zeros((len(landmarks), SIZE, SIZE), np.uint8)
    for i, (labels, frame) in enumerate(zip(out, landmarks)):
        labels[:] = parse_frame(frame, person=person[i])
    return out


BLOCK = 1024  # frames parsed and compressed at a time (9 MB of label maps)


def encode(landmarks: np.ndarray, person: np.ndarray) -> bytes:
    """Label maps compress ~20x; gzip with mtime 0 keeps the bytes reproducible.

    The .npy is parsed and compressed BLOCK frames at a time, never whole (30 minutes of maps
    are 415 MB): deflate's output does not depend on how its input is split, so the bytes equal
    `gzip.compress(encode_npy(parse(landmarks, person)), 6, mtime=0)`."""
    n = len(landmarks)
    gz = zlib.compressobj(6, zlib.DEFLATED, 31)  # what gzip.compress(mtime=0) runs: a gzip stream
    out = [gz.compress(npy_header((n, SIZE, SIZE), np.uint8))]
    for a in range(0, n, BLOCK):
        out.append(gz.compress(parse(landmarks[a:a + BLOCK], person[a:a + BLOCK]).tobytes()))
    out.append(gz.flush())
    return b"".join(out)


def decode(data: bytes) -> np.ndarray:
    return decode_npy(gzip.decompress(data))
