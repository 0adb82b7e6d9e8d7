"""One writer at a time, readers that never see a half-written catalog, and clean failures:
the store lock, key collisions and files without video, SIGINT / SIGTERM, an unusable store, a
full disk and Ray's start-up timeout (issue 15, items 1, 3 and 6)."""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from catalog.layout import leftovers, table_path, tar_path
from catalog.lock import StoreLocked, _pid_start, acquire, lock_path
from tests.conftest import REPO, extract_here, noise_frames, tone, write_video

EXTRACT = [sys.executable, str(REPO / "pipelines" / "extract.py"), "--dataset", "folder"]
ENV = {**os.environ, "RAY_ADDRESS": ""}


def extract_cmd(root: Path, store: Path, *extra: str) -> list[str]:
    return [*EXTRACT, "--root", str(root), "--store", str(store), *extra]


def holder_process(store: Path) -> subprocess.Popen:
    """A live process that holds the store's lock until killed (a job that is still running)."""
    code = ("import sys, time; from catalog.lock import acquire; acquire(sys.argv[1], 'holder-job --test'); "
            "print('held', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(store)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def tiny_corpus(tmp_path: Path) -> Path:
    """One short clip: these jobs stop before decoding anything."""
    (tmp_path / "corpus" / "spk").mkdir(parents=True)
    write_video(tmp_path / "corpus" / "spk" / "a.mp4", noise_frames(5), audio=tone(0.2))
    return tmp_path / "corpus"


# ------------------------------------------------------------------------------ the lock (no Ray)
def test_a_second_job_is_refused_at_once_naming_the_holder(tmp_path, capsys):
    from catalog.__main__ import main as catalog_main
    from pipelines.extract import main

    store = tmp_path / "store"
    store.mkdir()
    holder = holder_process(store)
    try:
        record = json.loads(lock_path(store).read_text())
        assert record["pid"] == holder.pid and record["host"] == socket.gethostname()
        started = time.perf_counter()
        code = main(["--dataset", "folder", "--root", str(tmp_path), "--store", str(store), "--fields", "audio"])
        seconds = time.perf_counter() - started
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and seconds < 5, (code, seconds)
        assert len(err) == 1, err
        for part in (f"pid {holder.pid}", f"host {socket.gethostname()}", f"since {record['since']}",
                     "holder-job --test", str(lock_path(store))):
            assert part in err[0], (part, err[0])
        assert catalog_main(["splits", "--store", str(store), "--seed", "1", "--write"]) == 2  # a writer too
        assert f"pid {holder.pid}" in capsys.readouterr().err
        assert json.loads(lock_path(store).read_text())["token"] == record["token"], "the holder's lock is untouched"
    finally:
        holder.kill()
        holder.wait()
    print(f"refused in {seconds:.2f} s")


def _write_lock(store: Path, age_s: float = 0.0, **record) -> None:
    lock_path(store).write_text(json.dumps(record) if record else "{not json")
    os.utime(lock_path(store), (time.time() - age_s, time.time() - age_s))


def test_a_stale_lock_is_taken_over_and_said_so(tmp_path, capsys):
    store = tmp_path
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its pid no longer exists
    here = socket.gethostname()
    cases = [  # (record, heartbeat age, stale?, words of the warning)
        ({"host": here, "pid": gone.pid, "since": "2020-01-01T00:00:00Z"}, 0, True, f"process {gone.pid} no longer"),
        ({"host": here, "pid": os.getppid(), "pid_start": _pid_start(os.getppid()) + 1}, 0, True, "reused"),
        ({"host": here, "pid": os.getppid(), "pid_start": _pid_start(os.getppid())}, 0, False, ""),
        ({"host": "elsewhere", "pid": 1}, 3600, True, "heartbeat is 3600 s old"),
        ({"host": "elsewhere", "pid": 1}, 60, False, ""),
        ({}, 3600, True, "unreadable"),
        ({}, 0, False, ""),
    ]
    for record, age, stale, words in cases:
        _write_lock(store, age, **record)
        if not stale:
            with pytest.raises(StoreLocked):
                acquire(store)
            continue
        lock = acquire(store)
        warning = capsys.readouterr().err
        assert "took over a stale lock" in warning and words in warning, (record, warning)
        mine = json.loads(lock_path(store).read_text())
        assert mine["pid"] == os.getpid() and mine["token"] == lock.record["token"]
        lock.release()
        assert not lock_path(store).exists()
    lock_path(store).unlink()  # the last case's lock (unreadable, young: refused)
    lock = acquire(store)
    with pytest.raises(StoreLocked):  # a live holder, even this very process: never two writers
        acquire(store)
    lock.release()


# ------------------------------------------------------- unusable stores: one line, before Ray
def _one_line_error(proc_or_err, path: Path, words: str) -> None:
    lines = [line for line in proc_or_err.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and str(path) in lines[0] and words in lines[0], lines


def test_an_unusable_store_is_one_line_and_exit_2_before_ray(tmp_path, capsys):
    from pipelines.extract import main

    corpus = tiny_corpus(tmp_path)
    a_file = tmp_path / "store.txt"
    a_file.write_text("not a store")
    for store, words in [(a_file, "is a file"), (a_file / "store", "Not a directory")]:
        started = time.perf_counter()
        assert main(["--dataset", "folder", "--root", str(corpus), "--store", str(store)]) == 2
        assert time.perf_counter() - started < 5
        _one_line_error(capsys.readouterr().err, store, words)

    # read-only: root writes anywhere, so root runs the job as nobody, for whom 0o555 is read-only
    # (in a folder of its own that nobody may enter: pytest's are private to their owner)
    outside = Path(tempfile.mkdtemp(prefix="ro-store-"))
    try:
        outside.chmod(0o755)
        read_only = outside / "store"
        read_only.mkdir(mode=0o555)
        read_only.chmod(0o555)
        cmd = extract_cmd(corpus, read_only)
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                pytest.skip("running as root without setpriv: no way to be a user the mode binds")
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *cmd]
        started = time.perf_counter()
        proc = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=60)
        seconds = time.perf_counter() - started
        assert proc.returncode == 2, proc.stderr[-2000:]
        _one_line_error(proc.stderr, read_only, "not writable")
        assert seconds < 15 and not any(read_only.iterdir()), seconds
    finally:
        shutil.rmtree(outside)
    print(f"read-only store refused in {seconds:.2f} s")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill a 'disk'")
def test_a_full_disk_is_one_line_and_exit_3(tmp_path, capsys):
    """The plan's temporary file is /dev/full, whose every write fails with ENOSPC: a real full disk."""
    from pipelines.extract import main

    corpus = tiny_corpus(tmp_path)
    store = tmp_path / "store"
    store.mkdir()
    (store / f".plan.parquet.tmp-{os.getpid()}").symlink_to("/dev/full")
    started = time.perf_counter()
    code = main(["--dataset", "folder", "--root", str(corpus), "--store", str(store)])
    assert code == 3 and time.perf_counter() - started < 10
    _one_line_error(capsys.readouterr().err, store / "plan.parquet", "No space left on device")
    assert sorted(p.name for p in store.iterdir()) == [], "no plan, no temporary file, no lock left"


# ----------------------------------------------- the job end to end: collisions, readers, SIGINT
@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """2 speakers x 2 synthetic clips, plus `x y.mp4` / `x_y.mp4` (one key), an audio-only .mp4
    and `u00.avi` beside `u00.mp4` (one utterance id)."""
    from pipelines.synthetic import generate_corpus

    root = tmp_path_factory.mktemp("corpus")
    paths = generate_corpus(root, n_speakers=2, n_utterances=2, min_seconds=0.8, max_seconds=1.0, size=96,
                            progress=False)
    spk0, spk1 = paths[0].parent, paths[2].parent
    shutil.copy(spk0 / "u00.mp4", spk0 / "x y.mp4")
    shutil.copy(spk0 / "u01.mp4", spk0 / "x_y.mp4")
    shutil.copy(spk1 / "u00.mp4", spk1 / "u00.avi")
    write_video(spk0 / "audio_only.mp4", noise_frames(1), audio=tone(1.0), video=False)
    return root


def _audio(store: Path, row: dict) -> np.ndarray:
    from catalog.tars import read_member
    from features.fields import FIELDS

    return FIELDS["audio"].decode(read_member(tar_path(store, row["dataset"], "audio", row["shard_id"]),
                                              row["key"])["flac"])


def test_collisions_skipped_files_ray_timeout_readers_and_sigint(corpus, tmp_path):
    """Three runs on one store (one Ray start-up): Ray out of time; SIGINT midway on Ray, while
    the previous catalog still reads; the same job again (without Ray) completes the store."""
    from catalog.verify import verify

    store = tmp_path / "store"
    cmd = extract_cmd(corpus, store, "--fields", "audio", "landmarks", "meta", "--shard-size", "2")
    t0 = time.perf_counter()
    # 1. Ray does not start in time: one clear line, exit 4; the plan and the catalog say so
    proc = subprocess.run([*cmd, "--workers", "1", "--ray-timeout", "0.3"], env=ENV, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert "error: could not start a local Ray within --ray-timeout 0.3 s" in proc.stderr
    assert "Traceback" not in proc.stderr and not lock_path(store).exists() and leftovers(store) == []
    assert f"skipped {corpus / 'spk00' / 'audio_only.mp4'}: no video stream" in proc.stderr
    assert f"skipped {corpus / 'spk01' / 'u00.mp4'}: same utterance id 'spk01/u00'" in proc.stderr
    before = pq.read_table(table_path(store, "utterances"))  # nothing extracted yet: rows 'incomplete'
    rows = {u["utt_id"]: u for u in before.to_pylist()}
    assert sorted(rows) == ["spk00/u00", "spk00/u01", "spk00/x y", "spk00/x_y", "spk01/u00", "spk01/u01"]
    assert rows["spk00/x_y"]["status"] == "error" and "'spk00/x y'" in rows["spk00/x_y"]["plan_error"]
    assert {u["status"] for k, u in rows.items() if k != "spk00/x_y"} == {"incomplete"}
    t1 = time.perf_counter()

    # 2. a run stopped by SIGINT midway; while it runs, the previous catalog reads, whole
    job = subprocess.Popen([*cmd, "--workers", "1"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    started, seen = time.perf_counter(), []
    while job.poll() is None and not seen and time.perf_counter() - started < 300:
        seen = [p for p in leftovers(store) if not p.name.endswith(f"-{job.pid}")]  # a worker's half tar
        time.sleep(0.02)
    assert seen, "no worker started writing"
    assert pq.read_table(table_path(store, "utterances")).equals(before), "readers keep the previous catalog"
    assert json.loads(lock_path(store).read_text())["pid"] == job.pid
    t2 = time.perf_counter()
    job.send_signal(signal.SIGINT)
    _, err = job.communicate(timeout=120)
    t3 = time.perf_counter()
    assert job.returncode == 130, err[-3000:]
    assert "interrupted by SIGINT" in err and "Traceback" not in err, err[-3000:]
    assert leftovers(store) == [] and not lock_path(store).exists()
    problems = verify(store)["problems"]  # the catalog caught up: nothing damaged or stray, some not made
    assert problems and {p["problem"] for p in problems} == {"missing tar"}, problems

    # 3. the same job again completes the store (in this process without Ray: tests/conftest.py)
    extract_here(*cmd[2:]).ok()
    assert leftovers(store) == [] and not lock_path(store).exists() and verify(store)["ok"]
    rows = {u["utt_id"]: u for u in pq.read_table(table_path(store, "utterances")).to_pylist()}
    assert all(u["status"] == "ok" for k, u in rows.items() if k != "spk00/x_y"), rows
    errors = [e for e in pq.read_table(table_path(store, "errors")).to_pylist() if e["utt_id"] == "spk00/x_y"]
    assert {e["field"] for e in errors} == {"audio", "landmarks", "meta"}, errors
    assert all(e["stage"] == "plan" and "'spk00/x y'" in e["reason"] for e in errors), errors
    kept = _audio(store, rows["spk00/x y"])  # the file that kept the key holds its own sound
    assert np.array_equal(kept, _audio(store, rows["spk00/u00"]))
    other = _audio(store, rows["spk00/u01"])
    assert not np.array_equal(kept[:len(other)], other[:len(kept)])
    report = json.loads((store / "extract_report.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(skipped) == {"audio_only.mp4", "u00.mp4"}, skipped
    assert "no video stream" in skipped["audio_only.mp4"] and "same utterance id" in skipped["u00.mp4"]
    print(f"Ray timeout run {t1 - t0:.1f} s, until a worker writes {t2 - t1:.1f} s, stop after SIGINT "
          f"{t3 - t2:.1f} s, re-run {time.perf_counter() - t3:.1f} s")
