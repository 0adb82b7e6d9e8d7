"""Routine operations lose nothing and re-runs converge (DESIGN.md, Truth), through the real job:

a field whose model cannot load is one job-level failure (exit 1, said once, rows' status ok) and
a re-run with a working model repairs it, naming that model in store.json; `--overwrite --fields
mel` leaves every other tar byte-identical and the catalog unchanged; a tar with a flipped byte
and a broken sidecar are redone by a re-run, byte for byte, and verify passes.

pipelines/extract.py's main in this process without Ray (tests/conftest.py: extract_here, its
tasks on the session's warm local worker), and one store that each fixture takes one operation
further.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest

from catalog.build import build_catalog, read_table
from catalog.layout import TABLES, read_store_json, sidecar_path, tar_path
from catalog.plan import read_plan
from catalog.tars import iter_members, read_member
from catalog.verify import verify
from tests.conftest import extract_here, tiny_hubert

pytestmark = pytest.mark.slow
DATASET = "synthetic"
FIELDS = ["audio", "landmarks", "mel", "hubert"]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    """3 one-second synthetic clips (2 shards), a store path and a tiny random HuBERT."""
    from pipelines.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("ops")
    generate_corpus(root / "corpus", n_speakers=3, n_utterances=1, min_seconds=1.0, max_seconds=1.2,
                    progress=False)
    return {"corpus": root / "corpus", "store": root / "store", "tiny": tiny_hubert(root / "tiny-hubert"),
            "bad": root / "no_such_model"}


def extract(work: dict, *extra: str) -> dict:
    """pipelines/extract.py's main in-process: exit code, stdout, stderr and the saved report."""
    run = extract_here("--dataset", DATASET, "--root", work["corpus"], "--store", work["store"],
                       "--shard-size", "2", *extra)
    report = json.loads((work["store"] / "extract_report.json").read_text())
    return {"code": run.code, "out": run.out, "err": run.err, "report": report}


def snapshot(store: Path) -> dict:
    """Every tar's and sidecar's bytes and mtime, and every catalog table."""
    files = sorted(store.glob("shards/**/*.tar")) + sorted(store.glob("shards/**/*.json"))
    return {"bytes": {str(p.relative_to(store)): p.read_bytes() for p in files},
            "mtime": {str(p.relative_to(store)): p.stat().st_mtime_ns for p in files},
            "tables": {name: read_table(store, name) for name in TABLES}}


def metas(store: Path) -> dict[str, dict]:
    return {name.split(".")[0]: json.loads(data) for shard in (0, 1)
            for name, data in iter_members(tar_path(store, DATASET, "meta", shard))}


@pytest.fixture(scope="module")
def failed(work):
    """The store extracted with a HuBERT path that does not exist."""
    run = extract(work, "--fields", *FIELDS, "--hubert-model", str(work["bad"]))
    return {**run, "after": snapshot(work["store"]), "meta": metas(work["store"])}


@pytest.fixture(scope="module")
def repaired(failed, work):
    """The advised repair: the same field with a model that loads."""
    run = extract(work, "--fields", "hubert", "--hubert-model", str(work["tiny"]))
    return {**run, "after": snapshot(work["store"]), "meta": metas(work["store"])}


@pytest.fixture(scope="module")
def overwritten(repaired, work):
    """One field overwritten: mel."""
    run = extract(work, "--fields", "mel", "--overwrite")
    return {**run, "after": snapshot(work["store"])}


def test_a_model_that_cannot_load_is_one_job_level_failure(failed, work):
    assert failed["code"] == 1, failed["err"][-3000:]
    said = [line for line in failed["err"].splitlines() if "could not run" in line]
    assert len(said) == 1 and "field hubert" in said[0] and "not a directory" in said[0], said
    assert not [line for line in failed["out"].splitlines() if "[hubert/" in line], "said once, not per utterance"
    utts = read_table(work["store"], "utterances").to_pylist()
    assert len(utts) == 3
    for u in utts:  # the rows' own data is fine: status ok, the other fields ok
        assert u["status"] == "ok" and u["field_hubert"] == "error", u
        assert all(u[f"field_{f}"] == "ok" for f in ("audio", "landmarks", "mel", "meta")), u
        assert u["n_frames"] >= 25 and u["detection_rate"] >= 0.99
    errors = read_table(work["store"], "errors").to_pylist()
    assert {(e["field"], e["stage"]) for e in errors} == {("hubert", "model")} and len(errors) == 3
    report = failed["report"]
    assert report["ok"] == 3 and report["errors"] == 0
    assert report["field_failures"]["hubert"]["utterances"] == 3
    assert "hubert" not in read_store_json(work["store"]), "no row was made with the bad model"
    for meta in failed["meta"].values():
        assert meta["errors"]["hubert"]["stage"] == "model" and meta["n_frames"] >= 25
    assert verify(work["store"])["ok"]


def test_a_rerun_with_a_working_model_repairs_the_field_and_names_it(failed, repaired, work):
    assert repaired["code"] == 0, repaired["err"][-3000:]
    store = work["store"]
    utts = read_table(store, "utterances").to_pylist()
    assert all(u["status"] == "ok" and u["field_hubert"] == "ok" for u in utts)
    assert read_table(store, "errors").num_rows == 0
    assert read_store_json(store)["hubert"] == {"model": str(work["tiny"]), "layer": -1}
    for u in utts:
        member = read_member(tar_path(store, DATASET, "hubert", u["shard_id"]), u["key"])
        feats = np.load(io.BytesIO(member["hubert.npy"]))
        assert feats.shape == (2 * u["n_frames"], 16) and feats.std() > 0
    for key, meta in repaired["meta"].items():  # meta merged: hubert's error gone, all else as it was
        before = failed["meta"][key]
        assert "hubert" not in meta["errors"] and meta["versions"]["hubert"] == "hubert-1"
        assert {k: v for k, v in meta.items() if k != "errors"} == {k: v for k, v in before.items() if k != "errors"}
    changed = {p for p, b in repaired["after"]["bytes"].items() if failed["after"]["bytes"].get(p) != b}
    assert changed and all("/hubert/" in p or "/meta/" in p for p in changed), changed
    assert verify(store)["ok"]


def test_overwrite_of_one_field_leaves_every_other_tar_and_the_catalog_as_they_were(repaired, overwritten):
    assert overwritten["code"] == 0, overwritten["err"][-3000:]
    before, after = repaired["after"], overwritten["after"]
    assert set(after["bytes"]) == set(before["bytes"])
    for path, data in after["bytes"].items():
        if "/mel/" not in path:
            assert data == before["bytes"][path], f"{path} changed"
            assert after["mtime"][path] == before["mtime"][path], f"{path} was rewritten"
    assert any(after["mtime"][p] != before["mtime"][p] for p in after["mtime"] if p.endswith(".tar") and "/mel/" in p)
    for name in TABLES:
        assert after["tables"][name].equals(before["tables"][name]), name


def test_a_flipped_byte_and_a_broken_sidecar_are_repaired_by_a_rerun(overwritten, work):
    store = work["store"]
    before = snapshot(store)
    audio = tar_path(store, DATASET, "audio", 0)
    data = bytearray(audio.read_bytes())
    data[512 + 200] ^= 0xFF  # inside the first member's data: same size, other bytes
    audio.write_bytes(bytes(data))
    sidecar_path(store, DATASET, "meta", 1).write_text('{"field": "meta", "members": [')  # not JSON
    problems = {(p["field"], p["problem"]) for p in verify(store)["problems"]}
    assert ("audio", "checksum mismatch") in problems and ("meta", "bad sidecar") in problems, problems
    rows = build_catalog(store, read_plan(store), list(read_store_json(store)["fields"]))["utterances"].to_pylist()
    assert {(r["shard_id"], r["field_meta"], r["status"]) for r in rows} == {
        (0, "ok", "ok"), (1, "missing", "incomplete")}  # the build reads a broken sidecar as missing

    run = extract(work, "--fields", *FIELDS, "--hubert-model", str(work["tiny"]))
    assert run["code"] == 0, run["err"][-3000:]
    repaired = " | ".join(run["report"]["repaired"])
    assert "000000 audio: tar's SHA-256 differs" in repaired and "000001 meta: sidecar unreadable" in repaired
    after = snapshot(store)
    for path, data in before["bytes"].items():  # redone byte for byte, nothing else touched
        assert after["bytes"][path] == data, path
    for name in TABLES:
        assert after["tables"][name].equals(before["tables"][name]), name
    assert verify(store)["ok"]
