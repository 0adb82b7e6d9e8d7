"""Build the catalog's Parquet tables from the shard plan and the per-(shard, field) sidecars.

The tables are a pure function of the plan and the sidecars, so an interrupted and resumed run
gives the same catalog as an uninterrupted one.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from catalog.layout import sidecar_path, table_path, tar_path
from catalog.splits import assign_splits
from catalog.plan import PLAN_COLUMNS, plan_table, write_plan

SPEAKER_SOURCE = {  # what a corpus's speaker_id really is; LRS2 has no speaker labels
    "folder": "parent folder name",
    "synthetic": "generated speaker",
    "lrs2": "programme folder (proxy: LRS2 has no speaker labels)",
    "lrs3": "video-id folder (proxy: one TED talk; a person giving several talks has several ids)",
    "voxceleb2": "identity label idNNNNN",
    "cncvs": "speaker folder sNNNNN",
}


def write_table(store: Path, name: str, table: pa.Table) -> None:
    path = table_path(store, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".parquet.tmp")
    pq.write_table(table, tmp)
    tmp.replace(path)


def _read_sidecar(store: Path, dataset: str, field: str, shard_id: int) -> dict | None:
    side, tar = sidecar_path(store, dataset, field, shard_id), tar_path(store, dataset, field, shard_id)
    if not (side.exists() and tar.exists()):
        return None
    return json.loads(side.read_text())


def build_catalog(store: Path, plan: list[dict], fields: list[str], val: float = 0.1,
                  test: float = 0.1, seed: int = 0) -> dict[str, pa.Table]:
    """All five tables for every planned utterance; missing sidecars read as 'missing'."""
    store = Path(store)
    rows = {(r["dataset"], r["utt_id"]): {**r, "status": "ok"} for r in plan}
    field_rows, error_rows, shard_rows = [], [], {}
    for r in plan:
        s = shard_rows.setdefault((r["dataset"], r["shard_id"]), {
            "dataset": r["dataset"], "shard_id": r["shard_id"], "n_utterances": 0})
        s["n_utterances"] += 1
    for (dataset, shard_id) in sorted(shard_rows):
        for field in fields:
            side = _read_sidecar(store, dataset, field, shard_id)
            if side is None:
                for r in plan:
                    if r["dataset"] == dataset and r["shard_id"] == shard_id:
                        rows[(dataset, r["utt_id"])][f"field_{field}"] = "missing"
                        rows[(dataset, r["utt_id"])]["status"] = "incomplete"
                continue
            field_rows.append({
                "dataset": dataset, "shard_id": shard_id, "field": field, "version": side["version"],
                "path": str(tar_path(store, dataset, field, shard_id).relative_to(store)),
                "n_members": side["n_members"], "n_ok": sum(m["status"] == "ok" for m in side["members"]),
                "bytes": side["bytes"], "sha256": side["sha256"]})
            for m in side["members"]:
                row = rows[(dataset, m["utt_id"])]
                row[f"field_{field}"] = m["status"]
                if field == "meta":
                    row.update({k: m.get(k) for k in ("n_frames", "detection_rate", "face_size",
                                                       "detection_confidence")})
                if m["status"] != "ok":
                    row["status"] = "error" if row["status"] != "incomplete" else row["status"]
                    error_rows.append({"utt_id": m["utt_id"], "dataset": dataset, "shard_id": shard_id,
                                       "field": field, "stage": m["stage"], "reason": m["reason"]})
    utts = sorted(rows.values(), key=lambda r: (r["dataset"], r["shard_id"], r["index_in_shard"]))
    assign_splits(utts, val=val, test=test, seed=seed)
    for r in utts:
        n = r.get("n_frames")
        r["duration_s"] = n / 25.0 if n is not None else None
    tables = {
        "utterances": _utterance_table(utts, fields),
        "speakers": _speaker_table(utts),
        "shards": pa.Table.from_pylist([_shard_summary(s, utts) for _, s in sorted(shard_rows.items())]),
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


def _utterance_table(utts: list[dict], fields: list[str]) -> pa.Table:
    schema = plan_table([]).schema
    for name, typ in [("split", pa.string()), ("status", pa.string()), ("n_frames", pa.int32()),
                      ("duration_s", pa.float64()), ("detection_rate", pa.float64()),
                      ("face_size", pa.float64()), ("detection_confidence", pa.float64())]:
        schema = schema.append(pa.field(name, typ))
    for f in fields:
        schema = schema.append(pa.field(f"field_{f}", pa.string()))
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in utts], schema=schema)


def _speaker_table(utts: list[dict]) -> pa.Table:
    speakers: dict[tuple, dict] = {}
    for r in utts:
        s = speakers.setdefault((r["dataset"], r["speaker_id"]), {
            "speaker_id": r["speaker_id"], "dataset": r["dataset"], "n_utterances": 0, "n_ok": 0,
            "total_duration_s": 0.0, "split": r["split"],
            "speaker_source": SPEAKER_SOURCE.get(r["dataset"], "corpus speaker label"),
            "official_splits": set()})
        if r.get("official_split"):
            s["official_splits"].add(r["official_split"])
        s["n_utterances"] += 1
        s["n_ok"] += r["status"] == "ok"
        s["total_duration_s"] += r["duration_s"] or 0.0
    for s in speakers.values():  # every official split the speaker has utterances in, sorted
        s["official_splits"] = ",".join(sorted(s["official_splits"]))
    return pa.Table.from_pylist([speakers[k] for k in sorted(speakers)])


def _shard_summary(shard: dict, utts: list[dict]) -> dict:
    mine = [r for r in utts if r["dataset"] == shard["dataset"] and r["shard_id"] == shard["shard_id"]]
    return {**shard, "first_utt": mine[0]["utt_id"], "last_utt": mine[-1]["utt_id"],
            "n_ok": sum(r["status"] == "ok" for r in mine),
            "n_frames": sum(r["n_frames"] or 0 for r in mine)}


def read_table(store: Path, name: str) -> pa.Table:
    path = table_path(store, name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no catalog table {name!r}; run pipelines/extract.py first")
    return pq.read_table(path)


__all__ = ["build_catalog", "read_table", "write_plan", "PLAN_COLUMNS"]
