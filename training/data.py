"""Read a split of the store into memory: the catalog rows, then ONLY the run's field tars.

Each field is its own tar series (DESIGN.md, Store layout), so `mel_landmarks` never opens an rgb
or hubert tar. For every shard the field tars are iterated with WebDataset in lockstep and their
keys checked against each other and against the catalog's shard plan, so a misaligned series fails
loudly instead of pairing one utterance's audio with another's face.

`stream_utterances` is a generator over shards, so a streaming trainer can consume it directly
later; `load_utterances` simply collects it (a first-cut store of a few thousand utterances fits in
memory: landmarks stay float16, rgb stays as JPEG-sequence bytes and is decoded per window).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from catalog.layout import table_path, tar_path
from features.codecs import decode_npy, jpeg_sequence_length
from features.fields import ERROR_EXT, FIELDS
from features.timebase import FPS, WINDOW, n_windows, window_slice

# Rows per second of every field the trainer knows; later fields (hubert, parsing, tdmm) are not in
# features.fields yet, so their rate comes from the DESIGN.md timebase table.
RATES = {"mel": 80, "hubert": 50, "fbank": 100, "rgb": FPS, "parsing": FPS, "landmarks": FPS,
         "tdmm": FPS, "lip": FPS}
CROP = 96  # face crops (rgb, parsing, landmarks coordinates) are 96 x 96 pixels


class StoreError(RuntimeError):
    """The store cannot serve the requested run (missing field, split or tar)."""


@dataclass
class Utterance:
    """One utterance's fields in memory, ready for window slicing."""

    utt_id: str
    key: str
    dataset: str
    speaker_id: str
    split: str
    n_frames: int  # usable video frames: every field covers every window start in [0, n_windows)
    data: dict[str, Any] = field(default_factory=dict)  # field -> array (or JPEG-sequence bytes)

    @property
    def n_windows(self) -> int:
        return n_windows(self.n_frames)


def rate_of(name: str) -> int:
    if name in FIELDS:
        return FIELDS[name].rate
    if name in RATES:
        return RATES[name]
    raise StoreError(f"unknown field {name!r}")


def read_catalog(store: Path | str) -> list[dict]:
    """Every row of `<store>/catalog/utterances.parquet`."""
    import pyarrow.parquet as pq

    path = table_path(Path(store), "utterances")
    if not path.exists():
        raise StoreError(f"{path} does not exist: {store} is not an extracted store "
                         "(run pipelines/extract.py first)")
    return pq.read_table(path).to_pylist()


def select_rows(rows: list[dict], fields: list[str], splits: Iterable[str],
                store: Path | str = "<store>") -> list[dict]:
    """Rows of `splits` whose needed fields are all 'ok' and that hold at least one window.

    The filter is per needed field rather than the row's overall `status`, so an utterance whose
    rgb failed still trains mel_landmarks (its status is 'error' but mel and landmarks are 'ok').
    """
    splits = list(splits)
    columns = set(rows[0]) if rows else set()
    for name in fields:
        if f"field_{name}" not in columns:
            raise StoreError(f"store {store} lacks field {name!r} (no field_{name} column in its "
                             f"utterances catalog); extract it with pipelines/extract.py --fields {name}")
    kept = [r for r in rows
            if r.get("split") in splits and r.get("n_frames") is not None
            and r["n_frames"] >= WINDOW and all(r[f"field_{n}"] == "ok" for n in fields)]
    if not kept:
        raise StoreError(f"store {store} has no utterance with fields {fields} 'ok' in split(s) "
                         f"{splits}")
    return kept


def frames_covered(name: str, length: int, n_frames: int) -> int:
    """The largest n <= n_frames whose last window [n-5, n) fits in `length` rows of the field."""
    rate = rate_of(name)
    n = n_frames
    while n >= WINDOW and window_slice(rate, n - WINDOW).stop > length:
        n -= 1
    return n


def prepare_landmarks(landmarks: np.ndarray, center: bool = True) -> np.ndarray:
    """Crop pixels -> about [-1, 1]; with `center`, minus the utterance's mean shape.

    Why centre: the mean shape is mostly identity (face geometry) and a held-out speaker's is new
    to the model; what predicts the sound is how the mouth moves around that mean, which looks the
    same on every face. The deltas are small (a few pixels), so they are scaled up by 4.
    """
    lm = (landmarks.astype(np.float32) - CROP / 2) / (CROP / 2)
    if center:
        lm = 4.0 * (lm - lm.mean(axis=0, keepdims=True))
    return lm.astype(np.float16)


def decode_member(name: str, ext: str, data: bytes, landmarks_center: bool = True) -> Any:
    """A field member's bytes as the trainer keeps them in memory."""
    if name == "rgb":
        return data  # JPEG sequence: only the frames of the windows used are ever decoded
    if name in FIELDS:
        array = FIELDS[name].decode(data)
    elif ext.endswith("npy"):
        array = decode_npy(data)
    else:
        raise StoreError(f"no decoder for field {name!r} member .{ext}")
    if name == "landmarks":
        return prepare_landmarks(array, landmarks_center)
    return array


def _length(name: str, value: Any) -> int:
    """Rows of a field on its own timebase (mel is stored bands-first: (80, T))."""
    if name == "rgb":
        return jpeg_sequence_length(value)
    return value.shape[1] if name == "mel" else value.shape[0]


def _field_samples(url: Path) -> Iterator[dict]:
    import webdataset as wds

    return iter(wds.WebDataset([str(url)], shardshuffle=False, empty_check=False))


def stream_utterances(store: Path | str, fields: list[str], rows: list[dict],
                      all_rows: list[dict] | None = None,
                      landmarks_center: bool = True) -> Iterator[Utterance]:
    """Utterances of `rows`, shard by shard, reading only the tars of `fields`.

    `all_rows` (the whole catalog; read from the store when omitted) gives each shard's full
    member order, so the keys read from every field tar are checked against the plan; members of
    utterances that are not wanted, placeholders (`<key>.error.json`) included, are skipped.
    """
    store = Path(store)
    wanted = {(r["dataset"], r["key"]): r for r in rows}
    plan: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in all_rows if all_rows is not None else read_catalog(store):
        plan[(r["dataset"], r["shard_id"])].append(r)
    shards = sorted({(r["dataset"], r["shard_id"]) for r in rows})
    for dataset, shard_id in shards:
        order = [r["key"] for r in sorted(plan[(dataset, shard_id)], key=lambda r: r["index_in_shard"])]
        urls = [tar_path(store, dataset, name, shard_id) for name in fields]
        for name, url in zip(fields, urls):
            if not url.exists():
                raise StoreError(f"store {store} lacks the {name!r} tar of shard {shard_id} of "
                                 f"{dataset!r}: {url}")
        series = [_field_samples(url) for url in urls]
        position = 0
        while True:
            samples = [next(it, None) for it in series]
            if all(s is None for s in samples):
                break
            keys = [s["__key__"] if s is not None else None for s in samples]
            expected = order[position] if position < len(order) else None
            if any(k != expected for k in keys):
                raise StoreError(
                    f"field tars of {dataset} shard {shard_id} are misaligned at member {position}: "
                    + ", ".join(f"{n}={k!r}" for n, k in zip(fields, keys))
                    + f" (catalog plan: {expected!r})")
            position += 1
            row = wanted.get((dataset, expected))
            if row is None:
                continue
            utt = Utterance(row["utt_id"], row["key"], dataset, row["speaker_id"], row["split"],
                            int(row["n_frames"]))
            for name, sample in zip(fields, samples):
                ext = FIELDS[name].ext if name in FIELDS else next(
                    (k for k in sample if not k.startswith("__")), "")
                if ext not in sample or ext == ERROR_EXT:
                    got = [k for k in sample if not k.startswith("__")]
                    what = "a failure placeholder" if ERROR_EXT in got else f"members {got}"
                    raise StoreError(f"{row['utt_id']}: catalog says field {name!r} is 'ok' but its "
                                     f"tar {tar_path(store, dataset, name, shard_id)} holds {what}")
                value = decode_member(name, ext, sample[ext], landmarks_center)
                utt.data[name] = value
                utt.n_frames = frames_covered(name, _length(name, value), utt.n_frames)
            if utt.n_windows > 0:
                yield utt
        if position != len(order):
            raise StoreError(f"field tars of {dataset} shard {shard_id} hold {position} members, "
                             f"the catalog plans {len(order)}")


def load_utterances(store: Path | str, fields: list[str], splits: Iterable[str],
                    landmarks_center: bool = True) -> list[Utterance]:
    """All usable utterances of `splits` with exactly `fields` in memory (catalog order)."""
    all_rows = read_catalog(store)
    rows = select_rows(all_rows, fields, splits, store)
    return list(stream_utterances(store, fields, rows, all_rows, landmarks_center))


def load_splits(store: Path | str, fields: list[str], splits: Iterable[str],
                landmarks_center: bool = True) -> dict[str, list[Utterance]]:
    """split -> its usable utterances, reading the field tars once; every split must be non-empty."""
    splits = list(splits)
    all_rows = read_catalog(store)
    rows = []
    for split in splits:  # raises, naming the split and the store, when one has nothing usable
        rows += select_rows(all_rows, fields, [split], store)
    out: dict[str, list[Utterance]] = {s: [] for s in splits}
    for utt in stream_utterances(store, fields, rows, all_rows, landmarks_center):
        out[utt.split].append(utt)
    for split, utts in out.items():
        if not utts:
            raise StoreError(f"store {store}: no utterance of split {split!r} is long enough for a "
                             f"{WINDOW}-frame window")
    return out
