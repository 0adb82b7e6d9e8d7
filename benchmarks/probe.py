"""Probe pass speed and shot-cut agreement with PySceneDetect, on long videos made of real clips.

    python -m benchmarks.probe [--real ../shared/corpus/real] [--sizes 360 1080] [--json probe.json]

Builds one long video per size by concatenating the real clips (a shot cut between each pair,
see pipelines/corpora/fixtures.concat_clips), then times on one core, side by side:
  decode      PyAV decode of every frame to a full-size RGB array (what load_media does today)
  shots       features/shots.probe_video without faces (low-resolution ContentDetector)
  probe       features/shots.probe_video (shots + main-face samples at 5 Hz): the probe pass
  scenedetect PySceneDetect's own `detect(path, ContentDetector())` (its decoder, auto-downscale)
and prints frames per second, the cut times each found, and agreement with the true cuts and
with PySceneDetect's (a cut agrees within one source frame). Timings are wall-clock on a shared
machine: read them as ratios to `decode` from the same run.
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


def decode_fps(path: Path) -> tuple[float, int]:
    import av

    started, n = time.perf_counter(), 0
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        stream.thread_type = "AUTO"
        for frame in c.decode(stream):
            frame.to_ndarray(format="rgb24")
            n += 1
    return n / (time.perf_counter() - started), n


PEAK_RSS = """
import resource, sys
from features.shots import FaceSampler, probe_video
import scenedetect, av
FaceSampler().close()
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if sys.argv[1] != "-":
    probe_video(sys.argv[1])
print(base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def probe_peak_rss_mb(path: Path) -> tuple[float, float]:
    """(peak RSS of a process that only loads the probe's libraries, peak after probing `path`), MB."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", PEAK_RSS, str(path)], capture_output=True, text=True,
                         check=True).stdout.split()
    return int(out[0]) / 1024, int(out[1]) / 1024


def scenedetect_cuts(path: Path) -> tuple[list[float], float]:
    from scenedetect import ContentDetector, detect

    started = time.perf_counter()
    scenes = detect(str(path), ContentDetector())
    seconds = time.perf_counter() - started
    return [round(s[0].seconds, 4) for s in scenes[1:]], seconds


def agreement(found: list[float], truth: list[float], tol: float) -> dict:
    hits = sum(any(abs(f - t) <= tol for f in found) for t in truth)
    false = sum(not any(abs(f - t) <= tol for t in truth) for f in found)
    return {"matched": hits, "of": len(truth), "extra": false}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--real", type=Path, default=REPO.parent / "shared" / "corpus" / "real")
    p.add_argument("--sizes", type=int, nargs="+", default=[360, 1080], help="side of the square long videos")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")

    from features.shots import FaceSampler, probe_video
    from pipelines.corpora.fixtures import concat_clips

    clips = sorted(args.real.glob("*/*.mp4"))
    if not clips:
        print(f"no real clips under {args.real}", file=sys.stderr)
        return 2
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            path = Path(tmp) / f"long_{size}.mp4"
            spans = concat_clips(clips, path, size=size)
            truth = [round(s[0], 4) for s in spans[1:]]
            dec, n = decode_fps(path)
            shots = probe_video(path, faces=False)
            sampler = FaceSampler()  # loaded once, as a probe task does for its batch
            probe = probe_video(path, sampler=sampler)
            sampler.close()
            sd_cuts, sd_seconds = scenedetect_cuts(path)
            tol = 1.0 / 25 + 1e-6
            rss_base, rss_peak = probe_peak_rss_mb(path)
            row = {"size": size, "frames": n, "seconds": round(n / 25, 2), "true_cuts": truth,
                   "decode_fps": round(dec, 1),
                   "shots_fps": round(n / shots.seconds, 1), "probe_fps": round(n / probe.seconds, 1),
                   "scenedetect_fps": round(n / sd_seconds, 1),
                   "probe_cuts": probe.cuts_s, "scenedetect_cuts": sd_cuts,
                   "probe_vs_truth": agreement(probe.cuts_s, truth, tol),
                   "scenedetect_vs_truth": agreement(sd_cuts, truth, tol),
                   "probe_vs_scenedetect": agreement(probe.cuts_s, sd_cuts, tol),
                   "face_samples_without_face": sum(b is None for _, b in probe.faces),
                   "face_samples": len(probe.faces), "probe_rss_mb": [round(rss_base), round(rss_peak)],
                   "frames_whole_mb": round(n * size * size * 3 / 2 ** 20)}
            results.append(row)
            print(f"{size}x{size}, {n} frames ({n / 25:.1f} s): decode {row['decode_fps']} fps | shots "
                  f"{row['shots_fps']} fps ({row['shots_fps'] / dec:.2f}x decode) | probe {row['probe_fps']} fps "
                  f"({row['probe_fps'] / dec:.2f}x) | PySceneDetect {row['scenedetect_fps']} fps "
                  f"({row['scenedetect_fps'] / dec:.2f}x)")
            print(f"  cuts: true {truth}\n        probe {probe.cuts_s} {row['probe_vs_truth']}\n"
                  f"        PySceneDetect {sd_cuts} {row['scenedetect_vs_truth']}; probe vs PySceneDetect "
                  f"{row['probe_vs_scenedetect']}; face samples without a face "
                  f"{row['face_samples_without_face']}/{row['face_samples']}")
            print(f"  probe peak RSS {rss_peak:.0f} MB (libraries alone {rss_base:.0f} MB); the frames held whole "
                  f"would take {row['frames_whole_mb']} MB")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
