"""RGB field: aligned 96x96 face crops per frame as a JPEG sequence (q95), decodable per frame.

Each frame carries a restart marker where its lower half starts (version jpeg95-rst-2), so the
trainer decodes only the lower half the sync expert sees (`codecs.lower_half_jpeg`); the frames
stay standard JPEGs. Stores written before (jpeg95-1) still read; their windows decode whole frames.

`FaceCrops` is the crop maker the face tracker feeds while it streams through a clip: each crop
is cut and JPEG-encoded as soon as its frame's track is settled, so only the JPEG bytes (a few
kB per frame) are kept.
"""
from __future__ import annotations

import struct

import numpy as np

from features.codecs import decode_jpeg_sequence, encode_jpeg, encode_jpeg_sequence
from features.face import CROP_SIZE, Geometry, square_warp

VERSION = "jpeg95-rst-2"
QUALITY = 95
_U32 = struct.Struct("<I")


def encode(crops: np.ndarray) -> bytes:
    return encode_jpeg_sequence(crops, QUALITY, half_restart=True)


def decode(data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) as (k, 96, 96, 3) uint8; only those frames are decoded."""
    return decode_jpeg_sequence(data, start, stop)


class JpegSequence:
    """A JPEG sequence built one frame at a time, in any order: the same bytes as
    `codecs.encode_jpeg_sequence` on the frames in index order (a uint32 count, the uint32
    lengths, then the JPEGs)."""

    def __init__(self, quality: int = QUALITY, half_restart: bool = False):
        self.quality, self.half_restart, self.parts = quality, half_restart, {}

    def add(self, t: int, image: np.ndarray) -> None:
        self.parts[t] = encode_jpeg(image, self.quality, self.half_restart)

    def getvalue(self) -> bytes:
        if sorted(self.parts) != list(range(len(self.parts))):
            raise ValueError(f"JPEG sequence is missing frames: has {len(self.parts)} of "
                             f"{max(self.parts, default=-1) + 1}")
        jpegs = [self.parts[t] for t in range(len(self.parts))]
        return _U32.pack(len(jpegs)) + b"".join(_U32.pack(len(j)) for j in jpegs) + b"".join(jpegs)


class FaceCrops:
    """Crop maker for the rgb field: the aligned face square of each frame, 96x96, JPEG q95."""

    name = "rgb"
    geometry: Geometry | None = None  # the face square the tracker settles

    def __init__(self):
        self.sequence = JpegSequence(QUALITY, half_restart=True)

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        self.sequence.add(t, square_warp(frame, *params, CROP_SIZE))

    def result(self) -> bytes:
        return self.sequence.getvalue()
