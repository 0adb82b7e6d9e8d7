"""What a store holds: counts, splits, per-field members and bytes, and every error row."""
from __future__ import annotations

from pathlib import Path

from catalog.build import read_table


def summarize(store: Path) -> dict:
    utts = read_table(store, "utterances").to_pylist()
    speakers = read_table(store, "speakers").to_pylist()
    fields = read_table(store, "fields").to_pylist()
    errors = read_table(store, "errors").to_pylist()
    per_field: dict[str, dict] = {}
    for f in fields:
        s = per_field.setdefault(f["field"], {"members": 0, "ok": 0, "bytes": 0, "shards": 0})
        s["members"] += f["n_members"]
        s["ok"] += f["n_ok"]
        s["bytes"] += f["bytes"]
        s["shards"] += 1
    splits: dict[str, dict] = {}
    for u in utts:
        s = splits.setdefault(u["split"] or "none", {"utterances": 0, "ok": 0, "speakers": set()})
        s["utterances"] += 1
        s["ok"] += u["status"] == "ok"
        s["speakers"].add((u["dataset"], u["speaker_id"]))
    return {
        "store": str(store),
        "utterances": len(utts),
        "ok": sum(u["status"] == "ok" for u in utts),
        "speakers": len(speakers),
        "frames": sum(u["n_frames"] or 0 for u in utts if u["status"] == "ok"),
        "datasets": sorted({u["dataset"] for u in utts}),
        "splits": {k: {**v, "speakers": len(v["speakers"])} for k, v in sorted(splits.items())},
        "fields": per_field,
        "errors": [{k: e[k] for k in ("utt_id", "dataset", "field", "stage", "reason")} for e in errors],
    }


def format_summary(s: dict) -> str:
    lines = [f"store {s['store']}: {s['utterances']} utterances ({s['ok']} ok), "
             f"{s['speakers']} speakers, {s['frames']} frames, datasets {', '.join(s['datasets'])}"]
    for name, sp in s["splits"].items():
        lines.append(f"  split {name:<6} {sp['speakers']:>4} speakers {sp['utterances']:>6} utterances "
                     f"({sp['ok']} ok)")
    for name, f in s["fields"].items():
        lines.append(f"  field {name:<10} {f['ok']:>6}/{f['members']:<6} ok  {f['bytes'] / 1e6:10.2f} MB "
                     f"in {f['shards']} shards")
    lines.append(f"  errors: {len(s['errors'])}")
    for e in s["errors"]:
        lines.append(f"    {e['utt_id']} [{e['field']}/{e['stage']}]: {e['reason']}")
    return "\n".join(lines)
