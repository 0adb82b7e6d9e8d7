"""What the data API hands out: whole utterances and windows, as plain dicts of numpy arrays.

Built from catalog.reader's utterances (read lazily: JPEG sequences stay bytes until a sample is
made, so a shard can be held and shuffled without decoding it). Layouts, as stored:

| field | whole utterance | window of k frames starting at frame t |
|---|---|---|
| rgb | (T, 96, 96, 3) uint8 | (k, 96, 96, 3) uint8 (only those k JPEGs are decoded) |
| lip | (T, 96, 96) uint8 grey | (k, 96, 96) uint8 |
| landmarks | (T, 478, 3) float16, crop pixels | (k, 478, 3) |
| parsing | (T, 96, 96) uint8 class ids | (k, 96, 96) |
| tdmm | (T, 71) float32 (+ `tdmm_id` (32,) per utterance) | (k, 71) |
| mel | (80, 1 + 16 T / 5) float16 (bands first) | (80, 80 k / 25) = (80, 16) for k = 5 |
| hubert | (2T, D) float16 | (2k, D) |
| whisper | (2T, d) float16, or (2T, layers + 1, d) with every layer | (2k, d) / (2k, layers + 1, d); per-frame generator windows: catalog.whisper_windows |
| fbank | (4T, 26) | (4k, 26) |
| audio | (640 T,) float32, 16 kHz | (640 k,) |
| landmarks68 | (T, 68, 2) float16, crop pixels | (k, 68, 2) |
| identity | dict: `embedding` (128,) float32, `spread`, ... | the same dict (one per utterance) |
| meta | dict (JSON) | (not windowed) |

Window rows follow DESIGN.md's per-field window table (`features.timebase.window_slice`):
rows [int(rate t / 25), + rate k / 25) of a field at `rate` Hz, so every field of a window covers
the same k / 25 seconds. Every field covers the windows t = 0 .. n_frames - k (`n_frames` is the
frames all the read fields cover). Read sync-corrected, a window's audio fields start |offset|
frames later or its visual fields do (catalog/sync_correction.py), and a whole utterance's fields
are cut to the paired frames.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from catalog import reader
from catalog.reader import JPEG_FIELDS, META, Shard, Utterance, rate_of, time_axis
from features.codecs import decode_npy
from features.fields import FIELDS
from features.timebase import FPS, WINDOW, window_slice

IDENTITY = ("utt_id", "key", "dataset", "speaker_id")  # key: the tar members' __key__


def frame_rows(rate: int, t: int, frames: int = WINDOW) -> slice:
    """Rows of a field at `rate` Hz covering video frames [t, t + frames): the timebase's window
    slice for 5-frame windows, the same rule for other lengths."""
    if frames == WINDOW:
        return window_slice(rate, t)
    start = int(rate * t / FPS)
    return slice(start, start + rate * frames // FPS)


def _along_time(value: np.ndarray, name: str, rows: slice) -> np.ndarray:
    index = [slice(None)] * value.ndim
    index[time_axis(name)] = rows
    return value[tuple(index)]


def _writable(value: np.ndarray) -> np.ndarray:
    """A copy where the reader's array is a read-only view on tar bytes (torch wants writable)."""
    return value if value.flags.writeable else value.copy()


def field_clip(utt: Utterance, name: str, t: int, frames: int) -> np.ndarray:
    """Field `name` of `utt` over frames [t, t + frames) of its (sync-corrected) timeline."""
    start = t if utt.sync is None else utt.sync.start(name, t)
    value = utt.data[name]
    if rate_of(name) == 0:  # one value per utterance (identity): the same in every window
        return value
    if name in JPEG_FIELDS:  # JPEG bytes: decode only these frames
        return FIELDS[name].decode(value, start, start + frames)
    return np.array(_along_time(value, name, frame_rows(rate_of(name), start, frames)))


def whole_value(utt: Utterance, name: str) -> Any:
    """One field of a whole utterance, decoded; cut to the paired frames when sync-corrected."""
    value = utt.data[name]
    if name == META or rate_of(name) == 0:
        return value
    if utt.sync is not None:
        return field_clip(utt, name, 0, utt.n_frames)
    if name in JPEG_FIELDS:
        return FIELDS[name].decode(value)
    return _writable(value)


def extra_value(ext: str, data: bytes) -> Any:
    return decode_npy(data) if ext.endswith(".npy") else json.loads(data) if ext.endswith("json") else data


def whole_sample(utt: Utterance) -> dict:
    """{utt_id, key, dataset, speaker_id, n_frames, row, <field>: array, <extra member>: value}."""
    out: dict[str, Any] = {k: getattr(utt, k) for k in IDENTITY}
    out["n_frames"] = utt.n_frames
    out["row"] = utt.row
    for name in utt.data:
        out[name] = whole_value(utt, name)
    for ext, data in utt.extras.items():  # tdmm_id.npy -> "tdmm_id"
        out[ext.removesuffix(".npy")] = extra_value(ext, data)
    return out


def window_sample(utt: Utterance, t: int, frames: int = WINDOW) -> dict:
    """{utt_id, key, dataset, speaker_id, t, <field>: window}: every field over the same frames."""
    out: dict[str, Any] = {k: getattr(utt, k) for k in IDENTITY}
    out["t"] = t
    for name in utt.data:
        out[name] = field_clip(utt, name, t, frames)
    return out


def window_starts(utts: list[Utterance], frames: int, stride: int) -> list[tuple[int, int]]:
    """(utterance index, start frame) of every window of `utts`, in reading order."""
    return [(i, t) for i, u in enumerate(utts) for t in range(0, u.n_frames - frames + 1, stride)]


def check_request(fields: list[str], window: int | None, stride: int) -> None:
    if not fields:
        raise ValueError("name at least one field to read")
    if window is not None:
        if META in fields:
            raise ValueError("meta has no timebase: read it with window=None (whole utterances)")
        if window < 1 or stride < 1:
            raise ValueError(f"window ({window}) and stride ({stride}) must be >= 1 frame")


def shard_samples(store: Path | str, fields: list[str], shard: Shard, keys: list[str],
                  rows: list[dict], window: int | None = WINDOW, stride: int = 1,
                  rng: np.random.Generator | None = None, sync_correct: bool = False) -> Iterator[dict]:
    """The samples of one shard's `rows`: whole utterances (window None) or windows.

    Without `rng` the shard is streamed one utterance at a time; with it the shard's utterances
    are held (JPEGs as bytes) and their windows (or the utterances) come in a permuted order.
    """
    wanted = {r["key"]: r for r in rows}
    utts = reader.read_shard(store, fields, shard, keys, wanted, sync_correct=sync_correct,
                             extras=window is None)
    if window is not None:
        utts = (u for u in utts if u.n_frames >= window)
    if rng is None:
        for u in utts:
            if window is None:
                yield whole_sample(u)
            else:
                for t in range(0, u.n_frames - window + 1, stride):
                    yield window_sample(u, t, window)
        return
    held = list(utts)
    if window is None:
        for i in rng.permutation(len(held)):
            yield whole_sample(held[i])
        return
    starts = window_starts(held, window, stride)
    for j in rng.permutation(len(starts)):
        i, t = starts[j]
        yield window_sample(held[i], t, window)
