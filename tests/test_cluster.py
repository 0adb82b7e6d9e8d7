"""The extraction job on a Ray cluster: a loopback head (`ray start --head`), `ray job submit
--working-dir . -- python pipelines/extract.py ...`, and faults: a worker killed mid-task is
retried; a whole job killed midway (its driver SIGKILLed) and submitted again resumes. Every store is checked by
`catalog verify` (nothing lost, nothing duplicated) and against the uninterrupted run's tars.

The head is private to this module: its own temp dir and free ports, auth disabled, loopback
only, 2 CPUs. Teardown ends exactly this head's processes by pid (SIGTERM, then SIGKILL);
it does not run `ray stop`, which kills every Ray process of the user on the host, including
other test runs' local Ray instances.
"""
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
import urllib.request
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from catalog.layout import TABLES, table_path
from catalog.verify import verify
from pipelines.corpora.fixtures import build_lrs2, make_clips
from tests.conftest import REPO

pytestmark = pytest.mark.slow
VENV_BIN = Path(sys.executable).parent
RAY = VENV_BIN / "ray"
FIELDS = ["audio", "rgb", "landmarks", "mel", "meta"]


# ---------------------------------------------------------------- processes, by pid (Linux /proc)
def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every visible process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        out[int(entry.name)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmd)
    return out


def _descendants(roots: set[int], procs: dict[int, tuple[int, str]]) -> set[int]:
    found, frontier = set(roots), set(roots)
    while frontier:
        frontier = {pid for pid, (ppid, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _env() -> dict:
    """The venv first on PATH (the job's `python` and the workers' interpreter), no RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_AUTH_MODE="disabled",
               RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


class Head:
    """`ray start --head --block` on loopback with free ports and a private temp dir."""

    def __init__(self):
        self.temp_dir = tempfile.mkdtemp(prefix="rayt", dir="/tmp")  # short: socket paths <= 107 bytes
        ports = _free_ports(9)
        self.dashboard_port = ports[1]
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "2",
               "--num-gpus", "0", "--port", str(ports[0]), "--include-dashboard", "true",
               "--dashboard-host", "127.0.0.1", "--dashboard-port", str(ports[1]),
               "--ray-client-server-port", str(ports[2]), "--node-manager-port", str(ports[3]),
               "--object-manager-port", str(ports[4]), "--dashboard-agent-listen-port", str(ports[5]),
               "--dashboard-agent-grpc-port", str(ports[6]), "--runtime-env-agent-port", str(ports[7]),
               "--metrics-export-port", str(ports[8]), "--object-store-memory", str(200 * 1024 ** 2),
               "--temp-dir", self.temp_dir, "--disable-usage-stats"]
        self.log = open(Path(self.temp_dir) / "head.log", "wb")
        self.proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}: {self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as r:
                    if r.status == 200 and "Ray runtime started" in self.log_text():
                        return
            except OSError:
                pass
            time.sleep(0.5)
        tail = self.log_tail()
        self.stop()
        raise RuntimeError(f"the Ray head did not come up in 120 s: {tail}")

    def log_text(self) -> str:
        return (Path(self.temp_dir) / "head.log").read_text(errors="replace")

    def log_tail(self) -> str:
        return self.log_text()[-2000:]

    def pids(self) -> set[int]:
        """This head's processes: the `ray start` process, everything below it, and every
        process naming its private temp dir (daemons re-parented away), with their children."""
        procs = _processes()
        roots = {self.proc.pid} | {pid for pid, (_, cmd) in procs.items() if self.temp_dir in cmd}
        return _descendants(roots, procs) - {os.getpid()}

    def processes_with(self, text: str) -> list[int]:
        """pids of this head's processes whose command line contains `text`."""
        procs = _processes()
        return sorted(pid for pid in self.pids() if text in procs.get(pid, (0, ""))[1])

    def workers(self, title: str) -> list[int]:
        """pids of this head's worker processes whose title starts with `title` (e.g. ray::extract_shard)."""
        procs = _processes()
        return sorted(pid for pid in self.pids() if procs.get(pid, (0, ""))[1].startswith(title))

    def stop(self) -> None:
        pids = self.pids()
        for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + wait
            while time.time() < deadline and any(Path(f"/proc/{p}").exists() and _alive(p) for p in pids):
                time.sleep(0.2)
        self.proc.wait(timeout=10)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    # ------------------------------------------------------------ jobs
    def submit(self, *args: str, wait: bool = True, submission_id: str | None = None) -> str:
        sid = submission_id or f"unisync-{uuid.uuid4().hex[:8]}"
        cmd = [str(RAY), "job", "submit", "--address", self.address, "--working-dir", ".",
               "--submission-id", sid, *([] if wait else ["--no-wait"]), "--",
               "python", "pipelines/extract.py", *args]
        proc = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
        return sid

    def job(self, sid: str) -> dict:
        with urllib.request.urlopen(f"{self.address}/api/jobs/{sid}", timeout=10) as r:
            return json.loads(r.read())

    def logs(self, sid: str) -> str:
        with urllib.request.urlopen(f"{self.address}/api/jobs/{sid}/logs", timeout=10) as r:
            return json.loads(r.read()).get("logs", "")

    def wait(self, sid: str, timeout: float = 400) -> str:
        deadline = time.time() + timeout
        while time.time() < deadline:
            status = self.job(sid)["status"]
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                return status
            time.sleep(0.5)
        raise TimeoutError(f"job {sid} still running after {timeout} s")


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def lrs2_root(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("lrs2")
    clips = make_clips(tmp / "clips", n=4, min_seconds=1.0, max_seconds=1.4, size=128)
    build_lrs2(tmp / "lrs2", clips)
    return tmp / "lrs2"


@pytest.fixture(scope="module")
def head():
    if not RAY.exists():
        pytest.skip(f"no ray CLI at {RAY}")
    h = Head()
    yield h
    h.stop()
    assert not [p for p in h.pids() if _alive(p)], "every process of the test head has ended"


def job_args(root: Path, store: Path, workers: int = 2) -> list[str]:
    return ["--dataset", "lrs2", "--root", str(root), "--store", str(store), "--workers", str(workers),
            "--shard-size", "2", "--max-seconds", "0.6", "--fields", *FIELDS]


def tars(store: Path) -> dict[str, bytes]:
    return {str(p.relative_to(store)): p.read_bytes() for p in sorted(store.glob("shards/**/*.tar"))}


def assert_same_store(store: Path, reference: Path) -> None:
    for name in TABLES:
        mine, theirs = pq.read_table(table_path(store, name)), pq.read_table(table_path(reference, name))
        differing = [c for c in theirs.column_names if c not in mine.column_names
                     or not mine.column(c).equals(theirs.column(c))]
        assert mine.equals(theirs), (name, differing, [(mine.column(c).to_pylist()[:4], theirs.column(c).to_pylist()[:4])
                                                       for c in differing[:3] if c in mine.column_names])
    assert tars(store) == tars(reference)


def assert_verified(store: Path, n_utterances: int) -> None:
    report = verify(store)
    assert report["ok"], (report["problems"][:5], report["lost"][:5], report["duplicated"][:5])
    assert report["n_lost"] == 0 and report["n_duplicated"] == 0
    assert report["checked"]["utterances"] == n_utterances
    assert report["checked"]["members"] == n_utterances * len(FIELDS)


@pytest.fixture(scope="module")
def reference(head, lrs2_root, tmp_path_factory) -> Path:
    """The job submitted to the head exactly as a user would, run to the end undisturbed."""
    store = tmp_path_factory.mktemp("reference") / "store"
    sid = head.submit(*job_args(lrs2_root, store))
    assert head.wait(sid) == "SUCCEEDED", head.logs(sid)[-3000:]
    return store


# ---------------------------------------------------------------- tests
def test_ray_job_submit_on_a_local_head(head, reference):
    report = json.loads((reference / "extract_report.json").read_text())
    assert report["errors"] == 0 and report["ok"] == report["utterances"] and not report["failed_shards"]
    utts = pq.read_table(table_path(reference, "utterances")).to_pylist()
    assert {u["dataset"] for u in utts} == {"lrs2"} and all(u["status"] == "ok" for u in utts)
    assert any(u["utt_id"].endswith("_seg00") for u in utts)  # --max-seconds reached the job
    assert_verified(reference, len(utts))
    jobs = json.loads(urllib.request.urlopen(f"{head.address}/api/jobs/", timeout=10).read())
    assert any(j["status"] == "SUCCEEDED" and "pipelines/extract.py" in j["entrypoint"] for j in jobs)


def test_worker_killed_mid_task_is_retried(head, lrs2_root, reference, tmp_path):
    store = tmp_path / "store"
    sid = head.submit(*job_args(lrs2_root, store, workers=1), wait=False)
    killed, deadline = None, time.time() + 300
    while killed is None and time.time() < deadline:
        if head.job(sid)["status"] in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        busy = head.workers("ray::extract_shard")
        if busy:
            time.sleep(0.5)  # let it get into the shard
            if busy[0] in head.workers("ray::extract_shard"):
                os.kill(busy[0], signal.SIGKILL)
                killed = busy[0]
        time.sleep(0.1)
    assert killed is not None, "no extract_shard worker was seen running"
    done_at_kill = len(list(store.glob("shards/lrs2/meta/*.json")))
    n_shards = len(list(reference.glob("shards/lrs2/meta/*.json")))
    assert done_at_kill < n_shards, "the kill should land mid-job"
    assert head.wait(sid) == "SUCCEEDED", head.logs(sid)[-3000:]
    assert not _alive(killed)
    logs = head.logs(sid)  # Ray reports the dead worker; the job's own bounded retry says so
    assert f"Worker PID: {killed}" in logs and "attempt 1 failed" in logs and "retrying" in logs, logs[-3000:]
    report = json.loads((store / "extract_report.json").read_text())
    assert not report["failed_shards"] and report["ok"] == report["utterances"]
    assert_verified(store, report["utterances"])
    assert_same_store(store, reference)


def test_killed_job_resumes_when_resubmitted(head, lrs2_root, reference, tmp_path):
    """The job's driver is SIGKILLed once the first shard is complete (as when the node running
    it dies); the job fails, its workers go with it, and the same submission again resumes."""
    store = tmp_path / "store"
    n_shards = len(list(reference.glob("shards/lrs2/meta/*.json")))
    sid = head.submit(*job_args(lrs2_root, store, workers=1), wait=False)
    deadline = time.time() + 300
    while time.time() < deadline and not list(store.glob("shards/lrs2/meta/*.json")):
        assert head.job(sid)["status"] in ("PENDING", "RUNNING"), head.logs(sid)[-3000:]
        time.sleep(0.05)
    drivers = head.processes_with(f"pipelines/extract.py --dataset lrs2 --root {lrs2_root} --store {store}")
    assert drivers, "the job's driver process"  # (with the shell the job manager started it from)
    for pid in drivers:
        os.kill(pid, signal.SIGKILL)
    assert head.wait(sid) == "FAILED"
    done = len(list(store.glob("shards/lrs2/meta/*.json")))
    assert 1 <= done < n_shards, "the kill should land midway"
    assert not verify(store)["ok"]  # a partial store does not verify
    sid2 = head.submit(*job_args(lrs2_root, store, workers=2))
    assert head.wait(sid2) == "SUCCEEDED", head.logs(sid2)[-3000:]
    report = json.loads((store / "extract_report.json").read_text())
    assert report["frames_extracted"] < sum(u["n_frames"] for u in
                                            pq.read_table(table_path(store, "utterances")).to_pylist())
    assert_verified(store, report["utterances"])
    assert_same_store(store, reference)
