"""Read a store for training: the catalog rows, then ONLY the run's field tars, shard by shard.

Each field is its own tar series (DESIGN.md, Store layout), so `mel_landmarks` never opens an rgb
or hubert tar. A shard's field tars are read in lockstep by the store's one reader
(`catalog.tars.iter_shard`), which checks their keys against each other and against the
catalog's shard plan, so a misaligned series fails loudly instead of pairing one utterance's
audio with another's face.

What stays in memory per utterance, and what is decoded when:

| field | kept | per window |
|---|---|---|
| rgb, lip | the JPEG-sequence bytes | only the window's 5 JPEGs are decoded (libjpeg-turbo) |
| mel, landmarks, hubert, tdmm (.npy) | a zero-copy view on the member bytes (float16 stays float16) | the window's rows, as stored |
| parsing (.npy.gz) | the uint8 label maps (gzip is whole-member, so it is inflated once) | the window's rows |

Distributed training (`rank_shards`): the train split's shards are dealt round-robin to the ranks
(and again to a rank's loader workers, training/loader.py), so each reads a disjoint shard list
and the lists differ in length by at most one shard; with fewer shards than ranks a rank shares a
shard rather than getting none (a rank with no data would hang DDP). Every rank then runs the same
number of steps of the same batch size, drawing windows with replacement from its shards
(WebDataset's `resampled=True`, at window level), so no rank runs out of data.

`ShardBuffer` (fit.py --buffer-shards N) keeps only N shards in memory and swaps one for the next
every --refresh-every steps, walking its list in a new seeded order each pass (resampled epochs),
for corpora that do not fit. Start-up and every swap are linear: the catalog's shard plan and the
rows are grouped once (`shard_plan`, `rows_by_shard`), never per shard.
"""
from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from catalog.layout import table_path, tar_path
from catalog.plan import shard_keys
from features.codecs import jpeg_sequence_length
from features.fields import ERROR_EXT, FIELDS
from features.timebase import WINDOW, n_windows, window_slice
from training import sync_correction

CROP = 96  # face crops (rgb, parsing, landmarks coordinates) are 96 x 96 pixels
LANDMARK_SCALE = 4.0  # centred landmark deltas are a few pixels: x4 after mapping to [-1, 1]
# tdmm rows: rotation (3, radians), translation (3, crop px), scale (1), expression (crop px)
TDMM_POSE = 7


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
    data: dict[str, Any] = field(default_factory=dict)  # field -> array view (or JPEG bytes)
    norm: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (offset, scale)
    shard: tuple[str, int] | None = None
    frame_cache: dict[int, np.ndarray] | None = None  # decoded rgb lower halves (--cache-frames)
    image_scale: float = 1.0  # rgb / parsing windows at this scale (fit.py --image-scale)
    sync: Any = None  # training.sync_correction.SyncCorrection when the loader re-pairs the audio

    @property
    def n_windows(self) -> int:
        return n_windows(self.n_frames)


def field_spec(name: str):
    """The registry entry (rate, member extension, decoder) of a field the trainer reads."""
    if name not in FIELDS:
        raise StoreError(f"unknown field {name!r}; known: {sorted(FIELDS)}")
    return FIELDS[name]


def rate_of(name: str) -> int:
    return field_spec(name).rate


def ext_of(name: str) -> str:
    return field_spec(name).ext


ROW_COLUMNS = ("utt_id", "key", "dataset", "speaker_id", "split", "shard_id", "index_in_shard", "n_frames")


def read_catalog(store: Path | str, fields: Iterable[str] | None = None,
                 extra: Iterable[str] = ()) -> list[dict]:
    """Rows of `<store>/catalog/utterances.parquet`: every column, or with `fields` only what
    the trainer reads (ROW_COLUMNS and those fields' status columns; a fraction of the bytes of a
    wide catalog)."""
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


# ---------------------------------------------------------------------------------------------
# member decoding and per-field normalisation
# ---------------------------------------------------------------------------------------------
def npy_view(data: bytes) -> np.ndarray:
    """The array of .npy bytes as a read-only view on them (no copy, no conversion)."""
    import io

    buf = io.BytesIO(data)
    major, _ = np.lib.format.read_magic(buf)
    reader = (np.lib.format.read_array_header_1_0 if major == 1
              else np.lib.format.read_array_header_2_0)
    shape, fortran, dtype = reader(buf)
    count = int(np.prod(shape)) if shape else 1
    array = np.frombuffer(data, dtype=dtype, count=count, offset=buf.tell())
    return array.reshape(shape, order="F" if fortran else "C")


def prepare_landmarks(landmarks: np.ndarray, center: bool = True) -> np.ndarray:
    """Crop pixels -> about [-1, 1]; with `center`, minus the utterance's mean shape, times 4.

    Why centre: the mean shape is mostly identity (face geometry) and a held-out speaker's is new
    to the model; what predicts the sound is how the mouth moves around that mean, which looks the
    same on every face. (The loader applies the same map per window: `norm_of`.)
    """
    offset, scale = norm_of("landmarks", landmarks, center)
    return ((landmarks.astype(np.float32) - offset) * scale).astype(np.float16)


def norm_of(name: str, value: np.ndarray, center: bool = True) -> tuple[Any, Any] | None:
    """(offset, scale) with window = (rows - offset) * scale, or None for fields used as stored.

    landmarks: crop pixels -> about [-1, 1] ((x - 48) / 48); with `center`, the utterance's mean
    shape is the offset and the deltas are scaled by 4. tdmm: pose and expression minus the
    utterance mean with `center` (identity and head placement are not sync cues); pixel-unit
    columns (translation, expression) / 12, rotation (radians) and scale x 4, so all are O(1).
    """
    if name == "landmarks":
        if center:
            mean = value.astype(np.float32).mean(axis=0)
            return mean, np.float32(LANDMARK_SCALE / (CROP / 2))
        return np.float32(CROP / 2), np.float32(1.0 / (CROP / 2))
    if name == "tdmm":
        scale = np.full(value.shape[1], LANDMARK_SCALE / (CROP / 2), np.float32)
        scale[:3] = LANDMARK_SCALE
        scale[6] = LANDMARK_SCALE
        offset = value.astype(np.float32).mean(axis=0) if center else np.zeros(value.shape[1], np.float32)
        return offset, scale
    return None


def decode_member(name: str, ext: str, data: bytes) -> Any:
    """A field member's bytes as the trainer keeps them in memory (see the module table)."""
    if name in ("rgb", "lip"):
        return data  # JPEG sequence: only the frames of the windows used are ever decoded
    if ext.endswith(".npy") or ext == "npy":
        return npy_view(data)
    if ext.endswith(".npy.gz"):
        return npy_view(gzip.decompress(data))
    if name in FIELDS:
        return FIELDS[name].decode(data)
    raise StoreError(f"no decoder for field {name!r} member .{ext}")


def _length(name: str, value: Any) -> int:
    """Rows of a field on its own timebase (mel is stored bands-first: (80, T))."""
    if name in ("rgb", "lip"):
        return jpeg_sequence_length(value)
    return value.shape[1] if name == "mel" else value.shape[0]


# ---------------------------------------------------------------------------------------------
# reading shards (through the store's one reader, catalog.tars.iter_shard)
# ---------------------------------------------------------------------------------------------
Shard = tuple[str, int]  # (dataset, shard_id)


def shard_plan(all_rows: list[dict]) -> dict[Shard, list[str]]:
    """(dataset, shard_id) -> member keys in plan order: the store's one index (catalog.plan)."""
    return shard_keys(all_rows)


def rows_by_shard(rows: Iterable[dict]) -> dict[Shard, list[dict]]:
    """`rows` grouped by (dataset, shard_id), in the order given (one pass)."""
    out: dict[Shard, list[dict]] = defaultdict(list)
    for r in rows:
        out[(r["dataset"], int(r["shard_id"]))].append(r)
    return dict(out)


def shard_list(rows: list[dict]) -> list[Shard]:
    """The sorted (dataset, shard_id) list holding `rows`."""
    return sorted({(r["dataset"], int(r["shard_id"])) for r in rows})


def read_shard(store: Path | str, fields: list[str], shard: Shard, keys: list[str],
               wanted: dict[str, dict], landmarks_center: bool = True,
               bytes_read: Counter | None = None) -> Iterator[Utterance]:
    """The utterances of `wanted` (key -> catalog row) in one shard, reading only `fields`.

    The field tars are read in lockstep by `catalog.tars.iter_shard`, which checks their keys
    against each other and the plan's order `keys`; members of utterances not wanted
    (placeholders `<key>.error.json` included) are skipped undecoded.
    """
    from catalog.tars import ShardMismatchError, iter_shard

    dataset, shard_id = shard
    try:
        for sample in iter_shard(store, dataset, shard_id, fields, keys=keys, counter=bytes_read):
            row = wanted.get(sample["__key__"])
            if row is None:
                continue
            utt = Utterance(row["utt_id"], row["key"], dataset, row["speaker_id"], row["split"],
                            int(row["n_frames"]), shard=shard)
            for name in fields:
                ext, members = ext_of(name), sample[name]
                if ext not in members or ERROR_EXT in members:
                    what = ("a failure placeholder" if ERROR_EXT in members
                            else f"members {sorted(members)}")
                    raise StoreError(f"{row['utt_id']}: catalog says field {name!r} is 'ok' but its "
                                     f"tar {tar_path(Path(store), dataset, name, shard_id)} holds {what}")
                value = decode_member(name, ext, members[ext])
                utt.data[name] = value
                norm = norm_of(name, value, landmarks_center)
                if norm is not None:
                    utt.norm[name] = norm
                utt.n_frames = frames_covered(name, _length(name, value), utt.n_frames)
            if row.get("sync_offset") is not None:  # rows carry it only when sync correction is on
                sync_correction.apply(utt, row["sync_offset"])
            if utt.n_windows > 0:
                yield utt
    except FileNotFoundError as exc:
        raise StoreError(f"store {store} lacks a field tar of shard {shard_id} of {dataset!r} "
                         f"(fields {fields}): {exc}") from None
    except ShardMismatchError as exc:
        raise StoreError(f"field tars of {dataset} shard {shard_id} are misaligned: {exc}") from None


def stream_utterances(store: Path | str, fields: list[str], rows: list[dict],
                      all_rows: list[dict] | dict[Shard, list[str]] | None = None,
                      landmarks_center: bool = True, shards: list[Shard] | None = None,
                      bytes_read: Counter | None = None) -> Iterator[Utterance]:
    """Utterances of `rows`, shard by shard, reading only the tars of `fields`.

    `all_rows` (the whole catalog, or its `shard_plan`; read from the store when omitted) gives
    each shard's full member order, so the keys of every field tar are checked against the plan.
    `shards` restricts (and orders) the shards read; `bytes_read` counts tar bytes per field.
    Linear: the plan and the rows are grouped once, whatever the number of shards.
    """
    store = Path(store)
    plan = plan_of(store, all_rows)
    by_shard = rows_by_shard(rows)
    for shard in (shards if shards is not None else shard_list(rows)):
        wanted = {r["key"]: r for r in by_shard.get(shard, [])}
        yield from read_shard(store, fields, shard, plan.get(shard, []), wanted, landmarks_center,
                              bytes_read)


def plan_of(store: Path | str, all_rows: list[dict] | dict[Shard, list[str]] | None) -> dict[Shard, list[str]]:
    """The shard plan from catalog rows, a plan already built, or the store's catalog."""
    if isinstance(all_rows, dict):
        return all_rows
    return shard_plan(all_rows if all_rows is not None else read_catalog(store))


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


# ---------------------------------------------------------------------------------------------
# per-rank shard lists and the shard buffer
# ---------------------------------------------------------------------------------------------
def rank_shards(shards: list[tuple[str, int]], rank: int, world: int) -> list[tuple[str, int]]:
    """The shards rank `rank` of `world` reads: round-robin, never empty.

    With at least `world` shards the lists are disjoint and cover every shard once (lengths
    differ by at most one); with fewer, rank r reads shard r mod n (ranks share shards).
    """
    if not shards:
        raise StoreError("no shard to train on")
    if not 0 <= rank < world:
        raise ValueError(f"rank {rank} outside world size {world}")
    if len(shards) >= world:
        return list(shards[rank::world])
    return [shards[rank % len(shards)]]


class ShardBuffer:
    """A stream's training utterances: all of its shards, or a rolling buffer of `size` of them.

    With `size` 0 (or >= the shard count) everything is loaded once. Otherwise the buffer starts
    with the first `size` shards of a seeded permutation of the list; `advance()` drops the
    oldest and loads the next shard of the permutation, and a new permutation starts when one is
    used up (resampled epochs). `state()` / `restore()` make this exact on resume. The plan and
    rows are grouped once, so start-up and every swap cost the shard's own rows, not the corpus.
    """

    def __init__(self, store: Path | str, fields: list[str], rows: list[dict] | dict[Shard, list[dict]],
                 all_rows: list[dict] | dict[Shard, list[str]] | None, shards: list[Shard],
                 size: int = 0, seed: int | list[int] = 0, landmarks_center: bool = True):
        self.store, self.fields, self.center = store, fields, landmarks_center
        self.plan = plan_of(store, all_rows)
        self.rows_by_shard = rows if isinstance(rows, dict) else rows_by_shard(rows)
        self.shards = [s for s in shards if s in self.rows_by_shard]
        if not self.shards:
            raise StoreError(f"none of shards {shards} holds a usable utterance")
        self.streaming = 0 < size < len(self.shards)
        self.size = size if self.streaming else len(self.shards)
        self.rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 7919])
        self.order: list[int] = []
        self.position = 0  # next index into `order`
        self.passes = 0  # permutations started (epochs over the shards)
        self.loaded: list[tuple[Shard, list[Utterance]]] = []
        if self.streaming:
            for _ in range(self.size):
                self._push(self._next_shard())
        else:
            self._load_all()

    def _load_all(self) -> None:
        for shard in self.shards:
            self.loaded.append((shard, self._load(shard)))

    def _load(self, shard: Shard) -> list[Utterance]:
        wanted = {r["key"]: r for r in self.rows_by_shard[shard]}
        return list(read_shard(self.store, self.fields, shard, self.plan.get(shard, []), wanted,
                               self.center))

    def _next_shard(self) -> tuple[str, int]:
        if self.position >= len(self.order):
            self.order = [int(i) for i in self.rng.permutation(len(self.shards))]
            self.position, self.passes = 0, self.passes + 1
        # a shard still in the buffer (end of one pass, start of the next) would be held twice:
        # take the pass's next shard that is not buffered instead (the pass stays a permutation)
        buffered = set(self.buffered)
        for j in range(self.position, len(self.order)):
            if self.shards[self.order[j]] not in buffered:
                self.order[self.position], self.order[j] = self.order[j], self.order[self.position]
                break
        shard = self.shards[self.order[self.position]]
        self.position += 1
        return shard

    def _push(self, shard: tuple[str, int]) -> None:
        self.loaded.append((shard, self._load(shard)))
        if len(self.loaded) > self.size:
            self.loaded.pop(0)

    def advance(self) -> bool:
        """Swap the oldest buffered shard for the next one; False when nothing is streamed."""
        if not self.streaming:
            return False
        self._push(self._next_shard())
        return True

    @property
    def utterances(self) -> list[Utterance]:
        return [u for _, utts in self.loaded for u in utts]

    @property
    def buffered(self) -> list[tuple[str, int]]:
        return [s for s, _ in self.loaded]

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "order": list(self.order),
                "position": self.position, "passes": self.passes,
                "buffered": [list(s) for s in self.buffered]}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.order, self.position, self.passes = list(state["order"]), state["position"], state["passes"]
        if self.streaming:
            self.loaded = []
            for s in state["buffered"]:
                self.loaded.append(((s[0], int(s[1])), self._load((s[0], int(s[1])))))


def foreign_audio_shards(by_shard: dict[Shard, list[dict]], all_shards: list[Shard],
                         own: list[Shard], streaming: bool) -> dict[Shard, list[dict]]:
    """Rows whose audio a stream borrows for cross-speaker negatives, by shard (catalog only).

    Cross-speaker negatives need a second speaker; a stream whose shards are one speaker's
    (corpora are often sharded by speaker) borrows the audio field only of the following train
    shards until another speaker turns up. A streaming buffer may hold a single speaker at any
    time: then the borrowed audio itself must hold two speakers. Linear in the shards walked.
    """
    mine = {r["speaker_id"] for s in own for r in by_shard.get(s, [])}
    if not streaming and len(mine) >= 2:
        return {}
    start = all_shards.index(own[0]) if own[0] in all_shards else -1
    have: set[str] = set()
    out: dict[Shard, list[dict]] = {}

    def enough() -> bool:
        return len(have) >= 2 if streaming else bool(have - mine)

    for shard in all_shards[start + 1:] + all_shards[:start + 1]:
        if enough():
            break
        new = {r["speaker_id"] for r in by_shard.get(shard, [])} - (have if streaming else mine | have)
        if new:
            out[shard] = [r for r in by_shard[shard] if r["speaker_id"] in new]
            have |= new
    if not enough():
        raise StoreError("the train split has a single speaker; cross-speaker negatives need two "
                         "(or pass --cross-speaker-ratio 0)")
    return out
