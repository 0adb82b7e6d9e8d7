"""Frames per second of decoding, face tracking and every field, on one core, against decode-only
and "decode + MediaPipe face mesh in tracking mode on the full frame" measured side by side.

    python -m benchmarks.extract [--real ../shared/corpus/real] [--hd-seconds 10] [--rounds 2]
                                 [--synthetic-utterances 12] [--json benchmarks/extract.json]

Sets: the shared real clips; a 1080p clip (1920x1080 H.264, built under a temp dir from the real
clips by benchmarks/memory.py's builder, `--hd-seconds` long); the synthetic corpus.
Times are CPU seconds of the process (all its threads), so figures are frames per CPU-second, i.e.
per core, and stay comparable while other jobs load the machine; for each clip the steps run in
alternation, `--rounds` times, and the cheapest round counts:
  decode          the streaming decoder alone (features.media.VideoStream, RGB frames)
  mesh baseline   decode + FaceMesh(static_image_mode=False, refine_landmarks=True) on the full frame
  tracking        decode + our tracker (features.face: reduced-resolution detection now and then,
                  the mesh tracking in between): landmarks and crop boxes
  tracking+crops  the same pass with the rgb and lip crop makers (the fields' JPEG crops)
Then every other field is timed on its own from the cached track and audio.
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("GLOG_minloglevel", "2")

OTHER_FIELDS = ["landmarks", "parsing", "tdmm", "audio", "mel", "fbank", "hubert"]


def mesh_baseline(path: Path) -> int:
    """Decode + MediaPipe face mesh in tracking mode on every full frame; returns frames."""
    import mediapipe as mp

    from features.media import VideoStream

    n = 0
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                                         min_detection_confidence=0.5, min_tracking_confidence=0.5) as mesh:
        for frame in VideoStream(path):
            mesh.process(frame)
            n += 1
    return n


def timed(fn) -> float:
    """CPU seconds of this process (every thread: MediaPipe's and the decoder's too) for fn():
    on a shared machine this tracks the work done, where wall time tracks the neighbours' load."""
    started = time.process_time()
    fn()
    return time.process_time() - started


def measure(videos: list[Path], hubert_model: str | None, rounds: int) -> dict:
    from features import tdmm
    from features.face import FaceTracker
    from features.fields import FIELDS, Options, Sources
    from features.media import VideoStream

    tracker = FaceTracker()
    steps = ["decode", "mesh_baseline", "tracking", "tracking_crops"]
    seconds = {k: 0.0 for k in steps + OTHER_FIELDS}
    frames, detector_runs, kept = 0, 0, []
    options = Options(hubert_model=hubert_model or "unavailable")
    for path in videos:
        row = {"video_path": str(path), "audio_path": None}

        def sources(wanted):
            return Sources(row, lambda: tracker, options=options, wanted=wanted)

        best = {k: float("inf") for k in steps}
        for _ in range(rounds):
            best["decode"] = min(best["decode"], timed(lambda: sum(1 for _ in VideoStream(path))))
            best["mesh_baseline"] = min(best["mesh_baseline"], timed(lambda: mesh_baseline(path)))
            best["tracking"] = min(best["tracking"], timed(lambda: sources(["landmarks"]).face))
            s = sources(["rgb", "lip", "landmarks", "parsing", "tdmm", "audio", "mel", "fbank", "hubert"])
            best["tracking_crops"] = min(best["tracking_crops"], timed(lambda: s.face))
        for k in steps:
            seconds[k] += best[k]
        frames += s.timeline.n_frames
        detector_runs += s.face.detector_runs
        kept.append(s)
    model, _ = tdmm.fit([s.face.landmarks for s in kept] if len(kept) > 1 else
                        [kept[0].face.landmarks[::2], kept[0].face.landmarks[1::2]])
    skipped = {}
    for s in kept:
        s._tdmm_model = lambda: model
        for name in OTHER_FIELDS:
            if name in skipped:
                continue
            try:
                seconds[name] += timed(lambda: FIELDS[name].extract(s))
            except Exception as exc:  # hubert without weights: reported, not timed
                skipped[name] = str(exc).splitlines()[0][:160]
    fps = {k: frames / v for k, v in seconds.items() if v > 0 and k not in skipped}
    return {"utterances": len(videos), "frames": frames, "rounds": rounds, "seconds": seconds, "fps": fps,
            "detector_runs_per_frame": detector_runs / frames,
            "tracking_vs_mesh_baseline": seconds["mesh_baseline"] / seconds["tracking"],
            "tracking_crops_vs_mesh_baseline": seconds["mesh_baseline"] / seconds["tracking_crops"],
            "skipped": skipped}


def table(name: str, r: dict) -> str:
    lines = [f"\n{name}: {r['utterances']} clips, {r['frames']} frames, best of {r['rounds']} rounds (one core)",
             f"{'step':<34}{'frames per CPU-second':>22}"]
    labels = {"decode": "decode", "mesh_baseline": "decode + face mesh (baseline)",
              "tracking": "decode + tracking", "tracking_crops": "decode + tracking + rgb/lip crops"}
    for k, v in r["fps"].items():
        lines.append(f"{labels.get(k, k):<34}{v:>22.1f}")
    lines.append(f"decode + tracking = {r['tracking_vs_mesh_baseline']:.2f} x the mesh baseline "
                 f"({r['tracking_crops_vs_mesh_baseline']:.2f} x with the crops); "
                 f"detector ran on {r['detector_runs_per_frame']:.1%} of frames")
    for k, why in r["skipped"].items():
        lines.append(f"{k:<34}{'skipped':>22}   {why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, default=REPO.parent / "shared" / "corpus" / "real",
                   help="folder of real clips (skipped when absent; default: %(default)s)")
    p.add_argument("--hd-seconds", type=float, default=10.0,
                   help="length of the 1080p clip built from the real clips; 0 skips it (default: %(default)s)")
    p.add_argument("--synthetic-utterances", type=int, default=12,
                   help="synthetic clips to generate; 0 skips them (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="timed rounds per clip, fastest kept (default: %(default)s)")
    p.add_argument("--hubert-model", default=None, help="HuBERT id or directory (default: skip hubert)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/extract.json"),
                   help="where to write JSON (default: %(default)s)")
    args = p.parse_args(argv)

    import cv2
    import torch

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    results = {}
    real = sorted(args.real.glob("*/*.mp4"))
    with tempfile.TemporaryDirectory(prefix="unisync-bench-") as tmp:
        if real:
            results["real"] = measure(real, args.hubert_model, args.rounds)
            print(table("real clips", results["real"]), flush=True)
            if args.hd_seconds > 0:
                from benchmarks.memory import build_clip

                hd = build_clip(Path(tmp) / "hd1080.mp4", real, args.hd_seconds, 1920, 1080, progress=False)
                results["hd1080"] = measure([hd], args.hubert_model, args.rounds)
                print(table("1080p (1920x1080, built from the real clips)", results["hd1080"]), flush=True)
        if args.synthetic_utterances > 0:
            from pipelines.synthetic import generate_corpus

            n_spk = max(1, args.synthetic_utterances // 3)
            videos = generate_corpus(Path(tmp) / "synthetic", n_speakers=n_spk, n_utterances=3, progress=False)
            results["synthetic"] = measure(videos, args.hubert_model, args.rounds)
            print(table("synthetic", results["synthetic"]), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
