"""Does the scoring CLI find injected audio offsets? Share of clips correct within 1 frame.

    python -m benchmarks.sync_offsets                       # demo_out's checkpoint, or trains one
    python -m benchmarks.sync_offsets --checkpoint runs/mel_landmarks/best.pt --speakers 2

Synthetic clips of a seed the demo never used (the demo's corpus is seed 0; these are seeds
101, 102, ...) get their audio delayed by d = -10 .. 10 frames (pipelines/synthetic.py's shift
variants); `training/sync/score.py --scorer unisync` scores each clip from the video (its own face
tracking and features), and a clip is correct when the reported offset is within 1 frame of -d
(syncnet_python's sign: audio late by d frames reads -d). Target: >= 90%.

Checkpoint: --checkpoint, else demo_out/runs/{mel_landmarks,mel_rgb}/best.pt (or checkpoint.pt),
else one is trained here the demo's way (synthetic seed-0 corpus, extraction of audio, landmarks,
mel and meta, fit.py mel_landmarks at width 0.25 for --train-minutes).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

SHIFT_DIR = re.compile(r"shift([+-]\d+)")


def find_checkpoint(demo: Path) -> Path | None:
    for combo in ("mel_landmarks", "mel_rgb"):
        for name in ("best.pt", "checkpoint.pt"):
            p = demo / "runs" / combo / name
            if p.exists():
                return p
    return None


def train_checkpoint(work: Path, minutes: float, threads: int) -> Path:
    """The demo's recipe for mel_landmarks, on the demo's corpus seed (0)."""
    from pipelines.synthetic import generate_corpus

    corpus, store, run = work / "train_corpus", work / "train_store", work / "train_run"
    if not any(corpus.glob("*/*.mp4")):
        generate_corpus(corpus, n_speakers=8, n_utterances=6, seed=0)
    env = {**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": str(threads)}
    if not (store / "catalog" / "utterances.parquet").exists():
        subprocess.run([sys.executable, str(REPO / "pipelines" / "extract.py"), "--dataset", "synthetic",
                        "--root", str(corpus), "--store", str(store), "--workers", "2", "--shard-size", "6",
                        "--fields", "audio", "landmarks", "mel", "meta"], check=True, env=env)
    if not (run / "checkpoint.pt").exists():
        subprocess.run([sys.executable, str(REPO / "training" / "fit.py"), "--combo", "mel_landmarks",
                        "--store", str(store), "--out", str(run), "--width", "0.25", "--max-minutes",
                        str(minutes), "--threads", str(threads), "--eval-every", "1000", "--no-progress"],
                       check=True, env=env)
    return run / "best.pt" if (run / "best.pt").exists() else run / "checkpoint.pt"


def make_clips(root: Path, shifts: range, speakers: int, utterances: int, seed: int) -> int:
    from pipelines.synthetic import generate_corpus

    n = 0
    for i, d in enumerate(shifts):
        folder = root / f"shift{d:+03d}"
        if not any(folder.glob("*/*.mp4")):
            generate_corpus(folder, n_speakers=speakers, n_utterances=utterances, seed=seed + i,
                            audio_shift_frames=d, progress=False)
        n += len(list(folder.glob("*/*.mp4")))
    return n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--checkpoint", type=Path, default=None, help="a fit.py checkpoint (default: see above)")
    p.add_argument("--demo", type=Path, default=REPO / "demo_out", help="where make demo wrote its runs")
    p.add_argument("--work", type=Path, default=Path("sync_offsets_work"), help="scratch folder")
    p.add_argument("--seed", type=int, default=101, help="first corpus seed of the clips (demo: 0)")
    p.add_argument("--max-shift", type=int, default=10, help="shifts -S .. S frames")
    p.add_argument("--speakers", type=int, default=2, help="speakers per shift")
    p.add_argument("--utterances", type=int, default=1, help="utterances per speaker and shift")
    p.add_argument("--workers", type=int, default=2, help="Ray tasks of the scoring CLI")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    p.add_argument("--train-minutes", type=float, default=4.0,
                   help="training budget when no checkpoint (the demo trains 2.5 min on an idle machine)")
    p.add_argument("--edges", choices=("pad", "mask"), default="pad", help="passed to the scoring CLI")
    args = p.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    ckpt = args.checkpoint or find_checkpoint(args.demo)
    source = "given" if args.checkpoint else ("demo_out" if ckpt else "trained here")
    if ckpt is None:
        ckpt = train_checkpoint(work, args.train_minutes, args.threads)
    shifts = range(-args.max_shift, args.max_shift + 1)
    n = make_clips(work / "clips", shifts, args.speakers, args.utterances, args.seed)
    out = work / "scores"
    cmd = [sys.executable, str(REPO / "training" / "sync" / "score.py"), str(work / "clips"), "--scorer", "unisync",
           "--checkpoint", str(ckpt), "--out", str(out), "--plots", str(out / "plots"),
           "--workers", str(args.workers), "--threads", str(args.threads), "--edges", args.edges]
    print("$", " ".join(cmd))
    subprocess.run(cmd, env={**os.environ, "RAY_ADDRESS": "", "OMP_NUM_THREADS": str(args.threads)})
    rows = json.loads((out / "scores.json").read_text())["rows"]
    per_shift: dict[int, list[int]] = {}
    failed = 0
    for r in rows:
        d = int(SHIFT_DIR.search(r["video"]).group(1))
        if r["error"]:
            failed += 1
            continue
        per_shift.setdefault(d, []).append(r["offset"])
    correct = sum(abs(o + d) <= 1 for d, os_ in per_shift.items() for o in os_)
    scored = sum(len(v) for v in per_shift.values())
    print(f"\ncheckpoint {ckpt} ({source}); clips {n} (seeds {args.seed}..{args.seed + len(shifts) - 1}), "
          f"scored {scored}, failed {failed}")
    print("audio delay d  expected offset  reported offsets")
    for d in sorted(per_shift):
        print(f"{d:>13d}  {-d:>15d}  {per_shift[d]}")
    share = correct / n if n else 0.0
    print(f"correct within 1 frame: {correct}/{n} = {share:.1%} (target >= 90%; failures count as wrong)")
    summary = {"checkpoint": str(ckpt), "checkpoint_source": source, "clips": n, "scored": scored,
               "failed": failed, "correct_within_1": correct, "share": share,
               "per_shift": {str(d): v for d, v in sorted(per_shift.items())},
               "edges": args.edges, "seconds": round(time.perf_counter() - started, 1)}
    (work / "sync_offsets.json").write_text(json.dumps(summary, indent=1))
    return 0 if share >= 0.9 else 1


if __name__ == "__main__":
    raise SystemExit(main())
