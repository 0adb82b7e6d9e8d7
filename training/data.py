"""The trainer's view of a store: catalog.reader's utterances plus the per-run settings.

Reading (catalog rows, field tars in lockstep, member decoding, sync correction) is the store's
one reader, catalog/reader.py; its names are re-exported here for the trainer's modules. What is
the trainer's own:

| field | kept (catalog.reader.decode_member) | per window (training/windows.py) |
|---|---|---|
| rgb, lip | the JPEG-sequence bytes | only the window's 5 JPEGs are decoded (libjpeg-turbo) |
| mel, landmarks, hubert, tdmm (.npy) | a zero-copy view on the member bytes (float16 stays float16) | the window's rows, as stored |
| parsing (.npy.gz) | the uint8 label maps (gzip is whole-member, so it is inflated once) | the window's rows |

- `Utterance` adds the per-utterance normalisation (`norm_of`: landmarks / tdmm offset and
  scale), the rgb frame cache (--cache-frames) and the image scale (--image-scale).
- Distributed training (`rank_shards`): the train split's shards are dealt round-robin to the
  ranks (and again to a rank's loader workers, training/loader.py), so each reads a disjoint shard
  list and the lists differ in length by at most one shard; with fewer shards than ranks a rank
  shares a shard rather than getting none (a rank with no data would hang DDP). Every rank then
  runs the same number of steps of the same batch size, drawing windows with replacement from its
  shards (WebDataset's `resampled=True`, at window level), so no rank runs out of data.
- `ShardBuffer` (fit.py --buffer-shards N) keeps only N shards in memory and swaps one for the
  next every --refresh-every steps, walking its list in a new seeded order each pass (resampled
  epochs), for corpora that do not fit. Start-up and every swap are linear: the catalog's shard
  plan and the rows are grouped once (`shard_plan`, `rows_by_shard`), never per shard.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from catalog import reader
from catalog.reader import (ROW_COLUMNS, Shard, StoreError, decode_member, ext_of,  # noqa: F401 (re-exported)
                            field_spec, frames_covered, npy_view, plan_of, rate_of, read_catalog,
                            rows_by_shard, select_rows, shard_list, shard_plan)
from catalog.reader import length_of as _length  # noqa: F401 (training/sync/scorers.py)
from features.timebase import CROP_SIZE, WINDOW

LANDMARK_SCALE = 4.0  # centred landmark deltas are a few pixels: x4 after mapping to [-1, 1]
# tdmm rows: rotation (3, radians), translation (3, crop px), scale (1), expression (crop px)
TDMM_POSE = 7


@dataclass
class Utterance(reader.Utterance):
    """A read utterance with the trainer's per-run settings, ready for window slicing."""

    norm: dict[str, tuple[Any, Any]] = field(default_factory=dict)  # field -> (offset, scale) (`norm_of`)
    frame_cache: dict[int, np.ndarray] | None = None  # decoded rgb lower halves (--cache-frames)
    image_scale: float = 1.0  # rgb / parsing windows at this scale (fit.py --image-scale)


# ---------------------------------------------------------------------------------------------
# per-field normalisation
# ---------------------------------------------------------------------------------------------
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
            return mean, np.float32(LANDMARK_SCALE / (CROP_SIZE / 2))
        return np.float32(CROP_SIZE / 2), np.float32(1.0 / (CROP_SIZE / 2))
    if name == "tdmm":
        scale = np.full(value.shape[1], LANDMARK_SCALE / (CROP_SIZE / 2), np.float32)
        scale[:3] = LANDMARK_SCALE
        scale[6] = LANDMARK_SCALE
        offset = value.astype(np.float32).mean(axis=0) if center else np.zeros(value.shape[1], np.float32)
        return offset, scale
    return None


def attach_norms(utt: Utterance, landmarks_center: bool = True) -> Utterance:
    """Set the utterance's per-field normalisation from its data (fields without one are skipped)."""
    for name, value in utt.data.items():
        norm = norm_of(name, value, landmarks_center)
        if norm is not None:
            utt.norm[name] = norm
    return utt


# ---------------------------------------------------------------------------------------------
# reading shards (through the store's one reader, catalog.reader)
# ---------------------------------------------------------------------------------------------
def read_shard(store: Path | str, fields: list[str], shard: Shard, keys: list[str],
               wanted: dict[str, dict], landmarks_center: bool = True,
               bytes_read: Counter | None = None) -> Iterator[Utterance]:
    """The utterances of `wanted` (key -> catalog row) in one shard, reading only `fields`
    (catalog.reader.read_shard), with their normalisation attached."""
    for utt in reader.read_shard(store, fields, shard, keys, wanted, bytes_read, make=Utterance):
        yield attach_norms(utt, landmarks_center)


def stream_utterances(store: Path | str, fields: list[str], rows: list[dict],
                      all_rows: list[dict] | dict[Shard, list[str]] | None = None,
                      landmarks_center: bool = True, shards: list[Shard] | None = None,
                      bytes_read: Counter | None = None) -> Iterator[Utterance]:
    """Utterances of `rows`, shard by shard, reading only the tars of `fields`
    (catalog.reader.stream_utterances), with their normalisation attached."""
    for utt in reader.stream_utterances(store, fields, rows, all_rows, shards, bytes_read, make=Utterance):
        yield attach_norms(utt, landmarks_center)


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
