"""The Ray extraction job end to end: bad inputs cost nothing else, re-runs do no work twice,
and a run killed midway resumes to the same catalog and byte-identical tars."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalog.layout import table_path
from catalog.tars import iter_members
from tests.conftest import REPO, make_bad_inputs

pytestmark = pytest.mark.slow
FIELDS = ["audio", "rgb", "landmarks", "mel", "meta"]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """3 synthetic speakers x 2 short utterances, plus every kind of bad input under 'bad/'."""
    from pipelines.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    generate_corpus(root, n_speakers=3, n_utterances=2, min_seconds=2.0, max_seconds=2.4, progress=False)
    make_bad_inputs(root / "bad")
    return root


def extract(root: Path, store: Path, *extra: str, wait: bool = True):
    cmd = [sys.executable, str(REPO / "pipelines" / "extract.py"), "--dataset", "folder", "--root", str(root),
           "--store", str(store), "--workers", "2", "--shard-size", "2", *extra]
    env = {**os.environ, "RAY_ADDRESS": ""}
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                start_new_session=True)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return json.loads((store / "extract_report.json").read_text())


def tars(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.glob("shards/**/*.tar"))}


@pytest.fixture(scope="module")
def store(corpus, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("store")
    report = extract(corpus, store)
    assert report["utterances"] == 11
    return store


def test_bad_inputs_become_error_rows_and_the_rest_is_complete(store):
    utts = {u["utt_id"]: u for u in pq.read_table(table_path(store, "utterances")).to_pylist()}
    errors = pq.read_table(table_path(store, "errors")).to_pylist()
    expected = {"bad/empty": "empty", "bad/text": "unreadable", "bad/truncated": "",
                "bad/no_audio": "no audio stream", "bad/no_face": "no face"}
    for utt_id, words in expected.items():
        assert utts[utt_id]["status"] == "error", utt_id
        reasons = [e["reason"] for e in errors if e["utt_id"] == utt_id]
        assert reasons and any(words in r for r in reasons), (utt_id, reasons)
    no_face = [e for e in errors if e["utt_id"] == "bad/no_face"]
    assert {e["field"] for e in no_face} == {"rgb", "landmarks"}  # its audio and mel are fine
    assert all(e["stage"] == "face" for e in no_face)
    good = [u for u in utts.values() if not u["utt_id"].startswith("bad/")]
    assert len(good) == 6
    for u in good:
        assert u["status"] == "ok" and all(u[f"field_{f}"] == "ok" for f in FIELDS), u
        assert u["detection_rate"] >= 0.99


def test_field_series_are_aligned_with_placeholders(store):
    plan = pq.read_table(table_path(store, "utterances")).to_pylist()
    for field in FIELDS:
        for shard_id in sorted({u["shard_id"] for u in plan}):
            rows = sorted((u for u in plan if u["shard_id"] == shard_id), key=lambda u: u["index_in_shard"])
            path = store / "shards" / "folder" / field / f"folder-{shard_id:06d}.tar"
            keys = [name.split(".", 1)[0] for name, _ in iter_members(path)]
            assert keys == [u["key"] for u in rows]


def test_rerun_does_no_work_twice(corpus, store):
    before = {p: p.stat().st_mtime_ns for p in store.glob("shards/**/*.tar")}
    report = extract(corpus, store)
    assert report["frames_extracted"] == 0
    assert {p: p.stat().st_mtime_ns for p in store.glob("shards/**/*.tar")} == before


def test_killed_run_resumes_to_identical_store(corpus, store, tmp_path):
    resumed = tmp_path / "resumed"
    proc = extract(corpus, resumed, "--workers", "1", wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(resumed.glob("shards/folder/meta/*.json"))) < 1:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_done = len(list(resumed.glob("shards/folder/meta/*.json")))
    assert 1 <= n_done < 6, "the kill should land midway"
    extract(corpus, resumed, "--workers", "1")
    for name in ("utterances", "speakers", "shards", "fields", "errors"):
        assert pq.read_table(table_path(resumed, name)).equals(pq.read_table(table_path(store, name))), name
    assert tars(resumed) == tars(store)
    assert not list(resumed.glob("shards/**/.*.tmp-*")), "stale temporaries are cleaned up"
