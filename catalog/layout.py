"""Where everything lives in a store (DESIGN.md, Store layout); the one place that builds paths.

    <store>/store.json
    <store>/catalog/<table>.parquet
    <store>/shards/<dataset>/<field>/<dataset>-<NNNNNN>.tar   (+ .json sidecar: per-member status)
    <store>/models/
"""
from __future__ import annotations

import json
import re
from pathlib import Path

STORE_VERSION = 1
TABLES = ("utterances", "speakers", "shards", "fields", "errors")


def utt_key(utt_id: str) -> str:
    """WebDataset key of an utterance: no dots (keys end at the first dot) and no slashes."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", utt_id.replace("/", "__"))


def shard_name(dataset: str, shard_id: int) -> str:
    return f"{dataset}-{shard_id:06d}"


def field_dir(store: Path, dataset: str, field: str) -> Path:
    return Path(store) / "shards" / dataset / field


def tar_path(store: Path, dataset: str, field: str, shard_id: int) -> Path:
    return field_dir(store, dataset, field) / f"{shard_name(dataset, shard_id)}.tar"


def sidecar_path(store: Path, dataset: str, field: str, shard_id: int) -> Path:
    """Per-(shard, field) record of each member's status; written after the tar is in place."""
    return tar_path(store, dataset, field, shard_id).with_suffix(".json")


def table_path(store: Path, table: str) -> Path:
    return Path(store) / "catalog" / f"{table}.parquet"


def models_dir(store: Path) -> Path:
    return Path(store) / "models"


def read_store_json(store: Path) -> dict:
    path = Path(store) / "store.json"
    return json.loads(path.read_text()) if path.exists() else {}


def write_store_json(store: Path, info: dict) -> None:
    path = Path(store) / "store.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(info, indent=2, sort_keys=True))
    tmp.replace(path)
