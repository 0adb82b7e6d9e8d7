"""The one job runner (catalog/jobs.py): a job of one task runs in this process without starting
Ray, with the same error handling; on Ray a task whose worker dies is retried by the driver at
most --max-retries times, and a task whose own code raises is not retried."""
from __future__ import annotations

import os
import re

import pytest

from catalog.jobs import FAULT_ENV, Runner, Task, _same_name


def collect():
    """on_result / on_failure callbacks and what they received."""
    got = {"results": {}, "failures": {}}
    return got, (lambda t, r: got["results"].__setitem__(t.name, r)), (lambda t, c: got["failures"].__setitem__(t.name, c))


def test_a_job_of_one_task_runs_here_without_starting_ray(capsys):
    import ray

    if ray.is_initialized():
        pytest.skip("another test left Ray running in this process (the runner would use it)")
    runner = Runner(workers=2)
    got, ok, bad = collect()
    assert runner.runs_here(1) and not runner.runs_here(2)
    assert runner.run(os.getpid, [Task("only")], desc="one", unit="shard", on_result=ok, on_failure=bad) == 0
    assert got["results"] == {"only": os.getpid()}  # ran in this very process
    # the same error handling as a worker's: the task's exception is a failure in words, no retry
    assert runner.run(int, [Task("bad", ("x",))], desc="one", unit="shard", max_retries=3,
                      on_result=ok, on_failure=bad) == 1
    assert got["failures"] == {"bad": "shard failed after 1 attempt(s): the task raised ValueError: "
                                      "invalid literal for int() with base 10: 'x'"}
    assert not ray.is_initialized(), "no Ray was started"
    said = [line for line in capsys.readouterr().err.splitlines() if "in this process" in line]
    assert said == ["running the shard in this process (one shard: no Ray start-up; --ray always or "
                    "--address runs it on Ray)"], said  # said once per runner
    runner.close()

    never = Runner(mode="never")
    got, ok, bad = collect()
    assert never.run(os.getpid, [Task(f"t{i}") for i in range(3)], desc="all", on_result=ok) == 0
    assert got["results"] == {f"t{i}": os.getpid() for i in range(3)} and not ray.is_initialized()
    assert not Runner(address="ray://nowhere:1").runs_here(1), "an address always means Ray"


def test_fault_names():
    assert _same_name("folder-3", "folder-000003") and _same_name("a-b", "a-b")
    assert not _same_name("folder-3", "folder-000030") and not _same_name("lrs2-3", "folder-000003")


def test_a_dying_task_is_retried_at_most_max_retries_times(monkeypatch, capsys):
    """One private local Ray: task t-000001's worker dies on every attempt (the FAULT_ENV hook,
    os._exit as after an OOM kill): 1 + 2 attempts, then a failure naming the cause; a task that
    raises is not retried; the others run on workers, not here."""
    import ray

    monkeypatch.setenv(FAULT_ENV, "t-1")
    runner = Runner(workers=2, mode="always")
    got, ok, bad = collect()
    tasks = [Task("t-000000"), Task("t-000001"), Task("t-000002"), Task("raises")]
    with runner:
        failed = runner.run(os.getpid, tasks[:3], desc="pids", max_retries=2, on_result=ok, on_failure=bad)
        failed += runner.run(int, [Task("raises", ("x",))], desc="raises", max_retries=2, on_result=ok,
                             on_failure=bad)
        assert ray.is_initialized()
    assert not ray.is_initialized(), "close() shuts down the Ray it started"
    assert failed == 2 and set(got["results"]) == {"t-000000", "t-000002"}
    assert all(pid != os.getpid() for pid in got["results"].values()), "ran on Ray workers"
    assert got["failures"]["t-000001"].startswith("task failed after 3 attempt(s): the worker process died")
    assert got["failures"]["raises"].startswith("task failed after 1 attempt(s): the task raised ValueError")
    err = capsys.readouterr().err
    assert re.findall(r"task t-000001 attempt (\d+) failed", err) == ["1", "2"]  # then no third retry
    assert "task raises attempt" not in err
