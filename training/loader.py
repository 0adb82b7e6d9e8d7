"""A rank's training batches: a torch DataLoader over an IterableDataset of its shards.

The WebDataset idiom, with the trainer's pair sampling inside it:

- shards are split by rank (`data.rank_shards`: round-robin, never empty) and then by loader
  stream: with `--workers N` there are N streams, one per worker process, each holding its own
  shards (again round-robin), its own shard buffer (`data.ShardBuffer`, resampled passes) and its
  own seeded `PairSampler` (seed, rank, stream); `--workers 0` is one stream in the training
  process, through the same code;
- a stream draws whole batches (pairs, then their windows, `windows.make_batch`), so a batch
  never mixes streams and the worker does all the cutting and decoding; a worker sends about
  `--handoff-pairs` pairs (whole batches) per message, cut into recycled shared memory that the
  training process uses in place (`training/handoff.py`); windows stay uint8 /
  float16 (`windows.Batch`), are pinned when the device is a GPU and copied with
  `non_blocking=True`, and are converted and normalised on the device (`Batch.to`);
- resume is exact: the workers' batches are handed out in strict rotation (`Batches` takes one
  message per worker and interleaves them), so the batch of step s comes from stream s mod N.
  Every batch carries its stream's position after drawing it (sampler generator, pairs drawn,
  shard buffer); `RankData.consumed` keeps the position of the last batch the loop actually
  used per stream (prefetched batches do not count), the checkpoint stores them, and a resumed loader starts each stream from its saved
  position and lets worker w serve stream (start + w) mod N. Resuming with another --workers
  restarts the streams from their seeds (with a warning).

Cross-speaker negatives need a second speaker: a stream whose shards hold one speaker borrows
the audio field of the following train shards (`data.foreign_audio_shards`), decided from the
catalog rows alone, so `describe()` needs no tar.
"""
from __future__ import annotations

import math
import os
import sys
from collections import deque
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from features.timebase import n_windows
from training.data import (Shard, ShardBuffer, Utterance, foreign_audio_shards, rank_shards,
                           read_catalog, read_shard, rows_by_shard, select_rows, shard_plan)
from training.sampler import PairSampler
from training.handoff import Arena, Chunk, Slots, batch_bytes, chunk_batches
from training.windows import Alloc, Batch, make_batch, new_tensor
from catalog.sync_correction import summarize


@dataclass
class StreamSpec:
    """What every stream of a rank needs (picklable: it travels to the worker processes)."""

    store: str
    audio: str
    visual: str
    plan: dict[Shard, list[str]]  # every shard's member keys in plan order
    by_shard: dict[Shard, list[dict]]  # usable train rows per shard
    all_shards: list[Shard]  # the train split's shards
    shards: list[Shard]  # this rank's
    rank: int = 0
    seed: int = 0
    batch_size: int = 64
    cross_speaker_ratio: float = 0.2
    buffer_shards: int = 0  # per rank; each of N streams buffers ceil(buffer_shards / N)
    refresh_every: int = 200  # rank steps between shard swaps
    handoff_pairs: int = 512  # pairs per worker message (whole batches; see training/handoff.py)
    image_scale: float = 1.0
    cache_frames: bool = False
    landmarks_center: bool = True

    @property
    def fields(self) -> list[str]:
        return [self.audio, self.visual]

    def stream_shards(self, index: int, n_streams: int) -> list[Shard]:
        return rank_shards(self.shards, index, n_streams)

    def buffer_size(self, n_streams: int) -> int:
        return math.ceil(self.buffer_shards / n_streams) if self.buffer_shards else 0

    def streaming(self, index: int, n_streams: int) -> bool:
        return 0 < self.buffer_size(n_streams) < len(self.stream_shards(index, n_streams))

    def foreign(self, index: int, n_streams: int) -> dict[Shard, list[dict]]:
        if self.cross_speaker_ratio <= 0:
            return {}
        return foreign_audio_shards(self.by_shard, self.all_shards, self.stream_shards(index, n_streams),
                                    self.streaming(index, n_streams))


def prepare_utterances(utts: list[Utterance], image_scale: float = 1.0,
                       cache_frames: bool = False) -> None:
    """Per-run window settings: the image scale and the rgb frame cache (--cache-frames)."""
    for u in utts:
        u.image_scale = image_scale
        if cache_frames and "rgb" in u.data and u.frame_cache is None:
            u.frame_cache = {}


class PairStream:
    """One stream: its shard buffer, borrowed audio and seeded sampler; `next_batch()` draws."""

    def __init__(self, spec: StreamSpec, index: int, n_streams: int, state: dict | None = None):
        self.spec, self.index, self.n_streams = spec, index, n_streams
        shards = spec.stream_shards(index, n_streams)
        self.buffer = ShardBuffer(spec.store, spec.fields, spec.by_shard, spec.plan, shards,
                                  spec.buffer_size(n_streams), seed=[spec.seed, spec.rank, index],
                                  landmarks_center=spec.landmarks_center)
        self.foreign = [u for shard, rows in spec.foreign(index, n_streams).items()
                        for u in read_shard(spec.store, [spec.audio], shard, spec.plan[shard],
                                            {r["key"]: r for r in rows}, spec.landmarks_center)]
        self.refresh = max(1, spec.refresh_every // n_streams)  # in this stream's own batches
        self.rng = np.random.default_rng([spec.seed, spec.rank, index])
        self.batches = 0  # batches drawn so far
        if state is not None:
            self.buffer.restore(state["buffer"])
            self.rng.bit_generator.state = state["sampler"]["rng"]
            self.batches = int(state["batches"])
        self.sampler = self._sampler()
        if state is not None:
            self.sampler.set_state(state["sampler"])

    def _sampler(self) -> PairSampler:
        utts = self.buffer.utterances
        prepare_utterances(utts + self.foreign, self.spec.image_scale, self.spec.cache_frames)
        return PairSampler(utts, cross_speaker_ratio=self.spec.cross_speaker_ratio,
                           audio_pool=utts + self.foreign, rng=self.rng)

    def next_batch(self, alloc: Alloc = new_tensor) -> Batch:
        if self.buffer.streaming and self.batches > 0 and self.batches % self.refresh == 0:
            drawn = self.sampler.drawn
            self.buffer.advance()
            self.sampler = self._sampler()
            self.sampler.drawn = drawn
        pairs = self.sampler.sample(self.spec.batch_size)
        batch = make_batch(pairs, self.sampler.utts, self.sampler.pool, self.spec.audio, self.spec.visual,
                           alloc)
        self.batches += 1
        batch.stream, batch.state = self.index, self.state()
        return batch

    def state(self) -> dict:
        return {"sampler": self.sampler.state(), "buffer": self.buffer.state(), "batches": self.batches}


class PairDataset(IterableDataset):
    """Endless batches; worker w of N serves the steps start + w, start + w + N, ...

    Batches travel as `handoff.Chunk`s of `chunk` consecutive batches of the worker's stream, cut
    into its recycled arenas (`slots` says which are free; shared memory in a worker process);
    `Batches` interleaves the workers' chunks back into step order. Without workers the chunks
    are single batches, cut into recycled arenas all the same (no fresh pages per batch)."""

    def __init__(self, spec: StreamSpec, n_streams: int, start_step: int, states: list[dict | None],
                 chunk: int = 1, slots: Slots | None = None):
        self.spec, self.n_streams, self.start, self.states = spec, n_streams, start_step, states
        self.chunk, self.slots = chunk, slots

    def __iter__(self) -> Iterator[Chunk]:
        info = get_worker_info()
        worker = 0 if info is None else info.id
        index = (self.start + worker) % self.n_streams
        stream = PairStream(self.spec, index, self.n_streams, self.states[index])
        first = stream.next_batch()  # its size sizes the arenas
        arenas: list[Arena] = []
        size = self.chunk * batch_bytes(first)
        pending = [first]
        sent: set[int] = set()  # arenas the training process has been sent (and keeps mapped)
        while True:
            slot = self.slots.take(worker)
            while len(arenas) <= slot:
                arenas.append(Arena(size, shared=info is not None))
            arena = arenas[slot]
            arena.used = 0
            batches = pending + [stream.next_batch(arena.alloc) for _ in range(self.chunk - len(pending))]
            pending = []
            yield Chunk.pack(batches, arena, worker, slot, self.slots, send_arena=slot not in sent)
            sent.add(slot)


class Batches:
    """The training process's side: batches in step order from the DataLoader's chunks (one per
    worker, interleaved; single-batch chunks without workers); `worker_pids` for benchmarks."""

    def __init__(self, loader: DataLoader, n_workers: int, slots: Slots):
        self.it = iter(loader)
        self.n_workers, self.slots = n_workers, slots
        self.ready: deque[Batch] = deque()

    def __iter__(self) -> "Batches":
        return self

    def __next__(self) -> Batch:
        if not self.ready:
            chunks = [next(self.it).batches() for _ in range(max(1, self.n_workers))]  # one per worker
            for group in zip(*chunks):  # step s from worker s mod N, as without chunks
                self.ready.extend(group)
        return self.ready.popleft()

    @property
    def worker_pids(self) -> list[int]:
        return [w.pid for w in getattr(self.it, "_workers", [])]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # one core per worker: the decoding is single-threaded anyway


def default_workers(local_world: int = 1) -> int:
    """The cores a rank has, less one (for the training process itself); at least 0."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(0, cores // max(1, local_world) - 1)


class RankData:
    """A rank's side of the loader: the stream spec, the DataLoader and the streams' positions."""

    def __init__(self, spec: StreamSpec, workers: int):
        self.spec, self.workers = spec, workers
        self.n_streams = max(1, workers)
        self.states: list[dict | None] = [None] * self.n_streams

    @classmethod
    def from_store(cls, store: str, audio: str, visual: str, rank: int, world: int, workers: int,
                   sync_correct: bool = False, **settings) -> "RankData":
        """Catalog rows -> this rank's spec: one pass over the rows, no tar opened. With
        `sync_correct` the rows carry the catalog's sync_offset, which the loader applies."""
        all_rows = read_catalog(store, [audio, visual], extra=("sync_offset",) if sync_correct else ())
        rows = select_rows(all_rows, [audio, visual], ["train"], store)
        by_shard = rows_by_shard(rows)
        all_shards = sorted(by_shard)
        spec = StreamSpec(str(store), audio, visual, shard_plan(all_rows), by_shard, all_shards,
                          rank_shards(all_shards, rank, world), rank=rank, **settings)
        return cls(spec, workers)

    def batches(self, start_step: int, pin_memory: bool = False, prefetch: int = 2) -> Batches:
        """Batches for steps start_step, start_step + 1, ... (endless). With workers, `prefetch`
        counts each worker's messages in flight (each `chunk` batches)."""
        chunk = chunk_batches(self.spec.batch_size, self.spec.handoff_pairs) if self.workers else 1
        slots = Slots(self.workers)
        dataset = PairDataset(self.spec, self.n_streams, start_step, list(self.states), chunk, slots)
        # its own generator: making the iterator draws a base seed, which from torch's global RNG
        # would shift a resumed run's dropout stream (the streams seed themselves anyway)
        loader = DataLoader(dataset, batch_size=None, num_workers=self.workers, pin_memory=pin_memory,
                            prefetch_factor=prefetch if self.workers else None,
                            worker_init_fn=_worker_init if self.workers else None,
                            generator=torch.Generator().manual_seed(0))
        return Batches(loader, self.workers, slots)

    def consumed(self, batch: Batch) -> None:
        """Record the position of the stream that drew `batch` (call for every batch used)."""
        self.states[batch.stream] = batch.state

    @property
    def drawn(self) -> int:
        return sum(s["sampler"]["drawn"] for s in self.states if s is not None)

    def state(self) -> dict:
        buffered = [b for s in self.states if s is not None for b in s["buffer"]["buffered"]]
        return {"sampler": {"drawn": self.drawn,
                            "streams": [None if s is None else s["sampler"] for s in self.states]},
                "buffer": {"buffered": buffered}, "streams": list(self.states)}

    def restore(self, state: dict) -> None:
        streams = state.get("streams") or []
        if len(streams) == self.n_streams:
            self.states = list(streams)
        else:
            print(f"warning: the checkpoint has {len(streams)} loader streams for {self.n_streams} "
                  "(--workers changed); they restart from their seeds", file=sys.stderr)

    def first_utterance(self) -> Utterance:
        """One utterance of the rank's first shard (the model's input sizes), read up to it."""
        shard = self.spec.shards[0]
        rows = self.spec.by_shard[shard]
        it = read_shard(self.spec.store, self.spec.fields, shard, self.spec.plan[shard],
                        {r["key"]: r for r in rows}, self.spec.landmarks_center)
        try:
            return next(it)
        finally:
            it.close()

    def describe(self) -> dict:
        """The rank's shards, utterances, windows and speakers, from the catalog rows."""
        rows = [r for s in self.spec.shards for r in self.spec.by_shard[s]]
        foreign = sum(len(r) for i in range(self.n_streams)
                      for r in self.spec.foreign(i, self.n_streams).values())
        return {"shards": [list(s) for s in self.spec.shards], "streams": self.n_streams,
                "utterances": len(rows), "windows": int(sum(n_windows(r["n_frames"]) for r in rows)),
                "speakers": len({r["speaker_id"] for r in rows}),
                "buffered": sum(self.spec.buffer_size(self.n_streams) or
                                len(self.spec.stream_shards(i, self.n_streams))
                                for i in range(self.n_streams)),
                "foreign_audio_utterances": foreign,
                **({"sync_correction": summarize(rows)} if rows and "sync_offset" in rows[0] else {})}
