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
_U16 = struct.Struct(">H")  # JPEG header fields are big-endian


def encode_jpeg(frame: np.ndarray, quality: int = 95, half_restart: bool = False) -> bytes:
    """One RGB frame as a baseline JPEG (4:2:0). With `half_restart` the encoder puts a restart
    marker exactly where the lower half starts (`restart_interval`), so that half can later be
    decoded on its own (`lower_half_jpeg`) at half the cost; every JPEG decoder reads it as usual."""
    import cv2

    params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    interval = restart_interval(*frame.shape[:2]) if half_restart else 0
    if interval:
        params += [cv2.IMWRITE_JPEG_RST_INTERVAL, interval]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(frame[..., ::-1]), params)
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def restart_interval(height: int, width: int, mcu: int = 16) -> int:
    """MCUs in the upper half of a 4:2:0 frame (MCUs of 16 x 16 pixels), or 0 when the half
    does not fall on an MCU row (then no marker can split the frame there)."""
    top = height // 2
    return top // mcu * -(-width // mcu) if top and top % mcu == 0 else 0


_HALF_HEADER: list = [b"", b""]  # the last frame header split (through SOS) and its halved copy


def lower_half_jpeg(jpeg: bytes | memoryview) -> bytes | None:
    """The lower half of a frame written with `half_restart`, as a JPEG of its own, or None.

    A restart interval resets the DC predictors, so the entropy-coded data after the first
    restart marker is the lower half's MCUs, complete in themselves: the header (frame height
    halved) followed by that data is a valid JPEG of the lower half. Decoded, it equals the whole
    frame's lower half except the first row's chroma (libjpeg's upsampling no longer sees the row
    above: differences of a few levels). None when the frame has no such marker (stores written
    before rgb version jpeg95-rst-2), so callers decode the whole frame. The frames of a sequence
    share one header, so the last header parsed is kept and a frame that repeats it costs one
    comparison and one search.
    """
    data = bytes(jpeg)
    header, halved = _HALF_HEADER
    if not (header and data.startswith(header)):
        parsed = _split_header(data)
        if parsed is None:
            return None
        header, halved = _HALF_HEADER[:] = parsed
    rst = data.find(b"\xff\xd0", len(header))
    return halved + data[rst + 2:] if rst >= 0 else None


def _split_header(data: bytes) -> tuple[bytes, bytes] | None:
    """(header through SOS, the same with the frame height halved) when the frame has a restart
    interval of exactly its upper half's MCUs (4:2:0), else None."""
    i, sof, dri, sos_end = 2, -1, 0, -1
    while i + 4 <= len(data) and data[i] == 0xFF:
        marker, n = data[i + 1], (data[i + 2] << 8) | data[i + 3]
        if marker in (0xC0, 0xC1):
            sof = i
        elif marker == 0xDD:
            dri = (data[i + 4] << 8) | data[i + 5]
        elif marker == 0xDA:
            sos_end = i + 2 + n
            break
        i += 2 + n
    if sof < 0 or sos_end < 0 or not dri:
        return None
    h, w = (data[sof + 5] << 8) | data[sof + 6], (data[sof + 7] << 8) | data[sof + 8]
    if dri != restart_interval(h, w) or data[sof + 11] != 0x22:  # 4:2:0 luma sampling only
        return None
    header = data[:sos_end]
    return header, header[:sof + 5] + _U16.pack(h - h // 2) + header[sof + 7:]


def encode_jpeg_sequence(frames: np.ndarray, quality: int = 95, half_restart: bool = False) -> bytes:
    jpegs = [encode_jpeg(frame, quality, half_restart) for frame in frames]
    header = _U32.pack(len(jpegs)) + b"".join(_U32.pack(len(j)) for j in jpegs)
    return header + b"".join(jpegs)


def jpeg_sequence_length(data: bytes) -> int:
    return _U32.unpack_from(data, 0)[0]


def jpeg_sequence_frames(data: bytes, start: int = 0, stop: int | None = None) -> list[memoryview]:
    """The JPEG bytes of frames [start, stop) as zero-copy views (nothing decoded)."""
    count = _U32.unpack_from(data, 0)[0]
    stop = count if stop is None else min(stop, count)
    lengths = np.frombuffer(data, dtype="<u4", count=count, offset=4)
    offset = 4 + 4 * count + int(lengths[:start].sum(dtype=np.int64))
    view, out = memoryview(data), []
    for n in lengths[start:stop].tolist():
        out.append(view[offset:offset + n])
        offset += n
    return out


def jpeg_size(jpeg: bytes | memoryview) -> tuple[int, int]:
    """(height, width) of a JPEG from its header (nothing decoded)."""
    import simplejpeg

    h, w = simplejpeg.decode_jpeg_header(jpeg)[:2]
    return h, w


def decode_jpeg_into(jpeg: bytes | memoryview, out: np.ndarray | None = None, scale: int = 1,
                     gray: bool = False) -> np.ndarray:
    """One JPEG decoded into `out` (any writable buffer large enough; None: a new array), at
    1/scale of its size in the DCT domain; returns the frame, a view of `out` ((H, W, 1) gray).
    Decoding straight into a batch's rows saves the per-window stacking copies."""
    import simplejpeg

    size = {}
    if scale != 1:
        h, w = jpeg_size(jpeg)
        size = {"min_height": -(-h // scale), "min_width": -(-w // scale), "min_factor": scale}
    return simplejpeg.decode_jpeg(jpeg, colorspace="GRAY" if gray else "RGB", buffer=out, **size)


def decode_jpeg_sequence(data: bytes, start: int = 0, stop: int | None = None,
                         scale: int = 1, gray: bool = False) -> np.ndarray:
    """Frames [start, stop) as (k, H, W, 3) uint8 RGB ((k, H, W) with `gray`); only those JPEGs
    are decoded.

    libjpeg-turbo through simplejpeg: the same decoder and IDCT as OpenCV's imdecode (identical
    pixels at scale 1) with no BGR round trip, and `scale` in (1, 2, 4, 8) decodes at 1/scale
    of the size in the DCT domain (libjpeg's scaled IDCT), several times cheaper than decoding
    the full frame and averaging it down afterwards. A gray sequence (lip) decodes its luma only.
    """
    if scale not in (1, 2, 4, 8):
        raise ValueError(f"JPEG DCT-domain scale must be 1, 2, 4 or 8, not {scale}")
    jpegs = jpeg_sequence_frames(data, start, stop)
    if not jpegs:
        return np.zeros((0, 0, 0) if gray else (0, 0, 0, 3), np.uint8)
    out = np.stack([decode_jpeg_into(j, scale=scale, gray=gray) for j in jpegs])
    return out[..., 0] if gray else out
