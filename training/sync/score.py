"""Score the audio-visual sync of videos: per video offset, LSE-D, LSE-C; then the means papers report.

    python -m training.sync.score outputs/ --scorer syncnet --syncnet-weights syncnet_v2.model --crop frame
    python -m training.sync.score a.mp4 b.mp4 --scorer unisync --checkpoint runs/mel_landmarks/best.pt
    python -m training.sync.score clips/ --scorer syncnet --syncnet-weights W --crop mesh frame none \
        --out scores/ --plots scores/plots

Scorers, their weight options and protocols come from the registry (training/sync/scorers.py).

Every row names its scorer (id and version: the weights' or checkpoint's sha256 prefix) and its
crop protocol (`mesh`: our face-mesh track padded as run_pipeline; `frame`: whole frame to 224, as
Wav2Lip's LRS script; `none`: already 224 x 224 crops). Offsets follow syncnet_python's print:
audio delayed by d frames gives offset -d. LSE-D = min over offsets of the mean distance, LSE-C =
median minus min; for a UniSync checkpoint the distance is 1 - p_sync (same rules, its own scale).

--io names the input path, beside the protocol in every row: `exact` (the default) decodes
losslessly on the 25 fps timestamp grid, audio from the first video frame; `reference` is
syncnet_python's own path reproduced in process (training/sync/reference_io.py: ffmpeg's JPEG round
trip of the stream's own frames taken as 25 fps, ffmpeg's 16 kHz audio from the file's start), for
numbers comparable with figures produced by its scripts (syncnet scorer only).

Writes <out>/scores.csv (one row per face track, video and protocol; --crop none/frame/mesh/s3fd
score one track per video), <out>/videos.csv (per video: the mean over its tracks, and LatentSync's
eval_sync_conf rule: confidence averaged over tracks longer than 50 frames, offset int(mean)) and
<out>/scores.json (track rows with the 31-value curves and framewise confidence, the per-video
rows, and the means over videos per scorer, protocol and io). An offset at the edge of the search
(+-vshift) means the curve has no minimum inside it: rows flag it (`at_edge`), plots say "no sync
peak in +-15". Many files run
as Ray tasks (a private local Ray unless --address), one video per task, through the job runner
(catalog/jobs.py): a task whose worker dies is retried up to --max-retries times, then its row
names the cause. One video, or --workers 1, runs in this process (no Ray start-up; rows come back
and the outputs are written after the job, so a Ctrl-C during a video leaves no false row).

--device auto (the default, as training/fit.py) picks the GPU when the process scoring a video
sees one, else the CPU. Exit codes: 0 every video scored, 1 some failed (their rows say why), 2
bad arguments or weights, 4 Ray did not start within --ray-timeout.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from catalog.jobs import RayStartError, Task, add_runner_options, runner_from_args
from features.cli import HelpFormatter
from features.timebase import FPS
from training.sync.crops import PROTOCOLS
from training.sync.scorers import SCORERS, clear_cache, scorer_class
from training.sync.scoring import VSHIFT
from training.sync.video import IO_MODES

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
CSV_COLUMNS = ["video", "track", "track_start", "track_frames", "scorer", "scorer_version", "protocol", "io",
               "offset", "at_edge", "lse_d", "lse_c", "frames_scored", "edges", "seconds", "error"]
VIDEO_COLUMNS = ["video", "scorer", "scorer_version", "protocol", "io", "tracks", "mean_offset", "mean_lse_d",
                 "mean_lse_c", "latentsync_tracks", "latentsync_offset", "latentsync_conf", "error"]
LATENTSYNC_MIN_TRACK = 50  # eval/syncnet_detect.py keeps tracks of more than min_track=50 frames


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("inputs", nargs="+", type=Path, help="video files and/or folders (searched recursively)")
    p.add_argument("--scorer", choices=list(SCORERS), default="syncnet", help="which expert scores")
    for flag in dict.fromkeys(cls.weights_flag for cls in SCORERS.values()):  # each option once
        users = [n for n, cls in SCORERS.items() if cls.weights_flag == flag]
        p.add_argument(flag, type=Path, default=None,
                       help=f"{SCORERS[users[0]].weights_help} (--scorer {' / '.join(users)})")
    p.add_argument("--crop", nargs="+", default=["mesh"], choices=PROTOCOLS,
                   help="crop protocol(s); each video is scored once per protocol")
    p.add_argument("--s3fd-weights", type=Path, default=None,
                   help="--crop s3fd: face-alignment's S3FD weights file (s3fd-619a316812.pth; never downloaded)")
    p.add_argument("--io", choices=IO_MODES, default="exact",
                   help="exact: lossless 25 fps grid decode; reference: syncnet_python's ffmpeg JPEG/WAV path "
                        "reproduced in process (syncnet scorer)")
    p.add_argument("--edges", choices=("pad", "mask"), default="pad",
                   help="pad: the reference's zero-padded edge windows; mask: leave them out")
    p.add_argument("--vshift", type=int, default=VSHIFT, help="offsets searched: -V .. V frames")
    p.add_argument("--batch-size", type=int, default=None, help="windows per forward pass (syncnet: 20)")
    p.add_argument("--max-seconds", type=float, default=None, help="score only the first S seconds")
    p.add_argument("--out", type=Path, default=Path("sync_scores"), help="folder for scores.csv / scores.json")
    p.add_argument("--plots", type=Path, default=None, help="folder for one PNG per video and protocol")
    p.add_argument("--save-crops", type=Path, default=None,
                   help="syncnet, protocol mesh: also write each video's 224 x 224 crops and audio to "
                        "DIR/<name>.mkv (lossless), which score to the same numbers with --crop none")
    p.add_argument("--device", default="auto",
                   help="torch device; auto: the GPU when the scoring process sees one, else the CPU")
    add_runner_options(p, "Ray tasks at once (default: every CPU Ray offers); 1 runs in this process")
    p.add_argument("--max-retries", type=int, default=1,
                   help="retries of a video whose worker died or was killed for memory; then its row "
                        "names the cause")
    p.add_argument("--threads", type=int, default=None, help="torch threads per task (default: 1 under Ray)")
    return p


def find_videos(inputs: list[Path]) -> list[Path]:
    found: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found += sorted(q for q in p.rglob("*") if q.suffix.lower() in VIDEO_EXTS and q.is_file())
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    return found


def scorer_config(args: argparse.Namespace) -> dict:
    kw = {"vshift": args.vshift, "edges": args.edges}
    if args.batch_size:
        kw["batch_size"] = args.batch_size
    weights = getattr(args, weights_dest(args.scorer))
    return {"name": args.scorer, "weights": str(weights.resolve()) if weights else None,  # Ray workers' cwd differs
            "device": args.device, **kw, "io": args.io,
            "s3fd_weights": str(args.s3fd_weights.resolve()) if args.s3fd_weights else None}


def weights_dest(name: str) -> str:
    """The argparse attribute of scorer `name`'s weights option ('--syncnet-weights' -> 'syncnet_weights')."""
    return scorer_class(name).weights_flag.lstrip("-").replace("-", "_")


def get_scorer(config: dict):
    """The registry's cached scorer: one model per process, on the device this process picks
    (`auto`: training.runtime.pick_device, as fit.py)."""
    from training.runtime import pick_device
    from training.sync.scorers import get_scorer as cached

    kw = {k: v for k, v in config.items() if k not in ("io", "s3fd_weights")}
    return cached(**{**kw, "device": str(pick_device(config["device"]))})


def score_one(video: str, protocol: str, config: dict, max_frames: int | None,
              threads: int | None = None, save_crops: str | None = None) -> list[dict]:
    """The rows of one video: one per face track scored, or one naming the error that stopped
    this video (never raises)."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    io = config.get("io", "exact")
    base = {"video": video, "scorer": config["name"], "protocol": protocol, "io": io, "error": ""}
    rows = []
    try:
        scorer = get_scorer(config)
        base["scorer_version"] = scorer.version
        for track, s in score_tracks(scorer, video, protocol, max_frames, io, save_crops,
                                     config.get("s3fd_weights")):
            rows.append({**base, **track, **score_fields(s)})
    except Exception as exc:  # a bad file is a row with its reason, not a crash of the batch
        rows = [{**base, "error": f"{type(exc).__name__}: {exc}"}]
    for r in rows:
        r["seconds"] = round((time.perf_counter() - started) / len(rows), 2)
    return rows


def score_tracks(scorer, video: str, protocol: str, max_frames: int | None, io: str,
                 save_crops: str | None = None, s3fd_weights: str | None = None):
    """(track facts, SyncScore) per face track; our protocols score one track, the whole video."""
    if protocol == "s3fd":  # run_pipeline's face tracks: one score per track
        from training.sync.s3fd_pipeline import score_s3fd_tracks

        return score_s3fd_tracks(scorer, video, max_frames, io, s3fd_weights)
    if io == "exact":
        if save_crops and protocol == "mesh" and scorer.saves_crops:
            target = Path(save_crops) / ("_".join(Path(video).with_suffix("").parts[-3:]) + ".mkv")
            s = scorer.score_video(video, protocol, max_frames, save_crops=target)
            return [({**whole_track(s), "crops": str(target)}, s)]
        s = scorer.score_video(video, protocol, max_frames)
        return [(whole_track(s), s)]
    if not hasattr(scorer, "score_arrays"):
        raise ValueError(f"--io {io} feeds decoded frames: the {scorer.name} scorer reads our own fields "
                         "(use --io exact)")
    from training.sync.video import iter_crops, read_audio_int16

    s = scorer.score_arrays(iter_crops(video, protocol, max_frames, io=io),
                            read_audio_int16(video, None, max_frames, io=io))
    return [(whole_track(s), s)]


def whole_track(s) -> dict:
    """Track facts of a one-track protocol: the video from frame 0, as many frames as were scored
    (min(video, audio frames) = windows + 5: the scorer stops reading where the audio ends)."""
    return {"track": 0, "track_start": 0, "track_frames": s.windows + 5}


def score_fields(s) -> dict:
    """The row fields of one SyncScore."""
    return dict(offset=s.offset, at_edge=abs(s.offset) >= s.vshift, lse_d=round(s.min_dist, 6),
                lse_c=round(s.confidence, 6), frames_scored=s.windows, edges=s.edges, vshift=s.vshift,
                mean_dist=[round(x, 6) for x in s.mean_dist],
                framewise_confidence=[round(x, 6) for x in s.framewise_confidence],
                window_offsets=s.window_offsets().tolist())


def video_rows(rows: list[dict]) -> list[dict]:
    """Per (video, scorer, protocol, io): the mean over its tracks, and LatentSync's
    eval_sync_conf rule (confidence averaged over tracks longer than 50 frames, offset
    int(mean offset)); a video whose tracks all failed keeps the error."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        key = (r["video"], r["scorer"], r.get("scorer_version", ""), r["protocol"], r.get("io", "exact"))
        groups.setdefault(key, []).append(r)
    out = []
    for (video, scorer, version, protocol, io), rs in groups.items():
        ok = [r for r in rs if not r["error"]]
        long = [r for r in ok if r.get("track_frames", 0) > LATENTSYNC_MIN_TRACK]
        mean = lambda k, rr: round(sum(r[k] for r in rr) / len(rr), 6) if rr else None  # noqa: E731
        out.append({"video": video, "scorer": scorer, "scorer_version": version, "protocol": protocol,
                    "io": io, "tracks": len(ok), "mean_offset": mean("offset", ok),
                    "mean_lse_d": mean("lse_d", ok), "mean_lse_c": mean("lse_c", ok),
                    "latentsync_tracks": len(long),
                    "latentsync_offset": int(sum(r["offset"] for r in long) / len(long)) if long else None,
                    "latentsync_conf": mean("lse_c", long),
                    "error": "" if ok else "; ".join(r["error"] for r in rs)})
    return out


def means(rows: list[dict]) -> list[dict]:
    """Per (scorer, protocol, io), over videos (each the mean of its tracks): videos scored,
    mean LSE-D, mean LSE-C, mean |offset|, share within 1 frame."""
    groups: dict[tuple, list[dict]] = {}
    for v in video_rows(rows):
        groups.setdefault((v["scorer"], v["scorer_version"], v["protocol"], v["io"]), []).append(v)
    out = []
    for (scorer, version, protocol, io), vs in sorted(groups.items()):
        ok = [v for v in vs if not v["error"]]
        n = len(ok)
        avg = lambda f, p=4: round(sum(f(v) for v in ok) / n, p) if n else None  # noqa: E731
        out.append({"scorer": scorer, "scorer_version": version, "protocol": protocol, "io": io,
                    "videos": len(vs), "scored": n, "failed": len(vs) - n,
                    "mean_lse_d": avg(lambda v: v["mean_lse_d"]), "mean_lse_c": avg(lambda v: v["mean_lse_c"]),
                    "mean_abs_offset": avg(lambda v: abs(v["mean_offset"]), 3),
                    "in_sync_share": avg(lambda v: abs(v["mean_offset"]) <= 1, 3)})
    return out


def run_jobs(jobs: list[tuple[str, str]], config: dict, max_frames: int | None, args) -> list[dict]:
    """One row per (video, protocol), in `jobs` order: each a task of the job runner
    (catalog/jobs.py); a task that died for good is a row naming the cause."""
    runner = runner_from_args(args, mode="never" if args.workers == 1 else None, in_process=True)
    local = runner.runs_local(len(jobs))
    save = str(args.save_crops.resolve()) if args.save_crops else None
    threads = args.threads if local else args.threads or 1  # local: torch's own default unless asked
    if not local:
        clear_cache()  # the driver's model must not travel with the task's closure
    rows: list[dict] = []

    def failed(task: Task, cause: str) -> None:
        video, protocol = task.args[:2]
        rows.append({"video": video, "scorer": config["name"], "protocol": protocol,
                     "io": config.get("io", "exact"), "error": cause, "seconds": None})

    tasks = [Task(f"{Path(video).name} [{protocol}]", (video, protocol, config, max_frames, threads, save))
             for video, protocol in jobs]
    with runner:
        runner.run(score_one, tasks, desc=f"scoring ({config['name']})", unit="video",
                   max_retries=args.max_retries, on_result=lambda task, result: rows.extend(result),
                   on_failure=failed)
    order = {job: i for i, job in enumerate(jobs)}
    return sorted(rows, key=lambda r: (order[(r["video"], r["protocol"])], r.get("track", 0)))


def write_outputs(rows: list[dict], summary: list[dict], out: Path, plots: Path | None) -> None:
    from training.sync.plots import plot_name, plot_score, plot_stems

    out.mkdir(parents=True, exist_ok=True)
    with open(out / "scores.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({c: r.get(c, "") for c in CSV_COLUMNS})
    videos = video_rows(rows)
    with open(out / "videos.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=VIDEO_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for v in videos:
            w.writerow({c: "" if v.get(c) is None else v[c] for c in VIDEO_COLUMNS})
    (out / "scores.json").write_text(json.dumps({"rows": rows, "videos": videos, "means": summary}, indent=1))
    if plots is not None:
        stems = plot_stems(r["video"] for r in rows)
        for r in rows:
            if not r["error"]:
                stem = stems[r["video"]] + (f".track{r['track']}" if r.get("track", 0) else "")
                r["plot"] = str(plot_score(r, plots / plot_name(stem, r["protocol"], r["scorer"], r.get("io", "exact"))))


def format_summary(summary: list[dict]) -> str:
    lines = [f"{'scorer':<9}{'protocol':<10}{'io':<10}{'videos':>7}{'failed':>7}{'LSE-D':>9}{'LSE-C':>9}"
             f"{'|offset|':>10}{'|off|<=1':>10}"]
    for m in summary:
        f = lambda v, p=3: "-" if v is None else f"{v:.{p}f}"  # noqa: E731
        lines.append(f"{m['scorer']:<9}{m['protocol']:<10}{m.get('io', 'exact'):<10}{m['videos']:>7}{m['failed']:>7}"
                     f"{f(m['mean_lse_d']):>9}{f(m['mean_lse_c']):>9}{f(m['mean_abs_offset'], 2):>10}"
                     f"{f(m['in_sync_share'], 2):>10}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        videos = find_videos(args.inputs)
        if not videos:
            raise FileNotFoundError(f"no video files ({', '.join(VIDEO_EXTS)}) under {args.inputs}")
        config = scorer_config(args)
        cls = scorer_class(args.scorer)
        if args.io != "exact" and not hasattr(cls, "score_arrays"):
            raise ValueError(f"--io {args.io} feeds decoded frames to the scorer: the {args.scorer} scorer "
                             "reads our own fields; use --io exact")
        if set(args.crop) - set(cls.protocols):
            raise ValueError(f"the {args.scorer} scorer takes --crop {' '.join(cls.protocols)} only")
        if not args.ray_timeout > 0:
            raise ValueError(f"--ray-timeout must be positive, got {args.ray_timeout}")
        get_scorer(config)  # fail fast on missing weights / checkpoint, before any Ray start
        if "s3fd" in args.crop:  # and on the S3FD file (ModelUnavailable is a RuntimeError)
            from training.sync.s3fd_pipeline import cached_detector

            cached_detector(config["s3fd_weights"])
    except (FileNotFoundError, ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    max_frames = int(round(args.max_seconds * FPS)) if args.max_seconds else None
    shown = {str(v.resolve()): str(v) for v in videos}
    jobs = [(str(v.resolve()), protocol) for v in videos for protocol in args.crop]
    try:
        rows = run_jobs(jobs, config, max_frames, args)
    except RayStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    for r in rows:
        r["video"] = shown[r["video"]]
    summary = means(rows)
    write_outputs(rows, summary, args.out, args.plots)
    for r in rows:
        if r["error"]:
            print(f"  failed {r['video']} [{r['protocol']}, io {r.get('io', 'exact')}]: {r['error']}",
                  file=sys.stderr)
    print(format_summary(summary))
    edge = sum(bool(r.get("at_edge")) for r in rows)
    if edge:
        print(f"{edge} track(s) with the offset at +-{args.vshift}: no sync peak inside the search")
    print(f"wrote {args.out / 'scores.csv'}, {args.out / 'videos.csv'} and {args.out / 'scores.json'}"
          + (f"; plots in {args.plots}" if args.plots else ""))
    if cls.note:
        print(f"scorer {rows[0].get('scorer_version', '?')}: {cls.note}")
    return 0 if all(not r["error"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
