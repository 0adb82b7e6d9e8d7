"""Extract one shard: every pending field's tar for the shard's utterances, in plan order.

A shard is the unit of work and of atomicity. Each (shard, field) pair is complete when its tar
and its sidecar are both in place; complete pairs are skipped unless `overwrite`. A failure in one
utterance or field becomes a placeholder member and a sidecar entry, never an exception.
Members stream to the tars' temporary files as they are made (catalog.tars.TarWriter); the meta
field's sidecar entries carry the quality columns the catalog build turns into columns.
"""
from __future__ import annotations

import json
import time
import traceback
from contextlib import ExitStack
from pathlib import Path

from catalog.layout import tar_path
from catalog.sidecar import is_complete, write_sidecar
from catalog.tars import TarWriter, iter_members, sha256
from features.fields import ERROR_EXT, FIELDS, META_EXT, Options, Sources
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


def stored_inputs(store: Path, dataset: str, shard_id: int, todo: list[str]) -> dict[str, dict[str, bytes]]:
    """key -> {field: bytes} for the complete stored fields that pending fields are made from."""
    wanted = {n for f in todo if f in FIELDS for n in FIELDS[f].needs} - set(todo)
    out: dict[str, dict[str, bytes]] = {}
    for name in sorted(wanted):
        if not is_complete(store, dataset, name, shard_id):
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
    return {"status": "error", "stage": stage, "reason": reason}


QUALITY_COLUMNS = ("n_frames", "expected_frames", "decoded_frames", "audio_coverage", "warnings",
                   "detection_rate", "face_size", "detection_confidence")


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
    meta["versions"] = {f: FIELDS[f].version for f in results}
    meta["errors"] = {f: {"stage": r["stage"], "reason": r["reason"]}
                      for f, r in results.items() if r["status"] == "error"}
    return meta


def _remove_stale(store: Path, dataset: str, shard_id: int, fields: list[str]) -> None:
    for name in fields:
        for stale in tar_path(store, dataset, name, shard_id).parent.glob(f".{dataset}-{shard_id:06d}.*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run


def extract_shard(store: str, dataset: str, shard_id: int, rows: list[dict], fields: list[str],
                  overwrite: bool = False, options: Options | None = None) -> dict:
    """Write the shard's pending field tars; returns counts and timing for the progress bar.

    Every pending field's tar is open for the whole shard and each member goes to its temporary
    file as soon as it is made, so a worker holds one utterance's outputs at a time.
    """
    store = Path(store)
    options = options or Options()
    todo = [f for f in fields if overwrite or not is_complete(store, dataset, f, shard_id)]
    stored = stored_inputs(store, dataset, shard_id, todo)
    tdmm = _tdmm_loader(options.tdmm_model) if options.tdmm_model else None
    started = time.perf_counter()
    entries: dict[str, list[dict]] = {f: [] for f in todo}
    frames = 0
    _remove_stale(store, dataset, shard_id, todo)
    with ExitStack() as stack:
        tars = {name: stack.enter_context(TarWriter(tar_path(store, dataset, name, shard_id))) for name in todo}
        for row in rows:
            sources = Sources(row, _tracker, stored.get(row["key"]), options, tdmm, wanted=todo)
            results: dict[str, dict] = {}
            for name in (f for f in todo if f != "meta"):
                field = FIELDS[name]
                try:
                    data = field.extract(sources)
                    parts = data if isinstance(data, dict) else {field.ext: data}
                    for ext, b in parts.items():
                        tars[name].add(f"{row['key']}.{ext}", b)
                    results[name] = {"status": "ok", "bytes": sum(len(b) for b in parts.values()),
                                     "sha256": sha256(b"".join(parts.values()))}
                except Exception as exc:  # one bad utterance must not cost the shard
                    if not hasattr(exc, "stage"):
                        traceback.print_exc()
                    results[name] = _error_of(exc, field.stage)
                    tars[name].add(f"{row['key']}.{ERROR_EXT}",
                                   json.dumps(results[name], sort_keys=True).encode())
                entries[name].append({"utt_id": row["utt_id"], **results[name]})
            facts = sources.facts() if "meta" not in todo else None
            if "meta" in todo:
                meta = _meta(row, sources, results)
                data = json.dumps(meta, sort_keys=True).encode()
                tars["meta"].add(f"{row['key']}.{META_EXT}", data)
                columns = {k: meta.get(k) for k in QUALITY_COLUMNS if meta.get(k) is not None}
                entries["meta"].append({"utt_id": row["utt_id"], "status": "ok", "bytes": len(data),
                                        "sha256": sha256(data), "columns": columns,
                                        "errors": meta["errors"]})
                frames += meta.get("n_frames") or 0
            elif facts is not None:
                frames += facts["n_frames"]
            del sources  # the utterance's outputs are on disk: free them before the next one
    for name in todo:
        tar = tars[name]
        write_sidecar(store, dataset, name, shard_id, FIELDS[name].version if name in FIELDS else "meta-1",
                      entries[name], tar)
    return {"shard_id": shard_id, "fields_written": todo, "frames": frames,
            "seconds": time.perf_counter() - started}
