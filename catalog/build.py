"""Build the catalog's Parquet tables from the shard plan and the per-(shard, field) sidecars.

The tables are a pure function of the plan and the sidecars, so an interrupted and resumed run
gives the same catalog as an uninterrupted one. The build is linear and column-wise: the plan is
sorted once so that each shard is a range of rows, each field folder is listed once, every sidecar
is read once, and each member entry lands on its row by its position in the shard (sidecars list
the shard in plan order; a dictionary is built only if one does not).

Sidecar member entries may carry `"columns": {name: value}`; they are merged into the
utterance's row (typed by COLUMN_TYPES where the name is known; other names pass through with the
type Arrow infers). A sidecar with no tar beside it, for a name outside the store's fields (the
sync pass's `sync`), contributes only its columns. A sidecar that does not parse (not JSON, not a
sidecar) reads as missing, never a crash: its rows are `missing` / `incomplete` and `verify`
names it; the next extraction run redoes the pair.

Status semantics (what `status` and `field_<name>` promise):

- `field_<name>` is the field's own state for the utterance: `ok` (its member holds the data),
  `error` (a placeholder member; the errors table gives stage and reason) or `missing` (no
  intact tar and sidecar for the shard yet).
- `status` is the utterance's own data: `ok` when every field of the store is present and no field
  failed on the utterance's data; `error` when some field failed on it (stages decode, face,
  feature, or a per-utterance model failure); `incomplete` when some field is missing or its
  shard's worker died for good (stage `worker`: nothing of the utterance was made; the errors
  table names the cause) -- a later run fills it in.
- A field that failed for a reason outside the utterance -- its model could not load
  (`job_level` sidecar entries, stage `model`) -- is `field_<name>` = error and an errors-table
  row, but leaves `status` as the other fields make it: `status = 'ok'` queries keep every
  utterance whose own data is fine, and a combo that needs the field filters on `field_<name>`.
"""
from __future__ import annotations

import functools
import gc
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from catalog.layout import (catalog_dir, field_dir, new_generation, publish_generation, shard_name, table_path,
                            writing)
from catalog.plan import PLAN_COLUMNS, PLAN_SCHEMA, plan_table, write_plan
from catalog.sidecar import WORKER_STAGE, own_failure, parse_sidecar
from catalog.splits import assign_split_column

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
    # face quality (features/quality.py): face size in the aligned frame (source px), detector face
    # counts, Laplacian variance of the aligned crop, head pose in degrees (medians; max |yaw|)
    "aligned_face_size": pa.float64(), "faces_max": pa.int32(), "one_face_share": pa.float64(),
    "sharpness": pa.float64(), "yaw": pa.float64(), "pitch": pa.float64(), "roll": pa.float64(),
    "yaw_abs_max": pa.float64(),
    "sync_offset": pa.int32(), "sync_confidence": pa.float64(), "sync_min_dist": pa.float64(),
    "sync_scorer": pa.string(),
    "identity_cluster": pa.int32(),  # python -m catalog identities --write (catalog/identities.py)
}
# Quality figures older meta sidecars carry at the top level of an entry rather than in `columns`.
LEGACY_META_COLUMNS = ("n_frames", "detection_rate", "face_size", "detection_confidence")
RESULT_COLUMNS = [("split", pa.string()), ("status", pa.string()), ("duration_s", pa.float64())]


def write_tables(store: Path, tables: dict[str, pa.Table]) -> None:
    """Write the tables as the store's next catalog generation and switch to it atomically
    (catalog/layout.py): readers see the previous catalog until every table is in place."""
    tmp = new_generation(store)
    with writing(catalog_dir(store), tmp):
        for name, table in tables.items():
            path = tmp / table_path(store, name).name
            pq.write_table(table, path)
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
        publish_generation(store, tmp)


def write_table(store: Path, name: str, table: pa.Table) -> None:
    """Replace one table (the others are carried over into the new generation)."""
    write_tables(store, {name: table})


def _listing(store: Path, dataset: str) -> dict[str, set[str]]:
    """field folder -> file names in it, for one dataset (one directory listing per field)."""
    root = Path(store) / "shards" / dataset
    if not root.is_dir():
        return {}
    return {d.name: set(os.listdir(d)) for d in root.iterdir() if d.is_dir()}


def without_cycle_collector(fn):
    """Run `fn` with Python's cyclic garbage collector paused (restored after, even on error).

    A build makes millions of small acyclic objects (sidecar JSON, column lists); the collector's
    full passes rescan the whole growing heap, which made the 1M-utterance build 5.2x the CPU of the
    250k one (4.1-4.7x with the collector paused; benchmarks.catalog_scale). Reference counting still
    frees everything; only cycles wait for the next collection."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return run


@without_cycle_collector
def build_catalog(store: Path, plan: list[dict] | pa.Table, fields: list[str], val: float = 0.1,
                  test: float = 0.1, seed: int = 0) -> dict[str, pa.Table]:
    """All five tables for every planned utterance; missing sidecars read as 'missing'.

    Column-wise: the plan stays an Arrow table sorted by (dataset, shard_id, index_in_shard), so
    each shard is a contiguous range of rows; results are per-column Python lists indexed by row.
    """
    store = Path(store)
    table = plan if isinstance(plan, pa.Table) else plan_table(plan)
    table = table.select(PLAN_COLUMNS).cast(PLAN_SCHEMA).sort_by(
        [("dataset", "ascending"), ("shard_id", "ascending"), ("index_in_shard", "ascending")])
    n = table.num_rows
    datasets, utt_ids = table["dataset"].to_pylist(), table["utt_id"].to_pylist()
    ranges = _shard_ranges(datasets, table["shard_id"].to_pylist())
    status = ["ok"] * n
    results: dict[str, list] = {}  # field_<name> and sidecar columns, one value per row
    position: dict[tuple[str, str], int] = {}  # built only if a sidecar departs from plan order

    def row_of(dataset: str, utt_id: str, guess: int) -> int | None:
        if 0 <= guess < n and utt_ids[guess] == utt_id and datasets[guess] == dataset:
            return guess  # sidecars list the shard's utterances in plan order
        if not position:
            position.update({(ds, u): i for i, (ds, u) in enumerate(zip(datasets, utt_ids))})
        return position.get((dataset, utt_id))

    def merge(i: int, columns: dict) -> None:
        for k, v in columns.items():
            values = results.get(k)
            if values is None:
                values = results[k] = [None] * n
            values[i] = v

    field_rows, error_rows = [], []
    for dataset in sorted(set(datasets)):
        present = _listing(store, dataset)
        series = [(f, False) for f in fields] + [(f, True) for f in sorted(present) if f not in fields]
        for field, columns_only in series:  # columns_only: sidecars without tars (the sync pass)
            files = present.get(field, set())
            states = results.setdefault(f"field_{field}", [None] * n) if not columns_only else None
            base = field_dir(store, dataset, field)
            for (ds, shard_id), (lo, hi) in ranges.items():
                if ds != dataset:
                    continue
                name = shard_name(dataset, shard_id)
                side = None
                if f"{name}.json" in files and (columns_only or f"{name}.tar" in files):
                    side = _read_sidecar(base / f"{name}.json")  # None: broken, reads as missing
                if side is None:
                    if not columns_only:
                        states[lo:hi] = ["missing"] * (hi - lo)
                        status[lo:hi] = ["incomplete"] * (hi - lo)
                    continue
                entries = side["members"]
                if not columns_only:
                    field_rows.append({
                        "dataset": dataset, "shard_id": shard_id, "field": field, "version": side["version"],
                        "path": f"shards/{dataset}/{field}/{name}.tar", "n_members": side["n_members"],
                        "n_ok": sum(m.get("status") == "ok" for m in entries), "bytes": side["bytes"],
                        "sha256": side["sha256"]})
                for j, m in enumerate(entries):
                    i = row_of(dataset, m.get("utt_id"), lo + j)
                    if i is None:  # a stale sidecar entry: verify reports it
                        continue
                    if m.get("columns"):
                        merge(i, m["columns"])
                    if columns_only:
                        continue
                    states[i] = m.get("status")
                    if field == "meta" and "columns" not in m:  # sidecars written before `columns`
                        merge(i, {k: m[k] for k in LEGACY_META_COLUMNS if k in m})
                    if m.get("status") != "ok":
                        if m.get("stage") == WORKER_STAGE:  # nothing was made: not there yet
                            status[i] = "incomplete"
                        elif status[i] != "incomplete" and own_failure(m):  # a job-level failure is not the row's
                            status[i] = "error"
                        error_rows.append({"utt_id": m["utt_id"], "dataset": dataset, "shard_id": shard_id,
                                           "field": field, "stage": m.get("stage"), "reason": m.get("reason")})
    speakers = table["speaker_id"].to_pylist()
    split = assign_split_column(datasets, speakers, val=val, test=test, seed=seed)
    frames = results.get("n_frames", [None] * n)
    duration = [f / 25.0 if f is not None else None for f in frames]
    utterances = _utterance_table(table, {"split": split, "status": status, "duration_s": duration, **results},
                                  fields)
    tables = {
        "utterances": utterances,
        "speakers": _speaker_table(utterances),
        "shards": _shard_table(utterances),
        "fields": pa.Table.from_pylist(field_rows, schema=_FIELD_SCHEMA),
        "errors": pa.Table.from_pylist(error_rows, schema=_ERROR_SCHEMA),
    }
    write_tables(store, tables)
    return tables


def _read_sidecar(path: Path) -> dict | None:
    """The sidecar at `path`, or None when it cannot be read or is not a sidecar."""
    try:
        return parse_sidecar(path.read_bytes())
    except OSError:
        return None


def _shard_ranges(datasets: list[str], shard_ids: list[int]) -> dict[tuple[str, int], tuple[int, int]]:
    """(dataset, shard_id) -> [lo, hi) row range, for rows sorted by dataset and shard."""
    out: dict[tuple[str, int], tuple[int, int]] = {}
    lo = 0
    for i in range(1, len(datasets) + 1):
        if i == len(datasets) or datasets[i] != datasets[lo] or shard_ids[i] != shard_ids[lo]:
            out[(datasets[lo], shard_ids[lo])] = (lo, i)
            lo = i
    return out


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
    try:
        return pa.array(values, typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        if not pa.types.is_integer(typ):
            raise
        return pa.array([int(v) if isinstance(v, float) and v.is_integer() else v for v in values], typ)


def _utterance_table(plan: pa.Table, results: dict[str, list], fields: list[str]) -> pa.Table:
    """Plan columns, results, the base quality columns, field statuses, then sidecar columns."""
    names = [n for n, _ in RESULT_COLUMNS] + list(_BASE_QUALITY) + [f"field_{f}" for f in fields]
    names += [c for c in results if c not in names and c not in PLAN_COLUMNS]
    types = {**dict(RESULT_COLUMNS), **COLUMN_TYPES, **{f"field_{f}": pa.string() for f in fields}}
    empty = [None] * plan.num_rows
    arrays = list(plan.columns) + [_column(results.get(c, empty), types.get(c)) for c in names]
    return pa.Table.from_arrays(arrays, names=list(plan.column_names) + names)


def _speaker_table(utts: pa.Table) -> pa.Table:
    """One row per (dataset, speaker): counts, hours, split and every official split it appears in."""
    t = utts.select(["dataset", "speaker_id", "utt_id", "status", "duration_s", "split", "official_split"])
    t = t.append_column("is_ok", pc.cast(pc.equal(t["status"], "ok"), pa.int64()))
    t = t.set_column(t.column_names.index("duration_s"), "duration_s", pc.fill_null(t["duration_s"], 0.0))
    g = t.group_by(["dataset", "speaker_id"], use_threads=False).aggregate([
        ("utt_id", "count"), ("is_ok", "sum"), ("duration_s", "sum"), ("split", "first"),
        ("official_split", "distinct")])
    g = g.sort_by([("dataset", "ascending"), ("speaker_id", "ascending")])
    official = [",".join(sorted(s for s in splits if s)) for splits in g["official_split_distinct"].to_pylist()]
    source = [SPEAKER_SOURCE.get(ds, "corpus speaker label") for ds in g["dataset"].to_pylist()]
    return pa.Table.from_arrays(
        [g["speaker_id"], g["dataset"], g["utt_id_count"], g["is_ok_sum"], g["duration_s_sum"],
         g["split_first"], pa.array(source, pa.string()), pa.array(official, pa.string())],
        schema=_SPEAKER_SCHEMA)


_SPEAKER_SCHEMA = pa.schema([("speaker_id", pa.string()), ("dataset", pa.string()), ("n_utterances", pa.int64()),
                             ("n_ok", pa.int64()), ("total_duration_s", pa.float64()), ("split", pa.string()),
                             ("speaker_source", pa.string()), ("official_splits", pa.string())])
_SHARD_SCHEMA = pa.schema([("dataset", pa.string()), ("shard_id", pa.int32()), ("n_utterances", pa.int64()),
                           ("first_utt", pa.string()), ("last_utt", pa.string()), ("n_ok", pa.int64()),
                           ("n_frames", pa.int64()), ("planned_seconds", pa.float64())])


def _shard_table(utts: pa.Table) -> pa.Table:
    """One row per shard from its own members (rows are in plan order, so first/last are ordered)."""
    t = utts.select(["dataset", "shard_id", "utt_id", "status", "n_frames", "planned_seconds"])
    t = t.append_column("is_ok", pc.cast(pc.equal(t["status"], "ok"), pa.int64()))
    t = t.set_column(t.column_names.index("n_frames"), "n_frames", pc.cast(t["n_frames"], pa.int64()))
    g = t.group_by(["dataset", "shard_id"], use_threads=False).aggregate([
        ("utt_id", "count"), ("utt_id", "first"), ("utt_id", "last"), ("is_ok", "sum"),
        ("n_frames", "sum"), ("planned_seconds", "sum")])
    g = g.sort_by([("dataset", "ascending"), ("shard_id", "ascending")])
    return pa.Table.from_arrays(
        [g["dataset"], g["shard_id"], g["utt_id_count"], g["utt_id_first"], g["utt_id_last"], g["is_ok_sum"],
         pc.fill_null(g["n_frames_sum"], 0), pc.fill_null(g["planned_seconds_sum"], 0.0)], schema=_SHARD_SCHEMA)


def read_table(store: Path, name: str) -> pa.Table:
    path = table_path(store, name)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no catalog table {name!r}; run pipelines/extract.py first")
    return pq.read_table(path)


__all__ = ["build_catalog", "read_table", "write_plan", "write_table", "write_tables", "COLUMN_TYPES",
           "PLAN_COLUMNS"]
