"""Byte codecs for tar members: arrays as .npy, per-frame JPEG sequences, FLAC audio, JSON.

Every encoder is deterministic (same input, same bytes) so re-runs give byte-identical tars.
"""
from __future__ import annotations

import io
import json
import struct

import numpy as np


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_json(obj: dict) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def decode_json(data: bytes) -> dict:
    return json.loads(data)


def encode_flac(audio: np.ndarray, sample_rate: int) -> bytes:
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, audio, sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def decode_flac(data: bytes) -> tuple[np.ndarray, int]:
    import soundfile

    audio, rate = soundfile.read(io.BytesIO(data), dtype="float32")
    return audio, rate


# A JPEG sequence: uint32 count, count uint32 byte lengths, then the JPEGs back to back.
# The index up front lets a reader decode only the frames of the windows it uses.
_U32 = struct.Struct("<I")


def encode_jpeg_sequence(frames: np.ndarray, quality: int = 95) -> bytes:
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    jpegs = []
    for frame in frames:
        ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), params)
        if not ok:
            raise ValueError("JPEG encoding failed")
        jpegs.append(buf.tobytes())
    header = _U32.pack(len(jpegs)) + b"".join(_U32.pack(len(j)) for j in jpegs)
    return header + b"".join(jpegs)


def jpeg_sequence_length(data: bytes) -> int:
    return _U32.unpack_from(data, 0)[0]


def decode_jpeg_sequence(data: bytes, start: int = 0, stop: int | None = None) -> np.ndarray:
    """Frames [start, stop) as (k, H, W, 3) uint8 RGB; only those JPEGs are decoded."""
    import cv2

    count = _U32.unpack_from(data, 0)[0]
    lengths = np.frombuffer(data, dtype="<u4", count=count, offset=4).astype(np.int64)
    offsets = 4 + 4 * count + np.concatenate([[0], np.cumsum(lengths)])
    stop = count if stop is None else min(stop, count)
    frames = [cv2.imdecode(np.frombuffer(data, np.uint8, int(lengths[i]), int(offsets[i])),
                           cv2.IMREAD_COLOR)[..., ::-1] for i in range(start, stop)]
    return np.stack(frames) if frames else np.zeros((0, 0, 0, 3), np.uint8)
