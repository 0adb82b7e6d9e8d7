"""Extract one shard: every pending field's tar for the shard's utterances, in plan order.

A shard is the unit of work and of atomicity. Each (shard, field) pair is redone unless it is
intact (catalog.sidecar.pair_problem: tar and sidecar in place and agreeing, no job-level failure
recorded, and, with `verify_hashes`, the tar's SHA-256 the sidecar's); intact pairs are skipped
unless `overwrite`. A failure in one utterance or field becomes a placeholder member and a
sidecar entry, never an exception; a field whose model cannot load (features.errors.
ModelUnavailable) gets `job_level` entries, which the catalog keeps out of the utterance's status
and which the next run redoes. Members stream to the tars' temporary files as they are made
(catalog.tars.TarWriter); the meta field's sidecar entries carry the quality columns the catalog
build turns into columns.

meta is one member per utterance describing all the other fields, so it is never rebuilt from a
run that wrote only some of them: when the shard's meta is intact it is *merged* (`_merge_meta`:
the errors of the fields written now and the versions it records for them, the source facts
when the video was read again, the face figures when the face was tracked again; everything else
kept as stored) and its tar is rewritten only if a member changed (adding a field that extracts
fine leaves it byte-identical). A missing or damaged meta is written afresh from a
full read of the video (and the face, when the shard has face fields), with the versions and
errors of the fields not redone taken from their sidecars.
"""
from __future__ import annotations

import json
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

from catalog.layout import field_dir, tar_path
from catalog.sidecar import pair_problem, read_sidecar, write_sidecar
from catalog.tars import TarWriter, iter_members, sha256, sha256_parts
from features.codecs import spilling
from features.errors import ModelUnavailable
from features.quality import QUALITY_KEYS, face_quality
from features.fields import ERROR_EXT, FACE_FIELDS, FIELDS, META_EXT, MODEL_OPTIONS, Options, Sources, model_provenance
from features.timebase import FPS

_TRACKER = None  # one FaceTracker per worker process: the MediaPipe graphs load once
_TDMM: dict[str, object] = {}  # morphable models by path, loaded once per worker


def _tracker():
    global _TRACKER
    if _TRACKER is None:
        from features.face import FaceTracker

        _TRACKER = FaceTracker()
    return _TRACKER


def _tdmm_loader(path):
    def load():
        if str(path) not in _TDMM:
            from features.tdmm import MorphableModel

            _TDMM[str(path)] = MorphableModel.load(path)
        return _TDMM[str(path)]
    return load


def stored_inputs(store: Path, dataset: str, shard_id: int, todo: list[str],
                  intact: set[str] | None = None) -> dict[str, dict[str, bytes]]:
    """key -> {field: bytes} for the intact stored fields that pending fields are made from
    (`intact`: the names checked by the caller; unchecked names are checked here, by size)."""
    wanted = {n for f in todo if f in FIELDS for n in FIELDS[f].needs} - set(todo)
    out: dict[str, dict[str, bytes]] = {}
    for name in sorted(wanted):
        if name not in intact if intact is not None else pair_problem(store, dataset, name, shard_id):
            continue
        for member, data in iter_members(tar_path(store, dataset, name, shard_id)):
            key, ext = member.split(".", 1)
            if ext == FIELDS[name].ext:
                out.setdefault(key, {})[name] = data
    return out


def _error_of(exc: Exception, default_stage: str) -> dict:
    stage = getattr(exc, "stage", default_stage)
    reason = str(exc) if str(exc) else type(exc).__name__
    if not hasattr(exc, "stage"):  # unexpected: keep the exception type for whoever debugs it
        reason = f"{type(exc).__name__}: {reason}"
    error = {"status": "error", "stage": stage, "reason": reason}
    if isinstance(exc, ModelUnavailable):  # not the utterance's: the job says it once, a re-run redoes it
        error["job_level"] = True
    return error


QUALITY_COLUMNS = ("n_frames", "expected_frames", "decoded_frames", "audio_coverage", "warnings",
                   "detection_rate", "face_size", "detection_confidence", *QUALITY_KEYS)
FACT_KEYS = ("n_frames", "duration_s", "expected_frames", "decoded_frames", "audio_coverage", "warnings")
FACE_KEYS = ("detection_rate", "detection_confidence", "face_size", "missing_frames", "detector_runs",
             "crop_boxes", *QUALITY_KEYS)
FACE_WARNING = "face:"  # the warnings the face track adds (Sources.facts); the rest are the source's


def _meta(row: dict, sources: Sources, results: dict[str, dict]) -> dict:
    """The meta member: identity, source facts, quality figures, face figures that exist,
    versions and errors. Partial input is kept and flagged: `warnings` says what was missing."""
    meta = {k: row.get(k) for k in ("utt_id", "dataset", "speaker_id", "transcript", "official_split",
                                    "language", "start_s", "end_s")}
    meta["source"] = {"video_path": row["video_path"], "audio_path": row["audio_path"]}
    facts = sources.facts()
    if facts is not None:
        meta["n_frames"] = facts["n_frames"]
        meta["duration_s"] = facts["n_frames"] / FPS
        meta.update({k: facts.get(k) for k in ("expected_frames", "decoded_frames", "audio_coverage")})
        meta["warnings"] = facts.pop("warnings")
        meta["source"]["facts"] = facts
    try:
        face = sources.face if facts is not None and sources.needs_face() else None
    except Exception:  # the face error is the face fields' to report
        face = None
    if face is not None:
        meta.update(detection_rate=face.detection_rate, detection_confidence=face.detection_confidence,
                    face_size=float(face.boxes[:, 2].mean()), missing_frames=face.missing_frames,
                    detector_runs=face.detector_runs,
                    crop_boxes=[[round(float(v), 2) for v in b] for b in face.boxes])
        meta.update(face_quality(face.landmarks, face.face_counts, face.outputs.get("quality")))
    meta["versions"] = {f: FIELDS[f].version for f in results}
    meta["errors"] = {f: {"stage": r["stage"], "reason": r["reason"]}
                      for f, r in results.items() if r["status"] == "error"}
    return meta


def _merge_meta(old: dict, fresh: dict, written: set[str]) -> dict:
    """The stored meta with what this run changed, everything else kept as stored: the errors of
    the fields written now and the versions it already records for them (a field added to the
    store leaves meta's bytes alone unless it failed; its version is in its sidecar and the
    fields table); the source facts when the video was read again; the face figures when the
    face was tracked again (else the stored face warnings stay)."""
    meta = dict(old)
    if "n_frames" in fresh:  # the video was read by this run
        face_warnings = [] if "crop_boxes" in fresh else \
            [w for w in old.get("warnings") or [] if w.startswith(FACE_WARNING)]
        meta.update({k: fresh[k] for k in FACT_KEYS if k in fresh})
        meta["warnings"] = list(fresh.get("warnings") or []) + [w for w in face_warnings
                                                                if w not in (fresh.get("warnings") or [])]
        meta["source"] = {**(old.get("source") or {}), **fresh["source"]}
    if "crop_boxes" in fresh:  # the face was tracked by this run
        meta.update({k: fresh[k] for k in FACE_KEYS if k in fresh})
    versions = dict(old.get("versions") or {})
    meta["versions"] = {**versions, **{f: v for f, v in fresh["versions"].items() if f in versions}}
    kept = {f: e for f, e in (old.get("errors") or {}).items() if f not in written}
    meta["errors"] = {**kept, **fresh["errors"]}
    return meta


def _meta_member(row: dict, sources: Sources, results: dict[str, dict], old: bytes | None,
                 prior: dict[str, tuple[dict, dict]]) -> dict:
    """This run's meta for one utterance: merged into the stored member `old`, or (None) written
    afresh from a full read, with the other fields' versions and errors from their sidecars."""
    if old is None:
        try:
            sources.timeline  # a fresh meta states the source's facts, whatever the fields needed
        except Exception:  # a decode failure is the fields' to report; meta says what it can
            pass
    fresh = _meta(row, sources, results)
    if old is not None:
        return _merge_meta(json.loads(old), fresh, set(results))
    versions, errors = prior.get(row["utt_id"], ({}, {}))
    fresh["versions"] = {**{f: v for f, v in versions.items() if f not in results}, **fresh["versions"]}
    fresh["errors"] = {**{f: e for f, e in errors.items() if f not in results}, **fresh["errors"]}
    return fresh


def _meta_entry(row: dict, meta: dict, data: bytes) -> dict:
    """The meta sidecar entry: the quality columns the catalog build turns into columns."""
    columns = {k: meta.get(k) for k in QUALITY_COLUMNS if meta.get(k) is not None}
    return {"utt_id": row["utt_id"], "status": "ok", "bytes": len(data), "sha256": sha256(data),
            "columns": columns, "errors": meta["errors"]}


def _stored_meta(store: Path, dataset: str, shard_id: int, rows: list[dict]) -> dict[str, bytes] | None:
    """key -> the stored meta member, or None when the tar does not hold exactly the shard's
    utterances in plan order (then meta is written afresh)."""
    try:
        members = list(iter_members(tar_path(store, dataset, "meta", shard_id)))
    except Exception:  # unreadable: written afresh
        return None
    if [name for name, _ in members] != [f"{r['key']}.{META_EXT}" for r in rows]:
        return None
    return {name.split(".", 1)[0]: data for name, data in members}


def _prior_records(store: Path, dataset: str, shard_id: int, skip: list[str]) -> dict[str, tuple[dict, dict]]:
    """utt_id -> (versions, errors) that the shard's stored field sidecars record, for the fields
    not in `skip`: what a meta written afresh keeps of the fields this run does not redo."""
    out: dict[str, tuple[dict, dict]] = {}
    root = field_dir(store, dataset, "meta").parent
    for name in sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []:
        side = read_sidecar(store, dataset, name, shard_id) if name in FIELDS and name not in skip else None
        for m in (side or {}).get("members", []):
            versions, errors = out.setdefault(m.get("utt_id"), ({}, {}))
            versions[name] = side["version"]
            if m.get("status") != "ok":
                errors[name] = {"stage": m.get("stage"), "reason": m.get("reason")}
    return out


def _provenance(name: str, options: Options, entries: list[dict]) -> dict | None:
    """What made the field's members beyond its version, recorded only when some member was made."""
    if not any(e["status"] == "ok" for e in entries):
        return None
    if name in MODEL_OPTIONS:  # hubert, whisper
        return model_provenance(name, options)
    if name == "tdmm" and options.tdmm_model:
        return {"model": str(options.tdmm_model)}
    return None


def _pending(store: Path, dataset: str, shard_id: int, rows: list[dict], fields: list[str], overwrite: bool,
             verify_hashes: bool) -> tuple[list[str], dict[str, bytes] | None, dict[str, str | None]]:
    """(fields to write, the stored meta members to merge into or None, every checked pair's problem).

    A field is written when its pair is not intact or with `overwrite`. meta is written afresh
    when its pair is not intact (or `overwrite` of meta alone); else it is merged when any other
    field is written. The fields' stored inputs are checked too (a damaged input is not used).
    With `verify_hashes` every checked tar is read once for its SHA-256 (about 800 MB/s per core
    from the page cache, 500 MB/s from this machine's disk), but for those `overwrite` redoes.
    """
    inputs = {n for f in fields if f in FIELDS for n in FIELDS[f].needs}
    redone = set(fields) - {"meta"} if overwrite else set()  # rewritten anyway: not worth a hash
    problems = {n: pair_problem(store, dataset, n, shard_id, verify_hashes and n not in redone)
                for n in sorted(set(fields) | inputs)}
    todo = [f for f in fields if f != "meta" and (overwrite or problems[f])]
    old = None
    if "meta" in fields and todo and problems["meta"] is None:
        old = _stored_meta(store, dataset, shard_id, rows)
    if "meta" in fields and (problems["meta"] or (todo and old is None) or (overwrite and not todo)):
        todo.append("meta")
    return todo, old, problems


def _remove_stale(store: Path, dataset: str, shard_id: int, fields: list[str]) -> None:
    for name in fields:
        for stale in tar_path(store, dataset, name, shard_id).parent.glob(f".{dataset}-{shard_id:06d}.*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run


def extract_shard(store: str, dataset: str, shard_id: int, rows: list[dict], fields: list[str],
                  overwrite: bool = False, options: Options | None = None, verify_hashes: bool = True) -> dict:
    """Write the shard's pending field tars and merge what they change into meta; returns counts,
    timing, the pairs repaired, the damaged inputs and the fields whose model was unavailable.

    Every pending field's tar is open for the whole shard and each member goes to its temporary
    file as soon as it is made, so a worker holds one utterance's outputs at a time.
    """
    store = Path(store)
    options = options or Options()
    todo, old_meta, problems = _pending(store, dataset, shard_id, rows, fields, overwrite, verify_hashes)
    intact = {n for n, p in problems.items() if p is None}
    stored = stored_inputs(store, dataset, shard_id, todo, intact)
    prior = _prior_records(store, dataset, shard_id, todo) if "meta" in todo else {}
    face_pairs = any(tar_path(store, dataset, f, shard_id).exists() for f in FACE_FIELDS)
    wanted = todo + (["landmarks"] if "meta" in todo and face_pairs and not set(todo) & set(FACE_FIELDS) else [])
    tdmm = _tdmm_loader(options.tdmm_model) if options.tdmm_model else None
    started = time.perf_counter()
    entries: dict[str, list[dict]] = {f: [] for f in todo + (["meta"] if old_meta is not None else [])}
    merged: list[tuple[str, bytes]] = []  # meta members when merging (written only if one changed)
    frames = 0
    _remove_stale(store, dataset, shard_id, list(entries))
    with ExitStack() as stack:
        stack.enter_context(spilling(str(store)))  # a long utterance's frame-by-frame members build on disk
        tars = {name: stack.enter_context(TarWriter(tar_path(store, dataset, name, shard_id))) for name in todo}
        for row in rows:
            sources = Sources(row, _tracker, stored.get(row["key"]), options, tdmm, wanted=wanted)
            results: dict[str, dict] = {}
            for name in (f for f in todo if f != "meta"):
                field = FIELDS[name]
                try:
                    data = field.extract(sources)
                    parts = data if isinstance(data, dict) else {field.ext: data}
                    for ext, b in parts.items():
                        tars[name].add(f"{row['key']}.{ext}", b)
                    results[name] = {"status": "ok", "bytes": sum(len(b) for b in parts.values()),
                                     "sha256": sha256_parts(parts.values())}
                except Exception as exc:  # one bad utterance must not cost the shard
                    if not hasattr(exc, "stage"):
                        traceback.print_exc()
                    results[name] = _error_of(exc, field.stage)
                    tars[name].add(f"{row['key']}.{ERROR_EXT}",
                                   json.dumps(results[name], sort_keys=True).encode())
                entries[name].append({"utt_id": row["utt_id"], **results[name]})
            if "meta" in entries:
                old = old_meta.get(row["key"]) if old_meta is not None else None
                meta = _meta_member(row, sources, results, old, prior)
                data = json.dumps(meta, sort_keys=True).encode()
                if "meta" in todo:
                    tars["meta"].add(f"{row['key']}.{META_EXT}", data)
                else:
                    merged.append((f"{row['key']}.{META_EXT}", data))
                entries["meta"].append(_meta_entry(row, meta, data))
            facts = sources.facts()
            frames += facts["n_frames"] if facts is not None else 0
            del sources  # the utterance's outputs are on disk: free them before the next one
    for name in todo:
        tar = tars[name]
        write_sidecar(store, dataset, name, shard_id, FIELDS[name].version if name in FIELDS else "meta-1",
                      entries[name], tar, _provenance(name, options, entries[name]))
    written = list(todo)
    if old_meta is not None and [data for _, data in merged] != list(old_meta.values()):
        with TarWriter(tar_path(store, dataset, "meta", shard_id)) as tar:
            for name, data in merged:
                tar.add(name, data)
        write_sidecar(store, dataset, "meta", shard_id, "meta-1", entries["meta"], tar)
        written.append("meta")
    unavailable = {n: e["reason"] for n in todo for e in entries[n] if e.get("job_level")}
    return {"shard_id": shard_id, "fields_written": written, "frames": frames,
            "seconds": time.perf_counter() - started, "unavailable": unavailable,
            "repaired": {n: problems[n] for n in todo if problems[n] not in (None, "missing")},
            "damaged_inputs": {n: p for n, p in problems.items() if p not in (None, "missing")
                               and n not in fields}}
