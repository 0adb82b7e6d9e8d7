"""Error rows decided at planning time (catalog/plan.py: an id whose tar key another id holds).

Such rows sit in shards of their own; the job never extracts them but writes, for every
requested field, a tar of `<key>.error.json` placeholders and a sidecar whose entries say why
(stage `plan`), so the catalog holds them as error rows naming the other utterance and `verify`
sees an aligned store. Complete pairs are left as they are (a re-run writes only new fields).
"""
from __future__ import annotations

import json
from pathlib import Path

from catalog.layout import tar_path
from catalog.plan import plan_errors, shards_of
from catalog.sidecar import is_complete, write_sidecar
from catalog.tars import TarWriter
from features.fields import ERROR_EXT, FIELDS

STAGE = "plan"


def write_plan_errors(store: Path, dataset: str, plan: list[dict], fields: list[str]) -> int:
    """Placeholders for the dataset's plan-error rows; returns how many rows there are."""
    rows = [r for r in plan_errors(plan) if r["dataset"] == dataset]
    for shard_id, members in shards_of(rows).items():
        for name in fields:
            if is_complete(store, dataset, name, shard_id):
                continue
            entries = [{"utt_id": r["utt_id"], "status": "error", "stage": STAGE, "reason": r["plan_error"]}
                       for r in members]
            with TarWriter(tar_path(store, dataset, name, shard_id)) as tar:
                for row, entry in zip(members, entries):
                    tar.add(f"{row['key']}.{ERROR_EXT}",
                            json.dumps({k: entry[k] for k in ("status", "stage", "reason")}, sort_keys=True).encode())
            write_sidecar(store, dataset, name, shard_id, FIELDS[name].version if name in FIELDS else "meta-1",
                          entries, tar)
    return len(rows)


def without_plan_errors(plan: list[dict]) -> list[dict]:
    """The rows to extract: shards of plan-error rows are not extracted."""
    bad = {(r["dataset"], r["shard_id"]) for r in plan_errors(plan)}
    return [r for r in plan if (r["dataset"], r["shard_id"]) not in bad]
