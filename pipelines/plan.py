"""The shard plan: which utterances go in which shard, in which order, fixed before extraction.

The plan lives in the catalog's utterances table. A re-run keeps every planned row where it is and
appends utterances it has not seen in new shards, so completed shards stay valid.
"""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.layout import table_path, utt_key
from pipelines.adapters import Utterance

PLAN_COLUMNS = ["utt_id", "key", "dataset", "speaker_id", "video_path", "audio_path",
                "transcript", "official_split", "shard_id", "index_in_shard"]


def read_plan(store: Path) -> list[dict]:
    """Every planned utterance of the store (all datasets), plan columns only."""
    path = table_path(store, "utterances")
    if not path.exists():
        return []
    table = pq.read_table(path)
    return table.select([c for c in PLAN_COLUMNS if c in table.column_names]).to_pylist()


def extend_plan(existing: list[dict], dataset: str, utterances: list[Utterance],
                shard_size: int) -> list[dict]:
    """The dataset's plan: its existing rows unchanged, new utterances in new shards."""
    rows = [r for r in existing if r["dataset"] == dataset]
    known = {r["utt_id"] for r in rows}
    next_shard = max((r["shard_id"] for r in rows), default=-1) + 1
    fresh = [u for u in utterances if u.utt_id not in known]
    for i, utt in enumerate(fresh):
        rows.append({**utt.as_row(), "key": utt_key(utt.utt_id), "dataset": dataset,
                     "shard_id": next_shard + i // shard_size, "index_in_shard": i % shard_size})
    keys = [r["key"] for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"dataset {dataset!r}: two utterance ids map to the same tar key")
    return rows


def shards_of(plan: list[dict]) -> dict[int, list[dict]]:
    """shard_id -> its rows in member order."""
    out: dict[int, list[dict]] = {}
    for row in sorted(plan, key=lambda r: (r["shard_id"], r["index_in_shard"])):
        out.setdefault(row["shard_id"], []).append(row)
    return out


def plan_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([(c, pa.int32() if c in ("shard_id", "index_in_shard") else pa.string())
                        for c in PLAN_COLUMNS])
    return pa.Table.from_pylist([{c: r.get(c) for c in PLAN_COLUMNS} for r in rows], schema=schema)
