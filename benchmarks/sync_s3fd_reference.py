"""Does `unisync-score --crop s3fd --io reference` give what run_pipeline.py + run_syncnet.py give?

    python -m benchmarks.sync_s3fd_reference --reference /work/tmp/syncnet_ref --ref-python /work/tmp/refvenv/bin/python

Needs a checkout of joonson/syncnet_python, real `ffmpeg`, and a Python with its packages (torch,
opencv, scipy, python_speech_features, scenedetect 0.5.6.1: it pins 0.5.1, whose ContentDector breaks on
OpenCV 4.5+ (cv2.split returns a tuple), and 0.6+ has no VideoManager; 0.5.6.1 keeps 0.5.1's defaults).
The reference's code is not touched; its driver here (a) makes `cuda` mean the CPU (`S3FD(device=
'cuda')`, `.cuda()`), (b) restores `np.int` (removed in numpy 1.24, used by its nms_), (c) stands in for `torchvision`,
which detectors/s3fd imports and never uses (no wheel for this torch here).

Weights, the same in both: a seeded random S3FD of the real architecture whose score heads are
calibrated so that faces get boxes at conf_th 0.9 (training.sync.s3fd_pipeline.
calibrated_random_detector), saved in face-alignment's layout for us and in the reference's
S3FDNet layout (detectors/s3fd/weights/sfd_face.pth) for it; SyncNet's `S` random with calibrated
BatchNorm statistics (benchmarks.sync_reference's driver).

Printed per clip: the tracks (first frame, frames) of both, the largest box difference (px), and
per track |offset difference| and |LSE-D|, |LSE-C| differences relative to the reference's LSE-D;
then frames per CPU-second of both (reference: its processes and ffmpeg children; ours: in process).
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "corpus" / "real"
CLIPS = ("spk03/b.mp4", "spk06/a.mp4")  # 25 fps, 200 frames, 512 x 512

DRIVER = r'''
import os, runpy, sys, time, types
import numpy as np, torch
sys.modules.setdefault("torchvision", types.SimpleNamespace(transforms=None))  # imported, never used
np.int = int                                   # numpy >= 1.24 dropped it; the reference's nms_ uses it
torch.set_num_threads(1)
_to, _tto, _load = torch.nn.Module.to, torch.Tensor.to, torch.load
cpu = lambda a: ["cpu" if str(x).startswith("cuda") else x for x in a]
torch.nn.Module.to = lambda self, *a, **k: _to(self, *cpu(a), **k)
torch.Tensor.to = lambda self, *a, **k: _tto(self, *cpu(a), **k)
torch.nn.Module.cuda = lambda self, *a, **k: self
torch.Tensor.cuda = lambda self, *a, **k: self
torch.load = lambda *a, **k: _load(*a, **{**k, "map_location": "cpu", "weights_only": False})
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
sys.path.insert(0, os.getcwd())
c0 = os.times()
runpy.run_path(script, run_name="__main__")
c1 = os.times()
print("CPU_S", (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user)
      + (c1.children_system - c0.children_system))
'''


def make_weights(work: Path, reference: Path, ref_python: str, clip: Path) -> tuple[Path, Path]:
    """(face-alignment layout S3FD, SyncNet S) random weights, calibrated; also the reference copy."""
    import torch

    from benchmarks.sync_reference import make_clip, run_reference
    from training.sync.s3fd_pipeline import calibrated_random_detector, to_reference_layout
    from training.sync.video import _stream

    net = calibrated_random_detector(list(_stream(clip, None))[::20])
    ours = work / "s3fd_random_calibrated.pth"
    torch.save(net.state_dict(), ours)
    theirs = reference / "detectors" / "s3fd" / "weights" / "sfd_face.pth"
    theirs.parent.mkdir(parents=True, exist_ok=True)
    torch.save(to_reference_layout(net.state_dict()), theirs)
    syncnet = work / "S_random_calibrated.model"
    if not syncnet.exists():  # the reference's own calibration run on one 224 x 224 clip
        run_reference(reference, ref_python, syncnet, [make_clip(clip, work / "cal_224.mp4")], work)
    return ours, syncnet


def run_script(reference: Path, ref_python: str, script: str, args: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([ref_python, "-c", DRIVER, script, *args], capture_output=True, text=True,
                          env=env, cwd=str(reference))
    if proc.returncode:
        raise RuntimeError(f"{script} failed:\n{proc.stderr[-3000:]}")
    return float([ln for ln in proc.stdout.splitlines() if ln.startswith("CPU_S")][-1].split()[1])


def run_reference(reference: Path, ref_python: str, syncnet: Path, clip: Path, work: Path, name: str) -> dict:
    data = work / "ref_data"
    cpu = run_script(reference, ref_python, "run_pipeline.py",
                     ["--videofile", str(clip), "--reference", name, "--data_dir", str(data)])
    cpu += run_script(reference, ref_python, "run_syncnet.py",
                      ["--videofile", str(clip), "--reference", name, "--data_dir", str(data),
                       "--initial_model", str(syncnet)])
    with open(data / "pywork" / name / "tracks.pckl", "rb") as f:
        tracks = pickle.load(f)
    with open(data / "pywork" / name / "activesd.pckl", "rb") as f:
        dists = pickle.load(f)
    rows = []
    for t, d in zip(tracks, dists):  # run_syncnet's evaluate: offset, confidence, min distance
        mdist = np.asarray(d).mean(0)
        minidx = int(np.argmin(mdist))
        rows.append({"start": int(t["track"]["frame"][0]), "frames": len(t["track"]["frame"]),
                     "boxes": np.asarray(t["track"]["bbox"]), "offset": 15 - minidx, "curve": mdist,
                     "lse_d": float(mdist[minidx]), "lse_c": float(np.median(mdist) - mdist[minidx])})
    n = len([p for p in (data / "pyframes" / name).glob("*.jpg")])
    return {"tracks": rows, "cpu_s": cpu, "frames": n}


def run_ours(s3fd: Path, syncnet: Path, clip: Path) -> dict:
    import torch

    from training.sync import s3fd_pipeline as P
    from training.sync.scorers import SyncNetScorer

    torch.set_num_threads(1)
    scorer = SyncNetScorer(syncnet)
    c0 = time.process_time()
    rows = [{"start": f["track_start"], "frames": f["track_frames"], "offset": s.offset, "lse_d": s.min_dist,
             "lse_c": s.confidence, "curve": np.asarray(s.mean_dist)}
            for f, s in P.score_s3fd_tracks(scorer, str(clip), None, "reference", s3fd)]
    cpu = time.process_time() - c0
    net = P.cached_detector(s3fd)
    with P.pipeline_video(clip, "reference") as avi:
        tracks, _, _ = P.find_tracks(net, P.reference_frames_rgb(avi, "reference"),
                                     shot_frames=P.shot_frames_rgb(avi, "reference"))
    for r, t in zip(rows, tracks):
        r["boxes"] = t.boxes
    return {"tracks": rows, "cpu_s": cpu}


def detector_on_reference_frames(s3fd: Path, work: Path, name: str) -> tuple[int, int, float]:
    """Our detector on the reference's own JPEG frames against its faces.pckl: (frames with the
    same number of boxes, frames, largest |box difference| px), the detector alone, without I/O."""
    import cv2

    from training.sync import s3fd_pipeline as P

    net = P.cached_detector(s3fd)
    with open(work / "ref_data" / "pywork" / name / "faces.pckl", "rb") as f:
        ref = pickle.load(f)
    files = sorted((work / "ref_data" / "pyframes" / name).glob("*.jpg"))
    same, worst = 0, 0.0
    for i in range(0, len(files), 16):
        frames = [cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files[i:i + 16]]
        for d, r in zip(P.detect_batch(net, frames), ref[i:i + 16]):
            rb = np.array([f["bbox"] for f in r]).reshape(-1, 4)
            if len(rb) == len(d):
                same += 1
                if len(rb):
                    worst = max(worst, float(np.abs(rb - d[:, :4]).max()))
    return same, len(files), worst


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", type=Path, default=Path("/work/tmp/syncnet_ref"))
    p.add_argument("--ref-python", default="/work/tmp/refvenv/bin/python")
    p.add_argument("--work", type=Path, default=None)
    p.add_argument("--clips", nargs="+", default=list(CLIPS), help="paths under ../shared/corpus/real")
    args = p.parse_args(argv)
    if not REAL.is_dir():
        print(f"skip: {REAL} (the real clips) is absent")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="sync_s3fd_"))
    work.mkdir(parents=True, exist_ok=True)
    clips = [REAL / c for c in args.clips]
    s3fd, syncnet = make_weights(work, args.reference, args.ref_python, clips[0])
    worst, ref_cpu, our_cpu, frames, offsets_differ = 0.0, 0.0, 0.0, 0, 0
    for clip in clips:
        name = clip.parent.name + "_" + clip.stem
        ref = run_reference(args.reference, args.ref_python, syncnet, clip, work, name)
        ours = run_ours(s3fd, syncnet, clip)
        ref_cpu, our_cpu, frames = ref_cpu + ref["cpu_s"], our_cpu + ours["cpu_s"], frames + ref["frames"]
        same = [(r["start"], r["frames"]) for r in ref["tracks"]] == [(o["start"], o["frames"]) for o in ours["tracks"]]
        print(f"{name}: reference tracks {[(r['start'], r['frames']) for r in ref['tracks']]}, ours "
              f"{[(o['start'], o['frames']) for o in ours['tracks']]} (same: {same}); "
              f"frames/CPU-s reference {ref['frames'] / ref['cpu_s']:.2f}, ours {ref['frames'] / ours['cpu_s']:.2f}")
        n_same, n, box = detector_on_reference_frames(s3fd, work, name)
        print(f"  detector alone, on the reference's JPEG frames: {n_same}/{n} frames with the same boxes, "
              f"max |box diff| {box:.3g} px")
        if not same:
            worst = float("inf")
            continue
        for k, (r, o) in enumerate(zip(ref["tracks"], ours["tracks"])):
            box = float(np.abs(r["boxes"] - o["boxes"]).max())
            dd, dc = abs(o["lse_d"] - r["lse_d"]) / r["lse_d"], abs(o["lse_c"] - r["lse_c"]) / r["lse_d"]
            dcurve = float(np.abs(o["curve"] - r["curve"]).max()) / r["lse_d"]
            worst = max(worst, dd, dc, dcurve)
            print(f"  track {k}: max |box diff| {box:.3g} px; offset ref {r['offset']} ours {o['offset']}; "
                  f"LSE-D ref {r['lse_d']:.4f} ours {o['lse_d']:.4f} (dD/D {dd:.2e}); "
                  f"LSE-C ref {r['lse_c']:.4f} ours {o['lse_c']:.4f} (dC/D {dc:.2e}); "
                  f"31-value curve max diff / D {dcurve:.2e}")
            if o["offset"] != r["offset"]:  # an argmin is only as stable as the gap to the runner-up
                gap = (r["curve"][15 - o["offset"]] - r["lse_d"]) / r["lse_d"]
                offsets_differ += 1
                print(f"    offsets differ: on the reference's own curve, our offset's distance is {gap:.2e} x "
                      f"LSE-D above its minimum "
                      f"({'a tie within the curve difference' if gap <= dcurve else 'NOT a tie'})")
    print(f"worst relative difference (LSE-D, LSE-C, curve) {worst:.2e} (target 1e-3); tracks whose offsets "
          f"differ: {offsets_differ}; frames per CPU-second over all clips: "
          f"reference {frames / ref_cpu:.2f}, ours {frames / our_cpu:.2f} ({ref_cpu / our_cpu:.2f}x)")
    print(json.dumps({"worst": worst, "offsets_differ": offsets_differ, "ref_fps_cpu": frames / ref_cpu,
                      "ours_fps_cpu": frames / our_cpu}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
