"""The sync pass: score every utterance of a store and record it in the catalog.

    python -m training.sync.sync_pass --store store/ --scorer unisync:runs/mel_landmarks/best.pt
    python -m training.sync.sync_pass --store store/ --dataset lrs2 --scorer syncnet:/models/syncnet_v2.model

Run it after extraction (pipelines/extract.py): it scores what is stored, then rebuilds the catalog.
Any scorer of the registry (training/sync/scorers.py) is a spec NAME:PATH. Per shard (one task of
the job runner, catalog/jobs.py: on Ray, or a local worker process for a store of one shard), the scorer
reads only what it needs through the store's one reader (catalog.reader), as stored (never
sync-corrected: a re-run scores the data, not an earlier pass's correction), by its `stored_input`:
- "utterance" (`unisync:CHECKPOINT`): the checkpoint's combo fields (e.g. mel + landmarks),
  normalised as the checkpoint was trained (UniSyncScorer.model_input), the windows it trained on;
- "frames" (`syncnet:WEIGHTS`): the stored audio (16-bit, so its int16 values exactly) and the
  source video's frames on the stored timeline, cropped by the `mesh` protocol around the
  stored face track (landmarks + the meta field's crop boxes: no face detection is run again).

It writes a column-only sidecar `<store>/shards/<dataset>/sync/<dataset>-NNNNNN.json` (no tar) whose
member entries carry `columns: {sync_offset, sync_confidence, sync_min_dist, sync_scorer}`; the
catalog build merges them into the utterances table. Offsets follow syncnet_python's sign (audio
delayed by d frames gives -d); sync_scorer is "<scorer>:<version>" (the weights' or checkpoint's
sha256 prefix). A shard whose sidecar was written by the same scorer is skipped unless
--overwrite. A shard whose task died for good (after --max-retries driver retries, by cause:
catalog/jobs.py) gets error entries (stage `worker`, the cause; columns empty) unless it already
had a sidecar, whose columns are kept (still what the store holds); a plain re-run scores it
again unless those are this scorer's own. The catalog is
rebuilt with the split settings the store was built with (store.json `splits`, written by
extract.py); --val / --test / --split-seed override them only when given.
Curation is then SQL, e.g. LatentSync's rule:

    python -m catalog sql "SELECT utt_id FROM utterances WHERE sync_confidence >= 3 AND abs(sync_offset) <= 6"

Exit codes: 0 every shard scored, 1 some shard failed (re-run to retry it), 2 bad arguments, a
bad scorer spec, no store, or the store is locked, 4 Ray did not start within --ray-timeout.

Layering: part of the sync wing (training/sync/); the trainer never imports it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from catalog.jobs import RayStartError, Runner, Task, add_runner_options, job_path, runner_from_args
from catalog.reader import StoreError, read_catalog, stream_utterances
from catalog.sidecar import WORKER_STAGE, read_sidecar, redo_member, write_sidecar
from features.cli import HelpFormatter
from training.sync.scorers import clear_cache, parse_spec, spec_forms

FIELD = "sync"
COLUMNS = ("sync_offset", "sync_confidence", "sync_min_dist", "sync_scorer")
MIN_FRAMES = 6  # one scored window: SyncNet's loop needs t + 5 < min_length


def get_scorer(spec: str, device: str = "auto"):
    """The registry's cached scorer of a NAME:PATH spec (one model per worker process), on the
    device this process picks (`auto`: training.runtime.pick_device, as fit.py)."""
    from training.runtime import pick_device
    from training.sync.scorers import get_scorer as cached

    name, path = parse_spec(spec)
    return cached(name, path, str(pick_device(device)))


def read_sync_sidecar(store: Path, dataset: str, shard_id: int) -> dict | None:
    """The shard's sync sidecar (columns only, no tar), or None when there is none or it is broken."""
    return read_sidecar(store, dataset, FIELD, shard_id, need_tar=False)


def is_done(store: Path, dataset: str, shard_id: int, scorer_id: str) -> bool:
    """This scorer wrote the shard's sidecar, and no entry records a task that died."""
    side = read_sync_sidecar(store, dataset, shard_id)
    return side is not None and side.get("version") == scorer_id and not any(
        redo_member(m) for m in side.get("members", []))


def syncnet_utterance(scorer, row: dict, data: dict) -> "object":
    """SyncNet on one stored utterance (`data`: the reader's decoded audio, landmarks and meta):
    the source's frames on the stored timeline (streamed), pipeline crops around the stored face
    track."""
    import numpy as np

    from features.face import crop_to_image
    from features.media import VideoStream
    from training.sync.audio import int16_scale
    from training.sync.crops import landmark_boxes, pipeline_crop, smooth_boxes

    audio = int16_scale(data["audio"])
    landmarks = np.asarray(data["landmarks"], np.float32)
    boxes = np.asarray(data["meta"]["crop_boxes"], np.float32)
    n = min(len(landmarks), len(boxes))
    smoothed = smooth_boxes(landmark_boxes(crop_to_image(landmarks[:n], boxes[:n])))
    frames = VideoStream(row["video_path"], row.get("start_s"), row.get("end_s"))
    crops = (pipeline_crop(f, *smoothed[min(t, n - 1)]) for t, f in enumerate(frames))
    return scorer.score_arrays(crops, audio)


def score_shard(store: str, dataset: str, shard_id: int, rows: list[dict], all_rows: list[dict],
                spec: str, device: str = "auto", threads: int | None = 1) -> dict:
    """Score one shard's utterances and write its sync sidecar; returns counts. `threads`: torch
    threads (None: leave them, as in the driver's own process)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    store_p = Path(store)
    started = time.perf_counter()
    scorer = get_scorer(spec, device)
    scorer_id = f"{scorer.name}:{scorer.version}"
    fields = scorer.stored_fields()
    usable = [r for r in rows if all(r.get(f"field_{f}", "ok") == "ok" for f in fields)
              and (r.get("n_frames") or 0) >= MIN_FRAMES]
    if scorer.stored_input == "utterance":
        score = scorer.score_utterance
    elif scorer.stored_input == "frames":
        score = lambda utt: syncnet_utterance(scorer, utt.row, utt.data)  # noqa: E731
    else:
        raise ValueError(f"scorer {scorer.name}: unknown stored_input {scorer.stored_input!r}")
    results: dict[str, dict] = {}
    for utt in stream_utterances(store_p, fields, usable, all_rows, shards=[(dataset, shard_id)],
                                 sync_correct=False):  # the data as stored, not an earlier correction
        results[utt.utt_id] = _entry(lambda u=utt: score(u), scorer_id)
    members = []
    for r in sorted(rows, key=lambda r: r["index_in_shard"]):
        members.append(results.get(r["utt_id"], {
            "status": "skipped", "reason": f"needed fields not 'ok' or shorter than {MIN_FRAMES} frames",
            "columns": {c: None for c in COLUMNS}}) | {"utt_id": r["utt_id"]})
    write_sidecar(store_p, dataset, FIELD, shard_id, scorer_id, members)  # columns only, no tar
    return {"shard_id": shard_id, "scored": sum(m["status"] == "ok" for m in members),
            "seconds": time.perf_counter() - started}


def _entry(score_fn, scorer_id: str) -> dict:
    try:
        s = score_fn()
    except Exception as exc:  # one bad utterance is a row with a reason, not a lost shard
        return {"status": "error", "reason": f"{type(exc).__name__}: {exc}",
                "columns": {c: None for c in COLUMNS}}
    return {"status": "ok", "windows": s.windows,
            "columns": {"sync_offset": int(s.offset), "sync_confidence": round(float(s.confidence), 6),
                        "sync_min_dist": round(float(s.min_dist), 6), "sync_scorer": scorer_id}}


def write_failed_shard(store: Path, dataset: str, shard_id: int, rows: list[dict], scorer_id: str,
                       cause: str) -> bool:
    """Error entries naming `cause` for a shard whose task died for good, unless the shard already
    has a sidecar (its columns stay: they are still what the store holds). Returns whether it wrote."""
    if read_sync_sidecar(store, dataset, shard_id) is not None:
        return False
    members = [{"utt_id": r["utt_id"], "status": "error", "stage": WORKER_STAGE, "reason": cause,
                "columns": {c: None for c in COLUMNS}} for r in sorted(rows, key=lambda r: r["index_in_shard"])]
    write_sidecar(store, dataset, FIELD, shard_id, scorer_id, members)
    return True


def run_sync_pass(runner: Runner, store: Path, dataset: str, spec: str, overwrite: bool = False,
                  device: str = "auto", max_retries: int = 3) -> dict:
    """One task per shard of `dataset` not yet scored by this scorer; returns counts."""
    store = Path(store)
    scorer = get_scorer(spec, device)  # fails fast on a bad path before any task starts
    scorer_id = f"{scorer.name}:{scorer.version}"
    all_rows = [r for r in read_catalog(store) if r["dataset"] == dataset]
    shards: dict[int, list[dict]] = {}
    for r in all_rows:
        shards.setdefault(int(r["shard_id"]), []).append(r)
    todo = [s for s in sorted(shards) if overwrite or not is_done(store, dataset, s, scorer_id)]
    local = runner.runs_local(len(todo))
    if not local:
        clear_cache()  # keep the model out of the task's pickled closure
    counts = {"scored": 0}
    failures: list[str] = []

    def failed(task: Task, cause: str) -> None:
        shard_id = task.args[2]
        write_failed_shard(store, dataset, shard_id, shards[shard_id], scorer_id, cause)
        failures.append(f"{task.name}: {cause}")

    tasks = [Task(f"{dataset}-{s:06d}", (str(store), dataset, s, shards[s], shards[s], spec, device,
                                         None if local else 1)) for s in todo]
    runner.run(score_shard, tasks, desc=f"{dataset} sync ({scorer.name})", unit="shard",
               max_retries=max_retries, on_failure=failed,
               on_result=lambda task, result: counts.__setitem__("scored", counts["scored"] + result["scored"]))
    return {"scorer": scorer_id, "shards": len(todo), "skipped_shards": len(shards) - len(todo),
            "scored": counts["scored"], "failed_shards": failures}


def split_settings(info: dict, args: argparse.Namespace) -> dict:
    """build_catalog's val / test / seed: the ones store.json records (extract.py writes `splits`),
    each replaced by --val / --test / --split-seed only when given. A store from before they were
    recorded gets build_catalog's defaults (extract.py's too), said once."""
    recorded = dict(info.get("splits") or {})
    given = {k: v for k, v in (("val", args.val), ("test", args.test), ("seed", args.split_seed)) if v is not None}
    if not recorded and len(given) < 3:
        print("warning: store.json records no split settings (extracted before they were recorded): the "
              "catalog is rebuilt with extract.py's defaults unless --val / --test / --split-seed say "
              "otherwise", file=sys.stderr)
    return {k: v for k, v in {**recorded, **given}.items() if k in ("val", "test", "seed")}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training.sync.sync_pass", description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter,
                                epilog="example: python -m training.sync.sync_pass --store store/ "
                                       "--scorer unisync:runs/mel_landmarks/best.pt")
    p.add_argument("--store", required=True, type=Path, help="an extracted store")
    p.add_argument("--scorer", "--sync-scorer", dest="scorer", required=True, metavar="NAME:PATH",
                   help=f"the expert: {spec_forms()}")
    p.add_argument("--dataset", default=None, help="dataset to score (unset: every dataset of the store)")
    p.add_argument("--overwrite", action="store_true", help="re-score shards this scorer already scored")
    add_runner_options(p, "concurrent shard tasks (default: every CPU Ray offers)")
    p.add_argument("--max-retries", type=int, default=3,
                   help="retries of a shard whose worker died, was killed for memory or lost its node")
    p.add_argument("--device", default="auto",
                   help="torch device of the tasks; auto: the GPU when the task's process sees one")
    for flag, kind, what in (("--val", float, "share of speakers in val"),
                             ("--test", float, "share of speakers in test"),
                             ("--split-seed", int, "seed of the speaker-disjoint split")):
        p.add_argument(flag, type=kind, default=None,
                       help=f"{what} for the catalog rebuild (default: what store.json records)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from catalog.build import build_catalog
    from catalog.layout import read_store_json
    from catalog.lock import StoreLocked, acquire
    from catalog.plan import read_plan

    try:
        store = job_path(args.store)
        runner = runner_from_args(args)
        get_scorer(args.scorer, args.device)  # a bad spec or file fails here, before Ray starts
        datasets = [args.dataset] if args.dataset else sorted({r["dataset"] for r in read_catalog(store)})
        lock = acquire(store)  # one writer per store (catalog/lock.py), released below
    except (ValueError, FileNotFoundError, RuntimeError, StoreError, StoreLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        with runner:
            reports = [run_sync_pass(runner, store, ds, args.scorer, args.overwrite, args.device, args.max_retries)
                       for ds in datasets]
        info = read_store_json(store)
        fields = sorted(info.get("fields", {}), key=lambda f: (f == "meta", f))
        build_catalog(store, read_plan(store), fields, **split_settings(info, args))
    except RayStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    finally:
        lock.release()
    print(json.dumps(reports))
    return 1 if any(r["failed_shards"] for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
