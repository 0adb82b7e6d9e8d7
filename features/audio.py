"""Audio field: the utterance's 16 kHz mono audio as FLAC, the source of every audio feature."""
from __future__ import annotations

import numpy as np

from features.codecs import decode_flac, encode_flac
from features.media import SAMPLE_RATE

VERSION = "flac16-1"


def encode(audio: np.ndarray) -> bytes:
    return encode_flac(audio, SAMPLE_RATE)


def decode(data: bytes) -> np.ndarray:
    audio, rate = decode_flac(data)
    if rate != SAMPLE_RATE:
        raise ValueError(f"stored audio is {rate} Hz, expected {SAMPLE_RATE}")
    return audio
