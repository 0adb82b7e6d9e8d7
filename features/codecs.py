"""Byte codecs for tar members: arrays as .npy, per-frame JPEG sequences, FLAC audio, JSON.

Every encoder is deterministic (same input, same bytes) so re-runs give byte-identical tars.

Spilling: a member built frame by frame over a long utterance (a JPEG sequence, the landmarks;
also the face tracker's per-frame points, features.face.PointStore) can be built in an anonymous
temporary file instead of memory (`SpilledMember`: its size is known and its bytes are read back
in blocks), so a worker's memory does not grow with one utterance's length. It is opt-in (`with spilling():`, which the extraction worker opens around its tars):
every other caller gets bytes as before. A spilled member holds the bytes the in-memory encoder
gives.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import tempfile
from array import array
from contextlib import contextmanager
from typing import Iterator

import numpy as np

SPILL_THRESHOLD = 8 << 20  # `spilling()`: members over this many bytes are built on disk
SPILL_OVER: int | None = None  # the threshold in force (None: never spill, outside `spilling()`)
SPILL_DIR: str | None = None  # where spill files live (None: the system's TMPDIR)
READ_BLOCK = 1 << 20  # bytes a spilled member is read back in


@contextmanager
def spilling(directory: str | None = None, over: int | None = None) -> Iterator[None]:
    """Within the block, members larger than `over` bytes (default SPILL_THRESHOLD) are built in
    temporary files in `directory` (default TMPDIR; it should be on disk, not a RAM-backed tmpfs).
    Whoever opens the block consumes the members inside it (the extraction worker's tars)."""
    global SPILL_OVER, SPILL_DIR
    saved = SPILL_OVER, SPILL_DIR
    SPILL_OVER, SPILL_DIR = (SPILL_THRESHOLD if over is None else over), directory
    try:
        yield
    finally:
        SPILL_OVER, SPILL_DIR = saved


def spill_wanted(nbytes: int) -> bool:
    return SPILL_OVER is not None and nbytes > SPILL_OVER


class SpillFile:
    """An append-only anonymous temporary file (unlinked at once: nothing is left behind, even
    when the process is killed; the space is freed when the object is closed or collected)."""

    def __init__(self):
        where = SPILL_DIR if SPILL_DIR and os.path.isdir(SPILL_DIR) else None
        self.file = tempfile.TemporaryFile(prefix=".unisync-spill-", dir=where, buffering=0)
        self.size = 0

    def append(self, data: bytes | memoryview) -> int:
        """Write `data` at the end; returns its offset."""
        offset, view = self.size, memoryview(data).cast("B")
        while view:
            n = os.pwrite(self.file.fileno(), view, self.size)
            self.size += n
            view = view[n:]
        return offset

    def read(self, offset: int, n: int) -> bytes:
        data = os.pread(self.file.fileno(), n, offset)
        if len(data) != n:
            raise OSError(f"spill file: read {len(data)} of {n} bytes at {offset}")
        return data

    def close(self) -> None:
        self.file.close()


class SpilledMember:
    """A tar member held on disk: `head` (in memory) followed by byte ranges of a spill file.

    `len()` is its size; `chunks()` yields its bytes in order, in blocks of about READ_BLOCK
    (adjacent ranges are read together); `getvalue()` gives them all at once (small members,
    tests); `sha256()` digests them block by block. The ranges are parallel arrays so a member
    of 100,000 frames costs 1.6 MB of index, not a Python object per frame.
    """

    def __init__(self, spill: SpillFile, head: bytes, offsets: array, lengths: array):
        self.spill, self.head, self.offsets, self.lengths = spill, head, offsets, lengths
        self.size = len(head) + sum(lengths)
        self.source: np.ndarray | None = None  # the array the member was written from, if exactly it

    def __len__(self) -> int:
        return self.size

    def chunks(self) -> Iterator[bytes]:
        if self.head:
            yield self.head
        yield from self.data_chunks()

    def data_chunks(self) -> Iterator[bytes]:
        """The bytes after `head`, read from the spill file in blocks."""
        start, end = -1, -1
        for offset, n in zip(self.offsets, self.lengths):
            if offset == end and end - start + n <= READ_BLOCK:
                end += n
                continue
            if end > start:
                yield self.spill.read(start, end - start)
            start, end = offset, offset + n
            while end - start > READ_BLOCK:  # one range larger than a block: read it in blocks
                yield self.spill.read(start, READ_BLOCK)
                start += READ_BLOCK
        if end > start:
            yield self.spill.read(start, end - start)

    def getvalue(self) -> bytes:
        return b"".join(self.chunks())

    def sha256(self) -> str:
        h = hashlib.sha256()
        for chunk in self.chunks():
            h.update(chunk)
        return h.hexdigest()


def as_bytes(data: bytes | SpilledMember) -> bytes:
    """A member's bytes in memory, whether it was spilled or not."""
    return data.getvalue() if isinstance(data, SpilledMember) else data


def npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """The .npy header `np.save` writes for a C-ordered array of `shape` and `dtype`."""
    from numpy.lib import format as npy_format

    buf = io.BytesIO()
    header = {"descr": npy_format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False,
              "shape": tuple(int(n) for n in shape)}
    try:
        npy_format.write_array_header_1_0(buf, header)
    except ValueError:  # a header over 64 KiB: np.save switches to version 2.0 the same way
        buf = io.BytesIO()
        npy_format.write_array_header_2_0(buf, header)
    return buf.getvalue()


def spill_npy(blocks: Iterator[np.ndarray], shape: tuple[int, ...], dtype: np.dtype) -> SpilledMember:
    """An .npy member of `shape` written block by block (C order along the first axis) to a
    spill file: the bytes `encode_npy` gives for the whole array."""
    spill = SpillFile()
    for block in blocks:
        spill.append(np.ascontiguousarray(block, dtype=dtype).reshape(-1).view(np.uint8))
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if spill.size != expected:
        raise ValueError(f"spilled .npy holds {spill.size} bytes, its shape {shape} needs {expected}")
    return SpilledMember(spill, npy_header(shape, dtype), array("q", [0]), array("q", [spill.size]))


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes | SpilledMember) -> np.ndarray:
    if isinstance(data, SpilledMember):
        return _read_spilled_npy(data)
    return np.load(io.BytesIO(data), allow_pickle=False)


def npy_view(data: bytes) -> np.ndarray:
    """An .npy member's array as a read-only view of its bytes (no copy)."""
    from numpy.lib import format as npy_format

    head = io.BytesIO(data[:16 + 65536] if len(data) > 16 + 65536 else data)
    version = npy_format.read_magic(head)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = read_header(head)
    count = int(np.prod(shape, dtype=np.int64))
    flat = np.frombuffer(data, dtype, count=count, offset=head.tell())
    return flat.reshape(shape[::-1]).T if fortran else flat.reshape(shape)


def _read_spilled_npy(member: SpilledMember) -> np.ndarray:
    """A spilled .npy read straight into one array (no second copy of its bytes)."""
    from numpy.lib import format as npy_format

    head = io.BytesIO(member.head)
    version = npy_format.read_magic(head)
    read_header = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, fortran, dtype = read_header(head)
    if fortran or head.tell() != len(member.head):
        raise ValueError("spilled .npy: unexpected header")
    out = np.empty(shape, dtype)
    flat, at = out.reshape(-1).view(np.uint8), 0
    for chunk in member.data_chunks():
        flat[at:at + len(chunk)] = np.frombuffer(chunk, np.uint8)
        at += len(chunk)
    if at != flat.size:
        raise ValueError(f"spilled .npy: {at} data bytes for a {shape} {dtype} array")
    return out


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
