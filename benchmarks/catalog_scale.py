"""Catalog build, verify and trainer start-up at corpus scale, on a fabricated store (no media).

    python -m benchmarks.catalog_scale --utterances 250000 1000000

For each N it fabricates a store with the project's own writers (catalog/plan.py plans
content-sized shards, catalog/tars.py writes the tars, catalog/sidecar.py the sidecars):

- every shard gets a `meta` tar and sidecar whose entries carry the quality columns;
- the first --train-shards shards also get real `mel` and `landmarks` tars (utterances of 1 s,
  so their members stay small); the other shards have no sidecar for those fields, so the build
  takes its missing-sidecar path for most of the store and the trainer trains on those shards
  while still reading the whole catalog.

Then it measures, each in a fresh process (seconds and peak resident memory of that process):

- build:   catalog.build.build_catalog over every field, given the plan rows that
           pipelines/extract.py holds (catalog.plan.read_plan, timed separately);
- verify:  catalog.verify.verify of the meta field (every shard's tar read and hashed);
- summary: catalog.summary.summarize, then one SQL quality filter (catalog.sql.run_sql);
- trainer: training.loader.RankData.from_store (mel_landmarks, --buffer-shards) and the first
           batch out of RankData.batches, without the torch import.

Prints ONE JSON object: per N the figures, and with two Ns the cost ratios (the target: 4x the
utterances costs at most 5x the time; each figure under 2 minutes at 1M). Timings share the
machine with whatever else runs: compare ratios from the same invocation.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASET = "bench"
FIELDS = ["landmarks", "mel", "meta"]
TRAIN_FRAMES = 25  # utterances of the train shards: 1 s, 21 windows
PHASES = ("build", "verify", "summary", "trainer")
MARKER = "fabricated.json"  # written last: the store is complete (--keep stores are reused)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--utterances", type=int, nargs="+", default=[250_000, 1_000_000],
                   help="store sizes to fabricate and measure (default: 250000 1000000)")
    p.add_argument("--per-speaker", type=int, default=100, help="utterances per speaker (default: 100)")
    p.add_argument("--shard-minutes", type=float, default=None,
                   help="shard target (default: catalog.plan.DEFAULT_SHARD_MINUTES)")
    p.add_argument("--train-shards", type=int, default=8,
                   help="shards that also get mel and landmarks tars (default: 8)")
    p.add_argument("--buffer-shards", type=int, default=4, help="trainer --buffer-shards (default: 4)")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "unisync-catalog-scale",
                   help="working folder (default: %(default)s)")
    p.add_argument("--keep", action="store_true",
                   help="keep the fabricated stores, and reuse kept ones of the same size")
    p.add_argument("--phase", choices=["fabricate", "build", "verify", "summary", "trainer"], default=None,
                   help=argparse.SUPPRESS)  # internal: run one phase in this process
    p.add_argument("--store", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _peak_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _cpu() -> float:
    """CPU seconds of this process (all threads): what the phase cost, whatever else the machine ran."""
    return time.process_time()


# ---------------------------------------------------------------------------------------------
# fabrication
# ---------------------------------------------------------------------------------------------
def fabricate(store: Path, n: int, per_speaker: int = 100, train_shards: int = 8,
              shard_minutes: float | None = None, seed: int = 0) -> dict:
    """A store of `n` planned utterances with meta for all and mel/landmarks for `train_shards`."""
    import numpy as np
    from tqdm import tqdm

    from catalog.layout import STORE_VERSION, write_store_json
    from catalog.plan import DEFAULT_SHARD_MINUTES, extend_plan, shards_of, write_plan
    from catalog.sidecar import write_sidecar
    from catalog.tars import TarWriter, sha256
    from features.codecs import encode_npy
    from features.fields import FIELDS as REGISTRY

    rng = np.random.default_rng(seed)
    seconds = rng.uniform(2.0, 8.0, n).round(2)
    utts = [{"utt_id": f"spk{i // per_speaker:06d}/u{i:07d}", "speaker_id": f"spk{i // per_speaker:06d}",
             "video_path": f"/fabricated/{i}.mp4", "duration_s": float(seconds[i]),
             "transcript": "FABRICATED", "official_split": "", "language": "en"} for i in range(n)]
    # shuffle speakers across shards the way a real listing interleaves folders: by utterance id
    plan = extend_plan([], DATASET, utts, shard_minutes=shard_minutes or DEFAULT_SHARD_MINUTES)
    write_plan(store, plan)
    write_store_json(store, {"version": STORE_VERSION, "fields": {
        **{f: {"version": REGISTRY[f].version, "ext": REGISTRY[f].ext, "rate": REGISTRY[f].rate}
           for f in FIELDS if f in REGISTRY},
        "meta": {"version": "meta-1", "ext": "json", "rate": None}}})
    mel = encode_npy(rng.standard_normal((80, 1 + 640 * TRAIN_FRAMES // 200)).astype(np.float16))
    landmarks = encode_npy((48 + 10 * rng.standard_normal((TRAIN_FRAMES, 478, 3))).astype(np.float16))
    shards = shards_of(plan)
    for shard_id, rows in tqdm(shards.items(), desc=f"fabricate {n}", unit="shard", mininterval=5):
        train = shard_id < train_shards
        entries = []
        with TarWriter(_tar(store, "meta", shard_id)) as tar:
            for r in rows:
                frames = TRAIN_FRAMES if train else int(round(r["planned_seconds"] * 25))
                columns = {"n_frames": frames, "expected_frames": frames,
                           "decoded_frames": frames - (1 if r["index_in_shard"] % 50 == 7 else 0),
                           "audio_coverage": 0.9 if r["index_in_shard"] % 40 == 3 else 1.0,
                           "warnings": ["audio shorter than video: 0.4 s padded"]
                           if r["index_in_shard"] % 40 == 3 else [],
                           "detection_rate": 1.0, "face_size": 120.0, "detection_confidence": 0.98}
                data = json.dumps({"utt_id": r["utt_id"], "dataset": DATASET, "speaker_id": r["speaker_id"],
                                   **columns}, sort_keys=True).encode()
                tar.add(f"{r['key']}.json", data)
                entries.append({"utt_id": r["utt_id"], "status": "ok", "bytes": len(data),
                                "sha256": sha256(data), "columns": columns, "errors": {}})
        write_sidecar(store, DATASET, "meta", shard_id, "meta-1", entries, tar)
        if not train:
            continue
        for field, data in (("mel", mel), ("landmarks", landmarks)):
            with TarWriter(_tar(store, field, shard_id)) as tar:
                for r in rows:
                    tar.add(f"{r['key']}.{REGISTRY[field].ext}", data)
            write_sidecar(store, DATASET, field, shard_id, REGISTRY[field].version,
                          [{"utt_id": r["utt_id"], "status": "ok", "bytes": len(data), "sha256": sha256(data)}
                           for r in rows], tar)
    out = {"utterances": n, "shards": len(shards), "mean_utterances_per_shard": round(n / len(shards), 1),
           "per_speaker": per_speaker, "train_shards": train_shards, "shard_minutes": shard_minutes}
    (store / MARKER).write_text(json.dumps(out))
    return out


def _tar(store: Path, field: str, shard_id: int) -> Path:
    from catalog.layout import tar_path

    return tar_path(store, DATASET, field, shard_id)


# ---------------------------------------------------------------------------------------------
# phases (each in its own process, so peak memory is the phase's own)
# ---------------------------------------------------------------------------------------------
def phase_build(store: Path) -> dict:
    from catalog.build import build_catalog
    from catalog.plan import read_plan

    started, cpu = time.perf_counter(), _cpu()
    plan = read_plan(store)  # what pipelines/extract.py holds anyway (it extends the plan)
    read_s, read_cpu = time.perf_counter() - started, _cpu() - cpu
    started, cpu = time.perf_counter(), _cpu()
    tables = build_catalog(store, plan, FIELDS)
    return {"seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(_cpu() - cpu, 2),
            "read_plan_seconds": round(read_s, 2), "read_plan_cpu_seconds": round(read_cpu, 2),
            "rows": tables["utterances"].num_rows, "peak_mb": _peak_mb()}


def phase_verify(store: Path) -> dict:
    from catalog.verify import verify

    started, cpu = time.perf_counter(), _cpu()
    report = verify(store, fields=["meta"])
    return {"seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(_cpu() - cpu, 2),
            "ok": report["ok"], "walked_tars": report["checked"]["walked"],
            "members": report["checked"]["members"], "bytes": report["checked"]["bytes"],
            "problems": report["n_problems"], "peak_mb": _peak_mb()}


def phase_summary(store: Path) -> dict:
    from catalog.sql import run_sql
    from catalog.summary import summarize

    started, cpu = time.perf_counter(), _cpu()
    s = summarize(store)
    summary_s = time.perf_counter() - started
    usable = run_sql(store, "SELECT count(*) AS n FROM utterances WHERE status = 'ok' "
                            "AND audio_coverage >= 0.95 AND len(warnings) = 0")["n"][0].as_py()
    return {"seconds": round(summary_s, 2), "cpu_seconds": round(_cpu() - cpu, 2),
            "sql_quality_filter_seconds": round(time.perf_counter() - started - summary_s, 2),
            "utterances": s["utterances"], "usable": usable, "peak_mb": _peak_mb()}


def phase_trainer(store: Path, buffer_shards: int) -> dict:
    import torch  # noqa: F401  (imported before the clock starts: not a start-up cost of the store)

    from training.loader import RankData

    started, cpu = time.perf_counter(), _cpu()
    data = RankData.from_store(str(store), "mel", "landmarks", rank=0, world=1, workers=0,
                               buffer_shards=buffer_shards)
    spec_s = time.perf_counter() - started
    batch = next(data.batches(0))
    return {"seconds": round(time.perf_counter() - started, 2), "cpu_seconds": round(_cpu() - cpu, 2),
            "spec_seconds": round(spec_s, 2),
            "batch_pairs": int(len(batch.label)),
            "train_shards": len(data.spec.all_shards), "peak_mb": _peak_mb()}


def run_phase(args: argparse.Namespace) -> dict:
    if args.phase == "fabricate":
        started = time.perf_counter()
        out = fabricate(args.store, args.utterances[0], args.per_speaker, args.train_shards, args.shard_minutes)
        return {**out, "seconds": round(time.perf_counter() - started, 2), "peak_mb": _peak_mb()}
    if args.phase == "build":
        return phase_build(args.store)
    if args.phase == "verify":
        return phase_verify(args.store)
    if args.phase == "summary":
        return phase_summary(args.store)
    return phase_trainer(args.store, args.buffer_shards)


def _subprocess(args: argparse.Namespace, phase: str, store: Path, n: int) -> dict:
    cmd = [sys.executable, __file__, "--phase", phase, "--store", str(store), "--utterances", str(n),
           "--per-speaker", str(args.per_speaker), "--train-shards", str(args.train_shards),
           "--buffer-shards", str(args.buffer_shards)]
    if args.shard_minutes:
        cmd += ["--shard-minutes", str(args.shard_minutes)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.phase:
        print(json.dumps(run_phase(args)))
        return 0
    result: dict = {"machine": {"cpus": os.cpu_count(), "load_average_before": round(os.getloadavg()[0], 2)},
                    "settings": {"per_speaker": args.per_speaker, "train_shards": args.train_shards,
                                 "buffer_shards": args.buffer_shards, "shard_minutes": args.shard_minutes},
                    "runs": {}}
    for n in args.utterances:
        store = args.out / f"store-{n}"
        marker = store / MARKER
        if args.keep and marker.exists() and json.loads(marker.read_text()).get("utterances") == n:
            run = {"fabricate": {"reused": str(store), **json.loads(marker.read_text())}}
        else:
            shutil.rmtree(store, ignore_errors=True)
            run = {"fabricate": _subprocess(args, "fabricate", store, n)}
        for phase in PHASES:
            run[phase] = _subprocess(args, phase, store, n)
            print(f"{n} {phase}: {run[phase]}", file=sys.stderr, flush=True)
        result["runs"][str(n)] = run
        if not args.keep:
            shutil.rmtree(store, ignore_errors=True)
    sizes = sorted(args.utterances)
    if len(sizes) >= 2:
        small, large = result["runs"][str(sizes[0])], result["runs"][str(sizes[-1])]
        result["ratios"] = {"utterances": round(sizes[-1] / sizes[0], 2), **{
            phase: round(large[phase]["seconds"] / max(small[phase]["seconds"], 1e-9), 2)
            for phase in PHASES if "seconds" in large[phase] and "seconds" in small[phase]}}
    result["machine"]["load_average_after"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
