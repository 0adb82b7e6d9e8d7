"""The one job runner (catalog/jobs.py): a job of one task runs in a local worker process without
starting Ray, with the same error handling; a worker that dies is retried by the driver at most
--max-retries times, a task whose own code raises is not retried; an interrupted driver kills its
local worker before anything else runs. (Ray's side of the same loop: tests/test_extract.py,
a shard whose worker always dies.)"""
from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest

from catalog.jobs import FAULT_ENV, Runner, Task, _same_name


def collect():
    """on_result / on_failure callbacks and what they received."""
    got = {"results": {}, "failures": {}}
    return (got, lambda t, r: got["results"].__setitem__(t.name, r),
            lambda t, c: got["failures"].__setitem__(t.name, c))


def sleeper(path: str, seconds: float) -> None:
    """A task that says where it runs (its pid, in `path`) and then takes a while."""
    Path(path).write_text(str(os.getpid()))
    time.sleep(seconds)


def swallows_an_interrupt() -> str:
    """A task whose own error handling eats the interrupt (as a C extension's import turning
    KeyboardInterrupt into ImportError, caught by per-item handling, does)."""
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(1)
    except BaseException:
        pass
    return "finished as if nothing happened"


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture
def no_ray():
    import ray

    if ray.is_initialized():
        pytest.skip("another test left Ray running in this process (the runner would use it)")
    yield ray
    assert not ray.is_initialized(), "no Ray was started"


def test_a_job_of_one_task_runs_in_a_local_worker_without_ray(no_ray, capsys):
    runner = Runner(workers=2)
    got, ok, bad = collect()
    assert runner.runs_local(1) and not runner.runs_local(2)
    with runner:
        assert runner.run(os.getpid, [Task("only")], desc="one", unit="shard", on_result=ok, on_failure=bad) == 0
        worker = got["results"]["only"]
        assert isinstance(worker, int) and worker != os.getpid(), "a child process, not the driver"
        # the same error handling as a Ray worker's: the task's exception is a failure in words, no retry
        assert runner.run(int, [Task("bad", ("x",))], desc="one", unit="shard", max_retries=3,
                          on_result=ok, on_failure=bad) == 1
    assert got["failures"] == {"bad": "shard failed after 1 attempt(s): the task raised ValueError: "
                                      "invalid literal for int() with base 10: 'x'"}
    err = capsys.readouterr().err
    said = [line for line in err.splitlines() if "local worker" in line]
    assert said == ["running the shard in a local worker process (one shard: no Ray start-up; --ray "
                    "always or --address runs it on Ray)"], said  # said once per runner
    assert "attempt" not in err and not alive(worker), "not retried; the worker stops with the runner"

    got, ok, bad = collect()
    with Runner(mode="never") as never:
        assert never.run(os.getpid, [Task(f"t{i}") for i in range(3)], desc="all", on_result=ok) == 0
    assert len(set(got["results"].values())) == 1, "one local worker serves the job's tasks in turn"
    assert not Runner(address="ray://nowhere:1").runs_local(1), "an address always means Ray"


def test_fault_names():
    assert _same_name("folder-3", "folder-000003") and _same_name("a-b", "a-b")
    assert not _same_name("folder-3", "folder-000030") and not _same_name("lrs2-3", "folder-000003")


def test_a_dying_local_worker_is_retried_at_most_max_retries_times(no_ray, monkeypatch, capsys):
    """Task t-000001's worker dies on every attempt (the FAULT_ENV hook: os._exit, as after an
    OOM kill): 1 + 2 attempts, each in a new worker, then a failure naming the cause; the job goes
    on with a fresh worker."""
    monkeypatch.setenv(FAULT_ENV, "t-1")
    got, ok, bad = collect()
    with Runner(mode="never") as runner:
        failed = runner.run(os.getpid, [Task(f"t-{i:06d}") for i in range(3)], desc="pids", max_retries=2,
                            on_result=ok, on_failure=bad)
    assert failed == 1 and set(got["results"]) == {"t-000000", "t-000002"}
    assert got["results"]["t-000000"] != got["results"]["t-000002"], "a new worker after the deaths"
    assert got["failures"]["t-000001"] == ("task failed after 3 attempt(s): the worker process died (exit "
                                           "code 137; e.g. the kernel's OOM killer, or a crash)")
    err = capsys.readouterr().err
    assert re.findall(r"task t-000001 attempt (\d+) failed", err) == ["1", "2"]  # then no third retry


@pytest.fixture
def sigint_raises():
    """Ctrl-C as an interactive shell gives it: a background job of a non-interactive shell
    inherits SIGINT ignored, and these tests must not depend on how pytest was started."""
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


def test_an_interrupted_driver_kills_its_local_worker_first(no_ray, tmp_path, sigint_raises):
    """Ctrl-C reaches the whole process group: the worker ignores it, the driver's wait raises
    KeyboardInterrupt, and by then the worker is gone (nothing of the task writes on while the
    driver's clean-up runs)."""
    pid_file = tmp_path / "pid"
    timeline = []

    def interrupt() -> None:
        while not pid_file.exists() or not pid_file.read_text():
            time.sleep(0.02)
        worker = int(pid_file.read_text())
        os.kill(worker, signal.SIGINT)  # the group's Ctrl-C: ignored by the worker
        time.sleep(0.3)
        timeline.append(alive(worker))
        os.kill(os.getpid(), signal.SIGINT)  # ... and the driver's

    threading.Thread(target=interrupt, daemon=True).start()
    runner = Runner(mode="never")
    started = time.perf_counter()
    with pytest.raises(KeyboardInterrupt):
        runner.run(sleeper, [Task("sleeps", (str(pid_file), 60))], desc="sleeps")
    worker = int(pid_file.read_text())
    assert timeline == [True], "the worker ignores SIGINT"
    assert not alive(worker), "the driver killed its worker before its own clean-up"
    assert time.perf_counter() - started < 30
    runner.close()


def test_in_process_runs_in_the_driver_and_a_swallowed_interrupt_still_ends_the_job(no_ray, sigint_raises):
    got, ok, bad = collect()
    runner = Runner(in_process=True, mode="never")
    assert runner.run(os.getpid, [Task("here")], desc="here", on_result=ok) == 0
    assert got["results"] == {"here": os.getpid()}
    with pytest.raises(KeyboardInterrupt):
        runner.run(swallows_an_interrupt, [Task("eats"), Task("next")], desc="eats", on_result=ok, on_failure=bad)
    assert set(got["results"]) == {"here"} and not got["failures"], "its result is dropped, nothing after it runs"


def test_a_relative_store_under_ray_job_submit_is_refused(monkeypatch, tmp_path, capsys):
    """Under `ray job submit` the driver's cwd is Ray's temporary copy of the working dir: a
    relative --store would land there and vanish, so extract.py refuses it (exit 2, one line)."""
    from catalog.jobs import JOB_SUBMISSION_ENV, job_path
    from pipelines.extract import main

    monkeypatch.chdir(tmp_path)
    assert job_path(Path("store")) == tmp_path / "store"  # a plain run: resolved against the cwd
    monkeypatch.setenv(JOB_SUBMISSION_ENV, "{}")
    with pytest.raises(ValueError, match="relative"):
        job_path(Path("store"))
    assert job_path(tmp_path / "store") == tmp_path / "store"
    rc = main(["--dataset", "folder", "--root", str(tmp_path), "--store", "store"])
    err = capsys.readouterr().err
    assert rc == 2 and "--store store is relative" in err and err.count("\n") == 1
    assert not (tmp_path / "store").exists()


def test_verbose_reaches_the_workers_environment(monkeypatch):
    """--verbose sets UNISYNC_VERBOSE, which the runner passes to the workers it starts."""
    import argparse
    import os

    from catalog.jobs import WORKER_ENV, add_runner_options, runner_from_args
    from features.quiet import VERBOSE_ENV

    monkeypatch.setenv(VERBOSE_ENV, "0")  # recorded, so the test's "1" is undone afterwards
    p = argparse.ArgumentParser()
    add_runner_options(p)
    runner_from_args(p.parse_args([]))
    assert os.environ[VERBOSE_ENV] == "0"
    runner_from_args(p.parse_args(["--verbose"]))
    assert os.environ[VERBOSE_ENV] == "1" and VERBOSE_ENV in WORKER_ENV


def test_a_start_that_swallows_the_alarm_still_ends_as_out_of_time():
    """Ray's own imports can turn the alarm's exception into a logged RuntimeError ("Error calling
    __set_name__") and finish starting late; the limit must hold all the same."""
    from catalog.jobs import RayStartError, start_ray

    swallowed = []

    def late_init():  # as ray.init did once: the alarm lands in code that catches it, and goes on
        t = time.monotonic()
        while time.monotonic() - t < 0.6:
            try:
                time.sleep(0.02)
            except BaseException as exc:  # noqa: BLE001 - the point of the test
                swallowed.append(type(exc).__name__)

    t0 = time.monotonic()
    with pytest.raises(RayStartError, match=r"within --ray-timeout 0.2 s \(still starting after 0.2 s\)"):
        start_ray(late_init, 0.2, local=True)
    assert swallowed == ["_StartTimeout"] and time.monotonic() - t0 < 5

    def init_whose_alarm_becomes_another_error():
        try:
            time.sleep(1)
        except BaseException as exc:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance") from exc

    with pytest.raises(RayStartError, match="still starting after 0.2 s"):
        start_ray(init_whose_alarm_becomes_another_error, 0.2, local=True)
