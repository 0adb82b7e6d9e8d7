"""How loader workers hand batches to the training process: many batches per message, cut into
shared memory that is recycled, used in place on arrival.

Why: on this kind of machine (a VM) every fresh 4 KiB page costs about 6 us to fault in, and a
torch tensor sent between processes costs a new shared-memory segment, a file descriptor and a
mapping per tensor. A batch of 64 landmark pairs took about 4 ms of the training process's CPU
that way, as much as cutting it, so two workers gave fewer windows a second than none. Here:

- a worker cuts a whole chunk of batches (`chunk_batches`, about 512 pairs) into one `Arena`: a
  flat shared uint8 buffer whose pages were faulted in once, handed out as aligned tensor views;
- the message (`Chunk`) carries where each tensor lies in the arena and the batches' metadata;
  the arena itself (torch passes its file descriptor) travels with its first message only and
  stays mapped on the receiving side (`Slots.arena`);
- the training process turns the message into batches whose tensors are views of the arena
  (nothing copied) and hold a lease on it: when the last view is garbage, the arena is marked
  free in a small shared table (`Slots`) and the worker cuts its next chunk into it. On a GPU
  the DataLoader's pinning thread copies the used bytes into pinned memory instead and frees the
  arena at once (`Chunk.pin_memory`).

A worker reuses its lowest free arena and makes a new one only when all are held: the DataLoader
keeps at most `prefetch` messages of a worker in flight, so a training loop that drops its
batches runs on `prefetch + 2` arenas a worker. One that keeps batches (a list of them in a
test) holds their arenas; past `MAX_ARENAS` the worker waits for one to be freed, and gives up
with an error after `WAIT_S`.
"""
from __future__ import annotations

import itertools
import math
import os
import time
import weakref
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from training.windows import TORCH_DTYPES, Batch, new_tensor

NUMPY_DTYPES = {t: n for n, t in TORCH_DTYPES.items()}

ALIGN = 64  # bytes; every view starts on a cache line (and suits any dtype's alignment)
MAX_ARENAS = 64  # per worker
WAIT_S = 600.0  # a worker gives up when no arena is freed for this long (training process gone)
_SLOTS: "weakref.WeakValueDictionary[tuple[int, int], Slots]" = weakref.WeakValueDictionary()


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def batch_bytes(batch: Batch) -> int:
    """Arena bytes one batch of this shape takes (every tensor aligned)."""
    return sum(aligned(getattr(batch, k).numel() * getattr(batch, k).element_size()) for k in batch.tensors())


def chunk_batches(batch_size: int, handoff_pairs: int) -> int:
    """Batches per worker message: about `handoff_pairs` pairs, at least one batch."""
    return max(1, handoff_pairs // max(1, batch_size))


class Arena:
    """A flat uint8 buffer that a chunk's batches are cut into; `alloc` is a `windows.Alloc`."""

    def __init__(self, nbytes: int, shared: bool):
        self.buffer = torch.zeros(nbytes, dtype=torch.uint8)  # zeros: every page faulted in once, here
        if shared:
            self.buffer.share_memory_()
        self.used = 0

    def alloc(self, shape: tuple[int, ...], dtype: np.dtype) -> torch.Tensor:
        dtype = np.dtype(dtype)
        n = math.prod(shape) * dtype.itemsize
        start = aligned(self.used)
        if start + n > self.buffer.numel():  # a batch larger than the first: outside the arena
            return new_tensor(shape, dtype)
        self.used = start + n
        return self.buffer[start:start + n].view(TORCH_DTYPES[dtype]).view(shape)

    def offset_of(self, t: torch.Tensor) -> int | None:
        """Byte offset of `t` in the arena, or None when `t` lies elsewhere."""
        base = self.buffer.data_ptr()
        if t.untyped_storage().data_ptr() != self.buffer.untyped_storage().data_ptr():
            return None
        return t.data_ptr() - base


class Slots:
    """Which arenas of each worker are free: a small shared table, 1 = free, written by the
    worker when it takes an arena and by the training process when the arena's batches are gone."""

    _ids = itertools.count()

    def __init__(self, workers: int, per_worker: int = MAX_ARENAS):
        self.table = torch.ones((max(1, workers), per_worker), dtype=torch.int32).share_memory_()
        self.key = (os.getpid(), next(Slots._ids))  # how a message finds these slots again
        self.mapped: dict[tuple[int, int], torch.Tensor] = {}  # (worker, slot) -> arena, kept mapped
        _SLOTS[self.key] = self

    def __getstate__(self) -> dict:  # to a spawned worker: the table, not the training side's maps
        return {"table": self.table, "key": self.key, "mapped": {}}

    def arena(self, worker: int, slot: int, sent: torch.Tensor | None) -> torch.Tensor:
        """A worker's arena on the training side: sent with its first message only, then kept
        mapped here, so later messages carry no file descriptor and map nothing."""
        if sent is not None:
            self.mapped[(worker, slot)] = sent
        return self.mapped[(worker, slot)]

    def take(self, worker: int) -> int:
        """The worker's lowest free arena, marked in use; waits (bounded) while all are held.

        The row is copied before it is searched: the training process frees slots at any time,
        and a search over memory that changes under it (torch.nonzero counts, then writes) can
        write past its result, which corrupted a worker's heap about once in 40 runs."""
        row = self.table[worker].numpy()
        deadline = time.monotonic() + WAIT_S
        while True:
            free = np.flatnonzero(row.copy())
            if len(free):
                slot = int(free[0])
                row[slot] = 0
                return slot
            if time.monotonic() > deadline:
                raise TimeoutError(f"loader worker {worker}: all {len(row)} hand-off arenas held by the "
                                   f"training process for {WAIT_S:.0f} s (are batches kept?)")
            time.sleep(0.0005)

    def release(self, worker: int, slot: int) -> None:
        self.table[worker, slot] = 1

    def held(self) -> int:
        """Arenas in use now, over all workers (filled and not yet freed)."""
        return int((self.table == 0).sum())


@dataclass
class Chunk:
    """One worker message: consecutive batches of one stream, cut into a worker arena."""

    buffer: torch.Tensor | None  # the arena, in the first message that uses it (else None), or pinned
    used: int  # bytes of the arena in use
    layout: list[dict[str, Any]]  # per batch: tensor name -> (offset, shape, dtype) or a tensor
    meta: list[dict[str, Any]]  # per batch: names, stream, state
    worker: int = 0
    slot: int | None = None  # the arena's slot; None once the bytes are the training side's own
    key: tuple[int, int] = (0, 0)  # the `Slots` it belongs to

    @classmethod
    def pack(cls, batches: list[Batch], arena: Arena, worker: int, slot: int, slots: Slots,
             send_arena: bool) -> "Chunk":
        layout, meta = [], []
        for b in batches:
            where = {}
            for k in b.tensors():
                t = getattr(b, k)
                off = arena.offset_of(t)
                where[k] = t if off is None else (off, tuple(t.shape), t.dtype)
            layout.append(where)
            meta.append({"visual_name": b.visual_name, "audio_name": b.audio_name,
                         "stream": b.stream, "state": b.state})
        return cls(arena.buffer if send_arena else None, arena.used, layout, meta, worker, slot, slots.key)

    def pin_memory(self) -> "Chunk":
        """DataLoader(pin_memory=True) calls this on its pinning thread: the used bytes copied
        into pinned memory (torch's caching host allocator), and the arena freed at once."""
        if self.slot is None:
            return self
        slots = _SLOTS[self.key]
        arena = slots.arena(self.worker, self.slot, self.buffer)
        pinned = torch.empty(self.used, dtype=torch.uint8, pin_memory=True)
        pinned.copy_(arena[:self.used])
        slots.release(self.worker, self.slot)
        layout = [{k: v.pin_memory() if isinstance(v, torch.Tensor) else v for k, v in where.items()}
                  for where in self.layout]  # a stream's first batch lies outside the arena
        return replace(self, buffer=pinned, layout=layout, slot=None)

    def batches(self) -> list[Batch]:
        """The chunk's batches, their tensors views of the arena. The views hold a `Lease` on
        it: the arena is freed for reuse when the last of them is gone, so a batch owns its
        memory for as long as anything references it, and nothing is copied."""
        memory: torch.Tensor | np.ndarray = self.buffer
        if self.slot is not None:
            slots = _SLOTS[self.key]
            leased = slots.arena(self.worker, self.slot, self.buffer).numpy().view(_Leased)
            leased.lease = Lease(slots, self.worker, self.slot)
            memory = leased
        out = []
        for where, meta in zip(self.layout, self.meta):
            tensors = {k: _view(memory, v) for k, v in where.items()}
            out.append(Batch(tensors["visual"], tensors["audio"], tensors["label"], tensors["kind"],
                             visual_offset=tensors.get("visual_offset"),
                             audio_offset=tensors.get("audio_offset"),
                             visual_scale=tensors.get("visual_scale"),
                             audio_scale=tensors.get("audio_scale"), **meta))
        return out


class Lease:
    """A worker arena in use by the training process; freed when garbage-collected."""

    def __init__(self, slots: "Slots", worker: int, slot: int):
        self.slots, self.worker, self.slot = slots, worker, slot

    def __del__(self) -> None:
        try:
            self.slots.release(self.worker, self.slot)
        except Exception:  # interpreter shutdown: the workers are gone too
            pass


class _Leased(np.ndarray):
    """An ndarray over a worker's arena carrying its `Lease`: every slice of it keeps it alive
    through numpy's base chain, and torch.from_numpy tensors keep their array alive."""

    lease: Lease | None = None


def _view(memory: torch.Tensor | np.ndarray, where: Any) -> torch.Tensor:
    """The tensor at `where` (offset, shape, dtype) of `memory` (or `where` itself: a tensor
    sent outside the arena)."""
    if isinstance(where, torch.Tensor):
        return where
    off, shape, dtype = where
    n = math.prod(shape) * dtype.itemsize
    if isinstance(memory, np.ndarray):
        return torch.from_numpy(memory[off:off + n].view(NUMPY_DTYPES[dtype]).reshape(shape))
    return memory[off:off + n].view(dtype).view(shape)
