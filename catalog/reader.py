"""The store's one reader: catalog rows, then only the wanted fields' tars, shard by shard.

Everything that reads utterances out of a store goes through here: the trainer (training/data.py
adds its per-run settings on top), the sync pass and scorers, and the public data API
(`catalog.open_store`, catalog/store.py). Each field is its own tar series (DESIGN.md, Store
layout), so reading `mel` and `landmarks` never opens an rgb or hubert tar. A shard's field tars
are read in lockstep by `catalog.tars.iter_shard`, which checks their keys against each other and
against the catalog's shard plan, so a misaligned series fails loudly instead of pairing one
utterance's audio with another's face.

What `decode_member` (the default) keeps in memory per utterance:

| field | kept |
|---|---|
| rgb, lip (.jpgs) | the JPEG-sequence bytes: a reader decodes only the frames it uses |
| mel, landmarks, hubert, whisper, tdmm, fbank (.npy) | a read-only zero-copy view on the member bytes (float16 stays float16) |
| parsing (.npy.gz) | the uint8 label maps (gzip is whole-member, so it is inflated once) |
| audio (.flac) | float32 samples |
| meta (.json) | the JSON object |

`decode_field` decodes every member in full through the field registry (features/fields.py).

Placeholders (`<key>.error.json`) and utterances not asked for are skipped undecoded; a row the
catalog calls 'ok' whose tar holds a placeholder is a StoreError (the store contradicts itself).
A row carrying a `sync_offset` is read sync-corrected (catalog/sync_correction.py).
"""
from __future__ import annotations

import gzip
import io
import json
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from catalog import sync_correction
from catalog.layout import table_path, tar_path
from catalog.plan import shard_keys
from features.codecs import jpeg_sequence_length
from features.fields import ERROR_EXT, FIELDS, META_EXT
from features.timebase import WINDOW, n_windows, window_slice

Shard = tuple[str, int]  # (dataset, shard_id)
ROW_COLUMNS = ("utt_id", "key", "dataset", "speaker_id", "split", "shard_id", "index_in_shard", "n_frames")
JPEG_FIELDS = ("rgb", "lip")  # JPEG sequences (the `.jpgs` container, catalog/wds.py)
META = "meta"  # the per-utterance JSON every extraction writes; no timebase, no windows


class StoreError(RuntimeError):
    """The store cannot serve the request (missing field, split or tar; a self-contradiction)."""


@dataclass
class Utterance:
    """One utterance's fields in memory, as read from its shard."""

    utt_id: str
    key: str
    dataset: str
    speaker_id: str
    split: str
    n_frames: int  # usable video frames: every field covers every window start in [0, n_windows)
    data: dict[str, Any] = field(default_factory=dict)  # field -> array view (or JPEG bytes)
    shard: Shard | None = None
    sync: Any = None  # catalog.sync_correction.SyncCorrection when read sync-corrected
    row: dict | None = None  # the catalog row it was read for
    extras: dict[str, bytes] = field(default_factory=dict)  # other members (tdmm_id.npy), if kept

    @property
    def n_windows(self) -> int:
        return n_windows(self.n_frames)


# ---------------------------------------------------------------------------------------------
# fields: registry look-ups
# ---------------------------------------------------------------------------------------------
def field_spec(name: str):
    """The registry entry (rate, member extension, decoder) of a field."""
    if name not in FIELDS:
        raise StoreError(f"unknown field {name!r}; known: {sorted(FIELDS)}")
    return FIELDS[name]


def rate_of(name: str) -> int:
    return field_spec(name).rate


def ext_of(name: str) -> str:
    return META_EXT if name == META else field_spec(name).ext


def time_axis(name: str) -> int:
    """The axis along which a field's rows follow time (mel is stored bands-first: (80, T))."""
    return 1 if name == "mel" else 0


# ---------------------------------------------------------------------------------------------
# the catalog
# ---------------------------------------------------------------------------------------------
def read_catalog(store: Path | str, fields: Iterable[str] | None = None,
                 extra: Iterable[str] = ()) -> list[dict]:
    """Rows of `<store>/catalog/utterances.parquet`: every column, or with `fields` only what a
    reader needs (ROW_COLUMNS, those fields' status columns and `extra`; a fraction of the bytes
    of a wide catalog)."""
    import pyarrow.parquet as pq

    path = table_path(Path(store), "utterances")
    if not path.exists():
        raise StoreError(f"{path} does not exist: {store} is not an extracted store "
                         "(run pipelines/extract.py first)")
    if fields is None:
        return pq.read_table(path).to_pylist()
    names = set(pq.read_schema(path).names)
    wanted = [*ROW_COLUMNS, *(f"field_{f}" for f in fields), *extra]  # extra: e.g. sync_offset
    return pq.read_table(path, columns=[c for c in wanted if c in names]).to_pylist()


def check_fields(columns: Iterable[str], fields: Iterable[str], store: Path | str) -> None:
    """StoreError naming the first field the catalog has no status column for."""
    columns = set(columns)
    for name in fields:
        if f"field_{name}" not in columns:
            raise StoreError(f"store {store} lacks field {name!r} (no field_{name} column in its "
                             f"utterances catalog); extract it with pipelines/extract.py --fields {name}")


def select_rows(rows: list[dict], fields: list[str], splits: Iterable[str],
                store: Path | str = "<store>") -> list[dict]:
    """Rows of `splits` whose needed fields are all 'ok' and that hold at least one window.

    The filter is per needed field rather than the row's overall `status`, so an utterance whose
    rgb failed still serves mel + landmarks (its status is 'error' but mel and landmarks are 'ok').
    """
    splits = list(splits)
    check_fields(rows[0] if rows else (), fields, store)
    kept = [r for r in rows
            if r.get("split") in splits and r.get("n_frames") is not None
            and r["n_frames"] >= WINDOW and all(r[f"field_{n}"] == "ok" for n in fields)]
    if not kept:
        raise StoreError(f"store {store} has no utterance with fields {fields} 'ok' in split(s) "
                         f"{splits}")
    return kept


def shard_plan(all_rows: list[dict]) -> dict[Shard, list[str]]:
    """(dataset, shard_id) -> member keys in plan order: the store's one index (catalog.plan)."""
    return shard_keys(all_rows)


def plan_of(store: Path | str, all_rows: list[dict] | dict[Shard, list[str]] | None) -> dict[Shard, list[str]]:
    """The shard plan from catalog rows, a plan already built, or the store's catalog."""
    if isinstance(all_rows, dict):
        return all_rows
    return shard_plan(all_rows if all_rows is not None else read_catalog(store, fields=()))


def rows_by_shard(rows: Iterable[dict]) -> dict[Shard, list[dict]]:
    """`rows` grouped by (dataset, shard_id), in the order given (one pass)."""
    out: dict[Shard, list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["dataset"], int(r["shard_id"]))].append(r)
    return dict(out)


def shard_list(rows: Iterable[dict]) -> list[Shard]:
    """The sorted (dataset, shard_id) list holding `rows`."""
    return sorted({(r["dataset"], int(r["shard_id"])) for r in rows})


# ---------------------------------------------------------------------------------------------
# members: decoding and lengths
# ---------------------------------------------------------------------------------------------
def npy_view(data: bytes) -> np.ndarray:
    """The array of .npy bytes as a read-only view on them (no copy, no conversion)."""
    buf = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(buf)
    reader = (np.lib.format.read_array_header_1_0 if major == 1
              else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = reader(buf)
    count = int(np.prod(shape)) if shape else 1
    array = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def decode_member(name: str, ext: str, data: bytes) -> Any:
    """A member's bytes as a streaming reader keeps them (the module table): JPEG sequences stay
    bytes, .npy members become views, the rest is decoded."""
    if name in JPEG_FIELDS:
        return data  # only the frames of the windows used are ever decoded
    if ext.endswith(".npy") or ext == "npy":
        return npy_view(data)
    if ext.endswith(".npy.gz"):
        return npy_view(gzip.decompress(data))
    if name == META or ext == META_EXT:
        return json.loads(data)
    if name in FIELDS:
        return FIELDS[name].decode(data)
    raise StoreError(f"no decoder for field {name!r} member .{ext}")


def decode_field(name: str, ext: str, data: bytes) -> Any:
    """A member decoded in full by its field's registry decoder (rgb: (T, 96, 96, 3) uint8)."""
    if name == META or ext == META_EXT:
        return json.loads(data)
    return field_spec(name).decode(data)


def length_of(name: str, value: Any) -> int:
    """Rows of a field on its own timebase (JPEG bytes: their frame count; mel: (80, T))."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return jpeg_sequence_length(value)
    return value.shape[time_axis(name)]


def frames_covered(name: str, length: int, n_frames: int) -> int:
    """The largest n <= n_frames whose last window [n-5, n) fits in `length` rows of the field."""
    rate = rate_of(name)
    n = n_frames
    while n >= WINDOW and window_slice(rate, n - WINDOW).stop > length:
        n -= 1
    return n


# ---------------------------------------------------------------------------------------------
# shards
# ---------------------------------------------------------------------------------------------
Decode = Callable[[str, str, bytes], Any]


def read_shard(store: Path | str, fields: list[str], shard: Shard, keys: list[str],
               wanted: dict[str, dict], bytes_read: Counter | None = None, *,
               decode: Decode = decode_member, make: type[Utterance] = Utterance,
               sync_correct: bool = True, extras: bool = False) -> Iterator[Utterance]:
    """The utterances of `wanted` (key -> catalog row) in one shard, reading only `fields`.

    The field tars are read in lockstep by `catalog.tars.iter_shard`, which checks their keys
    against each other and the plan's order `keys`; members of utterances not wanted
    (placeholders `<key>.error.json` included) are skipped undecoded. `make` builds each
    utterance (a subclass adds a reader's own settings); with `sync_correct` a row's
    `sync_offset` is applied; with `extras` a field's other members (tdmm_id.npy) are kept.
    Utterances left without a whole window are dropped.
    """
    from catalog.tars import ShardMismatchError, iter_shard

    dataset, shard_id = shard
    try:
        for sample in iter_shard(store, dataset, shard_id, fields, keys=keys, counter=bytes_read):
            row = wanted.get(sample["__key__"])
            if row is None:
                continue
            utt = make(row["utt_id"], row["key"], dataset, row["speaker_id"], row["split"],
                       int(row["n_frames"]), shard=shard, row=row)
            for name in fields:
                _read_field(utt, name, sample[name], decode, extras, store)
            if sync_correct and row.get("sync_offset") is not None:
                sync_correction.apply(utt, row["sync_offset"])
            if utt.n_windows > 0:
                yield utt
    except FileNotFoundError as exc:
        raise StoreError(f"store {store} lacks a field tar of shard {shard_id} of {dataset!r} "
                         f"(fields {fields}): {exc}") from None
    except ShardMismatchError as exc:
        raise StoreError(f"field tars of {dataset} shard {shard_id} are misaligned: {exc}") from None


def _read_field(utt: Utterance, name: str, members: dict[str, bytes], decode: Decode,
                extras: bool, store: Path | str) -> None:
    """One field's member into `utt.data` (and its frame count into `utt.n_frames`)."""
    ext = ext_of(name)
    if ext not in members or ERROR_EXT in members:
        what = "a failure placeholder" if ERROR_EXT in members else f"members {sorted(members)}"
        raise StoreError(f"{utt.utt_id}: catalog says field {name!r} is 'ok' but its tar "
                         f"{tar_path(Path(store), utt.dataset, name, utt.shard[1])} holds {what}")
    value = decode(name, ext, members[ext])
    utt.data[name] = value
    if extras:
        utt.extras.update({e: b for e, b in members.items() if e != ext})
    if name != META and rate_of(name) > 0:  # rate 0: one value per utterance (identity), no timebase
        utt.n_frames = frames_covered(name, length_of(name, value), utt.n_frames)


def stream_utterances(store: Path | str, fields: list[str], rows: list[dict],
                      all_rows: list[dict] | dict[Shard, list[str]] | None = None,
                      shards: list[Shard] | None = None, bytes_read: Counter | None = None,
                      **read: Any) -> Iterator[Utterance]:
    """Utterances of `rows`, shard by shard, reading only the tars of `fields`.

    `all_rows` (the whole catalog, or its `shard_plan`; read from the store when omitted) gives
    each shard's full member order, so the keys of every field tar are checked against the plan.
    `shards` restricts (and orders) the shards read; `bytes_read` counts tar bytes per field;
    `read` goes to `read_shard` (decode, make, sync_correct, extras). Linear: the plan and the
    rows are grouped once, whatever the number of shards.
    """
    store = Path(store)
    plan = plan_of(store, all_rows)
    by_shard = rows_by_shard(rows)
    for shard in (shards if shards is not None else shard_list(rows)):
        wanted = {r["key"]: r for r in by_shard.get(shard, [])}
        yield from read_shard(store, fields, shard, plan.get(shard, []), wanted, bytes_read, **read)
