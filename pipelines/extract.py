"""Extract a corpus into a feature store with Ray: one task per shard.

    python pipelines/extract.py --dataset folder --root videos/ --store store/
    ray job submit --working-dir . -- python pipelines/extract.py --dataset lrs2 --root ... --store ...

Without a cluster address (and no RAY_ADDRESS, which `ray job submit` sets) it starts a local Ray;
a corpus of one shard runs in a local worker process instead (no Ray start-up; --ray always keeps
Ray; catalog/jobs.py says why a child process and what a crash then does).
Re-running skips intact (shard, field) pairs (catalog/sidecar.py: a tar whose SHA-256 no longer
matches its sidecar, a broken sidecar, or a pair that failed at job level is redone); --overwrite
redoes them (`--overwrite --fields X` rewrites X's tars and merges X's facts into meta).

Exit codes: 0 every shard ran (utterances that failed are error rows); 1 some shard failed after
--max-retries attempts (its utterances are 'incomplete', error rows name the cause; re-run to retry it), or a
field could not run at all (its model cannot load: said once, the field's rows are
`field_<name>` = error with stage `model`, their status unchanged; re-run once it is fixed);
2 bad arguments, no videos, an unusable --store (a file; not writable: read-only, no permission),
or the store is locked by another live job (the message names it: host, pid, since, command);
3 writing the store failed mid-run (e.g. the disk is full): one line names the path and the
reason, complete shards are kept, re-run once fixed; 4 Ray did not start or connect within
--ray-timeout; 130 interrupted (SIGINT, Ctrl-C), 143 stopped (SIGTERM): Ray's workers are
stopped, no temporary file is left, the lock is released, the same command resumes.

One job writes a store at a time: `<store>/store.lock` (catalog/lock.py) names the holder; a
lock whose holder is gone is taken over with a warning. The plan is `<store>/plan.parquet`; the
catalog tables are swapped in together when the run ends, so readers keep the previous catalog
for the whole run. New files of a folder corpus that hold no video stream, and a second file
with the same utterance id, are skipped and listed (`skipped` in extract_report.json, and on
stderr); two ids that map to one tar key (`x y` and `x_y`) make the later one an error row
(stage `plan`) naming the other.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from catalog.build import build_catalog
from catalog.jobs import Runner, Task, add_runner_options, job_path, runner_from_args
from catalog.layout import STORE_VERSION, read_store_json, write_store_json
from catalog.lock import StoreLocked, store_lock
from catalog.plan import DEFAULT_SHARD_MINUTES, extend_plan, read_plan, shards_of, write_plan
from catalog.sidecar import parse_sidecar
from features import whisper as whisper_field
from features.cli import HelpFormatter
from features.aligned import SIZES as ALIGNED_SIZES
from features.fields import ALIGNED_FIELDS, DEFAULT_FIELDS, FIELDS, MODEL_OPTIONS, Options, model_provenance, resolve
from features.hubert import DEFAULT_MODEL, MANDARIN_MODEL
from features.timebase import FPS, WINDOW
from pipelines import job
from pipelines.adapters import (ADAPTERS, LANGUAGES, adapter_options, list_utterances, skip_without_video,
                                skipped_of)
from pipelines.plan_errors import without_plan_errors, write_plan_errors
from pipelines.probe import cut_long_videos


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--dataset", required=True, choices=sorted(ADAPTERS), help="corpus adapter")
    p.add_argument("--root", required=True, type=Path, help="corpus root folder")
    p.add_argument("--store", required=True, type=Path, help="feature store folder (shared by all nodes)")
    p.add_argument("--fields", nargs="+", default=DEFAULT_FIELDS,
                   help=f"fields to extract, or 'all'; known: {list(FIELDS) + ['meta']} (the sync "
                        "columns are a pass after extraction: python -m training.sync.sync_pass)")
    p.add_argument("--hubert-model", default=None,
                   help=f"HuBERT hub id or local directory (default: {DEFAULT_MODEL}; "
                        f"{MANDARIN_MODEL} for Mandarin corpora)")
    p.add_argument("--hubert-layer", type=int, default=-1, help="hidden layer to store (-1: last)")
    p.add_argument("--crop-size", type=int, choices=ALIGNED_SIZES, default=ALIGNED_SIZES[0],
                   help="the size `--fields aligned` (and `all`) stands for: the field aligned<size> "
                        "(features/aligned.py)")
    p.add_argument("--whisper-model", default=whisper_field.DEFAULT_MODEL,
                   help="Whisper hub id or local directory (the encoder runs, no decoder)")
    p.add_argument("--whisper-layer", type=whisper_field.parse_layer, default=-1,
                   help="hidden state to store (-1: the last; 0: the embedding; k: after block k) or "
                        "'all': every one, stacked (MuseTalk's input)")
    p.add_argument("--fan-weights", type=Path, default=None,
                   help="landmarks68_fan: a local face-alignment 2D-FAN-4 weights file "
                        "(2DFAN4-11f355bf06.pth.tar; never downloaded); 'all' includes the field only with it")
    add_runner_options(p, "concurrent shard tasks (default: every CPU Ray offers)")
    p.add_argument("--shard-minutes", type=float, default=DEFAULT_SHARD_MINUTES,
                   help="minutes of video per new shard (catalog/plan.py: durations when known, else "
                        "file size / an assumed bitrate); existing shards are kept")
    p.add_argument("--shard-size", type=int, default=None,
                   help="also cap new shards at this many utterances (unset: no cap)")
    p.add_argument("--overwrite", action="store_true", help="redo complete (shard, field) pairs")
    p.add_argument("--no-verify-hashes", dest="verify_hashes", action="store_false",
                   help="skip the SHA-256 check of stored tars against their sidecars (one read of the "
                        "fields' tars per run, in the shard tasks); sizes are still checked")
    p.add_argument("--val", type=float, default=0.1, help="share of speakers in the val split")
    p.add_argument("--test", type=float, default=0.1, help="share of speakers in the test split")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the speaker-disjoint split")
    p.add_argument("--max-retries", type=int, default=3,
                   help="retries of a shard whose worker died, was killed for memory or lost its node "
                        "(every cause counts; then the shard's rows are errors naming the cause)")
    p.add_argument("--sync-scorer", default=None, help=argparse.SUPPRESS)  # moved: see main()
    p.add_argument("--max-seconds", type=float, default=None,
                   help="cut videos longer than this into <utt_id>_segNN utterances of at most this "
                        "length: lrs2/lrs3 pretrain clips at word boundaries; every other dataset by a "
                        "probe pass (shot cuts, main-face runs, even splits; pipelines/probe.py) "
                        "before the plan is fixed (unset: keep whole videos)")
    p.add_argument("--identity-cuts", action="store_true",
                   help="with --max-seconds: the probe also cuts where the face's identity changes "
                        "(dlib's face-recognition descriptor at 2.5 Hz, threshold 0.5; slower probe: README)")
    return p.parse_args(argv)


def make_runner(args: argparse.Namespace) -> Runner:
    """The job's task runner (catalog/jobs.py): Ray starts when a phase first needs it (or the
    phase runs in a local worker: one shard), within --ray-timeout (job.RayStartError otherwise), with
    SIGINT/SIGTERM ours again after ray.init (which sets its own SIGTERM handler)."""
    return runner_from_args(args, after_start=job.install_handlers)


def extract_shard_task(store: str, dataset: str, shard_id: int, rows: list[dict], fields: list[str],
                       overwrite: bool, options: Options, verify_hashes: bool = True) -> dict:
    """The task body: one shard (pipelines.worker loads on the worker, not in the driver)."""
    from pipelines.worker import extract_shard

    return extract_shard(store, dataset, shard_id, rows, fields, overwrite, options, verify_hashes)


class Failures(dict):
    """shard_id -> cause of the shards that failed for good, with `fields`: field -> reason of the
    fields that could not run at all (a job-level failure, e.g. a model that cannot load), and
    `repaired`: the pairs redone because they no longer matched their record (see report)."""

    def __init__(self, shards: dict | None = None):
        super().__init__(shards or {})
        self.fields: dict[str, str] = {}
        self.repaired: list[str] = []

    def merge(self, other: "Failures") -> "Failures":
        self.update(other)
        for name, reason in other.fields.items():
            self.fields.setdefault(name, reason)
        self.repaired += other.repaired
        return self


def _note_result(dataset: str, result: dict, failures: Failures) -> None:
    """Say what a shard repaired or found damaged; keep its job-level field failures (said once, later)."""
    name = f"{dataset}-{result['shard_id']:06d}"
    for field, problem in sorted(result.get("repaired", {}).items()):
        failures.repaired.append(f"{name} {field}: {problem}")
        print(f"repaired {name} {field}: {problem}", file=sys.stderr)
    for field, problem in sorted(result.get("damaged_inputs", {}).items()):
        print(f"warning: {name} {field}: {problem}; not used as an input (re-run with --fields {field} "
              "to repair it)", file=sys.stderr)
    for field, reason in result.get("unavailable", {}).items():
        failures.fields.setdefault(field, reason)


def run_shards(runner: Runner, store: Path, dataset: str, plan: list[dict], fields: list[str],
               overwrite: bool, max_retries: int, options: Options, gpu: bool = False,
               verify_hashes: bool = True) -> tuple[int, Failures]:
    """Run one task per shard through the job runner (catalog/jobs.py: at most --workers in
    flight); returns frames and the causes of the shards that failed for good (with the fields
    that could not run, see Failures).

    Retries are the driver's, bounded, by cause (catalog/jobs.py); a shard that fails for good
    becomes error rows naming the cause (pipelines/shard_failures.py). A pair that failed last
    time (placeholders, a model that could not load) is not intact, so its task redoes it.
    """
    from pipelines.shard_failures import write_failed_shard

    shards = shards_of(plan)
    failures, done, started = Failures(), {"frames": 0}, time.perf_counter()

    def finished(task: Task, result: dict) -> None:
        done["frames"] += result["frames"]
        _note_result(dataset, result, failures)

    def failed(task: Task, cause: str) -> None:
        shard_id = task.args[2]
        write_failed_shard(store, dataset, shard_id, shards[shard_id], fields, cause)
        failures[shard_id] = cause

    tasks = [Task(f"{dataset}-{shard_id:06d}", (str(store), dataset, shard_id, shards[shard_id], fields, overwrite,
                                                options, verify_hashes)) for shard_id in shards]
    runner.run(extract_shard_task, tasks, desc=f"{dataset} {'+'.join(f for f in fields if f != 'meta')}",
               unit="shard", max_retries=max_retries, num_gpus=1 if gpu else 0, on_result=finished,
               on_failure=failed,
               postfix=lambda: {"fps": f"{done['frames'] / max(time.perf_counter() - started, 1e-9):.1f}"})
    return done["frames"], failures


def extract_fields(runner: Runner, store: Path, args: argparse.Namespace, plan: list[dict], fields: list[str]
                   ) -> tuple[int, Failures]:
    """Run the fields in dependency order: the per-shard fields first; then, once the corpus's
    landmarks are stored, fit the morphable model and extract tdmm; then the GPU fields in
    GPU tasks when the cluster has GPUs (else they ran with the rest on CPUs). A shard that
    failed for good in one phase is left out of the later ones. Later phases merge their
    fields' facts into meta. Ends by recording in store.json what the stored rows were made with."""
    from pipelines.models import ensure_tdmm_model
    from pipelines.shard_failures import write_failed_shard

    options = Options(hubert_model=hubert_model(args), hubert_layer=args.hubert_layer,
                      whisper_model=args.whisper_model, whisper_layer=args.whisper_layer,
                      fan_weights=str(args.fan_weights.resolve()) if args.fan_weights else None)
    has_gpu = runner.has_gpu(len(shards_of(plan)))  # a local worker: every field in one phase
    on_gpu = [f for f in fields if f in FIELDS and FIELDS[f].gpu and has_gpu]
    first = [f for f in fields if f != "tdmm" and f not in on_gpu]
    meta = ["meta"] if "meta" in fields else []
    run = dict(overwrite=args.overwrite, max_retries=args.max_retries,
               verify_hashes=getattr(args, "verify_hashes", True))
    frames, failures = run_shards(runner, store, args.dataset, plan, first, options=options, **run)
    later = [(["tdmm"] if "tdmm" in fields else [], False), (on_gpu, True)]
    for phase, gpu in ((f, g) for f, g in later if f):
        rest = [r for r in plan if r["shard_id"] not in failures]
        if phase == ["tdmm"]:
            options.tdmm_model = ensure_tdmm_model(store, args.dataset, rest, refit=args.overwrite)
        more, failed = run_shards(runner, store, args.dataset, rest, phase + meta, options=options, gpu=gpu, **run)
        frames, failures = frames + more, failures.merge(failed)
    shards = shards_of(plan)
    for shard_id, cause in failures.items():  # the later phases' fields of a failed shard: error rows too
        write_failed_shard(store, args.dataset, shard_id, shards[shard_id], fields, cause)
    for name in MODEL_OPTIONS:
        record_provenance(store, options if name in fields else None, name)
    return frames, failures


def hubert_model(args: argparse.Namespace) -> str:
    """--hubert-model, else the Chinese model for Mandarin corpora, else the English default."""
    return args.hubert_model or (MANDARIN_MODEL if LANGUAGES.get(args.dataset) == "zh" else DEFAULT_MODEL)


def main(argv=None) -> int:
    """Run the job; every way it can end is one exit code and, on failure, one line (module doc)."""
    args = parse_args(argv)
    try:
        store = job_path(args.store)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return job.EXIT_USAGE
    session = {"ray": None}
    with job.handlers_installed():
        return _main(args, store, session)


def _main(args: argparse.Namespace, store: Path, session: dict) -> int:
    try:
        with store_lock_checked(args, store):
            try:
                return run(args, store, session)
            finally:
                with job.signals_ignored():  # clean-up runs to its end, even on a second Ctrl-C
                    if session["ray"] is not None:
                        session["ray"].close()  # the Ray it started, if any: its workers die with it
                    job.remove_leftovers(store, local=not (args.address or os.environ.get("RAY_ADDRESS")))
                    if session.get("rebuild"):  # ended early: the catalog catches up with what is stored
                        job.rebuild_catalog(session["rebuild"])
    except KeyboardInterrupt as exc:  # job.Interrupted, or Ray's bare one for our SIGINT / SIGTERM
        signum = job.interrupt_signal(exc)
        print(f"interrupted by {signal_name(signum)}: stopped; complete shards are kept and the same "
              f"command resumes", file=sys.stderr)
        return 128 + signum
    except (job.UsageError, job.StoreUnusable, StoreLocked) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return job.EXIT_USAGE
    except job.RayStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return job.EXIT_RAY
    except OSError as exc:
        print(job.describe_os_error(exc), file=sys.stderr)
        return job.EXIT_IO


def signal_name(signum: int) -> str:
    import signal

    return signal.Signals(signum).name


def store_lock_checked(args: argparse.Namespace, store: Path):
    """The arguments and the store checked (nothing started yet), then the store's lock."""
    with job.usage_errors():
        if "sync" in args.fields or args.sync_scorer:  # the sync pass is its own command now
            raise ValueError(f"the sync pass is its own command: run extract.py without --fields sync / "
                             f"--sync-scorer, then python -m training.sync.sync_pass --store {args.store} "
                             f"--scorer {args.sync_scorer or 'unisync:CHECKPOINT'}")
        wanted = [f"aligned{args.crop_size}" if f == "aligned" else f for f in args.fields]
        args.fields = resolve(wanted)
        if wanted in ([], ["all"]):  # every field, the aligned crops at --crop-size only
            args.fields = [f for f in args.fields if f not in ALIGNED_FIELDS or f == f"aligned{args.crop_size}"]
            args.fields = [f for f in args.fields if f != "landmarks68_fan" or args.fan_weights]  # opt-in
        if not args.ray_timeout > 0:
            raise ValueError(f"--ray-timeout must be positive, got {args.ray_timeout}")
    job.check_store(store)
    return store_lock(store)


def run(args: argparse.Namespace, store: Path, session: dict) -> int:
    """The job, with the store locked: list, plan, extract, build the catalog, report."""
    fields = args.fields
    with job.usage_errors():
        utterances = list_utterances(args.dataset, args.root, **adapter_kwargs(args))
    existing = read_plan(store)
    listed = skipped_of(utterances)  # e.g. a.avi beside a.mp4
    utterances, no_video = skip_without_video(args.dataset, utterances, {
        r["utt_id"] for r in existing if r["dataset"] == args.dataset})
    skipped = listed + no_video
    for item in skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    if not utterances:
        raise job.UsageError(f"no videos found under {args.root} for dataset {args.dataset!r}")
    probe_figures = None
    session["ray"] = make_runner(args)  # Ray starts when a phase first needs it
    if probes_long_videos(args):  # the probe pass runs before the plan is fixed
        utterances, probe_figures = cut_long_videos(session["ray"], store, args.dataset, utterances, existing,
                                                    args.max_seconds, args.identity_cuts)
    with job.usage_errors():  # --shard-minutes / --shard-size out of range
        dataset_plan = extend_plan(existing, args.dataset, utterances, args.shard_size, args.shard_minutes)
    plan = [r for r in existing if r["dataset"] != args.dataset] + dataset_plan
    write_plan(store, plan)
    store_fields = update_store_json(store, args, fields)
    build = lambda: build_catalog(store, plan, store_fields, val=args.val, test=args.test,  # noqa: E731
                                  seed=args.split_seed)
    session["rebuild"] = build  # from here on the store differs from its catalog until the build
    write_plan_errors(store, args.dataset, dataset_plan, fields)

    started = time.perf_counter()
    frames, failures = extract_fields(session["ray"], store, args, without_plan_errors(dataset_plan), fields)
    seconds = time.perf_counter() - started
    tables = build()
    session["rebuild"] = None
    return report(store, args.dataset, tables, frames, seconds, failures, probe_figures, skipped)


def adapter_kwargs(args: argparse.Namespace) -> dict:
    """--max-seconds goes to adapters that cut by themselves (word timings); others are probed."""
    return {"max_seconds": args.max_seconds} if "max_seconds" in adapter_options(args.dataset) else {}


def probes_long_videos(args: argparse.Namespace) -> bool:
    return args.max_seconds is not None and "max_seconds" not in adapter_options(args.dataset)


def update_store_json(store: Path, args: argparse.Namespace, fields: list[str]) -> list[str]:
    """Record the timebase, the split settings the catalog is built with (the sync pass rebuilds it
    with them) and every field's version in store.json; returns the store's fields.

    The hubert model is not recorded here, before anything is made with it: record_provenance
    records what the stored rows were made with once the fields have run.
    """
    info = read_store_json(store)
    store_fields = sorted(set(info.get("fields", {})) | set(fields), key=lambda f: (f == "meta", f))
    info.update(version=STORE_VERSION, timebase={"fps": FPS, "sample_rate": 16000, "window": WINDOW},
                splits={"val": args.val, "test": args.test, "seed": args.split_seed},
                fields={f: {"version": FIELDS[f].version, "ext": FIELDS[f].ext, "rate": FIELDS[f].rate}
                        if f in FIELDS else {"version": "meta-1", "ext": "json", "rate": None}
                        for f in store_fields})
    for name in MODEL_OPTIONS:  # hubert, whisper: the model and layer of the stored rows
        if name in store_fields:
            info["fields"][name].update(info.get(name, {}))
    write_store_json(store, info)
    return store_fields


def record_provenance(store: Path, requested: Options | None = None, name: str = "hubert") -> None:
    """store.json's `<name>` entry (hubert, whisper): the model and layer of the stored tars that
    hold rows (their sidecars' provenance; a sidecar from before provenance was recorded keeps the entry
    store.json had). No row made: no entry. Several: `{"models": [...]}` and a warning; tars made
    with another model than `requested` are named with the way to redo them."""
    info = read_store_json(store)
    made: dict[tuple, int] = {}
    for path in sorted(Path(store).glob(f"shards/*/{name}/*.json")):
        side = parse_sidecar(path.read_bytes())
        if side is None or not any(m.get("status") == "ok" for m in side["members"]):
            continue
        prov = side.get("provenance") or info.get(name) or {}
        key = (prov.get("model"), prov.get("layer"))
        made[key] = made.get(key, 0) + 1
    if name in info.get("fields", {}):
        for k in ("model", "layer", "models"):
            info["fields"][name].pop(k, None)
    if not made:
        info.pop(name, None)
    elif len(made) == 1:
        (model, layer), = made
        info[name] = {"model": model, "layer": layer}
    else:
        info[name] = {"models": [{"model": m, "layer": l, "shards": n} for (m, l), n in sorted(
            made.items(), key=lambda kv: str(kv[0]))]}
        print(f"warning: the store's {name} tars were made with {len(made)} models/layers: "
              f"{sorted(made, key=str)}", file=sys.stderr)
    if requested is not None:
        wanted = model_provenance(name, requested)
        other = {k: n for k, n in made.items() if k != (wanted["model"], wanted["layer"])}
        if other:
            print(f"warning: {sum(other.values())} {name} shard tar(s) were made with {sorted(other, key=str)}, "
                  f"not {wanted['model']!r} layer {wanted['layer']}; add --overwrite to redo "
                  "them with it", file=sys.stderr)
    if name in info and name in info.get("fields", {}):
        info["fields"][name].update(info[name])
    write_store_json(store, info)


def report(store: Path, dataset: str, tables: dict, frames: int, seconds: float,
           failures: dict[int, str], probe: dict | None = None, skipped: list[dict] | None = None) -> int:
    """Print and save the run's figures and the error rows; the exit code (see the module doc).

    `ok` counts utterances whose status is ok: a field that could not run at all (its model did
    not load, `failures.fields`) leaves its rows' status as it was and is counted apart, in
    `field_failures`, and said once. Error rows sharing field, stage and reason print as one line.
    """
    mine = [u for u in tables["utterances"].to_pylist() if u["dataset"] == dataset]
    job_fields = getattr(failures, "fields", {})
    errors = [e for e in tables["errors"].to_pylist() if e["dataset"] == dataset]
    figures = {"dataset": dataset, "utterances": len(mine),
               "ok": sum(u["status"] == "ok" for u in mine),
               "errors": sum(u["status"] == "error" for u in mine),
               "incomplete": sum(u["status"] == "incomplete" for u in mine),
               "frames_extracted": frames, "seconds": round(seconds, 2),
               "frames_per_second": round(frames / seconds, 2) if frames else 0.0,
               "failed_shards": [f"{dataset}-{i:06d}: {c}" for i, c in sorted(failures.items())],
               "field_failures": {f: {"reason": r, "utterances": sum(
                   e["field"] == f and e["reason"] == r for e in errors)} for f, r in sorted(job_fields.items())},
               "repaired": list(getattr(failures, "repaired", []))}
    if probe is not None:
        figures["probe"] = probe
    figures["skipped"] = list(skipped or [])  # files not planned, and why (main printed them)
    (store / "extract_report.json").write_text(json.dumps(figures, indent=2))
    print(json.dumps(figures))
    groups: dict[tuple, list[str]] = {}
    for err in errors:
        if job_fields.get(err["field"]) != err["reason"]:  # a job-level failure is said once, below
            groups.setdefault((err["field"], err["stage"], err["reason"]), []).append(err["utt_id"])
    for (field, stage, reason), utts in groups.items():
        who = utts[0] if len(utts) == 1 else f"{utts[0]} and {len(utts) - 1} more"
        print(f"  error {who} [{field}/{stage}]: {reason}")
    for field, info in figures["field_failures"].items():
        print(f"error: field {field} could not run (a job-level failure, not the utterances'): {info['reason']} "
              f"-- its {info['utterances']} rows are field_{field} = error, stage 'model', their status "
              f"unchanged; fix it and re-run the same command to fill them in", file=sys.stderr)
    if failures:
        n_rows = sum(u["shard_id"] in failures for u in mine)
        print(f"{len(failures)} shard(s) failed after their retries; their {n_rows} utterances are 'incomplete' "
              f"with error rows (stage 'worker') naming the cause. Re-run the same command to try them again:",
              *figures["failed_shards"], sep="\n  ", file=sys.stderr)
    return 1 if failures or job_fields else 0


if __name__ == "__main__":
    raise SystemExit(main())
