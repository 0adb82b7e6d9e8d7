"""Check every tar of every field against the catalog: nothing lost, duplicated, reordered or altered.

For each planned shard of each dataset and each field of the store (store.json), verify():
  - the tar exists, and its size and SHA-256 match the catalog's `fields` row and the sidecar;
  - the tar reads to the end (a truncated tar fails here);
  - its members are exactly the shard's planned utterances, in plan order, one member each,
    named `<key>.<ext>` where the field is ok and `<key>.error.json` where it failed, matching
    the catalog's `field_<name>` status and the sidecar's per-member status and byte counts
    (and per-member sha256 when a sidecar records it);
  - no tar lies outside the plan, and no utterance is missing from or repeated across a field's tars.
Every problem names the dataset, shard, field and tar path.

Speed: every tar is read and hashed in full. A tar whose SHA-256 and size equal both the catalog's
and its sidecar's is byte for byte what TarWriter wrote and recorded, so its members are taken
from the sidecar (checked against the plan and the catalog's statuses) without parsing it again;
any other tar is walked member by member to name the damage. `deep=True` (--deep) walks every
tar (about 50 us of CPU per member: minutes for a million utterances per field).
"""
from __future__ import annotations

import json
import tarfile
from collections import Counter
from pathlib import Path

from catalog.build import read_table
from catalog.layout import field_dir, read_store_json, shard_name, sidecar_path, tar_path
from catalog.plan import read_plan_table
from catalog.sidecar import parse_sidecar
from catalog.tars import check_complete, iter_members, sha256, sha256_file

ERROR_SUFFIX = "error.json"
PLAN_KEYS = ("utt_id", "key", "dataset", "shard_id", "index_in_shard")


def _read_tar(path: Path) -> tuple[list[tuple[str, int, str]], str | None]:
    """[(name, size, sha256)] of every member, reading all data; and an error if it stops early."""
    members = []
    try:
        for name, data in iter_members(path, strict=False):
            members.append((name, len(data), sha256(data)))
        check_complete(path)
    except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
        return members, f"unreadable tar after {len(members)} member(s): {type(exc).__name__}: {exc}"
    return members, None


def verify(store: Path, dataset: str | None = None, fields: list[str] | None = None,
           max_listed: int = 20, deep: bool = False) -> dict:
    """The verification report: {"ok", "problems": [...], "lost", "duplicated", "checked", ...}."""
    store = Path(store)
    warnings: list[str] = []
    try:
        table = read_table(store, "utterances")
    except FileNotFoundError:  # a first run that has not ended: check the tars against its plan
        table = read_plan_table(store)
        if table.num_rows == 0:
            raise
        warnings.append("no catalog yet: the first extraction run has not finished; tars checked "
                        "against the plan")
    table = table.select([c for c in table.column_names if c in PLAN_KEYS or c.startswith("field_")])
    utts = [u for u in table.to_pylist() if dataset is None or u["dataset"] == dataset]
    problems: list[dict] = []
    try:
        field_rows = {(r["dataset"], r["shard_id"], r["field"]): r
                      for r in read_table(store, "fields").to_pylist()}
    except FileNotFoundError:  # the plan is written first; the other tables when a run ends
        field_rows = {}
        warnings.append("no fields table: no extraction run has finished on this store")
    registry = read_store_json(store).get("fields", {})
    fields = list(fields or registry or sorted({k[2] for k in field_rows}))
    exts = {f: registry.get(f, {}).get("ext", "json" if f == "meta" else None) for f in fields}

    def problem(ds, shard_id, field, kind, detail):
        path = tar_path(store, ds, field, shard_id) if shard_id is not None else field_dir(store, ds, field)
        problems.append({"dataset": ds, "shard_id": shard_id, "shard": shard_name(ds, shard_id)
                         if shard_id is not None else None, "field": field, "problem": kind,
                         "detail": detail, "path": str(path.relative_to(store))})

    plan: dict[tuple[str, int], list[dict]] = {}
    ids = Counter((u["dataset"], u["utt_id"]) for u in utts)
    for (ds, utt_id), n in sorted((k, n) for k, n in ids.items() if n > 1):
        problem(ds, None, "-", "duplicate utterance in catalog", f"{utt_id} has {n} rows")
    del ids
    order = lambda u: (u["dataset"], u["shard_id"], u["index_in_shard"])  # noqa: E731
    in_order = all(order(a) <= order(b) for a, b in zip(utts, utts[1:]))  # the build writes it sorted
    for u in (utts if in_order else sorted(utts, key=order)):
        plan.setdefault((u["dataset"], u["shard_id"]), []).append(u)
    for (ds, shard_id), rows in plan.items():
        if [r["index_in_shard"] for r in rows] != list(range(len(rows))):
            problem(ds, shard_id, "-", "bad plan", "index_in_shard is not 0..n-1 in order")

    key_counts: dict[tuple[str, str], Counter] = {}
    checked = {"tars": 0, "members": 0, "bytes": 0, "walked": 0}
    for (ds, shard_id), rows in sorted(plan.items()):
        expected = [r["key"] for r in rows]
        row_of_key = {r["key"]: r for r in rows}
        for field in fields:
            counts = key_counts.setdefault((ds, field), Counter())
            tar, side_path = tar_path(store, ds, field, shard_id), sidecar_path(store, ds, field, shard_id)
            row = field_rows.get((ds, shard_id, field))
            if not tar.exists():
                problem(ds, shard_id, field, "missing tar",
                        "no tar" + ("" if row else " and no catalog row (not extracted yet? re-run extract.py)"))
                continue
            if row is None:
                problem(ds, shard_id, field, "not in catalog", "the tar exists but the fields table has no row")
            size = tar.stat().st_size
            digest = sha256_file(tar)
            checked["tars"] += 1
            checked["bytes"] += size
            if row is not None and size != row["bytes"]:
                problem(ds, shard_id, field, "size mismatch",
                        f"{size} bytes on disk, catalog says {row['bytes']} (truncated or rewritten)")
            if row is not None and digest != row["sha256"]:
                problem(ds, shard_id, field, "checksum mismatch",
                        f"sha256 {digest[:12]}... on disk, catalog says {row['sha256'][:12]}...")
            side = None
            try:
                raw = side_path.read_bytes()
                json.loads(raw)
                side = parse_sidecar(raw)
                if side is None:
                    problem(ds, shard_id, field, "bad sidecar", "JSON but not a sidecar (an object with version, "
                            "bytes, sha256 and members); the next extraction run redoes the pair")
            except FileNotFoundError:
                problem(ds, shard_id, field, "missing sidecar", str(side_path.relative_to(store)))
            except (ValueError, UnicodeDecodeError) as exc:
                problem(ds, shard_id, field, "bad sidecar", f"not JSON: {exc}; the next extraction run redoes the pair")
            if side is not None:
                if row is not None and (side.get("sha256") != row["sha256"] or side.get("bytes") != row["bytes"]
                                        or side.get("n_members") != row["n_members"]):
                    problem(ds, shard_id, field, "sidecar disagrees with catalog",
                            "sha256, bytes or n_members differ")
                if [m.get("utt_id") for m in side.get("members", [])] != [r["utt_id"] for r in rows]:
                    problem(ds, shard_id, field, "sidecar disagrees with plan", "member utterances or order differ")
            if (not deep and row is not None and side is not None and size == row["bytes"] == side.get("bytes")
                    and digest == row["sha256"] == side.get("sha256")):
                _check_trusted(problem, ds, shard_id, field, rows, side, counts)
                checked["members"] += side.get("n_members", 0)
                continue
            checked["walked"] += 1
            members, error = _read_tar(tar)
            if error:
                problem(ds, shard_id, field, "unreadable tar", error)
            checked["members"] += len(members)
            if row is not None and not error and row["n_members"] != len(members):
                problem(ds, shard_id, field, "count mismatch",
                        f"{len(members)} members in the tar, the catalog says {row['n_members']}")
            samples = _samples(members)  # WebDataset samples: consecutive members sharing a key
            keys = [key for key, _ in samples]
            for key, group in samples:  # a member name repeated inside a sample counts as a copy
                counts[key] += max(Counter(name for name, _, _ in group).values())
            if not error and len(keys) != len(expected):
                problem(ds, shard_id, field, "count mismatch",
                        f"{len(keys)} utterances in the tar, the plan has {len(expected)}")
            _compare_order(problem, ds, shard_id, field, keys, expected, complete=error is None)
            entries = {m.get("utt_id"): m for m in (side or {}).get("members", [])}
            for key, group in samples:
                utt = row_of_key.get(key)
                if utt is None:
                    continue
                names = [name for name, _, _ in group]
                suffixes = [name.split(".", 1)[1] if "." in name else "" for name in names]
                if len(set(names)) != len(names):
                    problem(ds, shard_id, field, "duplicated members", f"{key}: {names}")
                status = utt.get(f"field_{field}")
                ext = exts.get(field)
                if status not in (None, "ok", "error"):
                    problem(ds, shard_id, field, "status mismatch", f"{utt['utt_id']}: catalog says {status!r}")
                elif status == "error" and set(suffixes) != {ERROR_SUFFIX}:
                    problem(ds, shard_id, field, "member kind mismatch",
                            f"{key}: {suffixes}, expected only .{ERROR_SUFFIX} (catalog field_{field} = error)")
                elif status != "error" and (ERROR_SUFFIX in suffixes or (ext is not None and ext not in suffixes)):
                    problem(ds, shard_id, field, "member kind mismatch",
                            f"{key}: {suffixes}, expected .{ext} (catalog field_{field} = {status})")
                entry = entries.get(utt["utt_id"])
                if entry is None:
                    continue
                if (entry.get("status") == "ok") == (ERROR_SUFFIX in suffixes):
                    problem(ds, shard_id, field, "member kind mismatch",
                            f"{key}: {suffixes}, sidecar status {entry.get('status')!r}")
                size = sum(size_m for _, size_m, _ in group)
                if entry.get("bytes") is not None and entry["bytes"] != size:
                    problem(ds, shard_id, field, "member altered",
                            f"{', '.join(names)}: {size} bytes, sidecar says {entry['bytes']}")
                if entry.get("sha256") is not None and len(group) == 1 and entry["sha256"] != group[0][2]:
                    problem(ds, shard_id, field, "member altered", f"{names[0]}: sha256 differs from the sidecar")

    datasets = sorted({ds for ds, _ in plan})
    for ds in datasets:
        planned = {sid for d, sid in plan if d == ds}
        for field in fields:
            for stray in sorted(field_dir(store, ds, field).glob(f"{ds}-*.tar")):
                try:
                    sid = int(stray.stem.rsplit("-", 1)[1])
                except ValueError:
                    sid = None
                if sid not in planned:
                    problem(ds, sid, field, "unexpected tar", f"{stray.name} is not a planned shard")
                    members, _ = _read_tar(stray)
                    key_counts.setdefault((ds, field), Counter()).update(k for k, _ in _samples(members))
            temps = sorted(field_dir(store, ds, field).glob(".*.tmp-*"))
            if temps:
                warnings.append(f"{ds}/{field}: {len(temps)} temporary file(s) left by an interrupted run "
                                f"(removed by the next run of that shard), e.g. {temps[0].name}")
    for (ds, sid, field), _ in sorted(field_rows.items()):
        if (dataset is None or ds == dataset) and (ds, sid) not in plan and field in fields:
            problem(ds, sid, field, "catalog row without plan", "the fields table lists a shard the plan lacks")

    lost, duplicated = [], []
    none: Counter = Counter()
    for u in utts:
        for field in fields:
            n = key_counts.get((u["dataset"], field), none)[u["key"]]
            if n == 0:
                lost.append({"dataset": u["dataset"], "utt_id": u["utt_id"], "field": field})
            elif n > 1:
                duplicated.append({"dataset": u["dataset"], "utt_id": u["utt_id"], "field": field, "copies": n})
    complete = not any(w.startswith("no catalog yet") for w in warnings)
    return {"store": str(store), "ok": complete and not problems and not lost and not duplicated,
            "datasets": datasets, "fields": fields,
            "checked": {"shards": len(plan), "utterances": len(utts), **checked},
            "n_problems": len(problems), "problems": problems,
            "n_lost": len(lost), "lost": lost[:max_listed],
            "n_duplicated": len(duplicated), "duplicated": duplicated[:max_listed],
            "warnings": warnings}


def _check_trusted(problem, ds: str, shard_id: int, field: str, rows: list[dict], side: dict,
                   counts: Counter) -> None:
    """A tar identical to what its sidecar records: its members are the sidecar's entries (already
    checked against the plan); check their statuses against the catalog and count the keys."""
    entries = side.get("members", [])
    column = f"field_{field}"
    for utt, entry in zip(rows, entries):
        if entry.get("utt_id") != utt["utt_id"]:
            break  # reported as "sidecar disagrees with plan"
        counts[utt["key"]] += 1
        status = utt.get(column)
        if status not in (None, "ok", "error") or (status is not None and status != entry.get("status")):
            problem(ds, shard_id, field, "status mismatch",
                    f"{utt['utt_id']}: catalog says {status!r}, sidecar says {entry.get('status')!r}")


def _samples(members: list[tuple[str, int, str]]) -> list[tuple[str, list[tuple[str, int, str]]]]:
    """Group consecutive members with the same key (the name up to its first dot), as WebDataset does."""
    out: list[tuple[str, list]] = []
    for m in members:
        key = m[0].split(".", 1)[0]
        if out and out[-1][0] == key:
            out[-1][1].append(m)
        else:
            out.append((key, [m]))
    return out


def _compare_order(problem, ds, shard_id, field, keys: list[str], expected: list[str], complete: bool) -> None:
    """Name the first way the member keys depart from the plan: missing, extra, repeated, reordered."""
    have, want = Counter(keys), Counter(expected)
    missing = sorted((want - have).elements())
    extra = sorted((have - want).elements())
    repeated = sorted(k for k, n in have.items() if n > 1)
    if missing and complete:  # (in a truncated tar the unread members are reported as unreadable)
        problem(ds, shard_id, field, "missing members", ", ".join(missing[:10]))
    if extra:
        problem(ds, shard_id, field, "unexpected members", ", ".join(extra[:10]))
    if repeated:
        problem(ds, shard_id, field, "duplicated members", ", ".join(repeated[:10]))
    common = list(dict.fromkeys(k for k in keys if k in want))  # first occurrences, tar order
    order = [k for k in expected if k in have]
    if common != order[:len(common)] or (complete and common != order):
        i = next((i for i, (a, b) in enumerate(zip(common, order)) if a != b), min(len(common), len(order)))
        problem(ds, shard_id, field, "members out of order",
                f"position {i}: {common[i] if i < len(common) else '-'} where the plan has "
                f"{order[i] if i < len(order) else '-'}")


def format_verify(r: dict) -> str:
    c = r["checked"]
    head = (f"{'OK' if r['ok'] else 'FAILED'}: {c['tars']} tars ({c['bytes'] / 1e6:.2f} MB), {c['members']} members "
            f"({c.get('walked', 0)} tars parsed member by member, the rest match their recorded SHA-256), "
            f"{c['utterances']} utterances in {c['shards']} shards x {len(r['fields'])} fields "
            f"({', '.join(r['fields'])}); {r['n_problems']} problem(s), {r['n_lost']} lost, "
            f"{r['n_duplicated']} duplicated")
    lines = [head]
    for p in r["problems"]:
        where = f"{p['shard']} field {p['field']}" if p["shard"] else f"{p['dataset']} field {p['field']}"
        lines.append(f"  {where}: {p['problem']}: {p['detail']} [{p['path']}]")
    for x in r["lost"]:
        lines.append(f"  lost: {x['dataset']} {x['utt_id']} has no {x['field']} member")
    for x in r["duplicated"]:
        lines.append(f"  duplicated: {x['dataset']} {x['utt_id']} has {x['copies']} {x['field']} members")
    lines += [f"  warning: {w}" for w in r["warnings"]]
    return "\n".join(lines)
