"""The sync pass: score every utterance of a store and record it in the catalog.

    python -m training.sync.sync_pass --store store/ --scorer unisync:runs/mel_landmarks/best.pt
    python -m training.sync.sync_pass --store store/ --dataset lrs2 --scorer syncnet:/models/syncnet_v2.model

Run it after extraction (pipelines/extract.py): it scores what is stored, then rebuilds the catalog.
Any scorer of the registry (training/sync/scorers.py) is a spec NAME:PATH. Per shard (one Ray
task each), the scorer reads only what it needs from the store (its `stored_input`):
- "utterance" (`unisync:CHECKPOINT`): the checkpoint's combo fields (e.g. mel + landmarks), through
  the trainer's loader (training.data), exactly the windows it was trained on;
- "frames" (`syncnet:WEIGHTS`): the stored audio (16-bit, so its int16 values exactly) and the
  source video's frames on the stored timeline, cropped by the `pipeline` protocol around the
  stored face track (landmarks + the meta field's crop boxes: no face detection is run again).

It writes a column-only sidecar `<store>/shards/<dataset>/sync/<dataset>-NNNNNN.json` (no tar) whose
member entries carry `columns: {sync_offset, sync_confidence, sync_min_dist, sync_scorer}`; the
catalog build merges them into the utterances table. Offsets follow syncnet_python's sign (audio
delayed by d frames gives -d); sync_scorer is "<scorer>:<version>" (the weights' or checkpoint's
sha256 prefix). A shard whose sidecar was written by the same scorer is skipped unless
--overwrite. Curation is then SQL, e.g. LatentSync's rule:

    python -m catalog sql "SELECT utt_id FROM utterances WHERE sync_confidence >= 3 AND abs(sync_offset) <= 6"

Layering: part of the sync wing (training/sync/); the trainer never imports it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from catalog.layout import sidecar_path
from catalog.sidecar import write_sidecar
from features.cli import HelpFormatter
from training.sync.scorers import clear_cache, parse_spec, spec_forms

FIELD = "sync"
COLUMNS = ("sync_offset", "sync_confidence", "sync_min_dist", "sync_scorer")
MIN_FRAMES = 6  # one scored window: SyncNet's loop needs t + 5 < min_length


def get_scorer(spec: str, device: str = "cpu"):
    """The registry's cached scorer of a NAME:PATH spec (one model per worker process)."""
    from training.sync.scorers import get_scorer as cached

    name, path = parse_spec(spec)
    return cached(name, path, device)


def is_done(store: Path, dataset: str, shard_id: int, scorer_id: str) -> bool:
    side = sidecar_path(store, dataset, FIELD, shard_id)
    if not side.exists():
        return False
    try:
        return json.loads(side.read_text()).get("version") == scorer_id
    except ValueError:
        return False


def syncnet_utterance(scorer, row: dict, sample: dict) -> "object":
    """SyncNet on one stored utterance: stored audio, the source's frames on the stored timeline
    (streamed), pipeline crops around the stored face track."""
    from features.face import crop_to_image
    from features.fields import FIELDS
    from features.media import VideoStream
    from training.sync.audio import int16_scale
    from training.sync.crops import landmark_boxes, pipeline_crop, smooth_boxes

    audio = int16_scale(FIELDS["audio"].decode(sample["audio"]))
    landmarks = FIELDS["landmarks"].decode(sample["landmarks"]).astype(np.float32)
    boxes = np.asarray(json.loads(sample["meta"])["crop_boxes"], np.float32)
    n = min(len(landmarks), len(boxes))
    smoothed = smooth_boxes(landmark_boxes(crop_to_image(landmarks[:n], boxes[:n])))
    frames = VideoStream(row["video_path"], row.get("start_s"), row.get("end_s"))
    crops = (pipeline_crop(f, *smoothed[min(t, n - 1)]) for t, f in enumerate(frames))
    return scorer.score_arrays(crops, audio)


def score_shard(store: str, dataset: str, shard_id: int, rows: list[dict], all_rows: list[dict],
                spec: str, device: str = "cpu", threads: int = 1) -> dict:
    """Score one shard's utterances and write its sync sidecar; returns counts."""
    import torch

    from training.data import stream_utterances

    torch.set_num_threads(threads)
    store_p = Path(store)
    started = time.perf_counter()
    scorer = get_scorer(spec, device)
    scorer_id = f"{scorer.name}:{scorer.version}"
    fields = scorer.stored_fields()
    usable = [r for r in rows if all(r.get(f"field_{f}") == "ok" for f in fields if f != "meta")
              and (r.get("n_frames") or 0) >= MIN_FRAMES]
    results: dict[str, dict] = {}
    if scorer.stored_input == "utterance":
        center = scorer.train_args.get("landmarks_center", True)
        for utt in stream_utterances(store_p, fields, usable, all_rows, center, shards=[(dataset, shard_id)]):
            results[utt.utt_id] = _entry(lambda u=utt: scorer.score_utterance(u), scorer_id)
    elif scorer.stored_input == "frames":
        from catalog.tars import iter_shard

        by_key = {r["key"]: r for r in usable}
        keys = [r["key"] for r in sorted(all_rows, key=lambda r: r["index_in_shard"])
                if r["dataset"] == dataset and r["shard_id"] == shard_id]
        for sample in iter_shard(store_p, dataset, shard_id, fields, keys):
            row = by_key.get(sample["__key__"])
            if row is None or "error.json" in sample["audio"] or "error.json" in sample["landmarks"]:
                continue
            flat = {"audio": sample["audio"]["flac"], "landmarks": sample["landmarks"]["landmarks.npy"],
                    "meta": sample["meta"]["json"]}
            results[row["utt_id"]] = _entry(lambda r=row, s=flat: syncnet_utterance(scorer, r, s), scorer_id)
    else:
        raise ValueError(f"scorer {scorer.name}: unknown stored_input {scorer.stored_input!r}")
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


def run_sync_pass(ray, store: Path, dataset: str, spec: str, overwrite: bool = False,
                  workers: int | None = None, device: str = "cpu") -> dict:
    """One Ray task per shard of `dataset` not yet scored by this scorer; returns counts."""
    from tqdm import tqdm

    from training.data import read_catalog

    store = Path(store)
    scorer = get_scorer(spec, device)  # fails fast on a bad path before any task starts
    scorer_id = f"{scorer.name}:{scorer.version}"
    all_rows = [r for r in read_catalog(store) if r["dataset"] == dataset]
    shards: dict[int, list[dict]] = {}
    for r in all_rows:
        shards.setdefault(int(r["shard_id"]), []).append(r)
    todo = [s for s in sorted(shards) if overwrite or not is_done(store, dataset, s, scorer_id)]
    clear_cache()  # keep the model out of the task's pickled closure
    # max_retries=0: with any other value Ray retries OOM kills without end (pipelines/shard_failures.py);
    # a shard whose task dies is reported in failed_shards and a re-run scores it.
    task = ray.remote(num_cpus=1, max_retries=0)(score_shard)
    limit = workers or max(1, int(ray.available_resources().get("CPU", 1)))
    pending, in_flight, scored, failures = list(todo), {}, 0, []
    bar = tqdm(total=len(todo), desc=f"{dataset} sync ({scorer.name})", unit="shard")
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            s = pending.pop(0)
            in_flight[task.remote(str(store), dataset, s, shards[s], shards[s], spec, device)] = s
        done, _ = ray.wait(list(in_flight), num_returns=1)
        s = in_flight.pop(done[0])
        try:
            scored += ray.get(done[0])["scored"]
        except Exception as exc:
            failures.append(f"shard {s}: {type(exc).__name__}: {exc}")
        bar.update(1)
    bar.close()
    return {"scorer": scorer_id, "shards": len(todo), "skipped_shards": len(shards) - len(todo),
            "scored": scored, "failed_shards": failures}


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
    p.add_argument("--workers", type=int, default=None, help="Ray tasks at once (unset: every CPU)")
    p.add_argument("--address", default=None, help="Ray cluster address (unset: RAY_ADDRESS or a private local Ray)")
    p.add_argument("--device", default="cpu", help="torch device of the tasks")
    p.add_argument("--val", type=float, default=0.1, help="as extract.py: the catalog is rebuilt")
    p.add_argument("--test", type=float, default=0.1, help="as extract.py: the catalog is rebuilt")
    p.add_argument("--split-seed", type=int, default=0, help="as extract.py: the catalog is rebuilt")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from catalog.build import build_catalog
    from catalog.layout import read_store_json
    from catalog.plan import read_plan
    from training.data import StoreError, read_catalog

    store = args.store.resolve()
    try:
        get_scorer(args.scorer, args.device)  # a bad spec or file fails here, before Ray starts
        datasets = [args.dataset] if args.dataset else sorted({r["dataset"] for r in read_catalog(store)})
    except (ValueError, FileNotFoundError, RuntimeError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import ray

    from catalog.lock import StoreLocked, acquire

    try:
        lock = acquire(store)  # one writer per store (catalog/lock.py), released below
    except StoreLocked as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        if args.address or os.environ.get("RAY_ADDRESS"):
            ray.init(address=args.address or os.environ["RAY_ADDRESS"])
        else:
            ray.init(address="local", num_cpus=args.workers or os.cpu_count(),
                     include_dashboard=False)  # the workers import the installed package
        reports = [run_sync_pass(ray, store, ds, args.scorer, args.overwrite, args.workers, args.device)
                   for ds in datasets]
        fields = sorted(read_store_json(store).get("fields", {}), key=lambda f: (f == "meta", f))
        build_catalog(store, read_plan(store), fields, val=args.val, test=args.test, seed=args.split_seed)
    finally:
        lock.release()
    print(json.dumps(reports))
    return 1 if any(r["failed_shards"] for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
