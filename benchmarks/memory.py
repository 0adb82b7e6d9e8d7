"""Peak memory per extraction worker on large inputs, against the documented bound.

    python benchmarks/memory.py [--real ../shared/corpus/real] [--minutes-1080p 5] [--seconds-4k 20]
                                [--ray] [--json benchmarks/memory.json]

Builds, under a temporary folder (never committed), a long 1080p clip (1920x1080) and a short 4K
clip (3840x2160) by looping the shared real clips, each upscaled to the frame height and centred
(the face stays a realistic share of the frame), with their own audio, H.264 + AAC at 25 fps.
Then extracts each with every CPU field (audio rgb landmarks mel parsing tdmm lip fbank meta) by
the real worker code in a child process (`pipelines/worker.py` on a one-utterance shard), and
prints the child's peak RSS (the kernel's high-water mark) against `features.media.MEMORY_BOUND`.
`--ray` runs the real Ray job (`pipelines/extract.py`, `folder` corpus) instead and reads every
`ray::extract_shard` worker's high-water mark from /proc while it runs.
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

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(REPO))
os.environ.setdefault("GLOG_minloglevel", "2")

CPU_FIELDS = ["audio", "rgb", "landmarks", "mel", "parsing", "tdmm", "lip", "fbank", "meta"]
GIB = 1024 ** 3


def build_clip(out: Path, sources: list[Path], seconds: float, width: int, height: int,
               codec: str = "libx264", progress: bool = True) -> Path:
    """An H.264/AAC mp4 of `seconds` at 25 fps: the sources looped in turn, each scaled to `height`
    and centred on a black `width` x `height` canvas, with their own audio (16 kHz mono AAC).

    Frames are encoded as they are made, so building a long clip needs one source clip in memory.
    """
    import av
    import cv2
    import numpy as np
    from tqdm import tqdm

    from features.media import load_media

    n_total = int(round(seconds * 25))
    bar = tqdm(total=n_total, desc=f"build {out.name}", unit="frame", disable=not progress)
    written = 0
    with av.open(str(out), "w") as container:
        video = container.add_stream(codec, rate=25)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "20"}
        audio = container.add_stream("aac", rate=16000)
        audio.layout = "mono"
        canvas = np.zeros((height, width, 3), np.uint8)
        audio_pts = 0
        while written < n_total:
            for src in sources:
                media = load_media(src)
                take = min(media.n_frames, n_total - written)
                for img in media.frames[:take]:
                    side = min(height, width)
                    scaled = cv2.resize(img, (side * img.shape[1] // img.shape[0], side),
                                        interpolation=cv2.INTER_CUBIC)
                    x0 = (width - scaled.shape[1]) // 2
                    y0 = (height - scaled.shape[0]) // 2
                    canvas[y0:y0 + scaled.shape[0], x0:x0 + scaled.shape[1]] = scaled
                    frame = av.VideoFrame.from_ndarray(canvas, format="rgb24")
                    frame.pts = written
                    for packet in video.encode(frame):
                        container.mux(packet)
                    written += 1
                    bar.update(1)
                samples = media.audio[: take * 640]
                for i in range(0, len(samples), 1024):
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples[None, i:i + 1024]),
                                                       format="fltp", layout="mono")
                    chunk.sample_rate, chunk.pts, chunk.time_base = 16000, audio_pts, Fraction(1, 16000)
                    audio_pts += chunk.samples
                    for packet in audio.encode(chunk):
                        container.mux(packet)
                del media
                if written >= n_total:
                    break
        for stream in (video, audio):
            for packet in stream.encode():
                container.mux(packet)
    bar.close()
    return out


def utterance_row(video: Path, key: str = "spk__clip") -> dict:
    """A one-utterance plan row for `video` (the `folder` adapter's shape)."""
    return {"utt_id": key.replace("__", "/"), "key": key, "dataset": "folder", "speaker_id": key.split("__")[0],
            "video_path": str(video), "audio_path": None, "transcript": "", "official_split": "",
            "shard_id": 0, "index_in_shard": 0, "start_s": None, "end_s": None, "language": ""}


def extract_in_this_process(video: Path, store: Path, fields: list[str]) -> dict:
    """The worker's job for one utterance, as a Ray task would run it: every field but tdmm, then
    a morphable model fitted on the two halves of the stored landmarks, then tdmm. Returns this
    process's peak RSS (bytes) and the utterance's meta."""
    import resource

    import numpy as np

    from catalog.layout import tar_path
    from features import tdmm
    from features.fields import FIELDS, Options
    from pipelines.worker import extract_shard

    row = utterance_row(video)
    started = time.perf_counter()
    first = [f for f in fields if f != "tdmm"]
    result = extract_shard(str(store), "folder", 0, [row], first, False, Options())
    meta = json.loads(_member(tar_path(store, "folder", "meta", 0), ".json"))
    if "tdmm" in fields and "landmarks" in fields and not meta.get("errors"):
        lm = FIELDS["landmarks"].decode(_member(tar_path(store, "folder", "landmarks", 0), ".landmarks.npy"))
        lm = lm.astype(np.float32)
        model, report = tdmm.fit([lm[: len(lm) // 2], lm[len(lm) // 2:]])
        model_path = store / "models" / "tdmm-bench.npz"
        model_path.parent.mkdir(parents=True, exist_ok=True)
        model.save(model_path, report)
        extract_shard(str(store), "folder", 0, [row], ["tdmm"], False, Options(tdmm_model=model_path))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    return {"peak_rss": peak, "seconds": time.perf_counter() - started, "frames": result["frames"],
            "meta": {k: meta.get(k) for k in ("n_frames", "expected_frames", "decoded_frames",
                                              "audio_coverage", "warnings", "detection_rate", "errors")}}


def _member(tar: Path, ext: str) -> bytes:
    import tarfile

    with tarfile.open(tar) as t:
        for m in t.getmembers():
            if m.name.endswith(ext):
                return t.extractfile(m).read()
    raise FileNotFoundError(f"{tar}: no member ending in {ext}")


def measure_child(video: Path, fields: list[str] = CPU_FIELDS, code: Path = REPO, timeout: float = 3600
                  ) -> dict:
    """Run `extract_in_this_process` in a fresh Python on the code tree `code` and return its
    report: the child's own peak RSS is what a Ray worker reaches on this utterance."""
    with tempfile.TemporaryDirectory(prefix="unisync-mem-") as tmp:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", "--code", str(code),
               "--video", str(video), "--store", str(Path(tmp) / "store"), "--fields", *fields]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp,
                              env={**os.environ, "GLOG_minloglevel": "2"})
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            raise RuntimeError(f"worker child failed on {video} (exit {proc.returncode}):\n"
                               f"{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        return json.loads(lines[-1][len("RESULT "):])


def child_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(args.code.resolve()))
    print("RESULT " + json.dumps(extract_in_this_process(args.video, args.store, args.fields)), flush=True)
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, default=REPO.parent / "shared" / "corpus" / "real",
                   help="folder of real clips to build the large clips from (default: %(default)s)")
    p.add_argument("--minutes-1080p", type=float, default=5.0, help="length of the 1080p clip (default: %(default)s)")
    p.add_argument("--seconds-4k", type=float, default=20.0, help="length of the 4K clip (default: %(default)s)")
    p.add_argument("--fields", nargs="+", default=CPU_FIELDS, help="fields to extract (default: every CPU field)")
    p.add_argument("--code", type=Path, default=REPO,
                   help="run the worker on this checkout of the code, e.g. an older commit for a "
                        "before/after figure (default: this one)")
    p.add_argument("--keep", type=Path, default=None, help="build the clips here and keep them (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    _args = parse_args()
    raise SystemExit(child_main(_args) if _args.child else main(_args))
