"""Does `unisync-score --io reference --crop none` give what joonson/syncnet_python's own `evaluate` gives?

    python -m benchmarks.sync_reference --reference /work/tmp/syncnet_ref --ref-python /work/tmp/refvenv/bin/python

Needs: a checkout of joonson/syncnet_python (run unmodified: its SyncNetInstance.evaluate shells out
to ffmpeg and reads JPEGs with cv2.imread), real `ffmpeg` on PATH, and a Python with its packages
(torch, opencv, scipy, python_speech_features). The reference calls `.cuda()`; on a CPU-only machine
the driver makes `.cuda()` a no-op before importing it (its code is not touched).

Clips (built here with PyAV from ../shared/corpus/real, 224 x 224 as --crop none scores them):
each real clip at 25 fps; spk04 (a 30 fps source) at 30 fps; spk02 with its audio cut to 60% of
the video; spk02 with its video starting 0.4 s after its audio. Weights: syncnet_python's `S` with
random weights (seed 0) whose BatchNorm running statistics are calibrated on real inputs (a few
batches in train mode), saved as its state dict (the published layout, what loadParameters reads).

Printed per clip: |offset difference|, |LSE-D difference|, |LSE-C difference| and the largest
|difference| over the 31-value mean-distance curve, each relative to the reference's LSE-D, and
frames per CPU-second of both (reference: its process plus its ffmpeg children; ours: in process).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
REAL = REPO.parent / "shared" / "corpus" / "real"
SIZE = 224

DRIVER = r'''
import json, os, sys, time, types
import numpy as np, torch
torch.set_num_threads(1)
torch.nn.Module.cuda = lambda self, *a, **k: self     # CPU-only machine: the reference's .cuda() as a no-op
torch.Tensor.cuda = lambda self, *a, **k: self
sys.path.insert(0, sys.argv[1])
from SyncNetInstance import SyncNetInstance
import cv2, python_speech_features
from scipy.io import wavfile
weights, clips, out = sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]
s = SyncNetInstance()
if not os.path.exists(weights):  # random S, BatchNorm statistics calibrated on real inputs
    torch.manual_seed(0)
    cap = cv2.VideoCapture(clips[0]); frames = []
    while True:
        ok, im = cap.read()
        if not ok: break
        frames.append(im)
    im = torch.from_numpy(np.stack(frames, 3)[None].transpose(0, 3, 4, 1, 2).astype(np.float32))
    os.system(f"ffmpeg -loglevel error -y -i {clips[0]} -ac 1 -vn -acodec pcm_s16le -ar 16000 {out}_cal.wav")
    sr, audio = wavfile.read(out + "_cal.wav")
    cc = torch.from_numpy(python_speech_features.mfcc(audio, sr).T[None, None].astype(np.float32))
    net = s.__S__
    net.train()
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration batches
    with torch.no_grad():
        for i in range(0, 80, 20):
            net.forward_lip(torch.cat([im[:, :, t:t + 5] for t in range(i, i + 20)]))
            net.forward_aud(torch.cat([cc[:, :, :, 4 * t:4 * t + 20] for t in range(i, i + 20)]))
    net.eval()
    torch.save(net.state_dict(), weights)
s.loadParameters(weights)
rows = []
for clip in clips:
    opt = types.SimpleNamespace(tmp_dir=out, reference="ref", batch_size=20, vshift=15)
    c0, t0 = os.times(), time.perf_counter()
    offset, conf, dists = s.evaluate(opt, clip)
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system) + (c1.children_user - c0.children_user) \
        + (c1.children_system - c0.children_system)
    n_jpg = len([f for f in os.listdir(os.path.join(out, "ref")) if f.endswith(".jpg")])
    mdist = dists.mean(0)
    rows.append({"clip": clip, "offset": int(offset), "lse_c": float(conf), "lse_d": float(mdist.min()),
                 "mean_dist": mdist.tolist(), "frames": n_jpg, "cpu_s": cpu,
                 "wall_s": time.perf_counter() - t0})
print("RESULT " + json.dumps(rows))
'''


def make_clip(src: Path, dst: Path, fps: int = 25, audio_share: float = 1.0, video_delay: float = 0.0) -> Path:
    """A 224 x 224 H.264 + AAC copy of `src` (frames at `fps` picked by time, so 30 fps runs in
    real time), its audio cut to `audio_share` of its length, its video starting `video_delay` s
    after its audio."""
    import av
    import cv2

    from features.media import VideoStream

    stream = VideoStream(src)
    frames = [cv2.resize(f, (SIZE, SIZE), interpolation=cv2.INTER_AREA) for f in stream]
    with av.open(str(src)) as c:  # the source's own audio (rate, channels) for libswresample to convert
        layout = c.streams.audio[0].layout.name
        sr = c.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray().reshape(-1, f.samples) if f.format.is_planar
                                else f.to_ndarray().reshape(f.samples, -1).T
                                for f in c.decode(audio=0)], axis=1).astype(np.float32)
    audio = audio[:, :int(audio.shape[1] * audio_share)]
    dst.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(dst), "w") as out:
        v = out.add_stream("libx264", rate=fps)
        v.width = v.height = SIZE
        v.pix_fmt = "yuv420p"
        v.options = {"crf": "18", "preset": "veryfast"}
        a = out.add_stream("aac", rate=sr)
        a.layout = layout
        n_out = int(len(frames) * fps / 25)
        delay = int(round(video_delay * fps))
        for i in range(n_out):
            frame = av.VideoFrame.from_ndarray(frames[min(len(frames) - 1, int(i * 25 / fps))], format="rgb24")
            frame.pts, frame.time_base = i + delay, Fraction(1, fps)
            for p in v.encode(frame):
                out.mux(p)
        for p in v.encode():
            out.mux(p)
        for i in range(0, audio.shape[1], 1024):
            af = av.AudioFrame.from_ndarray(np.ascontiguousarray(audio[:, i:i + 1024]), format="fltp",
                                            layout=layout)
            af.sample_rate, af.pts, af.time_base = sr, i, Fraction(1, sr)
            for p in a.encode(af):
                out.mux(p)
        for p in a.encode():
            out.mux(p)
    return dst


def build_clips(work: Path) -> list[Path]:
    clips = [make_clip(p, work / f"{p.parent.name}_{p.stem}_25.mp4") for p in sorted(REAL.glob("*/*.mp4"))]
    spk04, spk02 = REAL / "spk04" / "a.mp4", REAL / "spk02" / "a.mp4"
    clips.append(make_clip(spk04, work / "spk04_a_30.mp4", fps=30))
    clips.append(make_clip(spk02, work / "spk02_a_audio60.mp4", audio_share=0.6))
    clips.append(make_clip(spk02, work / "spk02_a_video_late.mp4", video_delay=0.4))
    return clips


def run_reference(reference: Path, python: str, weights: Path, clips: list[Path], work: Path) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([python, "-c", DRIVER, str(reference), str(weights), json.dumps([str(c) for c in clips]),
                           str(work / "ref_tmp")], capture_output=True, text=True, env=env, cwd=str(work))
    if proc.returncode:
        raise RuntimeError(f"reference failed:\n{proc.stderr[-3000:]}")
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:])


def run_ours(weights: Path, clips: list[Path]) -> list[dict]:
    import torch

    from training.sync.score import score_tracks
    from training.sync.scorers import SyncNetScorer

    torch.set_num_threads(1)
    scorer = SyncNetScorer(weights)
    rows = []
    for clip in clips:
        c0 = time.process_time()
        [(_, s)] = score_tracks(scorer, str(clip), "none", None, "reference")  # what the CLI runs
        rows.append({"clip": str(clip), "offset": s.offset, "lse_d": s.min_dist, "lse_c": s.confidence,
                     "mean_dist": s.mean_dist, "windows": s.windows, "cpu_s": time.process_time() - c0})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--reference", type=Path, default=Path("/work/tmp/syncnet_ref"),
                   help="checkout of joonson/syncnet_python")
    p.add_argument("--ref-python", default="/work/tmp/refvenv/bin/python", help="a Python with its packages")
    p.add_argument("--work", type=Path, default=None, help="folder for clips and weights (default: a temp dir)")
    args = p.parse_args(argv)
    if not REAL.is_dir():
        print(f"skip: {REAL} (the real clips) is absent")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="sync_reference_"))
    work.mkdir(parents=True, exist_ok=True)
    clips = build_clips(work)
    weights = work / "S_random_calibrated.model"
    ref = run_reference(args.reference, args.ref_python, weights, clips, work)
    ours = run_ours(weights, clips)
    print(f"{'clip':<24}{'frames':>7}{'ref off':>8}{'off':>5}{'ref LSE-D':>10}{'dD/D':>10}{'dC/D':>10}"
          f"{'curve/D':>10}{'ref f/cpu-s':>12}{'ours f/cpu-s':>13}")
    worst, ref_cpu, our_cpu, frames = 0.0, 0.0, 0.0, 0
    for r, o in zip(ref, ours):
        d = r["lse_d"]
        dd, dc = abs(o["lse_d"] - d) / d, abs(o["lse_c"] - r["lse_c"]) / d
        curve = float(np.max(np.abs(np.asarray(o["mean_dist"]) - np.asarray(r["mean_dist"])))) / d
        worst = max(worst, dd, dc, curve) if o["offset"] == r["offset"] else float("inf")
        ref_cpu, our_cpu, frames = ref_cpu + r["cpu_s"], our_cpu + o["cpu_s"], frames + r["frames"]
        print(f"{Path(r['clip']).stem:<24}{r['frames']:>7}{r['offset']:>8}{o['offset']:>5}{d:>10.4f}"
              f"{dd:>10.2e}{dc:>10.2e}{curve:>10.2e}{r['frames'] / r['cpu_s']:>12.1f}"
              f"{r['frames'] / o['cpu_s']:>13.1f}")
    print(f"worst relative difference {worst:.2e} (target 1e-4); all offsets equal: "
          f"{all(r['offset'] == o['offset'] for r, o in zip(ref, ours))}")
    print(f"speed: reference {frames / ref_cpu:.1f} frames per CPU-second, ours {frames / our_cpu:.1f} "
          f"({ref_cpu / our_cpu:.2f}x), {frames} frames, 1 torch thread each")
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    raise SystemExit(main())
