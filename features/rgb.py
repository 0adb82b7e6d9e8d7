"""RGB field: aligned 96x96 face crops per frame as a JPEG sequence (q95), decodable per frame."""
from __future__ import annotations

import numpy as np

from features.codecs import decode_jpeg_sequence, encode_jpeg_sequence

VERSION = "jpeg95-1"
QUALITY = 95


def encode(crops: np.ndarray) -> bytes:
    return encode_jpeg_sequence(crops, QUALITY)


def decode(data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) as (k, 96, 96, 3) uint8; only those frames are decoded."""
    return decode_jpeg_sequence(data, start, stop)
