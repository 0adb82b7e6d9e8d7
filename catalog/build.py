"""Build the catalog's Parquet tables from the shard plan and the per-(shard, field) sidecars.

The tables are a pure function of the plan and the sidecars, so an interrupted and resumed run
gives the same catalog as an uninterrupted one. The build is linear: the plan is grouped by shard
once, every sidecar is read once, and each of its member entries updates its utterance's row
through one dictionary lookup.

Sidecar member entries may carry `"columns": {name: value}`; they are merged into the
utterance's row (typed by COLUMN_TYPES where the name is known; other names pass through with the
type Arrow infers). A sidecar with no tar beside it, for a name outside the store's fields (the
sync pass's `sync`), contributes only its columns.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.layout import field_dir, table_path, tar_path
from catalog.plan import PLAN_COLUMNS, PLAN_SCHEMA, write_plan
from catalog.sidecar import read_sidecar
from catalog.splits import assign_splits

SPEAKER_SOURCE = {  # what a corpus's speaker_id really is; LRS2 has no speaker labels
    "folder": "parent folder name",
    "synthetic": "generated speaker",
    "lrs2": "programme folder (proxy: LRS2 has no speaker labels)",
    "lrs3": "video-id folder (proxy: one TED talk; a person giving several talks has several ids)",
    "voxceleb2": "identity label idNNNNN",
    "cncvs": "speaker folder sNNNNN",
}

# Per-utterance columns that sidecar entries may carry, with their catalog types.
COLUMN_TYPES: dict[str, pa.DataType] = {
    "n_frames": pa.int32(),  # frames of the utterance on the 25 fps grid (what every field covers)
    "expected_frames": pa.int32(),  # frames the source's duration promises
    "decoded_frames": pa.int32(),  # frames really decoded (the rest were filled)
    "audio_coverage": pa.float64(),  # share 0..1 of the timeline with real audio
    "warnings": pa.list_(pa.string()),
    "detection_rate": pa.float64(), "face_size": pa.float64(), "detection_confidence": pa.float64(),
    "sync_offset": pa.int32(), "sync_confidence": pa.float64(), "sync_min_dist": pa.float64(),
    "sync_scorer": pa.string(),
}
# Quality figures older meta sidecars carry at the top level of an entry rather than in `columns`.
LEGACY_META_COLUMNS = ("n_frames", "detection_rate", "face_size", "detection_confidence")
RESULT_COLUMNS = [("split", pa.string()), ("status", pa.string()), ("duration_s", pa.float64())]


def write_table(store: Path, name: str, table: pa.Table) -> None:
    path = table_path(store, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _column_fields(store: Path, datasets: set[str], fields: list[str]) -> dict[str, list[str]]:
    """dataset -> names of column-only sidecar series (a folder of sidecars outside `fields`)."""
    out = {}
    for ds in datasets:
        root = field_dir(store, ds, "x").parent
        out[ds] = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in fields) \
            if root.is_dir() else []
    return out


def build_catalog(store: Path, plan: list[dict], fields: list[str], val: float = 0.1,
                  test: float = 0.1, seed: int = 0) -> dict[str, pa.Table]:
    """All five tables for every planned utterance; missing sidecars read as 'missing'."""
    store = Path(store)
    rows: dict[tuple[str, str], dict] = {}
    shards: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in plan:
        row = {c: r.get(c) for c in PLAN_COLUMNS}
        row["status"] = "ok"
        rows[(r["dataset"], r["utt_id"])] = row
        shards[(r["dataset"], r["shard_id"])].append(row)
    extra_columns: dict[str, None] = {}  # column names sidecars brought, in first-seen order
    field_rows, error_rows = [], []
    column_only = _column_fields(store, {ds for ds, _ in shards}, fields)
    for (dataset, shard_id), members in sorted(shards.items()):
        for field in fields:
            side = read_sidecar(store, dataset, field, shard_id)
            if side is None:
                for row in members:
                    row[f"field_{field}"] = "missing"
                    row["status"] = "incomplete"
                continue
            entries = side["members"]
            field_rows.append({
                "dataset": dataset, "shard_id": shard_id, "field": field, "version": side["version"],
                "path": str(tar_path(store, dataset, field, shard_id).relative_to(store)),
                "n_members": side["n_members"], "n_ok": sum(m["status"] == "ok" for m in entries),
                "bytes": side["bytes"], "sha256": side["sha256"]})
            for m in entries:
                row = rows[(dataset, m["utt_id"])]
                row[f"field_{field}"] = m["status"]
                if field == "meta":
                    for k in LEGACY_META_COLUMNS:
                        if k in m:
                            row[k] = m[k]
                if m.get("columns"):
                    row.update(m["columns"])
                    extra_columns.update(dict.fromkeys(m["columns"]))
                if m["status"] != "ok":
                    row["status"] = "error" if row["status"] != "incomplete" else row["status"]
                    error_rows.append({"utt_id": m["utt_id"], "dataset": dataset, "shard_id": shard_id,
                                       "field": field, "stage": m.get("stage"), "reason": m.get("reason")})
        for name in column_only[dataset]:
            side = read_sidecar(store, dataset, name, shard_id, need_tar=False)
            for m in (side or {}).get("members", []):
                if m.get("columns") and (dataset, m.get("utt_id")) in rows:
                    rows[(dataset, m["utt_id"])].update(m["columns"])
                    extra_columns.update(dict.fromkeys(m["columns"]))
    utts = [row for _, members in sorted(shards.items()) for row in
            sorted(members, key=lambda r: r["index_in_shard"])]
    assign_splits(utts, val=val, test=test, seed=seed)
    for r in utts:
        n = r.get("n_frames")
        r["duration_s"] = n / 25.0 if n is not None else None
    tables = {
        "utterances": _utterance_table(utts, fields, list(extra_columns)),
        "speakers": _speaker_table(utts),
        "shards": _shard_table(shards),
        "fields": pa.Table.from_pylist(field_rows, schema=_FIELD_SCHEMA),
        "errors": pa.Table.from_pylist(error_rows, schema=_ERROR_SCHEMA),
    }
    for name, table in tables.items():
        write_table(store, name, table)
    return tables


_FIELD_SCHEMA = pa.schema([("dataset", pa.string()), ("shard_id", pa.int32()), ("field", pa.string()),
                           ("version", pa.string()), ("path", pa.string()), ("n_members", pa.int32()),
                           ("n_ok", pa.int32()), ("bytes", pa.int64()), ("sha256", pa.string())])
_ERROR_SCHEMA = pa.schema([("utt_id", pa.string()), ("dataset", pa.string()), ("shard_id", pa.int32()),
                           ("field", pa.string()), ("stage", pa.string()), ("reason", pa.string())])
_BASE_QUALITY = ("n_frames", "detection_rate", "face_size", "detection_confidence")


def _column(values: list, typ: pa.DataType | None) -> pa.Array:
    """One column; a known name gets its type (whole-number floats become ints), others inferred."""
    if typ is None:
        try:
            return pa.array(values)
        except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed kinds: keep them readable as JSON text
            return pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
    if pa.types.is_integer(typ):
        values = [int(v) if isinstance(v, float) and v.is_integer() else v for v in values]
    return pa.array(values, typ)


def _utterance_table(utts: list[dict], fields: list[str], extra: list[str]) -> pa.Table:
    """Plan columns, results, the base quality columns, field statuses, then sidecar columns."""
    names = list(PLAN_COLUMNS) + [n for n, _ in RESULT_COLUMNS] + list(_BASE_QUALITY)
    names += [f"field_{f}" for f in fields]
    names += [c for c in extra if c not in names]
    types = {**{f.name: f.type for f in PLAN_SCHEMA}, **dict(RESULT_COLUMNS), **COLUMN_TYPES,
             **{f"field_{f}": pa.string() for f in fields}}
    arrays = [_column([r.get(c) for r in utts], types.get(c)) for c in names]
    return pa.Table.from_arrays(arrays, names=names)


def _speaker_table(utts: list[dict]) -> pa.Table:
    speakers: dict[tuple, dict] = {}
    for r in utts:
        s = speakers.get((r["dataset"], r["speaker_id"]))
        if s is None:
            s = speakers[(r["dataset"], r["speaker_id"])] = {
                "speaker_id": r["speaker_id"], "dataset": r["dataset"], "n_utterances": 0, "n_ok": 0,
                "total_duration_s": 0.0, "split": r["split"],
                "speaker_source": SPEAKER_SOURCE.get(r["dataset"], "corpus speaker label"),
                "official_splits": set()}
        if r.get("official_split"):
            s["official_splits"].add(r["official_split"])
        s["n_utterances"] += 1
        s["n_ok"] += r["status"] == "ok"
        s["total_duration_s"] += r["duration_s"] or 0.0
    for s in speakers.values():  # every official split the speaker has utterances in, sorted
        s["official_splits"] = ",".join(sorted(s["official_splits"]))
    return pa.Table.from_pylist([speakers[k] for k in sorted(speakers)], schema=_SPEAKER_SCHEMA)


_SPEAKER_SCHEMA = pa.schema([("speaker_id", pa.string()), ("dataset", pa.string()), ("n_utterances", pa.int64()),
                             ("n_ok", pa.int64()), ("total_duration_s", pa.float64()), ("split", pa.string()),
                             ("speaker_source", pa.string()), ("official_splits", pa.string())])
_SHARD_SCHEMA = pa.schema([("dataset", pa.string()), ("shard_id", pa.int32()), ("n_utterances", pa.int64()),
                           ("first_utt", pa.string()), ("last_utt", pa.string()), ("n_ok", pa.int64()),
                           ("n_frames", pa.int64()), ("planned_seconds", pa.float64())])


def _shard_table(shards: dict[tuple[str, int], list[dict]]) -> pa.Table:
    """One row per shard from its own members (each utterance is visited once)."""
    out = []
    for (dataset, shard_id), members in sorted(shards.items()):
        members = sorted(members, key=lambda r: r["index_in_shard"])
        out.append({"dataset": dataset, "shard_id": shard_id, "n_utterances": len(members),
                    "first_utt": members[0]["utt_id"], "last_utt": members[-1]["utt_id"],
                    "n_ok": sum(r["status"] == "ok" for r in members),
                    "n_frames": sum(r.get("n_frames") or 0 for r in members),
                    "planned_seconds": sum(r.get("planned_seconds") or 0.0 for r in members)})
    return pa.Table.from_pylist(out, schema=_SHARD_SCHEMA)


def read_table(store: Path, name: str) -> pa.Table:
    path = table_path(store, name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no catalog table {name!r}; run pipelines/extract.py first")
    return pq.read_table(path)


__all__ = ["build_catalog", "read_table", "write_plan", "write_table", "COLUMN_TYPES", "PLAN_COLUMNS"]
