"""Random access to one utterance's stored fields, via the catalog's shard and position."""
from __future__ import annotations

from pathlib import Path

import pyarrow.compute as pc

from catalog.build import read_table
from catalog.layout import tar_path
from catalog.tars import read_member


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


def read_sample(store: Path, row: dict, field: str) -> dict[str, bytes]:
    """{ext: bytes} of one catalog row's members in one field's tar (tdmm has two)."""
    path = tar_path(store, row["dataset"], field, row["shard_id"])
    if not path.exists():
        raise FileNotFoundError(f"{path}: field {field!r} is missing for shard {row['shard_id']}")
    return read_member(path, row["key"])


def read_members(store: Path, row: dict, fields: list[str]) -> dict[str, tuple[str, bytes]]:
    """field -> (member name, bytes) of the row's first member in each field's tar; placeholders
    (`<key>.error.json`) come back as they are."""
    out = {}
    for field in fields:
        ext, data = next(iter(read_sample(store, row, field).items()))
        out[field] = (f"{row['key']}.{ext}", data)
    return out
