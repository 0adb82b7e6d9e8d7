"""The per-(shard, field) sidecar: each member's status, bytes and catalog columns, beside its tar.

    {"field", "dataset", "shard_id", "version", "n_members", "bytes", "sha256", ("provenance"),
     "members": [{"utt_id", "status": "ok" | "error", "bytes", "sha256", ("stage", "reason"),
                  ("job_level": true), "columns": {name: value}}, ...]}   one entry per utterance, plan order

A (shard, field) pair is complete when its tar and its sidecar are both in place and agree in
size; the sidecar is written after the tar (atomically), so its presence marks completion.
`columns` become the utterance's columns in the catalog (catalog/build.py, COLUMN_TYPES). A
sidecar without a tar (e.g. the sync pass's `sync`) only carries columns. `provenance` names what
made the field's members beyond its version (hubert: the model and layer).

A pair is *intact* (`pair_problem` is None) when it is complete, its sidecar reads as one, no
member failed for a reason outside its utterance (`redo_member`: a dead worker, a model that
could not load: a re-run must retry those), and, when asked, the tar's SHA-256 is the one its
sidecar records. Anything else is redone by the next run: that is how a re-run converges.
"""
from __future__ import annotations

import json
from pathlib import Path

from catalog.layout import sidecar_path, tar_path
from catalog.tars import TarWriter, sha256_file, write_atomic

WORKER_STAGE = "worker"  # the shard's worker died for good (pipelines/shard_failures.py)
SIDECAR_KEYS = ("version", "n_members", "bytes", "sha256", "members")


def write_sidecar(store: Path, dataset: str, field: str, shard_id: int, version: str,
                  members: list[dict], tar: TarWriter | None = None,
                  provenance: dict | None = None) -> dict:
    """Write the sidecar of a tar just written by `tar` (None: a columns-only sidecar)."""
    side = {"field": field, "dataset": dataset, "shard_id": shard_id, "version": version,
            "n_members": tar.n_members if tar else 0, "bytes": tar.bytes if tar else 0,
            "sha256": tar.sha256 if tar else "", "members": members}
    if provenance:
        side["provenance"] = provenance
    write_atomic(sidecar_path(store, dataset, field, shard_id), json.dumps(side, sort_keys=True, indent=1).encode())
    return side


def parse_sidecar(data: bytes | str) -> dict | None:
    """A sidecar's content, or None when it is not one (not JSON, not an object, keys missing):
    a broken sidecar reads as a missing one, so the pair is redone, never a crash."""
    try:
        side = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(side, dict) or any(k not in side for k in SIDECAR_KEYS):
        return None
    if not isinstance(side["members"], list) or not all(isinstance(m, dict) for m in side["members"]):
        return None
    return side


def read_sidecar(store: Path, dataset: str, field: str, shard_id: int, need_tar: bool = True) -> dict | None:
    """The sidecar, or None when it (or, with `need_tar`, its tar) is absent or it is broken."""
    side = sidecar_path(store, dataset, field, shard_id)
    if not side.exists() or (need_tar and not tar_path(store, dataset, field, shard_id).exists()):
        return None
    try:
        return parse_sidecar(side.read_bytes())
    except OSError:
        return None


def redo_member(entry: dict) -> bool:
    """A member whose failure was not its utterance's: the worker died, or the field's model could
    not load (`job_level`). A re-run retries the pair that holds one."""
    return entry.get("status") != "ok" and (entry.get("stage") == WORKER_STAGE or bool(entry.get("job_level")))


def own_failure(entry: dict) -> bool:
    """A member that failed on its utterance's own data (what makes the utterance's status
    'error'). Neither a job-level failure nor a dead worker is the utterance's (DESIGN.md, Truth):
    nothing of a dead worker's shard was made, so its rows are 'incomplete' until a re-run."""
    return entry.get("status") != "ok" and not redo_member(entry)


def pair_problem(store: Path, dataset: str, field: str, shard_id: int, verify_hash: bool = False) -> str | None:
    """Why the (shard, field) pair must be (re)done, in words, or None when it is intact.

    `verify_hash` reads the whole tar (SHA-256 at about 0.5-1 GB/s per core); without it a tar
    altered in place at the same size passes.
    """
    tar, path = tar_path(store, dataset, field, shard_id), sidecar_path(store, dataset, field, shard_id)
    if not (tar.exists() and path.exists()):
        return "missing"
    try:
        side = parse_sidecar(path.read_bytes())
        size = tar.stat().st_size
    except OSError as exc:
        return f"unreadable ({type(exc).__name__}: {exc})"
    if side is None:
        return "sidecar unreadable (not a valid sidecar)"
    if side["bytes"] != size:
        return f"tar is {size} bytes, its sidecar says {side['bytes']}"
    if any(redo_member(m) for m in side["members"]):
        return "failed last time for a reason outside the utterances (worker or model)"
    if verify_hash and side["sha256"] and sha256_file(tar) != side["sha256"]:
        return "tar's SHA-256 differs from its sidecar (altered in place)"
    return None


def is_complete(store: Path, dataset: str, field: str, shard_id: int, verify_hash: bool = False) -> bool:
    """The pair is intact (see pair_problem): what a re-run skips."""
    return pair_problem(store, dataset, field, shard_id, verify_hash) is None
