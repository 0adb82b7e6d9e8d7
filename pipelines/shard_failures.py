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
recognises these sidecars (every member failed at stage `worker`), clears them and tries the
shard again.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from catalog.layout import sidecar_path, tar_path
from catalog.sidecar import is_complete, read_sidecar, write_sidecar
from catalog.tars import TarWriter
from features.fields import ERROR_EXT, FIELDS

STAGE = "worker"
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


def _is_placeholder(side: dict | None) -> bool:
    """A sidecar this module wrote: every member failed at the worker stage."""
    return bool(side and side["members"]) and all(m.get("stage") == STAGE for m in side["members"])


def write_failed_shard(store: Path, dataset: str, shard_id: int, rows: list[dict], fields: list[str],
                       cause: str) -> None:
    """Placeholder tars and sidecars for every field of the shard not already complete."""
    error = {"status": "error", "stage": STAGE, "reason": cause}
    member = json.dumps(error, sort_keys=True).encode()
    for name in fields:
        side = read_sidecar(store, dataset, name, shard_id)
        if is_complete(store, dataset, name, shard_id) and not _is_placeholder(side):
            continue  # written by an earlier attempt before the worker died: keep it
        with TarWriter(tar_path(store, dataset, name, shard_id)) as tar:
            for row in rows:
                tar.add(f"{row['key']}.{ERROR_EXT}", member)
        write_sidecar(store, dataset, name, shard_id, FIELDS[name].version if name in FIELDS else "meta-1",
                      [{"utt_id": r["utt_id"], **error} for r in rows], tar)


def clear_failed_shard(store: Path, dataset: str, shard_id: int, fields: list[str]) -> bool:
    """Remove a shard's placeholder pairs (sidecar first) so the shard is redone; True if any."""
    cleared = False
    for name in fields:
        if _is_placeholder(read_sidecar(store, dataset, name, shard_id, need_tar=False)):
            sidecar_path(store, dataset, name, shard_id).unlink(missing_ok=True)
            tar_path(store, dataset, name, shard_id).unlink(missing_ok=True)
            cleared = True
    return cleared
