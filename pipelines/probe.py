"""The probe pass: before the plan is fixed, long raw videos become utterances of at most
`--max-seconds`, cut at shot cuts, where the main face track ends or jumps, with
`--identity-cuts` also where the face's identity changes (dlib's descriptor, 2.5 Hz), and
evenly within a shot (features/shots.py says how).

Only what is not planned yet is probed: a video whose utterances are already in the store's plan
keeps exactly those rows (so a re-run neither re-probes nor re-plans, and `verify` and resume
keep their guarantees), and an utterance the adapter already cut (LRS pretrain word segments)
is kept as it is. A video whose container says it is no longer than `--max-seconds` is kept
whole without decoding. Every probe is cached in `<store>/probe/<dataset>/<sha1 of the path>.json`
with the file's size and mtime, the probe's version and whether it holds identity distances, so an
interrupted planning run resumes without probing twice.

Segments are utterances `<utt_id>_segNN` with `start_s`/`end_s` (seconds from the source's
first frame on the 25 fps grid) and the source's `video_path`; the source's transcript (a whole
file's) is not copied onto its pieces. A long video without a face run of at least
MIN_SEGMENT_S becomes no utterance and is listed in the run's report.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import fields as dataclass_fields
from dataclasses import replace
from pathlib import Path

from catalog.jobs import Runner, Task
from catalog.tars import write_atomic
from features.shots import VERSION, FaceSampler, IdentityTrack, Probe, cut_points, header_duration, probe_video
from pipelines.adapters import Utterance

BATCH = 4  # videos per probe task


def probe_path(store: Path, dataset: str, video_path: str) -> Path:
    return Path(store) / "probe" / dataset / f"{hashlib.sha1(video_path.encode()).hexdigest()[:20]}.json"


def _file_id(video_path: str, identity: bool = False) -> dict:
    st = os.stat(video_path)
    return {"video_path": video_path, "size": st.st_size, "mtime_ns": st.st_mtime_ns, "version": VERSION,
            "identity": identity}


def _cached(store: Path, dataset: str, video_path: str, max_seconds: float, identity: bool = False) -> dict | None:
    """The cached entry when it is for this very file, probed with(out) identity as asked, and
    enough for this max_seconds."""
    try:
        entry = json.loads(probe_path(store, dataset, video_path).read_text())
        want = _file_id(video_path, identity)
        if {k: entry.get(k, False if k == "identity" else None) for k in want} != want:
            return None
    except (OSError, ValueError):
        return None
    if entry.get("probe") is None and (entry.get("header_s") is None or entry["header_s"] > max_seconds):
        return None  # probed for a longer maximum: this one needs the shots
    return entry


def probe_sources(store: str, dataset: str, videos: list[str], max_seconds: float, identity: bool = False
                  ) -> list[dict]:
    """Ray task: per video its cached entry, else a new one (header only when it is short enough)."""
    out, sampler = [], None
    for video in videos:
        entry = _cached(Path(store), dataset, video, max_seconds, identity)
        if entry is None:
            try:
                entry = {**_file_id(video, identity), "header_s": header_duration(video), "probe": None}
                if entry["header_s"] is None or entry["header_s"] > max_seconds:
                    sampler = sampler or FaceSampler()  # loaded once per task, when needed
                    entry["probe"] = probe_video(video, sampler=sampler, identity=identity).as_dict()
            except Exception as exc:  # an unreadable file: planned whole, extraction records why
                out.append({"video_path": video, "error": f"{type(exc).__name__}: {exc}"})
                continue
            write_atomic(probe_path(Path(store), dataset, video), json.dumps(entry, sort_keys=True).encode())
        out.append(entry)
    if sampler is not None:
        sampler.close()
    return out


def _planned_utterances(rows: list[dict]) -> list[Utterance]:
    names = {f.name for f in dataclass_fields(Utterance)}
    return [Utterance(**{k: r.get(k) for k in names if k in r}) for r in rows]


def segments_of(utt: Utterance, entry: dict, max_seconds: float) -> list[Utterance]:
    """The utterance whole (short, or unreadable: extraction says why), or its pieces."""
    if entry.get("error") or entry.get("probe") is None:
        return [utt]
    cuts = cut_points(Probe.from_dict(entry["probe"]), max_seconds)
    width = max(2, len(str(len(cuts) - 1)))
    return [replace(utt, utt_id=f"{utt.utt_id}_seg{k:0{width}d}", start_s=start, end_s=end, transcript="")
            for k, (start, end, _) in enumerate(cuts)]


def run_probes(runner: Runner, store: Path, dataset: str, videos: list[str], max_seconds: float,
               identity: bool = False) -> dict[str, dict]:
    """video_path -> probe entry, BATCH videos a task of the job runner (catalog/jobs.py: Ray, or
    this process for one batch).

    A task whose worker dies is not retried (max_retries 0: a probe is planning, not the work):
    its videos are planned whole, and the extraction's bounded retries and error rows take it
    from there."""
    entries: dict[str, dict] = {}

    def failed(task: Task, cause: str) -> None:
        entries.update({v: {"video_path": v, "error": f"probe task failed: {cause}"} for v in task.args[2]})

    tasks = [Task(f"{dataset}-probe-{i // BATCH}", (str(store), dataset, videos[i:i + BATCH], max_seconds, identity),
                  size=len(videos[i:i + BATCH])) for i in range(0, len(videos), BATCH)]
    runner.run(probe_sources, tasks, desc=f"{dataset} probe", unit="video", max_retries=0,
               on_result=lambda task, found: entries.update({e["video_path"]: e for e in found}),
               on_failure=failed)
    return entries


def cut_long_videos(runner: Runner, store: Path, dataset: str, utterances: list[Utterance], planned: list[dict],
                    max_seconds: float, identity: bool = False) -> tuple[list[Utterance], dict]:
    """The utterances to plan: planned ones as planned, new long videos cut (with `identity`, also
    at identity changes); and the probe's figures."""
    by_source: dict[str, list[dict]] = {}  # source utt_id -> its planned rows (whole, or its _segNN)
    for row in sorted((r for r in planned if r["dataset"] == dataset), key=lambda r: r["utt_id"]):
        base = row["utt_id"].rsplit("_seg", 1)[0] if row.get("start_s") is not None else row["utt_id"]
        by_source.setdefault(base, []).append(row)
    fresh = [u for u in utterances if u.start_s is None and u.utt_id not in by_source]
    todo = sorted({u.video_path for u in fresh})
    started = time.perf_counter()
    if identity and todo:
        IdentityTrack()  # dlib's models load, or the run stops here (ModelUnavailable), not once per video
    entries = run_probes(runner, store, dataset, todo, max_seconds, identity) if todo else {}
    out, no_face = [], []
    for utt in utterances:
        if utt.start_s is not None:
            out.append(utt)  # cut by the adapter (word timings)
        elif utt.utt_id in by_source:
            out += _planned_utterances(by_source[utt.utt_id])  # as planned: no re-probe, no re-plan
        else:
            pieces = segments_of(utt, entries[utt.video_path], max_seconds)
            out += pieces
            if not pieces:
                no_face.append(utt.utt_id)
    probes = [e["probe"] for e in entries.values() if e.get("probe")]
    figures = {"videos_probed": len(todo), "videos_cut": len(probes),
               "segments": sum(u.start_s is not None and u.video_path in entries for u in out),
               "unreadable": sorted(v for v, e in entries.items() if e.get("error")),
               "without_face": no_face, "seconds": round(time.perf_counter() - started, 2),
               "probe_frames_per_second": round(sum(p["source_frames"] for p in probes)
                                                / max(sum(p["seconds"] for p in probes), 1e-9), 1) if probes else None}
    if no_face:
        print(f"warning: {dataset}: {len(no_face)} long videos hold no face run of at least 1 s and are not "
              f"planned, e.g. {no_face[0]}", file=sys.stderr)
    return out, figures
