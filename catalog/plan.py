"""The shard plan: which utterances go in which shard, in which order, fixed before extraction.

The plan is its own file, `<store>/plan.parquet` (PLAN_SCHEMA, the one typed definition), written
before extraction; its columns are also the first columns of the catalog's utterances table,
which is only replaced when a build ends (so readers keep the previous catalog for the whole
run). Stores written before the plan had its own file keep it in the utterances table, and
read_plan reads it from there. A re-run keeps every planned row where it is and appends the
utterances it has not seen in new shards after the dataset's last one, so completed shards stay
valid and their tars are never rewritten.

Two utterance ids that map to one tar key (`x y` and `x_y`: keys have no spaces or dots): the
one planned first keeps the key; the later one is planned as an error row, with a key of its own
(`<key>-dupN`), `plan_error` naming the other, in a shard of such rows after the dataset's new
shards; the job writes its error placeholders without extracting it (stage `plan`).

Shards are sized by content: `extend_plan` fills each new shard with utterances, in the order
given, until their seconds of video reach `shard_minutes` (default 5 minutes: ~4,000 shards
per field for LRS2's ~240k utterances of ~5 s, each around 25-80 MB of rgb; an utterance longer
than the target gets a shard of its own). `max_utterances` optionally caps the count as well
(tests and tiny corpora). An utterance's seconds are, in order of preference: its `duration_s`
(a probe pass that knows it), `end_s - start_s` (a segment), the size of its video file divided
by ASSUMED_BYTES_PER_SECOND (one stat per new utterance, no decoding), else DEFAULT_SECONDS. The
figure used is stored as `planned_seconds`, so shard sizes can be audited with SQL.
"""
from __future__ import annotations

import os
import sys
from collections import defaultdict
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.layout import plan_path, table_path, temporary_name, utt_key, writing

DEFAULT_SHARD_MINUTES = 5.0
ASSUMED_BYTES_PER_SECOND = 80_000  # small talking-face mp4s (the sample clips: 65-110 kB/s)
DEFAULT_SECONDS = 5.0  # nothing known (no probe, no segment, no file): a typical LRS2/VoxCeleb2 clip

PLAN_SCHEMA = pa.schema([
    ("utt_id", pa.string()), ("key", pa.string()), ("dataset", pa.string()), ("speaker_id", pa.string()),
    ("video_path", pa.string()), ("audio_path", pa.string()), ("transcript", pa.string()),
    ("official_split", pa.string()), ("shard_id", pa.int32()), ("index_in_shard", pa.int32()),
    ("start_s", pa.float64()), ("end_s", pa.float64()),  # a segment of a long source (or null)
    ("language", pa.string()),
    ("planned_seconds", pa.float64()),  # the seconds the shard sizing counted (see module doc)
    ("plan_error", pa.string()),  # why the row is an error before extraction (a key collision), or null
])
PLAN_COLUMNS = PLAN_SCHEMA.names


def plan_table(rows: Iterable[Mapping]) -> pa.Table:
    """Plan rows as a typed table (missing columns are null, other keys are ignored)."""
    return pa.Table.from_pylist(rows if isinstance(rows, list) else list(rows), schema=PLAN_SCHEMA)


def read_plan_table(store: Path) -> pa.Table:
    """The store's plan (all datasets): plan.parquet, else the plan columns of an older store's
    utterances table; empty when there is neither."""
    path = plan_path(store)
    if not path.exists():
        path = table_path(store, "utterances")
    if not path.exists():
        return PLAN_SCHEMA.empty_table()
    names = set(pq.read_schema(path).names)
    table = pq.read_table(path, columns=[c for c in PLAN_COLUMNS if c in names])
    for c in PLAN_COLUMNS:  # plans written before a column existed read it as null
        if c not in names:
            table = table.append_column(PLAN_SCHEMA.field(c), pa.nulls(table.num_rows, PLAN_SCHEMA.field(c).type))
    return table.select(PLAN_COLUMNS).cast(PLAN_SCHEMA)


def read_plan(store: Path) -> list[dict]:
    """Every planned utterance of the store (all datasets), plan columns only."""
    return read_plan_table(store).to_pylist()


def write_plan(store: Path, plan: list[dict]) -> None:
    """Store the plan (plan.parquet, atomically) before extraction; the catalog is left as it is."""
    path = plan_path(store)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    with writing(path, tmp):
        pq.write_table(plan_table(plan), tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)


def _as_row(utt: Any) -> dict:
    """An adapter's utterance (anything with as_row(), a dataclass or a mapping) as a plain dict."""
    if hasattr(utt, "as_row"):
        return dict(utt.as_row())
    if is_dataclass(utt):
        return asdict(utt)
    return dict(utt)


def planned_seconds(row: Mapping) -> float:
    """The seconds of video the shard sizing counts for one utterance (see the module doc)."""
    if row.get("duration_s"):
        return float(row["duration_s"])
    if row.get("start_s") is not None and row.get("end_s") is not None:
        return max(0.0, float(row["end_s"]) - float(row["start_s"]))
    try:
        return os.stat(row["video_path"]).st_size / ASSUMED_BYTES_PER_SECOND
    except (OSError, KeyError, TypeError):
        return DEFAULT_SECONDS


def extend_plan(existing: list[dict], dataset: str, utterances: Iterable[Any],
                shard_size: int | None = None, shard_minutes: float = DEFAULT_SHARD_MINUTES) -> list[dict]:
    """The dataset's plan: its existing rows unchanged, new utterances in new content-sized shards.

    `shard_minutes`: seconds of video per new shard (a shard closes once it reaches the target);
    `shard_size`: at most this many utterances per new shard as well (None: no cap).
    One pass over the plan and the utterances.
    """
    if shard_minutes <= 0:
        raise ValueError(f"shard_minutes must be positive, got {shard_minutes}")
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"shard_size must be at least 1, got {shard_size}")
    target = shard_minutes * 60.0
    rows = [r for r in existing if r["dataset"] == dataset]
    known = {r["utt_id"] for r in rows}
    owner = {r["key"]: r for r in rows}  # key -> the row holding it
    if len(owner) != len(rows):
        raise ValueError(f"dataset {dataset!r}: the store's plan holds one tar key twice")
    shard = max((r["shard_id"] for r in rows), default=-1) + 1
    fresh = [row for row in map(_as_row, utterances) if row["utt_id"] not in known]
    _warn_resegmented(known, [r["utt_id"] for r in fresh], dataset)
    index, filled, collided = 0, 0.0, []
    for row in fresh:
        key = utt_key(row["utt_id"])
        if key in owner:  # the later of two ids sharing a key: an error row, planned below
            collided.append((row, key, owner[key]))
            continue
        seconds = planned_seconds(row)
        rows.append({**{c: row.get(c) for c in PLAN_COLUMNS}, "key": key, "plan_error": None,
                     "dataset": dataset, "shard_id": shard, "index_in_shard": index,
                     "planned_seconds": round(seconds, 3)})
        owner[key] = rows[-1]
        index, filled = index + 1, filled + seconds
        if filled >= target or (shard_size is not None and index >= shard_size):
            shard, index, filled = shard + 1, 0, 0.0
    if collided:
        rows += _collision_rows(collided, owner, dataset, shard + (index > 0))
    return rows


def _collision_rows(collided: list[tuple[dict, str, dict]], owner: dict[str, dict], dataset: str,
                    shard: int) -> list[dict]:
    """One shard of error rows for ids whose key another planned id holds (see the module doc)."""
    out = []
    for index, (row, key, other) in enumerate(collided):
        n = 1
        while f"{key}-dup{n}" in owner:
            n += 1
        reason = (f"{row['utt_id']!r} maps to tar key {key!r}, which {other['utt_id']!r} "
                  f"({other.get('video_path')}) already has; rename one of the two files")
        out.append({**{c: row.get(c) for c in PLAN_COLUMNS}, "key": f"{key}-dup{n}", "dataset": dataset,
                    "shard_id": shard, "index_in_shard": index, "plan_error": reason,
                    "planned_seconds": round(planned_seconds(row), 3)})
        owner[out[-1]["key"]] = out[-1]
        print(f"warning: {dataset}: {reason}; it is an error row (stage 'plan')", file=sys.stderr)
    return out


def plan_errors(plan: Iterable[Mapping]) -> list[dict]:
    """The rows planned as errors (key collisions): the job writes their placeholders."""
    return [r for r in plan if r.get("plan_error")]


def _warn_resegmented(known: set[str], fresh: list[str], dataset: str) -> None:
    """A store planned with another --max-seconds would hold a clip both whole and cut."""
    base = lambda i: i.split("_seg", 1)[0]  # noqa: E731
    known_bases = {base(i) for i in known}
    clash = [u for u in fresh if base(u) in known_bases]
    if clash:
        print(f"warning: {dataset}: {len(clash)} new utterance ids (e.g. {clash[0]}) are segments or whole "
              f"versions of clips already planned in this store (was --max-seconds changed?); both are "
              f"kept. Use a fresh store to change the segmentation.", file=sys.stderr)


def shards_of(plan: Iterable[Mapping]) -> dict[int, list[dict]]:
    """shard_id -> its rows in member order, for ONE dataset's plan (one pass, then per-shard sorts)."""
    out: dict[int, list] = defaultdict(list)
    for row in plan:
        out[row["shard_id"]].append(row)
    return {sid: sorted(rows, key=lambda r: r["index_in_shard"]) for sid, rows in sorted(out.items())}


def shard_keys(plan: Iterable[Mapping]) -> dict[tuple[str, int], list[str]]:
    """(dataset, shard_id) -> member keys in plan order, for any number of datasets (one pass)."""
    out: dict[tuple[str, int], list] = defaultdict(list)
    for row in plan:
        out[(row["dataset"], int(row["shard_id"]))].append((row["index_in_shard"], row["key"]))
    return {s: [k for _, k in sorted(members)] for s, members in sorted(out.items())}


def shard_keys_of_table(table: pa.Table) -> dict[tuple[str, int], list[str]]:
    """shard_keys from an Arrow table holding dataset, shard_id, index_in_shard and key columns.

    Reads only those four columns (a catalog of a million rows in about a second), for
    readers that start from the Parquet utterances table rather than Python rows.
    """
    t = table.select(["dataset", "shard_id", "index_in_shard", "key"]).sort_by(
        [("dataset", "ascending"), ("shard_id", "ascending"), ("index_in_shard", "ascending")])
    out: dict[tuple[str, int], list[str]] = {}
    current, keys = None, None
    for ds, sid, key in zip(t["dataset"].to_pylist(), t["shard_id"].to_pylist(), t["key"].to_pylist()):
        if (ds, sid) != current:
            current, keys = (ds, sid), []
            out[current] = keys
        keys.append(key)
    return out
