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
from array import array

import numpy as np

from features.codecs import (SpilledMember, SpillFile, decode_jpeg_sequence, encode_jpeg, encode_jpeg_sequence,
                             spill_wanted)
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
    lengths, then the JPEGs).

    The JPEGs are held in memory until they pass `codecs.SPILL_OVER` bytes (when spilling is on);
    from then on they go to a spill file as they are made, and `getvalue` gives a SpilledMember
    (the member's bytes stay on disk until the tar writer copies them)."""

    def __init__(self, quality: int = QUALITY, half_restart: bool = False):
        self.quality, self.half_restart, self.parts = quality, half_restart, {}
        self.held = 0  # bytes in `parts`
        self.spill: SpillFile | None = None
        self.offsets, self.lengths = array("q"), array("q")  # per frame once spilled (-1: not yet)

    def add(self, t: int, image: np.ndarray) -> None:
        jpeg = encode_jpeg(image, self.quality, self.half_restart)
        if self.spill is None:
            self.parts[t] = jpeg
            self.held += len(jpeg)
            if spill_wanted(self.held):
                self._start_spilling()
        else:
            self._put(t, jpeg)

    def _start_spilling(self) -> None:
        self.spill = SpillFile()
        for t in sorted(self.parts):
            self._put(t, self.parts[t])
        self.parts, self.held = {}, 0

    def _put(self, t: int, jpeg: bytes) -> None:
        if t >= len(self.offsets):
            grow = max(t + 1 - len(self.offsets), len(self.offsets))
            self.offsets.extend([-1] * grow)
            self.lengths.extend([-1] * grow)
        self.offsets[t], self.lengths[t] = self.spill.append(jpeg), len(jpeg)

    def __len__(self) -> int:
        """Frames added so far."""
        if self.spill is None:
            return len(self.parts)
        return len(self.lengths) - self.lengths.count(-1)

    def getvalue(self) -> bytes | SpilledMember:
        n = len(self)
        held = sorted(self.parts) if self.spill is None else [t for t, k in enumerate(self.lengths) if k >= 0]
        if held != list(range(n)):
            raise ValueError(f"JPEG sequence is missing frames: has {n} of {max(held, default=-1) + 1}")
        if self.spill is None:
            jpegs = [self.parts[t] for t in range(n)]
            return _U32.pack(len(jpegs)) + b"".join(_U32.pack(len(j)) for j in jpegs) + b"".join(jpegs)
        offsets, lengths = self.offsets[:n], self.lengths[:n]
        head = _U32.pack(n) + np.frombuffer(lengths, np.int64).astype("<u4").tobytes()
        return SpilledMember(self.spill, head, offsets, lengths)


class FaceCrops:
    """Crop maker for the rgb field: the aligned face square of each frame, 96x96, JPEG q95."""

    name = "rgb"
    geometry: Geometry | None = None  # the face square the tracker settles

    def __init__(self):
        self.sequence = JpegSequence(QUALITY, half_restart=True)

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        self.sequence.add(t, square_warp(frame, *params, CROP_SIZE))

    def result(self) -> bytes | SpilledMember:
        return self.sequence.getvalue()
