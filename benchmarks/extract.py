"""Frames per second of every field, on one core, against decode-only and decode + face mesh
measured in the same run.

    python benchmarks/extract.py [--real ../shared/corpus/real] [--synthetic-utterances 12] [--json out.json]

Each utterance is decoded once (timed: the decode baseline), tracked once (timed: + face mesh),
then every field is extracted from those cached inputs and timed on its own, so a field's figure
is its own cost. "all video fields" adds the costs of decode, face mesh and every CPU video field.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")

VIDEO_FIELDS = ["rgb", "landmarks", "parsing", "tdmm", "lip"]
AUDIO_FIELDS = ["audio", "mel", "fbank", "hubert"]


def measure(videos: list[Path], hubert_model: str | None) -> dict:
    import numpy as np

    from features import tdmm
    from features.face import FaceTracker
    from features.fields import FIELDS, Options, Sources
    from features.media import load_media

    tracker = FaceTracker()
    rows, timings, frames = [], {k: 0.0 for k in ["decode", "face"] + VIDEO_FIELDS + AUDIO_FIELDS}, 0
    sources = []
    for path in videos:
        row = {"video_path": str(path), "audio_path": None}
        s = Sources(row, lambda: tracker, options=Options(hubert_model=hubert_model or "unavailable"))
        t = time.perf_counter()
        s.media
        timings["decode"] += time.perf_counter() - t
        t = time.perf_counter()
        s.face
        timings["face"] += time.perf_counter() - t
        frames += s.media.n_frames
        sources.append(s)
        rows.append(row)
    model, _ = tdmm.fit([s.face.landmarks for s in sources])  # untimed: fitting is per corpus
    skipped = {}
    for s in sources:
        s._tdmm_model = lambda: model
        for name in VIDEO_FIELDS + AUDIO_FIELDS:
            if name in skipped:
                continue
            t = time.perf_counter()
            try:
                FIELDS[name].extract(s)
            except Exception as exc:  # hubert without weights: reported, not timed
                skipped[name] = str(exc).splitlines()[0][:160]
                continue
            timings[name] += time.perf_counter() - t
    fps = {k: frames / v for k, v in timings.items() if v > 0 and k not in skipped}
    video_total = timings["decode"] + timings["face"] + sum(timings[f] for f in VIDEO_FIELDS)
    return {"utterances": len(videos), "frames": frames, "seconds": timings,
            "fps": fps, "decode_plus_face_fps": frames / (timings["decode"] + timings["face"]),
            "all_video_fields_fps": frames / video_total,
            "ratio_all_video_fields_to_decode_plus_face":
                (timings["decode"] + timings["face"]) / video_total,
            "skipped": skipped}


def table(name: str, r: dict) -> str:
    lines = [f"\n{name}: {r['utterances']} utterances, {r['frames']} frames (one core)",
             f"{'step':<28}{'frames/s':>10}"]
    for k, v in r["fps"].items():
        lines.append(f"{k:<28}{v:>10.1f}")
    lines.append(f"{'decode + face mesh':<28}{r['decode_plus_face_fps']:>10.1f}")
    lines.append(f"{'all CPU video fields':<28}{r['all_video_fields_fps']:>10.1f}   "
                 f"({r['ratio_all_video_fields_to_decode_plus_face']:.2f} x decode + face mesh)")
    for k, why in r["skipped"].items():
        lines.append(f"{k:<28}{'skipped':>10}   {why}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--real", type=Path, default=REPO.parent / "shared" / "corpus" / "real",
                   help="folder of real clips (skipped when absent)")
    p.add_argument("--synthetic-utterances", type=int, default=12, help="synthetic clips to generate")
    p.add_argument("--hubert-model", default=None, help="HuBERT id or directory (default: skip hubert)")
    p.add_argument("--json", type=Path, default=Path("benchmarks/extract.json"), help="where to write JSON")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    import cv2

    cv2.setNumThreads(1)
    results = {}
    if any(args.real.glob("*/*.mp4")):
        results["real"] = measure(sorted(args.real.glob("*/*.mp4")), args.hubert_model)
        print(table("real clips", results["real"]))
    from pipelines.synthetic import generate_corpus

    with tempfile.TemporaryDirectory() as tmp:
        n_spk = max(1, args.synthetic_utterances // 3)
        videos = generate_corpus(Path(tmp), n_speakers=n_spk, n_utterances=3, progress=False)
        results["synthetic"] = measure(videos, args.hubert_model)
        print(table("synthetic", results["synthetic"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
