"""The shard plan: which utterances go in which shard, in which order, fixed before extraction.

The plan lives in the catalog's utterances table. A re-run keeps every planned row where it is and
appends utterances it has not seen in new shards, so completed shards stay valid.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.layout import table_path, utt_key
from pipelines.adapters import Utterance

PLAN_COLUMNS = ["utt_id", "key", "dataset", "speaker_id", "video_path", "audio_path",
                "transcript", "official_split", "shard_id", "index_in_shard",
                "start_s", "end_s", "language"]  # start_s/end_s: a segment of a long source (or null)
_TYPES = {"shard_id": pa.int32(), "index_in_shard": pa.int32(), "start_s": pa.float64(),
          "end_s": pa.float64()}


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
    _warn_resegmented(known, fresh, dataset)
    for i, utt in enumerate(fresh):
        rows.append({**utt.as_row(), "key": utt_key(utt.utt_id), "dataset": dataset,
                     "shard_id": next_shard + i // shard_size, "index_in_shard": i % shard_size})
    keys = [r["key"] for r in rows]
    if len(set(keys)) != len(keys):
        raise ValueError(f"dataset {dataset!r}: two utterance ids map to the same tar key")
    return rows


def _warn_resegmented(known: set[str], fresh: list[Utterance], dataset: str) -> None:
    """A store planned with another --max-seconds would hold a clip both whole and cut."""
    base = lambda i: i.split("_seg", 1)[0]  # noqa: E731
    known_bases = {base(i) for i in known}
    clash = [u.utt_id for u in fresh if base(u.utt_id) in known_bases]
    if clash:
        print(f"warning: {dataset}: {len(clash)} new utterance ids (e.g. {clash[0]}) are segments or whole "
              f"versions of clips already planned in this store (was --max-seconds changed?); both are "
              f"kept. Use a fresh store to change the segmentation.", file=sys.stderr)


def shards_of(plan: list[dict]) -> dict[int, list[dict]]:
    """shard_id -> its rows in member order."""
    out: dict[int, list[dict]] = {}
    for row in sorted(plan, key=lambda r: (r["shard_id"], r["index_in_shard"])):
        out.setdefault(row["shard_id"], []).append(row)
    return out


def plan_table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([(c, _TYPES.get(c, pa.string())) for c in PLAN_COLUMNS])
    return pa.Table.from_pylist([{c: r.get(c) for c in PLAN_COLUMNS} for r in rows], schema=schema)
