"""What a store holds: counts, splits, per-field utterances and bytes, quality figures, errors.

Per-field counts are utterances (a field may write several members per utterance: tdmm writes
two), taken from the utterances table's `field_<name>` status columns; bytes and tar counts come
from the fields table. Quality figures (decoded vs expected frames, audio coverage, warnings) are
shown when the meta sidecars carried them. One pass over each column.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow.compute as pc

from catalog.build import read_table

LOW_AUDIO_COVERAGE = 0.95


def _ints(table, name: str) -> int:
    return int(pc.sum(table[name]).as_py() or 0) if name in table.column_names else 0


def summarize(store: Path) -> dict:
    utts = read_table(store, "utterances")
    speakers = read_table(store, "speakers")
    fields = read_table(store, "fields").to_pylist()
    errors = read_table(store, "errors").to_pylist()
    cols = set(utts.column_names)
    status = utts["status"].to_pylist()
    per_field: dict[str, dict] = {}
    for f in fields:
        s = per_field.setdefault(f["field"], {"utterances": 0, "ok": 0, "members": 0, "bytes": 0, "shards": 0})
        s["members"] += f["n_members"]
        s["bytes"] += f["bytes"]
        s["shards"] += 1
    for name, s in per_field.items():
        column = f"field_{name}"
        if column in cols:
            counts = Counter(utts[column].to_pylist())
            s["utterances"] = sum(n for k, n in counts.items() if k not in (None, "missing"))
            s["ok"] = counts.get("ok", 0)
    splits: dict[str, dict] = {}
    for split, st, ds, spk in zip(utts["split"].to_pylist(), status, utts["dataset"].to_pylist(),
                                  utts["speaker_id"].to_pylist()):
        s = splits.setdefault(split or "none", {"utterances": 0, "ok": 0, "speakers": set()})
        s["utterances"] += 1
        s["ok"] += st == "ok"
        s["speakers"].add((ds, spk))
    ok = pc.equal(utts["status"], "ok")
    frames = int(pc.sum(pc.if_else(ok, utts["n_frames"], 0)).as_py() or 0) if "n_frames" in cols else 0
    return {
        "store": str(store),
        "utterances": utts.num_rows,
        "ok": status.count("ok"),
        "speakers": speakers.num_rows,
        "frames": frames,
        "datasets": sorted(set(utts["dataset"].to_pylist())),
        "splits": {k: {**v, "speakers": len(v["speakers"])} for k, v in sorted(splits.items())},
        "fields": per_field,
        "quality": _quality(utts),
        "errors": [{k: e[k] for k in ("utt_id", "dataset", "field", "stage", "reason")} for e in errors],
    }


def _quality(utts) -> dict:
    """Decoded vs expected frames, audio coverage and warnings, where the catalog has them."""
    cols, out = set(utts.column_names), {}
    if "expected_frames" in cols and "decoded_frames" in cols:
        known = pc.and_(pc.is_valid(utts["expected_frames"]), pc.is_valid(utts["decoded_frames"]))
        t = utts.filter(known)
        out["frames"] = {"utterances": t.num_rows, "expected": _ints(t, "expected_frames"),
                         "decoded": _ints(t, "decoded_frames"),
                         "short": int(pc.sum(pc.less(t["decoded_frames"], t["expected_frames"])).as_py() or 0)}
    if "audio_coverage" in cols:
        cov = utts["audio_coverage"].drop_null()
        out["audio_coverage"] = {"utterances": len(cov), "mean": pc.mean(cov).as_py() if len(cov) else None,
                                 f"below_{LOW_AUDIO_COVERAGE}": int(pc.sum(pc.less(cov, LOW_AUDIO_COVERAGE)).as_py() or 0)}
    if "warnings" in cols:
        counts: Counter = Counter()
        with_any = 0
        for ws in utts["warnings"].to_pylist():
            if ws:
                with_any += 1
                counts.update(w.split(":", 1)[0] for w in ws)
        out["warnings"] = {"utterances": with_any, "kinds": dict(counts.most_common())}
    return out


def format_summary(s: dict) -> str:
    lines = [f"store {s['store']}: {s['utterances']} utterances ({s['ok']} ok), "
             f"{s['speakers']} speakers, {s['frames']} frames, datasets {', '.join(s['datasets'])}"]
    for name, sp in s["splits"].items():
        lines.append(f"  split {name:<6} {sp['speakers']:>4} speakers {sp['utterances']:>6} utterances "
                     f"({sp['ok']} ok)")
    for name, f in s["fields"].items():
        lines.append(f"  field {name:<10} {f['ok']:>6}/{f['utterances']:<6} utterances ok  "
                     f"{f['bytes'] / 1e6:10.2f} MB in {f['shards']} tars ({f['members']} members)")
    q = s.get("quality", {})
    if "frames" in q:
        fr = q["frames"]
        lines.append(f"  frames: {fr['decoded']} decoded of {fr['expected']} expected "
                     f"({fr['short']} of {fr['utterances']} utterances short)")
    if "audio_coverage" in q:
        ac = q["audio_coverage"]
        mean = f"{ac['mean']:.3f}" if ac["mean"] is not None else "-"
        lines.append(f"  audio coverage: mean {mean} over {ac['utterances']} utterances, "
                     f"{ac[f'below_{LOW_AUDIO_COVERAGE}']} below {LOW_AUDIO_COVERAGE}")
    if "warnings" in q:
        w = q["warnings"]
        kinds = ", ".join(f"{k} {n}" for k, n in w["kinds"].items())
        lines.append(f"  warnings: {w['utterances']} utterances" + (f" ({kinds})" if kinds else ""))
    lines.append(f"  errors: {len(s['errors'])}")
    for e in s["errors"]:
        lines.append(f"    {e['utt_id']} [{e['field']}/{e['stage']}]: {e['reason']}")
    return "\n".join(lines)
