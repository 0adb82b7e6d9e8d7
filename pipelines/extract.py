"""Extract a corpus into a feature store with Ray: one task per shard.

    python pipelines/extract.py --dataset folder --root videos/ --store store/
    ray job submit --working-dir . -- python pipelines/extract.py --dataset lrs2 --root ... --store ...

Without a cluster address (and no RAY_ADDRESS, which `ray job submit` sets) it starts a local Ray.
Re-running skips complete (shard, field) pairs; --overwrite redoes them.

Exit codes: 0 every shard ran (utterances that failed are error rows); 1 some shard failed after
--max-retries attempts (its utterances are error rows naming the cause; re-run to retry it);
2 bad arguments or no videos.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))

from catalog.build import build_catalog  # noqa: E402
from catalog.layout import STORE_VERSION, read_store_json, write_store_json  # noqa: E402
from catalog.plan import DEFAULT_SHARD_MINUTES, extend_plan, read_plan, shards_of, write_plan  # noqa: E402
from features.fields import DEFAULT_FIELDS, FIELDS, Options, resolve  # noqa: E402
from features.hubert import DEFAULT_MODEL, MANDARIN_MODEL  # noqa: E402
from features.timebase import FPS, WINDOW  # noqa: E402
from pipelines.adapters import ADAPTERS, LANGUAGES, adapter_options, list_utterances  # noqa: E402
from pipelines.sync_pass import sync_after_extract, sync_request  # noqa: E402
from pipelines.probe import cut_long_videos  # noqa: E402
from pipelines.shard_failures import FAULT_ENV  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(ADAPTERS), help="corpus adapter")
    p.add_argument("--root", required=True, type=Path, help="corpus root folder")
    p.add_argument("--store", required=True, type=Path, help="feature store folder (shared by all nodes)")
    p.add_argument("--fields", nargs="+", default=DEFAULT_FIELDS,
                   help=f"fields to extract, or 'all'; known: {list(FIELDS) + ['meta']}; plus 'sync' "
                        "(with --sync-scorer) for the sync pass")
    p.add_argument("--hubert-model", default=None,
                   help=f"HuBERT hub id or local directory (default: {DEFAULT_MODEL}; "
                        f"{MANDARIN_MODEL} for Mandarin corpora)")
    p.add_argument("--hubert-layer", type=int, default=-1, help="hidden layer to store (-1: last)")
    p.add_argument("--workers", type=int, default=None,
                   help="concurrent shard tasks (default: every CPU Ray offers)")
    p.add_argument("--shard-minutes", type=float, default=DEFAULT_SHARD_MINUTES,
                   help="minutes of video per new shard (catalog/plan.py: durations when known, else "
                        "file size / an assumed bitrate); existing shards are kept")
    p.add_argument("--shard-size", type=int, default=None,
                   help="also cap new shards at this many utterances (unset: no cap)")
    p.add_argument("--overwrite", action="store_true", help="redo complete (shard, field) pairs")
    p.add_argument("--address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    p.add_argument("--val", type=float, default=0.1, help="share of speakers in the val split")
    p.add_argument("--test", type=float, default=0.1, help="share of speakers in the test split")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the speaker-disjoint split")
    p.add_argument("--max-retries", type=int, default=3,
                   help="retries of a shard whose worker died, was killed for memory or lost its node "
                        "(every cause counts; then the shard's rows are errors naming the cause)")
    p.add_argument("--sync-scorer", default=None,
                   help="with --fields sync: 'unisync:CHECKPOINT' or 'syncnet:WEIGHTS' scores every "
                        "utterance into catalog columns sync_offset, sync_confidence, sync_min_dist, "
                        "sync_scorer (pipelines/sync_pass.py)")
    p.add_argument("--max-seconds", type=float, default=None,
                   help="cut videos longer than this into <utt_id>_segNN utterances of at most this "
                        "length: lrs2/lrs3 pretrain clips at word boundaries; every other dataset by a "
                        "probe pass (shot cuts, main-face runs, even splits; pipelines/probe.py) "
                        "before the plan is fixed (unset: keep whole videos)")
    return p.parse_args(argv)


def init_ray(address: str | None, workers: int | None):
    import ray

    address = address or os.environ.get("RAY_ADDRESS")
    if address:  # a cluster (or `ray job submit`, whose working dir carries the code)
        ray.init(address=address, log_to_driver=True)
    else:  # a private local Ray: never attach to someone else's cluster on a shared host
        env = {"PYTHONPATH": str(REPO), **{k: v for k, v in os.environ.items() if k == FAULT_ENV}}
        ray.init(address="local", num_cpus=workers or os.cpu_count(), include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=True)
    return ray


def extract_shard_task(store: str, dataset: str, shard_id: int, rows: list[dict], fields: list[str],
                       overwrite: bool, options: Options) -> dict:
    """The Ray task body: one shard (a test may ask it to die first, see shard_failures)."""
    from pipelines.shard_failures import inject_fault
    from pipelines.worker import extract_shard

    inject_fault(dataset, shard_id)
    return extract_shard(store, dataset, shard_id, rows, fields, overwrite, options)


def run_shards(ray, store: Path, dataset: str, plan: list[dict], fields: list[str], overwrite: bool,
               workers: int | None, max_retries: int, options: Options, gpu: bool = False
               ) -> tuple[int, dict[int, str]]:
    """Run one task per shard with at most `workers` in flight; returns frames and the causes of
    the shards that failed for good.

    Retries are the driver's, bounded for every cause (see pipelines/shard_failures.py); a shard
    that fails `max_retries + 1` times becomes error rows naming the cause.
    """
    from tqdm import tqdm

    from pipelines.shard_failures import classify, clear_failed_shard, write_failed_shard

    task = ray.remote(num_cpus=1, num_gpus=1 if gpu else 0, max_retries=0, retry_exceptions=False)(extract_shard_task)
    limit = workers or max(1, int(ray.available_resources().get("CPU", 1)))
    shards = shards_of(plan)
    for shard_id in shards:
        clear_failed_shard(store, dataset, shard_id, fields)  # failed last time: try again
    pending = [(shard_id, 0) for shard_id in shards]
    in_flight, frames, failures = {}, 0, {}
    bar = tqdm(total=len(pending), desc=f"{dataset} {'+'.join(f for f in fields if f != 'meta')}",
               unit="shard")
    started = time.perf_counter()
    while pending or in_flight:
        while pending and len(in_flight) < limit:
            shard_id, attempt = pending.pop(0)
            ref = task.remote(str(store), dataset, shard_id, shards[shard_id], fields, overwrite, options)
            in_flight[ref] = (shard_id, attempt)
        done, _ = ray.wait(list(in_flight), num_returns=1)
        shard_id, attempt = in_flight.pop(done[0])
        try:
            frames += ray.get(done[0])["frames"]
        except Exception as exc:
            retry, cause = classify(exc)
            if retry and attempt < max_retries:
                print(f"shard {dataset}-{shard_id:06d} attempt {attempt + 1} failed: {cause}; "
                      f"retrying ({max_retries - attempt} left)", file=sys.stderr)
                pending.append((shard_id, attempt + 1))
                continue
            cause = f"shard failed after {attempt + 1} attempt(s): {cause}"
            write_failed_shard(store, dataset, shard_id, shards[shard_id], fields, cause)
            failures[shard_id] = cause
        bar.update(1)
        bar.set_postfix(fps=f"{frames / max(time.perf_counter() - started, 1e-9):.1f}")
    bar.close()
    return frames, failures


def extract_fields(ray, store: Path, args: argparse.Namespace, plan: list[dict], fields: list[str]
                   ) -> tuple[int, dict[int, str]]:
    """Run the fields in dependency order: the per-shard fields first; then, once the corpus's
    landmarks are stored, fit the morphable model and extract tdmm; then the GPU fields in
    GPU tasks when the cluster has GPUs (else they ran with the rest on CPUs). A shard that
    failed for good in one phase is left out of the later ones."""
    from pipelines.models import ensure_tdmm_model
    from pipelines.shard_failures import write_failed_shard

    options = Options(hubert_model=hubert_model(args), hubert_layer=args.hubert_layer)
    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    on_gpu = [f for f in fields if f in FIELDS and FIELDS[f].gpu and has_gpu]
    first = [f for f in fields if f != "tdmm" and f not in on_gpu]
    run = dict(overwrite=args.overwrite, workers=args.workers, max_retries=args.max_retries)
    frames, failures = run_shards(ray, store, args.dataset, plan, first, options=options, **run)
    later = [(["tdmm"] if "tdmm" in fields else [], False), (on_gpu, True)]
    for phase, gpu in ((f, g) for f, g in later if f):
        rest = [r for r in plan if r["shard_id"] not in failures]
        if phase == ["tdmm"]:
            options.tdmm_model = ensure_tdmm_model(store, args.dataset, rest, refit=args.overwrite)
        more, failed = run_shards(ray, store, args.dataset, rest, phase, options=options, gpu=gpu, **run)
        frames, failures = frames + more, {**failures, **failed}
    shards = shards_of(plan)
    for shard_id, cause in failures.items():  # the later phases' fields of a failed shard: error rows too
        write_failed_shard(store, args.dataset, shard_id, shards[shard_id], fields, cause)
    return frames, failures


def hubert_model(args: argparse.Namespace) -> str:
    """--hubert-model, else the Chinese model for Mandarin corpora, else the English default."""
    return args.hubert_model or (MANDARIN_MODEL if LANGUAGES.get(args.dataset) == "zh" else DEFAULT_MODEL)


def main(argv=None) -> int:
    args = parse_args(argv)
    store = args.store.resolve()
    try:
        sync_spec = sync_request(args)  # `sync` is a pass after extraction, not a field
        fields = resolve(args.fields)
        utterances = list_utterances(args.dataset, args.root, **adapter_kwargs(args))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not utterances:
        print(f"error: no videos found under {args.root} for dataset {args.dataset!r}", file=sys.stderr)
        return 2
    existing = read_plan(store)
    ray = init_ray(args.address, args.workers)
    probe_figures = None
    if probes_long_videos(args):
        utterances, probe_figures = cut_long_videos(ray, store, args.dataset, utterances, existing,
                                                    args.max_seconds, args.workers)
    dataset_plan = extend_plan(existing, args.dataset, utterances, args.shard_size, args.shard_minutes)
    plan = [r for r in existing if r["dataset"] != args.dataset] + dataset_plan
    write_plan(store, plan)
    store_fields = update_store_json(store, args, fields)

    started = time.perf_counter()
    frames, failures = extract_fields(ray, store, args, dataset_plan, fields)
    seconds = time.perf_counter() - started
    tables = build_catalog(store, plan, store_fields, val=args.val, test=args.test, seed=args.split_seed)
    if sync_spec and not failures:
        tables = sync_after_extract(ray, store, args, sync_spec, lambda: build_catalog(
            store, plan, store_fields, val=args.val, test=args.test, seed=args.split_seed))
    return report(store, args.dataset, tables, frames, seconds, failures, probe_figures)


def adapter_kwargs(args: argparse.Namespace) -> dict:
    """--max-seconds goes to adapters that cut by themselves (word timings); others are probed."""
    return {"max_seconds": args.max_seconds} if "max_seconds" in adapter_options(args.dataset) else {}


def probes_long_videos(args: argparse.Namespace) -> bool:
    return args.max_seconds is not None and "max_seconds" not in adapter_options(args.dataset)


def update_store_json(store: Path, args: argparse.Namespace, fields: list[str]) -> list[str]:
    """Record the timebase and every field's version in store.json; returns the store's fields."""
    info = read_store_json(store)
    store_fields = sorted(set(info.get("fields", {})) | set(fields), key=lambda f: (f == "meta", f))
    info.update(version=STORE_VERSION, timebase={"fps": FPS, "sample_rate": 16000, "window": WINDOW},
                fields={f: {"version": FIELDS[f].version, "ext": FIELDS[f].ext, "rate": FIELDS[f].rate}
                        if f in FIELDS else {"version": "meta-1", "ext": "json", "rate": None}
                        for f in store_fields})
    if "hubert" in store_fields:
        info["fields"]["hubert"].update(info.get("hubert", {}))
    if "hubert" in fields:
        info["hubert"] = {"model": hubert_model(args), "layer": args.hubert_layer}
        info["fields"]["hubert"].update(info["hubert"])
    write_store_json(store, info)
    return store_fields


def report(store: Path, dataset: str, tables: dict, frames: int, seconds: float,
           failures: dict[int, str], probe: dict | None = None) -> int:
    """Print and save the run's figures and every error row; the exit code (see EXIT_CODES)."""
    mine = [u for u in tables["utterances"].to_pylist() if u["dataset"] == dataset]
    figures = {"dataset": dataset, "utterances": len(mine),
               "ok": sum(u["status"] == "ok" for u in mine),
               "errors": sum(u["status"] == "error" for u in mine),
               "frames_extracted": frames, "seconds": round(seconds, 2),
               "frames_per_second": round(frames / seconds, 2) if frames else 0.0,
               "failed_shards": [f"{dataset}-{i:06d}: {c}" for i, c in sorted(failures.items())]}
    if probe is not None:
        figures["probe"] = probe
    (store / "extract_report.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    for err in tables["errors"].to_pylist():
        if err["dataset"] == dataset:
            print(f"  error {err['utt_id']} [{err['field']}/{err['stage']}]: {err['reason']}")
    if failures:
        n_rows = sum(u["shard_id"] in failures for u in mine)
        print(f"{len(failures)} shard(s) failed after their retries; their {n_rows} utterances are error rows "
              f"(stage 'worker') naming the cause. Re-run the same command to try them again:",
              *figures["failed_shards"], sep="\n  ", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
