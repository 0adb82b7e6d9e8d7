"""Speaker and split queries over a store's catalog: speakers, splits, overlap.

Every function reads the Parquet tables and returns plain dicts and lists (JSON-ready); the
CLI (`python -m catalog ...`) prints them as text or, with --json, as they are.
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path

import pyarrow as pa

from catalog.build import read_table, write_tables
from catalog.splits import assign_splits

SPLIT_COLUMNS = {"official": "official_split", "speaker": "split", "official_split": "official_split",
                 "split": "split"}


def _utterances(store: Path, dataset: str | None = None) -> list[dict]:
    rows = read_table(store, "utterances").to_pylist()
    return [r for r in rows if dataset is None or r["dataset"] == dataset]


def speakers(store: Path, dataset: str | None = None, split: str | None = None,
             official_split: str | None = None, sort: str = "n_utterances", limit: int | None = None) -> list[dict]:
    """Rows of the speakers table (speaker_id, dataset, n_utterances, n_ok, total_duration_s,
    split, speaker_source, official_splits), filtered and sorted (numbers descending)."""
    rows = read_table(store, "speakers").to_pylist()
    rows = [r for r in rows if (dataset is None or r["dataset"] == dataset)
            and (split is None or r["split"] == split)
            and (official_split is None or official_split in (r.get("official_splits") or "").split(","))]
    if rows and sort not in rows[0]:
        raise ValueError(f"cannot sort by {sort!r}; columns: {', '.join(rows[0])}")
    numeric = bool(rows) and isinstance(rows[0][sort], (int, float))
    rows.sort(key=lambda r: (-(r[sort] or 0), r["dataset"], r["speaker_id"]) if numeric
              else (str(r[sort]), r["dataset"], r["speaker_id"]))
    return rows[:limit] if limit is not None else rows


def _split_counts(utts: list[dict], column: str) -> dict[str, dict[str, dict]]:
    out: dict[str, dict[str, dict]] = {}
    for u in utts:
        s = out.setdefault(u["dataset"], {}).setdefault(u[column] or "(none)", {
            "speakers": set(), "utterances": 0, "ok": 0, "duration_s": 0.0})
        s["speakers"].add(u["speaker_id"])
        s["utterances"] += 1
        s["ok"] += u.get("status") == "ok"
        s["duration_s"] += u.get("duration_s") or 0.0
    return {d: {k: {**v, "speakers": len(v["speakers"]), "duration_s": round(v["duration_s"], 3)}
                for k, v in sorted(splits.items())} for d, splits in sorted(out.items())}


def splits(store: Path, val: float | None = None, test: float | None = None, seed: int | None = None,
           dataset: str | None = None, write: bool = False) -> dict:
    """Official splits (the corpus's lists) and speaker-disjoint splits, per dataset.

    With val/test/seed left at None the stored speaker-disjoint split is reported; with any of
    them given the split is recomputed (defaults 0.1, 0.1, 0) and `write=True` stores it in the
    utterances and speakers tables (a later extract.py run recomputes it from its own flags).
    """
    store = Path(store)
    utts = _utterances(store)
    recompute = any(v is not None for v in (val, test, seed))
    val, test, seed = (0.1 if val is None else val), (0.1 if test is None else test), (seed or 0)
    if recompute:
        assign_splits(utts, val=val, test=test, seed=seed)
        if write:
            _write_splits(store, utts)
    mine = [u for u in utts if dataset is None or u["dataset"] == dataset]
    return {"store": str(store),
            "official": _split_counts(mine, "official_split"),
            "speaker_disjoint": {"recomputed": recompute, "written": bool(recompute and write),
                                 **({"val": val, "test": test, "seed": seed} if recompute else {}),
                                 "datasets": _split_counts(mine, "split")}}


def _write_splits(store: Path, utts: list[dict]) -> None:
    table = read_table(store, "utterances")
    by_key = {(u["dataset"], u["utt_id"]): u["split"] for u in utts}
    new = [by_key[(d, i)] for d, i in zip(table["dataset"].to_pylist(), table["utt_id"].to_pylist())]
    idx = table.column_names.index("split")
    utterances = table.set_column(idx, "split", pa.array(new, pa.string()))
    spk = read_table(store, "speakers")
    per_speaker = {(u["dataset"], u["speaker_id"]): u["split"] for u in utts}
    new = [per_speaker.get((d, s)) for d, s in zip(spk["dataset"].to_pylist(), spk["speaker_id"].to_pylist())]
    speakers = spk.set_column(spk.column_names.index("split"), "split", pa.array(new, pa.string()))
    write_tables(store, {"utterances": utterances, "speakers": speakers})  # one atomic switch


def overlap(store: Path, by: str = "auto", dataset: str | None = None, examples: int | None = None) -> dict:
    """Speakers shared between every two splits of each dataset.

    by: "official" (the corpus's lists, column official_split), "speaker" (the computed
    speaker-disjoint split, column split) or "auto" (official when any utterance has an official
    split, else speaker). Utterances outside every split are counted, not paired.
    Every pair is reported, zero or not; `overlapping_pairs` counts pairs sharing a speaker.
    """
    utterances = list(_utterances(store, dataset))
    if by == "auto":  # the corpus's own lists where it has them (lrs2, lrs3), else the computed split
        by = "official" if any(u["official_split"] for u in utterances) else "speaker"
    if by not in SPLIT_COLUMNS:
        raise ValueError(f"by must be one of {sorted(SPLIT_COLUMNS) + ['auto']}")
    column = SPLIT_COLUMNS[by]
    out = {"store": str(store), "by": column, "datasets": {}, "overlapping_pairs": 0}
    per: dict[str, dict[str, dict[str, int]]] = {}
    unassigned: dict[str, int] = {}
    for u in utterances:
        if not u[column]:
            unassigned[u["dataset"]] = unassigned.get(u["dataset"], 0) + 1
            continue
        counts = per.setdefault(u["dataset"], {}).setdefault(u[column], {})
        counts[u["speaker_id"]] = counts.get(u["speaker_id"], 0) + 1
    for ds in sorted(set(per) | set(unassigned)):
        groups = per.get(ds, {})
        pairs = []
        for a, b in combinations(sorted(groups), 2):
            shared = sorted(set(groups[a]) & set(groups[b]))
            pairs.append({"a": a, "b": b, "shared_speakers": len(shared),
                          "speakers": shared if examples is None else shared[:examples],
                          "utterances_a": sum(groups[a][s] for s in shared),
                          "utterances_b": sum(groups[b][s] for s in shared)})
            out["overlapping_pairs"] += bool(shared)
        out["datasets"][ds] = {"splits": {k: len(v) for k, v in sorted(groups.items())},
                               "unassigned_utterances": unassigned.get(ds, 0), "pairs": pairs}
    return out


def format_speakers(rows: list[dict]) -> str:
    from catalog.sql import format_rows

    cols = ["dataset", "speaker_id", "n_utterances", "n_ok", "total_duration_s", "split", "official_splits"]
    return format_rows([{c: r.get(c) for c in cols} for r in rows]) + f"\n({len(rows)} speakers)"


def format_splits(s: dict) -> str:
    lines = []
    for title, per in (("official splits (official_split)", s["official"]),
                       ("speaker-disjoint splits (split)", s["speaker_disjoint"]["datasets"])):
        extra = ""
        if title.startswith("speaker") and s["speaker_disjoint"]["recomputed"]:
            sd = s["speaker_disjoint"]
            extra = (f" recomputed val={sd['val']} test={sd['test']} seed={sd['seed']}"
                     + (", written" if sd["written"] else ", not written (--write stores it)"))
        lines.append(title + extra)
        for ds, groups in per.items():
            for name, g in groups.items():
                lines.append(f"  {ds:<10} {name:<10} {g['speakers']:>6} speakers {g['utterances']:>7} utterances "
                             f"({g['ok']} ok) {g['duration_s'] / 3600:10.4f} h")
    return "\n".join(lines)


def format_overlap(o: dict) -> str:
    lines = [f"speaker overlap between splits ({o['by']}): {o['overlapping_pairs']} overlapping pair(s)"]
    for ds, d in o["datasets"].items():
        sizes = ", ".join(f"{k} {v}" for k, v in d["splits"].items())
        lines.append(f"  {ds}: speakers per split: {sizes or 'none'}"
                     + (f"; {d['unassigned_utterances']} utterances in no split" if d["unassigned_utterances"] else ""))
        for p in d["pairs"]:
            shown = ", ".join(p["speakers"][:5]) + (" ..." if len(p["speakers"]) > 5 else "")
            lines.append(f"    {p['a']} / {p['b']}: {p['shared_speakers']} shared speaker(s)"
                         + (f" ({p['utterances_a']} / {p['utterances_b']} utterances): {shown}"
                            if p["shared_speakers"] else ""))
    return "\n".join(lines)
