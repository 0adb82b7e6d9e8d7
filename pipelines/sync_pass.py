"""The sync pass: score every utterance of a store and record it in the catalog.

    python pipelines/sync_pass.py --store store/ --dataset lrs2 --sync-scorer unisync:runs/mel_landmarks/best.pt
    python pipelines/extract.py ... --fields sync --sync-scorer syncnet:/models/syncnet_v2.model

Per shard (one Ray task each), the scorer reads only what it needs from the store:
- `unisync:CHECKPOINT`: the checkpoint's combo fields (e.g. mel + landmarks), through the
  trainer's loader (training.data), exactly the windows it was trained on;
- `syncnet:WEIGHTS`: the stored audio (16-bit, so its int16 values exactly) and the source video's
  frames on the stored timeline, cropped by the `pipeline` protocol around the stored face track
  (landmarks + the meta field's crop boxes: no face detection is run again).

It writes a column-only sidecar `<store>/shards/<dataset>/sync/<dataset>-NNNNNN.json` (no tar) whose
member entries carry `columns: {sync_offset, sync_confidence, sync_min_dist, sync_scorer}`; the
catalog build merges them into the utterances table. Offsets follow syncnet_python's sign (audio
delayed by d frames gives -d); sync_scorer is "<scorer>:<version>" (the weights' or checkpoint's
sha256 prefix). A shard whose sidecar was written by the same scorer is skipped unless
--overwrite. Curation is then SQL, e.g. LatentSync's rule:

    python -m catalog sql "SELECT utt_id FROM utterances WHERE sync_confidence >= 3 AND abs(sync_offset) <= 6"

Layering: a pipelines module that imports training's scorers (the scorers read the store the way
the trainer does); nothing in training imports it.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

import argparse
import json
import os
import time

import numpy as np

from catalog.layout import sidecar_path
from catalog.sidecar import write_sidecar

FIELD = "sync"
COLUMNS = ("sync_offset", "sync_confidence", "sync_min_dist", "sync_scorer")
_SCORERS: dict[str, object] = {}  # one model per worker process


def parse_spec(spec: str) -> tuple[str, str]:
    """'unisync:PATH' or 'syncnet:PATH' -> (name, path)."""
    name, _, path = spec.partition(":")
    if name not in ("unisync", "syncnet") or not path:
        raise ValueError(f"--sync-scorer must be 'unisync:CHECKPOINT' or 'syncnet:WEIGHTS', got {spec!r}")
    return name, str(Path(path).resolve())


def get_scorer(spec: str, device: str = "cpu"):
    from training.scorers import make_scorer

    if spec not in _SCORERS:
        name, path = parse_spec(spec)
        _SCORERS[spec] = make_scorer(name, syncnet_weights=path if name == "syncnet" else None,
                                     checkpoint=path if name == "unisync" else None, device=device)
    return _SCORERS[spec]


def scorer_fields(scorer) -> list[str]:
    """Stored fields the scorer reads."""
    if scorer.name == "unisync":
        from training.combos import combo_fields
        return list(combo_fields(scorer.combo))
    return ["audio", "landmarks", "meta"]


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
    from features.sync_audio import int16_scale
    from features.sync_crops import landmark_boxes, pipeline_crop, smooth_boxes

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
    fields = scorer_fields(scorer)
    usable = [r for r in rows if all(r.get(f"field_{f}") == "ok" for f in fields if f != "meta")
              and (r.get("n_frames") or 0) >= 6]
    results: dict[str, dict] = {}
    if scorer.name == "unisync":
        center = scorer.train_args.get("landmarks_center", True)
        for utt in stream_utterances(store_p, fields, usable, all_rows, center, shards=[(dataset, shard_id)]):
            results[utt.utt_id] = _entry(lambda u=utt: scorer.score_utterance(u), scorer_id)
    else:
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
    members = []
    for r in sorted(rows, key=lambda r: r["index_in_shard"]):
        members.append(results.get(r["utt_id"], {
            "status": "skipped", "reason": "needed fields not 'ok' or shorter than 6 frames",
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
    _SCORERS.clear()  # keep the model out of the task's pickled closure
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", required=True, type=Path, help="an extracted store")
    p.add_argument("--dataset", default=None, help="dataset to score (default: every dataset of the store)")
    p.add_argument("--sync-scorer", required=True, help="'unisync:CHECKPOINT' or 'syncnet:WEIGHTS'")
    p.add_argument("--overwrite", action="store_true", help="re-score shards this scorer already scored")
    p.add_argument("--workers", type=int, default=None, help="Ray tasks at once (default: every CPU)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a private local Ray)")
    p.add_argument("--device", default="cpu", help="torch device of the tasks")
    p.add_argument("--val", type=float, default=0.1, help="as extract.py: the catalog is rebuilt")
    p.add_argument("--test", type=float, default=0.1, help="as extract.py: the catalog is rebuilt")
    p.add_argument("--split-seed", type=int, default=0, help="as extract.py: the catalog is rebuilt")
    args = p.parse_args(argv)
    from catalog.build import build_catalog
    from catalog.layout import read_store_json
    from catalog.plan import read_plan
    from training.data import StoreError, read_catalog

    store = args.store.resolve()
    try:
        parse_spec(args.sync_scorer)
        get_scorer(args.sync_scorer, args.device)
        datasets = [args.dataset] if args.dataset else sorted({r["dataset"] for r in read_catalog(store)})
    except (ValueError, FileNotFoundError, RuntimeError, StoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    import ray

    if args.address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=args.address or os.environ["RAY_ADDRESS"])
    else:
        ray.init(address="local", num_cpus=args.workers or os.cpu_count(), include_dashboard=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
    reports = [run_sync_pass(ray, store, ds, args.sync_scorer, args.overwrite, args.workers, args.device)
               for ds in datasets]
    fields = sorted(read_store_json(store).get("fields", {}), key=lambda f: (f == "meta", f))
    build_catalog(store, read_plan(store), fields, val=args.val, test=args.test, seed=args.split_seed)
    print(json.dumps(reports))
    return 1 if any(r["failed_shards"] for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())


# ---------------------------------------------------------------------------------------------
# the hook pipelines/extract.py calls for `--fields sync --sync-scorer SPEC`
# ---------------------------------------------------------------------------------------------
def sync_request(args: argparse.Namespace) -> str | None:
    """The scorer spec when `sync` is among --fields (removed from them: it is a pass over the
    stored fields, not a field with tars); raises ValueError when --sync-scorer is missing."""
    if "sync" not in args.fields:
        return None
    if not getattr(args, "sync_scorer", None):
        raise ValueError("--fields sync needs --sync-scorer unisync:CHECKPOINT or syncnet:WEIGHTS")
    parse_spec(args.sync_scorer)
    args.fields = [f for f in args.fields if f != "sync"] or ["meta"]
    return args.sync_scorer


def sync_after_extract(ray, store: Path, args: argparse.Namespace, spec: str, rebuild):
    """Run the sync pass over the freshly built catalog, then rebuild it with the sync columns."""
    report = run_sync_pass(ray, store, args.dataset, spec, args.overwrite, args.workers)
    print(json.dumps({"sync": report}))
    return rebuild()
