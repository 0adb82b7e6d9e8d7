"""Extract one shard: every pending field's tar for the shard's utterances, in plan order.

A shard is the unit of work and of atomicity. Each (shard, field) pair is complete when its tar
and its sidecar are both in place; complete pairs are skipped unless `overwrite`. A failure in one
utterance or field becomes a placeholder member and a sidecar entry, never an exception.
"""
from __future__ import annotations

import json
import time
import traceback
from pathlib import Path

from catalog.layout import sidecar_path, tar_path
from catalog.tars import TarWriter, iter_members, sha256, write_atomic
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


def is_complete(store: Path, dataset: str, field: str, shard_id: int) -> bool:
    tar, side = tar_path(store, dataset, field, shard_id), sidecar_path(store, dataset, field, shard_id)
    if not (tar.exists() and side.exists()):
        return False
    try:
        return json.loads(side.read_text())["bytes"] == tar.stat().st_size
    except (ValueError, KeyError):
        return False


def _error_of(exc: Exception, default_stage: str) -> dict:
    stage = getattr(exc, "stage", default_stage)
    reason = str(exc) if str(exc) else type(exc).__name__
    if not hasattr(exc, "stage"):  # unexpected: keep the exception type for whoever debugs it
        reason = f"{type(exc).__name__}: {reason}"
    return {"status": "error", "stage": stage, "reason": reason}


def _meta(row: dict, sources: Sources, results: dict[str, dict]) -> dict:
    """The meta member: identity, source facts, face figures that exist, versions and errors."""
    meta = {k: row.get(k) for k in ("utt_id", "dataset", "speaker_id", "transcript", "official_split",
                                    "language", "start_s", "end_s")}
    meta["source"] = {"video_path": row["video_path"], "audio_path": row["audio_path"]}
    if "media" in sources.__dict__:
        meta["n_frames"] = sources.media.n_frames
        meta["duration_s"] = sources.media.n_frames / FPS
        meta["source"]["facts"] = sources.media.facts
    if "face" in sources.__dict__:
        face = sources.face
        meta.update(detection_rate=face.detection_rate, detection_confidence=face.detection_confidence,
                    face_size=float(face.boxes[:, 2].mean()), missing_frames=face.missing_frames,
                    crop_boxes=[[round(float(v), 2) for v in b] for b in face.boxes])
    meta["versions"] = {f: FIELDS[f].version for f in results}
    meta["errors"] = {f: {"stage": r["stage"], "reason": r["reason"]}
                      for f, r in results.items() if r["status"] == "error"}
    return meta


def extract_shard(store: str, dataset: str, shard_id: int, rows: list[dict], fields: list[str],
                  overwrite: bool = False, options: Options | None = None) -> dict:
    """Write the shard's pending field tars; returns counts and timing for the progress bar."""
    store = Path(store)
    options = options or Options()
    todo = [f for f in fields if overwrite or not is_complete(store, dataset, f, shard_id)]
    stored = stored_inputs(store, dataset, shard_id, todo)
    tdmm = _tdmm_loader(options.tdmm_model) if options.tdmm_model else None
    started = time.perf_counter()
    members: dict[str, list[tuple[str, bytes]]] = {f: [] for f in todo}
    entries: dict[str, list[dict]] = {f: [] for f in todo}
    frames = 0
    for row in rows:
        sources = Sources(row, _tracker, stored.get(row["key"]), options, tdmm)
        results: dict[str, dict] = {}
        for name in (f for f in todo if f != "meta"):
            field = FIELDS[name]
            try:
                data = field.extract(sources)
                parts = data if isinstance(data, dict) else {field.ext: data}
                members[name] += [(f"{row['key']}.{ext}", b) for ext, b in parts.items()]
                results[name] = {"status": "ok", "bytes": sum(len(b) for b in parts.values()),
                                 "sha256": sha256(b"".join(parts.values()))}
            except Exception as exc:  # one bad utterance must not cost the shard
                if not hasattr(exc, "stage"):
                    traceback.print_exc()
                results[name] = _error_of(exc, field.stage)
                members[name].append((f"{row['key']}.{ERROR_EXT}",
                                      json.dumps(results[name], sort_keys=True).encode()))
            entries[name].append({"utt_id": row["utt_id"], **results[name]})
        if "media" in sources.__dict__:
            frames += sources.media.n_frames
        if "meta" in todo:
            meta = _meta(row, sources, results)
            data = json.dumps(meta, sort_keys=True).encode()
            members["meta"].append((f"{row['key']}.{META_EXT}", data))
            entries["meta"].append({"utt_id": row["utt_id"], "status": "ok", "bytes": len(data),
                                    "sha256": sha256(data),
                                    **{k: meta.get(k) for k in ("n_frames", "detection_rate",
                                                                 "face_size", "detection_confidence")},
                                    "errors": meta["errors"]})
    for name in todo:
        for stale in tar_path(store, dataset, name, shard_id).parent.glob(f".{dataset}-{shard_id:06d}.*.tmp-*"):
            stale.unlink(missing_ok=True)  # left by a killed run
        with TarWriter(tar_path(store, dataset, name, shard_id)) as tar:
            for member, data in members[name]:
                tar.add(member, data)
        side = {"field": name, "dataset": dataset, "shard_id": shard_id,
                "version": FIELDS[name].version if name in FIELDS else "meta-1",
                "n_members": tar.n_members, "bytes": tar.bytes, "sha256": tar.sha256,
                "members": entries[name]}
        write_atomic(sidecar_path(store, dataset, name, shard_id),
                     json.dumps(side, sort_keys=True, indent=1).encode())
    return {"shard_id": shard_id, "fields_written": todo, "frames": frames,
            "seconds": time.perf_counter() - started}
