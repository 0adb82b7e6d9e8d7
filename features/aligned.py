"""aligned<size> fields: upright high-resolution face crops (256 or 512 px) by a similarity warp
of the face mesh onto a fixed frontal template; and the template's mouth mask.

Why a template: the rgb field's square is axis-aligned, so a rolled head stays rolled and the
crop's scale follows the face oval's extent (which changes as the jaw opens). Here the rigid
mesh points (forehead, nose bridge, eye corners, temples: `features.tdmm.RIGID`, nothing that
moves with the mouth) are fitted by a least-squares similarity (scale, rotation, shift; closed
form on complex numbers) to TEMPLATE, so the eyes come out level and the face at one scale.
The placement (centre, angle, side) is averaged over the tracker's centred 5-frame window with
the angle unwrapped: zero phase, no lag, so the crop moves with the frame it is cut from and
sync is untouched (tests/test_aligned.py checks it with the sync-preservation rule).

TEMPLATE is in unit crop coordinates (x right, y down, 0..1 of the side): the Procrustes mean of
the shared real clips' meshes (7 clips, 1090 frames: `derive_template`), levelled on the eye
corners, made left-right symmetric, and framed like the rgb crop (the face oval's extent x 1.15,
centred), so the mouth sits in the lower half (mouth centre at y = 0.70) and the lower-half
restart marker serves the sync expert as in rgb.

Members per utterance: `<key>.aligned<size>.jpgs` (JPEG q95 per frame, the frame-index container
and lower-half restart marker of features/rgb.py) and `<key>.aligned<size>_affine.npy`: (n, 2, 3)
float32, the matrix taking source-frame pixels to crop pixels (cv2.invertAffineTransform gives
the paste-back; `to_crop` carries the stored landmarks into the crop).

Mouth mask: `mouth_mask(size)` is a fixed image, the template's lower face: the jaw line
(JAW_TEMPLATE, pushed out by MASK_GROWTH from the nose base so an open jaw stays inside) closed
above at the nose base's height less MASK_MARGIN, the region a generator repaints (LatentSync
ships a fixed mask image of this kind). `frame_mouth_mask(points, size)` draws the same region
from one frame's own landmarks in crop pixels, for heads the template fits loosely.
"""
from __future__ import annotations

import numpy as np

from features.codecs import SpilledMember, decode_jpeg_sequence, decode_npy, encode_npy
from features.face import Geometry, crop_to_image
from features.rgb import QUALITY, JpegSequence
from features.tdmm import RIGID

VERSION = "similarity-template-1"
SIZES = (256, 512)

# Rigid points in unit crop coordinates (see the module doc; features/tdmm.py RIGID order).
TEMPLATE = {10: (0.5000, 0.0652), 151: (0.5000, 0.1456), 9: (0.5000, 0.2312), 8: (0.5000, 0.2772),
            168: (0.5000, 0.3192), 6: (0.5000, 0.3590), 197: (0.5000, 0.3937), 195: (0.5000, 0.4255),
            5: (0.5000, 0.4594), 4: (0.5000, 0.5019), 1: (0.5000, 0.5366), 33: (0.2752, 0.3498),
            133: (0.4142, 0.3567), 362: (0.5858, 0.3567), 263: (0.7248, 0.3498), 109: (0.4050, 0.0687),
            338: (0.5950, 0.0687), 67: (0.3246, 0.0851), 297: (0.6754, 0.0851), 127: (0.1463, 0.3870),
            356: (0.8537, 0.3870), 234: (0.1500, 0.4639), 454: (0.8500, 0.4639), 21: (0.1686, 0.2366),
            251: (0.8314, 0.2366)}
# The jaw line of the same mean face, cheek (234) to chin (152) to cheek (454); the nose base (2).
JAW_TEMPLATE = {234: (0.1500, 0.4639), 93: (0.1564, 0.5410), 132: (0.1702, 0.6227), 58: (0.1948, 0.7072),
                172: (0.2279, 0.7727), 136: (0.2646, 0.8188), 150: (0.3104, 0.8592), 149: (0.3490, 0.8867),
                176: (0.3900, 0.9108), 148: (0.4380, 0.9285), 152: (0.5000, 0.9348), 377: (0.5620, 0.9285),
                400: (0.6100, 0.9108), 378: (0.6510, 0.8867), 379: (0.6896, 0.8592), 365: (0.7354, 0.8188),
                397: (0.7721, 0.7727), 288: (0.8052, 0.7072), 361: (0.8298, 0.6227), 323: (0.8436, 0.5410),
                454: (0.8500, 0.4639)}
NOSE_BASE, NOSE_BASE_TEMPLATE = 2, (0.5000, 0.5742)
MASK_GROWTH = 1.1  # the jaw line pushed out from the nose base by 10%: an open jaw stays inside
MASK_MARGIN = 0.03  # of the side: the mask starts this far above the nose base
FACE_SHARE = 1 / 1.15  # the face oval's extent as a share of the crop side (the framing)

_T = np.array([complex(*TEMPLATE[i]) for i in RIGID])
_T_CENTRED = _T - _T.mean()


def _placement(points: np.ndarray) -> np.ndarray:
    """(k, 4) crop centre x, y, angle (radians, wrapped) and side, in source pixels, from (k, 25, 3)
    RIGID points: the similarity z t + c taking the template onto the points, least squares."""
    p = points[..., 0] + 1j * points[..., 1]
    z = (np.conj(_T_CENTRED) * (p - p.mean(-1, keepdims=True))).sum(-1) / (np.abs(_T_CENTRED) ** 2).sum()
    centre = p.mean(-1) + z * (0.5 + 0.5j - _T.mean())
    return np.column_stack([centre.real, centre.imag, np.angle(z), np.abs(z)])


GEOMETRY = Geometry(tuple(RIGID), _placement, angle_column=2)


def affine(cx: float, cy: float, angle: float, side: float, size: int) -> np.ndarray:
    """(2, 3) float64: source pixels -> crop pixels for a placement (the inverse of the fit)."""
    s = size / side
    c, n = np.cos(angle) * s, np.sin(angle) * s
    m = np.array([[c, n, 0.0], [-n, c, 0.0]])
    m[:, 2] = size / 2 - m[:, :2] @ np.array([cx, cy])
    return m


def aligned_crop(frame: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.warpAffine(frame, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class AlignedCrops:
    """Crop maker for aligned<size>: the template-aligned face of each frame, JPEG q95 with the
    lower-half restart marker; the matrices are kept (24 bytes a frame) for the affine member."""

    geometry = GEOMETRY

    def __init__(self, size: int):
        self.size, self.name = size, f"aligned{size}"
        self.sequence = JpegSequence(QUALITY, half_restart=True)
        self.matrices = np.zeros((1024, 2, 3), np.float32)  # by frame, doubled as needed (one array)

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        m = affine(*params, self.size)
        while t >= len(self.matrices):
            self.matrices = np.concatenate([self.matrices, np.zeros_like(self.matrices)])
        self.matrices[t] = m
        self.sequence.add(t, aligned_crop(frame, m, self.size))

    def result(self) -> dict[str, bytes | SpilledMember]:
        jpegs = self.sequence.getvalue()  # raises when a frame is missing
        matrices = self.matrices[:len(self.sequence)]
        return {f"{self.name}.jpgs": jpegs, f"{self.name}_affine.npy": encode_npy(matrices)}


def decode(data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) as (k, size, size, 3) uint8; only those frames are decoded."""
    return decode_jpeg_sequence(data, start, stop)


decode_affine = decode_npy


def to_crop(landmarks: np.ndarray, boxes: np.ndarray, matrices: np.ndarray) -> np.ndarray:
    """(n, 478, 2) crop pixels from the stored landmarks (96 px crop frame), meta's crop_boxes
    and the affine member."""
    points = crop_to_image(landmarks, np.asarray(boxes, np.float32))[..., :2]
    return np.einsum("nij,nkj->nki", matrices[:, :, :2], points) + matrices[:, None, :, 2]


def _mask(jaw: np.ndarray, nose: np.ndarray, size: int) -> np.ndarray:
    import cv2

    grown = nose + (jaw - nose) * MASK_GROWTH
    out = np.zeros((size, size), np.uint8)
    cv2.fillPoly(out, [np.round(grown * 16).astype(np.int32)], 255, lineType=cv2.LINE_8, shift=4)
    out[:max(0, int(np.ceil(nose[1] - MASK_MARGIN * size)))] = 0
    return out


def mouth_mask(size: int) -> np.ndarray:
    """(size, size) uint8, 255 where a generator repaints: the template's lower face (module doc)."""
    jaw = np.array(list(JAW_TEMPLATE.values())) * size
    return _mask(jaw, np.array(NOSE_BASE_TEMPLATE) * size, size)


def frame_mouth_mask(points: np.ndarray, size: int) -> np.ndarray:
    """The same region from one frame's (478, 2+) landmarks in crop pixels (`to_crop`)."""
    points = np.asarray(points, np.float64)
    return _mask(points[list(JAW_TEMPLATE), :2], points[NOSE_BASE, :2], size)


def derive_template(meshes: list[np.ndarray], iterations: int = 5) -> np.ndarray:
    """(478, 2) unit crop coordinates of the mean face of source-pixel meshes (each (n, 478, 3)):
    generalised Procrustes on RIGID, levelled on the eye corners, framed like rgb (before the
    left-right symmetrisation that gave TEMPLATE)."""
    c = np.concatenate([m[..., 0] + 1j * m[..., 1] for m in meshes])
    ref = c[0, RIGID]
    for _ in range(iterations):
        src = c[:, RIGID] - c[:, RIGID].mean(-1, keepdims=True)
        z = (np.conj(src) * (ref - ref.mean())).sum(-1) / (np.abs(src) ** 2).sum(-1)
        aligned = z[:, None] * (c - c[:, RIGID].mean(-1, keepdims=True)) + ref.mean()
        ref = aligned[:, RIGID].mean(0)
    mean = aligned.mean(0)
    mean = mean * np.exp(-1j * np.angle((mean[263] - mean[33]) + (mean[362] - mean[133])))
    top, chin, right, left = mean[10], mean[152], mean[234], mean[454]
    side = max(abs(left.real - right.real), abs(chin.imag - top.imag)) / FACE_SHARE
    midline = mean[[10, 151, 9, 8, 168, 6, 197, 195, 5, 4, 1]].real.mean()
    unit = (mean - complex(midline - side / 2, (top.imag + chin.imag) / 2 - side / 2)) / side
    return np.column_stack([unit.real, unit.imag])
