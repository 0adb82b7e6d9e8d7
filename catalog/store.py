"""The public data API: open a store, select utterances, read whole utterances or windows.

    from torch.utils.data import DataLoader
    from catalog import open_store

    store = open_store("store")
    ds = store.dataset(split="train", fields=["rgb", "mel"], window=5)
    for batch in DataLoader(ds, batch_size=32, num_workers=2):
        batch["rgb"]   # (32, 5, 96, 96, 3) uint8      batch["mel"]  # (32, 80, 16) float16
        batch["utt_id"], batch["t"]                     # which utterance, which start frame

    for utt in store.utterances(["rgb", "audio"], split="test"):   # whole clips (generators)
        utt["rgb"], utt["audio"], utt["n_frames"], utt["row"]      # row: the catalog row

    rows = store.select(split="train", where="n_frames >= 50 AND dataset = 'lrs2'")

Selection: `split` (one or several), `where` (SQL over the `utterances` view, DuckDB, as
`python -m catalog sql`), `status` (the row's overall status, 'ok' by default; None for any) and
the read fields' own statuses, which must be 'ok'. Samples and their layouts: catalog/samples.py;
how the dataset is split across DataLoader workers and DDP ranks: catalog/dataset.py; reading
tars: catalog/reader.py (the store's one reader, which the trainer uses too). Each field's tar
series can also be read with plain `webdataset`: catalog/wds.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from catalog.build import read_table
from catalog.layout import read_store_json, table_path
from catalog.plan import shard_keys_of_table
from catalog.reader import Shard, StoreError, check_fields, rows_by_shard
from catalog.samples import check_request, shard_samples
from features.timebase import WINDOW

ORDER = " ORDER BY dataset, shard_id, index_in_shard"  # plan order: shard by shard, as stored


def open_store(path: Path | str) -> "Store":
    """The store at `path` (a folder with catalog/utterances.parquet); StoreError if it is none."""
    path = Path(path).expanduser().resolve()
    if not table_path(path, "utterances").exists():
        raise StoreError(f"{path} is not an extracted store (no catalog/utterances.parquet); "
                         "run pipelines/extract.py first")
    return Store(path, read_store_json(path))


@dataclass
class Store:
    """An extracted store: its store.json, catalog tables and field tars (read-only)."""

    path: Path
    info: dict = field(default_factory=dict)  # store.json: version, timebase, fields, extractors

    # -- the catalog ---------------------------------------------------------------------------
    @property
    def columns(self) -> list[str]:
        import pyarrow.parquet as pq

        return pq.read_schema(table_path(self.path, "utterances")).names

    @property
    def fields(self) -> list[str]:
        """The fields the catalog records a status for (field_<name> columns)."""
        return [c.removeprefix("field_") for c in self.columns if c.startswith("field_")]

    def table(self, name: str = "utterances"):
        """A catalog table (utterances, speakers, shards, fields, errors) as a pyarrow Table."""
        return read_table(self.path, name)

    def sql(self, query: str):
        """One SQL statement over the catalog views (catalog/sql.py), as a pyarrow Table."""
        from catalog.sql import run_sql

        return run_sql(self.path, query)

    def select(self, split: str | Iterable[str] | None = None, where: str | None = None,
               status: str | None = "ok", fields: Iterable[str] = ()) -> list[dict]:
        """Catalog rows in plan order: of `split`, matching `where` (SQL on utterances), with
        overall `status` (None: any) and every one of `fields` 'ok'."""
        fields = list(fields)
        check_fields(self.columns, fields, self.path)
        conditions, params = [], []
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            conditions.append(f"split IN ({', '.join('?' for _ in splits)})")
            params += splits
        if status is not None:
            conditions.append("status = ?")
            params.append(status)
        conditions += [f'"field_{f}" = \'ok\'' for f in fields]
        if where:
            conditions.append(f"({where})")
        query = "SELECT * FROM utterances" + (" WHERE " + " AND ".join(conditions) if conditions else "")
        return self._query(query + ORDER, params)

    def _query(self, query: str, params: list) -> list[dict]:
        import duckdb

        from catalog.sql import connect

        con = connect(self.path)
        try:
            return con.sql(query, params=params).to_arrow_table().to_pylist()
        except duckdb.Error as exc:
            raise ValueError(f"{self.path}: SQL error in the selection: {exc}") from None
        finally:
            con.close()

    def plan(self, shards: Iterable[Shard] | None = None) -> dict[Shard, list[str]]:
        """(dataset, shard_id) -> member keys in plan order (what every field tar holds)."""
        import pyarrow.parquet as pq

        table = pq.read_table(table_path(self.path, "utterances"),
                              columns=["dataset", "shard_id", "index_in_shard", "key"])
        plan = shard_keys_of_table(table)
        return plan if shards is None else {s: plan[s] for s in shards}

    # -- reading -------------------------------------------------------------------------------
    def _selection(self, fields: list[str], split, where, status, sync_correct: bool
                   ) -> tuple[dict[Shard, list[dict]], dict[Shard, list[str]]]:
        if sync_correct and "sync_offset" not in self.columns:
            raise StoreError(f"{self.path}: no sync_offset column to correct with; score the store "
                             "first (python -m training.sync.sync_pass)")
        rows = self.select(split, where, status, fields)
        by_shard = rows_by_shard(rows)
        return by_shard, self.plan(by_shard)

    def _samples(self, fields: list[str], window: int | None, stride: int, split, where, status,
                 shuffle: bool, seed: int, sync_correct: bool) -> Iterator[dict]:
        """The samples of a selection, checked and selected now, read as they are drawn."""
        fields = list(fields)
        check_request(fields, window, stride)
        by_shard, plan = self._selection(fields, split, where, status, sync_correct)
        shards = sorted(by_shard)
        rng = np.random.default_rng(seed) if shuffle else None
        if rng is not None:
            shards = [shards[i] for i in rng.permutation(len(shards))]

        def draw() -> Iterator[dict]:
            for shard in shards:
                yield from shard_samples(self.path, fields, shard, plan[shard], by_shard[shard], window,
                                         stride, rng, sync_correct)
        return draw()

    def utterances(self, fields: Iterable[str], split=None, where: str | None = None,
                   status: str | None = "ok", sync_correct: bool = False) -> Iterator[dict]:
        """Whole utterances of the selection, shard by shard in plan order: dicts of decoded
        arrays per field (catalog/samples.py) with the catalog `row`."""
        return self._samples(list(fields), None, 1, split, where, status, False, 0, sync_correct)

    def utterance(self, utt_id: str, fields: Iterable[str], dataset: str | None = None,
                  sync_correct: bool = False) -> dict:
        """One utterance by id, as `utterances` gives it; its shard's tars are read up to it.
        KeyError for an id the catalog lacks (or holds in several datasets without `dataset`);
        StoreError when one of `fields` is not 'ok' for it."""
        fields = list(fields)
        check_request(fields, None, 1)
        check_fields(self.columns, fields, self.path)
        query = "SELECT * FROM utterances WHERE utt_id = ?" + (" AND dataset = ?" if dataset else "")
        rows = self._query(query, [utt_id] + ([dataset] if dataset else []))
        if len(rows) != 1:
            raise KeyError(f"{self.path}: {'no' if not rows else 'more than one'} utterance {utt_id!r}"
                           + ("" if rows else " in the catalog") + ("; pass dataset=" if rows else ""))
        row = rows[0]
        failed = {f: row[f"field_{f}"] for f in fields if row[f"field_{f}"] != "ok"}
        if failed:
            raise StoreError(f"{self.path}: {utt_id}: fields not 'ok': {failed} (see the errors table)")
        shard = (row["dataset"], int(row["shard_id"]))
        samples = shard_samples(self.path, fields, shard, self.plan([shard])[shard], [row], None,
                                sync_correct=sync_correct)
        try:
            return next(samples)
        except StopIteration:
            raise StoreError(f"{self.path}: {utt_id} is shorter than one {WINDOW}-frame window") from None
        finally:
            samples.close()

    def windows(self, fields: Iterable[str], split=None, where: str | None = None,
                status: str | None = "ok", window: int = WINDOW, stride: int = 1,
                shuffle: bool = False, seed: int = 0, sync_correct: bool = False) -> Iterator[dict]:
        """Every `window`-frame window (start frames 0, stride, ...) of the selection, every field
        over the same seconds, in one process (`dataset` for DataLoader workers)."""
        return self._samples(list(fields), window, stride, split, where, status, shuffle, seed,
                             sync_correct)

    def dataset(self, split: str | Iterable[str] | None = "train", fields: Iterable[str] = (),
                window: int | None = WINDOW, where: str | None = None, status: str | None = "ok",
                stride: int = 1, shuffle: bool = False, seed: int = 0, sync_correct: bool = False,
                rank: int | None = None, world: int | None = None) -> Any:
        """A torch IterableDataset of the selection's windows (or whole utterances with
        window=None) that a plain DataLoader consumes with workers and DDP ranks, each shard
        read once per epoch (catalog/dataset.py)."""
        from catalog.dataset import StoreDataset

        fields = list(fields)
        check_request(fields, window, stride)
        by_shard, plan = self._selection(fields, split, where, status, sync_correct)
        if not by_shard:
            raise StoreError(f"{self.path}: nothing selected (split {split!r}, where {where!r}, "
                             f"status {status!r}, fields {fields} 'ok')")
        return StoreDataset(str(self.path), fields, by_shard, plan, window, stride, shuffle, seed,
                            sync_correct, rank, world)
