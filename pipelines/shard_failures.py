"""Shards whose task failed for good: bounded retries, the cause in words, placeholder rows.

Ray counts retries of a task killed for memory apart from `max_retries` (the `task_oom_retries`
system config, -1 = forever by default), and a cluster's config is not the job's to set. So
the job submits every shard task with `max_retries=0` (which also turns Ray's OOM retries off:
Ray gives a task `task_oom_retries` only when `max_retries != 0`) and retries it itself, up to
`--max-retries` times whatever the cause: a worker killed for memory, a worker or node that
died. An exception raised by the task's own code is not retried (it would fail the same way).

A shard that still fails gets, for every pending field, a tar of `<key>.error.json`
placeholders and a sidecar whose entries name the cause, so the catalog holds its rows (status
`error`, stage `worker`) and `verify` sees an aligned store. A later run of the same command
sees that these pairs are not intact (catalog.sidecar.redo_member: a member failed at stage
`worker`) and redoes them.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from catalog.layout import tar_path
from catalog.sidecar import WORKER_STAGE, is_complete, write_sidecar
from catalog.tars import TarWriter
from features.fields import ERROR_EXT, FIELDS

STAGE = WORKER_STAGE
FAULT_ENV = "UNISYNC_FAULT_SHARDS"  # tests: "<dataset>-<shard_id>[:oom],..." shards whose worker dies
OOM_CAP_BYTES = 6 << 30  # the `oom` fault stops growing here (then exits) if nothing killed it


def inject_fault(dataset: str, shard_id: int) -> None:
    """Make this worker die, when a test asks: at once (`<dataset>-<id>`, as after SIGKILL), or
    by growing its memory until Ray's memory monitor kills it (`<dataset>-<id>:oom`)."""
    wanted = dict((s.strip().split(":") + [""])[:2] for s in os.environ.get(FAULT_ENV, "").split(",") if s.strip())
    mode = wanted.get(f"{dataset}-{shard_id}")
    if mode is None:
        return
    if mode == "oom":
        import time

        import numpy as np

        hog = []
        while sum(a.nbytes for a in hog) < OOM_CAP_BYTES:
            hog.append(np.ones(64 << 20, np.uint8))  # touched pages: real resident memory
            time.sleep(0.05)
    os._exit(137)  # no exception, no cleanup: the process is gone


def classify(exc: BaseException) -> tuple[bool, str]:
    """(retry?, cause in words) for an exception `ray.get` raised for a shard task."""
    import ray.exceptions as rex

    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
    if isinstance(exc, rex.OutOfMemoryError):
        return True, ("out of memory: Ray's memory monitor killed the worker (the node ran short of "
                      f"memory; fewer --workers leave each more) [{first}]")
    if isinstance(exc, rex.WorkerCrashedError):
        return True, f"the worker process died (killed or crashed; e.g. the kernel's OOM killer) [{first}]"
    if isinstance(exc, getattr(rex, "NodeDiedError", ())) or isinstance(exc, getattr(rex, "ActorDiedError", ())):
        return True, f"the node running the worker died [{first}]"
    if isinstance(exc, (rex.RaySystemError, rex.ObjectLostError, rex.TaskUnschedulableError)):
        return True, f"Ray system error ({type(exc).__name__}) [{first}]"
    if isinstance(exc, rex.RayTaskError):
        cause = exc.cause if getattr(exc, "cause", None) is not None else exc
        return False, f"the task raised {type(cause).__name__}: {(str(cause).splitlines() or [''])[0][:300]}"
    return False, f"{type(exc).__name__}: {first}"


def write_failed_shard(store: Path, dataset: str, shard_id: int, rows: list[dict], fields: list[str],
                       cause: str) -> None:
    """Placeholder tars and sidecars for every field of the shard not already complete (a pair
    that failed for a job-level reason, such as an earlier placeholder, is replaced)."""
    error = {"status": "error", "stage": STAGE, "reason": cause}
    member = json.dumps(error, sort_keys=True).encode()
    for name in fields:
        if is_complete(store, dataset, name, shard_id):
            continue  # written by an earlier attempt before the worker died: keep it
        with TarWriter(tar_path(store, dataset, name, shard_id)) as tar:
            for row in rows:
                tar.add(f"{row['key']}.{ERROR_EXT}", member)
        write_sidecar(store, dataset, name, shard_id, FIELDS[name].version if name in FIELDS else "meta-1",
                      [{"utt_id": r["utt_id"], **error} for r in rows], tar)

