"""The per-(shard, field) sidecar: each member's status, bytes and catalog columns, beside its tar.

    {"field", "dataset", "shard_id", "version", "n_members", "bytes", "sha256",
     "members": [{"utt_id", "status": "ok" | "error", "bytes", "sha256", ("stage", "reason"),
                  "columns": {name: value}}, ...]}      one entry per utterance, plan order

A (shard, field) pair is complete when its tar and its sidecar are both in place and agree in
size; the sidecar is written after the tar (atomically), so its presence marks completion.
`columns` become the utterance's columns in the catalog (catalog/build.py, COLUMN_TYPES). A
sidecar without a tar (e.g. the sync pass's `sync`) only carries columns.
"""
from __future__ import annotations

import json
from pathlib import Path

from catalog.layout import sidecar_path, tar_path
from catalog.tars import TarWriter, write_atomic


def write_sidecar(store: Path, dataset: str, field: str, shard_id: int, version: str,
                  members: list[dict], tar: TarWriter | None = None) -> dict:
    """Write the sidecar of a tar just written by `tar` (None: a columns-only sidecar)."""
    side = {"field": field, "dataset": dataset, "shard_id": shard_id, "version": version,
            "n_members": tar.n_members if tar else 0, "bytes": tar.bytes if tar else 0,
            "sha256": tar.sha256 if tar else "", "members": members}
    write_atomic(sidecar_path(store, dataset, field, shard_id), json.dumps(side, sort_keys=True, indent=1).encode())
    return side


def read_sidecar(store: Path, dataset: str, field: str, shard_id: int, need_tar: bool = True) -> dict | None:
    """The sidecar, or None when it (or, with `need_tar`, its tar) is absent."""
    side = sidecar_path(store, dataset, field, shard_id)
    if not side.exists() or (need_tar and not tar_path(store, dataset, field, shard_id).exists()):
        return None
    return json.loads(side.read_text())


def is_complete(store: Path, dataset: str, field: str, shard_id: int) -> bool:
    """Tar and sidecar in place and agreeing in size (what a re-run skips)."""
    tar, side = tar_path(store, dataset, field, shard_id), sidecar_path(store, dataset, field, shard_id)
    if not (tar.exists() and side.exists()):
        return False
    try:
        return json.loads(side.read_text())["bytes"] == tar.stat().st_size
    except (ValueError, KeyError):
        return False
