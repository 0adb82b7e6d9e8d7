"""A torch IterableDataset over a store's selection: what `Store.dataset(...)` returns.

Shards are the unit: the selection's shards are dealt round-robin to the consumers, one consumer
per (DDP rank, DataLoader worker), so every shard is read by exactly one consumer and once per
epoch: consumer `rank * num_workers + worker` of `world * num_workers` reads shards
[consumer::consumers]. The rank and world come from torch.distributed when it is initialised
(or are given); the worker from torch.utils.data.get_worker_info(). With fewer shards than
consumers some consumers read nothing (each shard still once): with DDP, give every rank at
least one shard or stop on the shortest rank (the trainer's own loader shares shards instead,
training/data.py rank_shards).

With `shuffle`, the shard order is permuted per epoch (the same permutation on every consumer,
seeded by (seed, epoch)) and so are each shard's samples (seeded by (seed, epoch, shard));
call `set_epoch(e)` before each epoch, as with torch's DistributedSampler.
"""
from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from catalog.reader import Shard
from catalog.samples import shard_samples


def dist_rank_world() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class StoreDataset(IterableDataset):
    """Samples (catalog/samples.py) of `by_shard`'s rows, shard by shard, split across consumers."""

    def __init__(self, store: str, fields: list[str], by_shard: dict[Shard, list[dict]],
                 plan: dict[Shard, list[str]], window: int | None = 5, stride: int = 1,
                 shuffle: bool = False, seed: int = 0, sync_correct: bool = False,
                 rank: int | None = None, world: int | None = None):
        super().__init__()
        self.store, self.fields = str(store), list(fields)
        self.by_shard, self.plan = by_shard, plan
        self.shards = sorted(by_shard)
        self.window, self.stride = window, stride
        self.shuffle, self.seed, self.epoch = shuffle, seed, 0
        self.sync_correct = sync_correct
        self.rank, self.world = rank, world

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order `shuffle` draws (set it in the main process before iterating)."""
        self.epoch = int(epoch)

    def consumer(self) -> tuple[int, int]:
        """(this consumer's index, number of consumers) over DDP ranks and loader workers."""
        rank, world = dist_rank_world()
        rank = rank if self.rank is None else self.rank
        world = world if self.world is None else self.world
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world size {world}")
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return rank * workers + worker, world * workers

    def shard_order(self) -> list[Shard]:
        """Every shard of the selection in this epoch's order (the same on every consumer)."""
        if not self.shuffle:
            return list(self.shards)
        rng = np.random.default_rng([self.seed, self.epoch])
        return [self.shards[i] for i in rng.permutation(len(self.shards))]

    def my_shards(self) -> list[Shard]:
        index, count = self.consumer()
        return self.shard_order()[index::count]

    def __iter__(self) -> Iterator[dict]:
        for shard in self.my_shards():
            rng = (np.random.default_rng([self.seed, self.epoch, zlib.crc32(shard[0].encode()), shard[1]])
                   if self.shuffle else None)  # crc32: the same order in every process and run
            yield from shard_samples(self.store, self.fields, shard, self.plan[shard], self.by_shard[shard],
                                     self.window, self.stride, rng, self.sync_correct)
