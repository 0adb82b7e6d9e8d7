"""Extraction capacity: throughput with 1 and 2 Ray workers, per-frame costs per stage, and a plan
of core-hours and store bytes per corpus. (The store's own costs at corpus scale, catalog build,
verify and trainer start-up, are benchmarks/catalog_scale.py.)

    python -m benchmarks.capacity                          # 200 synthetic utterances of 1-2 s
    python -m benchmarks.capacity --utterances 24 --workers 1 2 --profile 4

1. Generates a synthetic corpus (pipelines/synthetic.py) of --utterances clips.
2. Runs pipelines/extract.py on it once per --workers value (fresh store, private local Ray) and
   records wall time, in-job time, frames/s and core-seconds per frame.
3. Profiles the stages in one process (no Ray) on --profile clips, synthetic and (when present)
   the real clips in ../shared/corpus/real: decode, face tracking, then each field's encode, in
   milliseconds per frame, and each field's stored bytes per frame.
4. Turns the measured per-frame figures into a capacity plan: CPU core-hours and store bytes per
   field for LRS2, LRS3, VoxCeleb2 and CN-CVS at the hours given by --hours.

Writes <out>/capacity.json and prints Markdown tables.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

FPS = 25
# Corpus hours assumed by the plan (published totals, all subsets; override with --hours).
DEFAULT_HOURS = {"lrs2": 224.0, "lrs3": 438.0, "voxceleb2": 2442.0, "cncvs": 308.0}
REAL_CORPUS = REPO.parent / "shared" / "corpus" / "real"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--utterances", type=int, default=200, help="synthetic utterances to extract")
    p.add_argument("--seconds", type=float, nargs=2, default=[1.0, 2.0], metavar=("MIN", "MAX"),
                   help="utterance length range")
    p.add_argument("--size", type=int, default=224, help="synthetic frame size (LRS3/VoxCeleb2 are 224x224)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="Ray worker counts to compare")
    p.add_argument("--fields", nargs="+", default=["audio", "rgb", "landmarks", "mel", "meta"],
                   help="fields to extract")
    p.add_argument("--shard-size", type=int, default=16, help="utterances per shard")
    p.add_argument("--profile", type=int, default=8, help="clips profiled per stage (synthetic and real each)")
    p.add_argument("--real", type=Path, default=REAL_CORPUS, help="real clips (folder layout) to profile, if present")
    p.add_argument("--hours", default=",".join(f"{k}={v:g}" for k, v in DEFAULT_HOURS.items()),
                   help="corpus hours for the plan, name=hours,...")
    p.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "unisync-capacity",
                   help="working folder (corpus, stores) and capacity.json")
    p.add_argument("--seed", type=int, default=0, help="synthetic corpus seed")
    p.add_argument("--render", type=Path, default=None,
                   help="only recompute and print the plans of this existing capacity.json (with --hours)")
    return p.parse_args(argv)


def make_corpus(root: Path, n: int, seconds: tuple[float, float], size: int, seed: int) -> Path:
    from pipelines.synthetic import generate_corpus

    per_speaker = 6
    marker = root / f".n{n}-{seconds[0]}-{seconds[1]}-{size}-{seed}"
    if marker.exists():
        return root
    paths = generate_corpus(root, n_speakers=math.ceil(n / per_speaker), n_utterances=per_speaker, seed=seed,
                            min_seconds=seconds[0], max_seconds=seconds[1], size=size, progress=True)
    for extra in paths[n:]:  # exactly n utterances
        extra.unlink()
        extra.with_suffix(".json").unlink(missing_ok=True)
    marker.touch()
    return root


def run_extraction(corpus: Path, store: Path, workers: int, fields: list[str], shard_size: int) -> dict:
    import shutil

    shutil.rmtree(store, ignore_errors=True)
    cmd = [sys.executable, str(REPO / "pipelines" / "extract.py"), "--dataset", "folder", "--root", str(corpus),
           "--store", str(store), "--workers", str(workers), "--shard-size", str(shard_size), "--fields", *fields]
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    log = open(store.parent / f"{store.name}.log", "w")
    proc = subprocess.Popen(cmd, env={**os.environ, "RAY_ADDRESS": "", "GLOG_minloglevel": "2"},
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cpu: dict[int, tuple[str, float]] = {}  # pid -> (command, last CPU seconds seen)
    while proc.poll() is None:
        for pid, (cmdline, seconds) in _tree_cpu(proc.pid).items():
            cpu[pid] = (cmdline, max(seconds, cpu.get(pid, ("", 0.0))[1]))
        time.sleep(0.5)
    wall = time.perf_counter() - started
    log.close()
    if proc.returncode != 0:
        raise RuntimeError(f"extract.py failed, see {log.name}")
    report = json.loads((store / "extract_report.json").read_text())
    import pyarrow.parquet as pq

    field_rows = pq.read_table(store / "catalog" / "fields.parquet").to_pylist()
    frames = report["frames_extracted"]
    per_field = {}
    for r in field_rows:
        per_field[r["field"]] = per_field.get(r["field"], 0) + r["bytes"]
    worker_cpu = sum(sec for cmdline, sec in cpu.values() if cmdline.startswith("ray::"))
    total_cpu = sum(sec for _, sec in cpu.values())
    return {"workers": workers, "utterances": report["utterances"], "ok": report["ok"], "frames": frames,
            "cpu_s_workers": round(worker_cpu, 1), "cpu_s_all": round(total_cpu, 1),
            "cpu_ms_per_frame": round(1000 * worker_cpu / frames, 2),
            "cpu_ms_per_frame_all": round(1000 * total_cpu / frames, 2),
            "wall_s": round(wall, 2), "job_s": report["seconds"],
            "frames_per_s": round(frames / report["seconds"], 2),
            "frames_per_s_wall": round(frames / wall, 2),
            "core_ms_per_frame": round(1000 * report["seconds"] * workers / frames, 2),
            "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # others' work skews it
            "bytes": per_field, "bytes_per_frame": {f: round(b / frames, 1) for f, b in per_field.items()}}


def _tree_cpu(root: int) -> dict[int, tuple[str, float]]:
    """pid -> (command line, user+system CPU seconds) for `root` and every process below it (/proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            procs[int(entry.name)] = (int(fields[1]), cmdline.strip(), (int(fields[11]) + int(fields[12])) / tick)
    tree, frontier = {root}, {root}
    while frontier:
        frontier = {pid for pid, (ppid, _, _) in procs.items() if ppid in frontier} - tree
        tree |= frontier
    return {pid: (procs[pid][1], procs[pid][2]) for pid in tree if pid in procs}


def profile(videos: list[Path], fields: list[str]) -> dict:
    """Per-stage milliseconds per frame and stored bytes per frame, one process, one core.

    Stage `video` is the one streaming pass (decode, track, and the rgb / lip crops made on the
    way, as extraction runs it); every field is then timed on its own from that pass's outputs.
    """
    from features.face import FaceTracker
    from features.fields import FIELDS, Sources

    tracker = FaceTracker()
    wanted = [f for f in fields if f in FIELDS]
    warm = Sources({"video_path": str(videos[0]), "audio_path": None, "utt_id": "warm", "key": "warm"},
                   lambda: tracker, wanted=wanted)
    for name in wanted:  # load the face graphs, mel filters etc. before timing anything
        FIELDS[name].extract(warm)
    totals: dict[str, float] = {"video": 0.0}  # wall seconds per stage
    cpu_start = time.process_time()
    nbytes: dict[str, int] = {}
    frames, pixels = 0, []
    for video in videos:
        row = {"video_path": str(video), "audio_path": None, "utt_id": video.stem, "key": video.stem}
        src = Sources(row, lambda: tracker, wanted=wanted)
        t = time.perf_counter()
        src.face  # the streaming pass; cached for the fields below
        totals["video"] += time.perf_counter() - t
        frames += src.timeline.n_frames
        facts = src.timeline.facts
        pixels.append(int(facts.get("width", 0)) * int(facts.get("height", 0)))
        for name in wanted:
            t = time.perf_counter()
            data = FIELDS[name].extract(src)
            totals[name] = totals.get(name, 0.0) + time.perf_counter() - t
            size = sum(len(b) for b in data.values()) if isinstance(data, dict) else len(data)
            nbytes[name] = nbytes.get(name, 0) + size
    cpu_total = time.process_time() - cpu_start
    return {"clips": len(videos), "frames": frames, "mean_pixels": round(sum(pixels) / len(pixels)),
            "cpu_ms_per_frame": round(1000 * cpu_total / frames, 3),
            "ms_per_frame": {k: round(1000 * v / frames, 3) for k, v in totals.items()},
            "total_ms_per_frame": round(1000 * sum(totals.values()) / frames, 3),
            "bytes_per_frame": {k: round(v / frames, 1) for k, v in nbytes.items()}}


def capacity_plan(hours: dict[str, float], core_ms_per_frame: float, stage_ms: dict[str, float],
                  bytes_per_frame: dict[str, float]) -> dict:
    """Core-hours (end to end, and per stage) and store bytes per field for each corpus."""
    plan = {}
    for corpus, h in hours.items():
        frames = h * 3600 * FPS
        plan[corpus] = {
            "hours": h, "frames": int(frames),
            "core_hours": round(frames * core_ms_per_frame / 1000 / 3600, 1),
            "core_hours_per_stage": {k: round(frames * v / 1000 / 3600, 1) for k, v in stage_ms.items()},
            "store_bytes": {f: int(frames * b) for f, b in bytes_per_frame.items()},
            "store_bytes_total": int(frames * sum(bytes_per_frame.values())),
        }
    return plan


def _gb(b: float) -> str:
    return f"{b / 1e9:,.1f} GB" if b < 1e12 else f"{b / 1e12:,.2f} TB"


def markdown(result: dict) -> str:
    lines = ["| workers | utterances | frames | job s | wall s (with Ray start) | frames/s | "
             "worker CPU ms/frame | all Ray CPU ms/frame | load avg before |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in result["runs"]:
        lines.append(f"| {r['workers']} | {r['utterances']} | {r['frames']} | {r['job_s']} | {r['wall_s']} | "
                     f"{r['frames_per_s']} | {r['cpu_ms_per_frame']} | {r['cpu_ms_per_frame_all']} | "
                     f"{r['load_average'][0]} |")
    for name, prof in result["profiles"].items():
        stages = ", ".join(f"{k} {v}" for k, v in prof["ms_per_frame"].items())
        lines.append(f"\nprofile {name} ({prof['clips']} clips, {prof['frames']} frames, "
                     f"~{int(prof['mean_pixels'] ** 0.5)}^2 px): wall ms/frame {stages}; total "
                     f"{prof['total_ms_per_frame']}; CPU ms/frame (all threads) {prof['cpu_ms_per_frame']}")
    fields = list(result["bytes_per_frame"])
    for key, title in (("plan", "plan from the synthetic store"),
                       ("plan_real_faces", f"plan with real-clip CPU (x{result.get('real_cpu_factor')}) and bytes")):
        if key not in result:
            continue
        lines += ["", title, "", "| corpus | hours (assumed) | frames | CPU core-hours | " + " | ".join(fields)
                  + " | total |", "|---|---|---|---|" + "---|" * (len(fields) + 1)]
        for corpus, p in result[key].items():
            lines.append(f"| {corpus} | {p['hours']:g} | {p['frames'] / 1e6:.1f}M | {p['core_hours']:,.0f} | "
                         + " | ".join(_gb(p["store_bytes"][f]) for f in fields)
                         + f" | {_gb(p['store_bytes_total'])} |")
    return "\n".join(lines)


def render(path: Path, hours: dict[str, float]) -> None:
    """Recompute the plans of an existing capacity.json (e.g. for other --hours) and print them."""
    result = json.loads(path.read_text())
    finish(result, hours)
    result["hours"] = hours
    path.write_text(json.dumps(result, indent=2))
    print(markdown(result))


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's per-graph warnings
    hours = {k: float(v) for k, v in (item.split("=") for item in args.hours.split(","))}
    if args.render:
        render(args.render, hours)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    corpus = make_corpus(args.out / "corpus", args.utterances, tuple(args.seconds), args.size, args.seed)
    runs = []
    for w in args.workers:
        print(f"extracting with {w} worker(s) ...", flush=True)
        runs.append(run_extraction(corpus, args.out / f"store_w{w}", w, args.fields, args.shard_size))
        print(json.dumps(runs[-1]), flush=True)
    profiles = {"synthetic": profile(sorted(corpus.glob("*/*.mp4"))[:args.profile], args.fields)}
    real = sorted(args.real.glob("*/*.mp4")) if args.real.is_dir() else []
    if real and args.profile:
        profiles["real"] = profile(real[:args.profile], args.fields)
    base = next((r for r in runs if r["workers"] == 1), runs[0])
    result = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "runs": runs, "profiles": profiles, "hours": hours,
              "speedup": {f"{r['workers']}_vs_{base['workers']}": round(r["frames_per_s"] / base["frames_per_s"], 2)
                          for r in runs},
              "cpu_ms_per_frame": base["cpu_ms_per_frame"], "bytes_per_frame": base["bytes_per_frame"]}
    finish(result, hours)
    (args.out / "capacity.json").write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"\nwritten {args.out / 'capacity.json'}")
    return 0


def finish(result: dict, hours: dict[str, float]) -> None:
    """The capacity plans. Core-hours come from the CPU time the extraction workers really used
    (all threads) per frame in the 1-worker run; the per-stage split is the in-process profile's
    share. Plan "synthetic" uses the synthetic store's bytes per frame; plan "real_faces" scales
    CPU by the real clips' profile (larger frames) and takes their audio/rgb/landmarks/mel bytes."""
    base = next((r for r in result["runs"] if r["workers"] == 1), result["runs"][0])
    stage = result["profiles"]["synthetic"]["ms_per_frame"]
    share = {k: v / sum(stage.values()) * base["cpu_ms_per_frame"] for k, v in stage.items()}
    result["plan"] = capacity_plan(hours, base["cpu_ms_per_frame"], share, base["bytes_per_frame"])
    real = result["profiles"].get("real")
    if real:
        factor = real["cpu_ms_per_frame"] / result["profiles"]["synthetic"]["cpu_ms_per_frame"]
        nbytes = {**base["bytes_per_frame"], **real["bytes_per_frame"]}
        result["plan_real_faces"] = capacity_plan(hours, base["cpu_ms_per_frame"] * factor,
                                                  {k: v * factor for k, v in share.items()}, nbytes)
        result["real_cpu_factor"] = round(factor, 3)


if __name__ == "__main__":
    raise SystemExit(main())
