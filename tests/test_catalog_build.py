"""The catalog build on a fabricated store (benchmarks/catalog_scale.py's writer, no media, no Ray):
sidecar columns typed into the utterances table, column-only sidecars (sync), missing sidecars,
summary counting utterances rather than members, and SQL quality filters."""
from __future__ import annotations

import pyarrow as pa
import pytest

from benchmarks.catalog_scale import DATASET, FIELDS, fabricate
from catalog.build import build_catalog
from catalog.plan import read_plan, shards_of
from catalog.sidecar import write_sidecar
from catalog.sql import run_sql
from catalog.summary import format_summary, summarize
from catalog.tars import TarWriter


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    store = tmp_path_factory.mktemp("fabricated")
    fabricate(store, 400, per_speaker=20, train_shards=2, shard_minutes=2.0)
    plan = read_plan(store)
    first = shards_of(plan)[0]
    # a field with two members per utterance (as tdmm writes), in shard 0 only
    with TarWriter(store / "shards" / DATASET / "tdmm" / f"{DATASET}-000000.tar") as tar:
        for r in first:
            tar.add(f"{r['key']}.tdmm.npy", b"x" * 10)
            tar.add(f"{r['key']}.tdmm_id.npy", b"y" * 10)
    write_sidecar(store, DATASET, "tdmm", 0, "tdmm-test",
                  [{"utt_id": r["utt_id"], "status": "ok", "bytes": 20} for r in first], tar)
    # the sync pass: a column-only sidecar (no tar) for shard 1
    write_sidecar(store, DATASET, "sync", 1, "sync-test",
                  [{"utt_id": r["utt_id"], "status": "ok",
                    "columns": {"sync_offset": float(i % 3 - 1), "sync_confidence": 6.5, "sync_min_dist": 7.0,
                                "sync_scorer": "syncnet/pipeline"}}
                   for i, r in enumerate(shards_of(plan)[1])])
    build_catalog(store, plan, FIELDS + ["tdmm"])
    return store


def test_sidecar_columns_are_typed_in_the_utterances_table(store):
    schema = run_sql(store, "SELECT * FROM utterances LIMIT 1").schema
    assert schema.field("warnings").type == pa.list_(pa.string())
    assert schema.field("n_frames").type == pa.int32() and schema.field("sync_offset").type == pa.int32()
    assert schema.field("audio_coverage").type == pa.float64()
    good = run_sql(store, "SELECT count(*) AS n FROM utterances WHERE audio_coverage >= 0.95 AND len(warnings) = 0")
    bad = run_sql(store, "SELECT count(*) AS n FROM utterances WHERE list_contains(warnings, "
                         "'audio shorter than video: 0.4 s padded')")
    assert good["n"][0].as_py() + bad["n"][0].as_py() == 400 and bad["n"][0].as_py() > 0
    sync = run_sql(store, "SELECT shard_id, count(sync_offset) AS n, min(sync_offset) AS lo, max(sync_offset) AS hi, "
                          "any_value(sync_scorer) AS scorer FROM utterances GROUP BY 1 ORDER BY 1").to_pylist()
    assert sync[1]["n"] > 0 and (sync[1]["lo"], sync[1]["hi"], sync[1]["scorer"]) == (-1, 1, "syncnet/pipeline")
    assert all(s["n"] == 0 for s in sync if s["shard_id"] != 1)


def test_missing_sidecars_mark_their_shard_only(store):
    rows = run_sql(store, "SELECT least(shard_id, 2) AS s, field_mel, field_tdmm, status, count(*) AS n "
                          "FROM utterances GROUP BY ALL ORDER BY ALL").to_pylist()
    assert {(r["s"], r["field_mel"], r["field_tdmm"], r["status"]) for r in rows} == {
        (0, "ok", "ok", "ok"), (1, "ok", "missing", "incomplete"), (2, "missing", "missing", "incomplete")}
    shards = run_sql(store, "SELECT sum(n_utterances) AS u, max(planned_seconds) AS hi, min(planned_seconds) "
                            "FILTER (WHERE shard_id < (SELECT max(shard_id) FROM shards)) AS lo FROM shards")
    # 2-minute shards: each reaches the target (but the last), none passes it by a whole utterance (<= 8 s)
    assert shards["u"][0].as_py() == 400 and shards["lo"][0].as_py() >= 120 and shards["hi"][0].as_py() < 128


def test_summary_counts_utterances_not_members(store):
    s = summarize(store)
    first = len(shards_of(read_plan(store))[0])
    assert s["fields"]["tdmm"] == {"utterances": first, "ok": first, "members": 2 * first,
                                   "bytes": s["fields"]["tdmm"]["bytes"], "shards": 1}
    assert s["fields"]["meta"]["utterances"] == s["fields"]["meta"]["ok"] == 400
    q = s["quality"]
    assert q["frames"]["decoded"] < q["frames"]["expected"] and q["frames"]["short"] > 0
    assert q["audio_coverage"]["below_0.95"] == q["warnings"]["utterances"] > 0
    text = format_summary(s)
    assert f"{first}/{first}" in text and "audio coverage: mean" in text and "warnings:" in text


def test_build_pauses_the_cycle_collector_and_restores_it(store, monkeypatch):
    import gc

    import catalog.build as build

    seen = []
    real = build._read_sidecar
    monkeypatch.setattr(build, "_read_sidecar", lambda path: (seen.append(gc.isenabled()), real(path))[1])
    plan = read_plan(store)
    assert gc.isenabled()
    build_catalog(store, plan, FIELDS + ["tdmm"])
    assert seen and not any(seen) and gc.isenabled()  # paused while sidecars are read, back on after
    gc.disable()
    try:
        build_catalog(store, plan, FIELDS + ["tdmm"])
        assert not gc.isenabled()  # a caller's own pause is left as it was
    finally:
        gc.enable()
    monkeypatch.setattr(build, "_read_sidecar", lambda path: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        build_catalog(store, plan, FIELDS + ["tdmm"])
    assert gc.isenabled()  # ... and restored on an error too
