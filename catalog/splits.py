"""Speaker-disjoint splits computed deterministically from speaker ids.

Speakers are ordered by a seeded hash of their id (stable across machines and Python runs); the
first go to test, the next to val, the rest to train. With 3 or more speakers no split is empty.
"""
from __future__ import annotations

import hashlib

SPLITS = ("train", "val", "test")


def speaker_order(speakers: list[str], seed: int = 0) -> list[str]:
    return sorted(set(speakers), key=lambda s: hashlib.sha256(f"{seed}:{s}".encode()).hexdigest())


def speaker_disjoint_splits(speakers: list[str], val: float = 0.1, test: float = 0.1,
                            seed: int = 0) -> dict[str, str]:
    """speaker_id -> 'train' | 'val' | 'test'."""
    order = speaker_order(speakers, seed)
    n = len(order)
    n_test = max(1, round(test * n)) if n >= 3 else 0
    n_val = max(1, round(val * n)) if n >= 3 else 0
    out = {}
    for i, spk in enumerate(order):
        out[spk] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    return out


def assign_splits(rows: list[dict], val: float = 0.1, test: float = 0.1, seed: int = 0) -> None:
    """Set each row's 'split' in place, speaker-disjoint within each dataset."""
    column = assign_split_column([r["dataset"] for r in rows], [r["speaker_id"] for r in rows], val, test, seed)
    for r, split in zip(rows, column):
        r["split"] = split


def assign_split_column(datasets: list[str], speakers: list[str], val: float = 0.1, test: float = 0.1,
                        seed: int = 0) -> list[str]:
    """The split of each row given its dataset and speaker columns (column-wise assign_splits)."""
    per: dict[str, set[str]] = {}
    for ds, spk in zip(datasets, speakers):
        per.setdefault(ds, set()).add(spk)
    splits = {ds: speaker_disjoint_splits(list(spk), val=val, test=test, seed=seed) for ds, spk in per.items()}
    return [splits[ds][spk] for ds, spk in zip(datasets, speakers)]
