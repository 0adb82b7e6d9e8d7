"""Random access to one utterance's stored fields, via the catalog's shard and position."""
from __future__ import annotations

import tarfile
from pathlib import Path

import pyarrow.compute as pc

from catalog.build import read_table
from catalog.layout import tar_path


def find_utterance(store: Path, utt_id: str, dataset: str | None = None) -> dict:
    table = read_table(store, "utterances")
    mask = pc.equal(table["utt_id"], utt_id)
    if dataset is not None:
        mask = pc.and_(mask, pc.equal(table["dataset"], dataset))
    rows = table.filter(mask).to_pylist()
    if not rows:
        raise KeyError(f"{store}: no utterance {utt_id!r} in the catalog")
    if len(rows) > 1:
        raise KeyError(f"{store}: {utt_id!r} is in several datasets; pass dataset=")
    return rows[0]


def read_members(store: Path, row: dict, fields: list[str]) -> dict[str, tuple[str, bytes]]:
    """field -> (member name, bytes) for one catalog row; placeholders come back as they are."""
    out = {}
    for field in fields:
        path = tar_path(store, row["dataset"], field, row["shard_id"])
        if not path.exists():
            raise FileNotFoundError(f"{path}: field {field!r} is missing for shard {row['shard_id']}")
        with tarfile.open(path) as tar:
            for member in tar:
                if member.name.split(".", 1)[0] == row["key"]:
                    out[field] = (member.name, tar.extractfile(member).read())
                    break
            else:
                raise KeyError(f"{path}: no member for key {row['key']!r}")
    return out
