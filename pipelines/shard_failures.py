"""Shards whose task failed for good: placeholder rows naming the cause.

The job runner (catalog/jobs.py) submits every shard task with `max_retries=0` (Ray's OOM
retries are endless otherwise) and retries it itself, up to `--max-retries` times, when the cause
was outside the task's code (a worker killed for memory, a worker or node that died); then the
shard has failed for good, and the cause is in words.

Such a shard gets, for every pending field, a tar of `<key>.error.json` placeholders and a
sidecar whose entries name the cause, so the catalog holds its rows (status `incomplete`, an
errors-table row with stage `worker`) and `verify` sees an aligned store. A later run of the same
command sees that these pairs are not intact (catalog.sidecar.redo_member: a member failed at
stage `worker`) and redoes them.
"""
from __future__ import annotations

import json
from pathlib import Path

from catalog.layout import tar_path
from catalog.sidecar import WORKER_STAGE, is_complete, write_sidecar
from catalog.tars import TarWriter
from features.fields import ERROR_EXT, FIELDS

STAGE = WORKER_STAGE


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

