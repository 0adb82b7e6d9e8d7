"""Peak memory per extraction worker on large inputs, against the documented bound.

    python -m benchmarks.memory [--real ../shared/corpus/real] [--minutes-720p 0] [--minutes-1080p 5]
                                [--seconds-4k 20] [--audio-rate 16000] [--stereo] [--ray] [--keep DIR]
                                [--json benchmarks/memory.json]

Builds, under a temporary folder (never committed), a long 1080p clip (1920x1080), a short 4K
clip (3840x2160) and, with --minutes-720p, a lecture-length 720p one, by looping the shared real
clips, each upscaled to the frame height and centred (the face stays a realistic share of the
frame), with their own audio, H.264 + AAC at 25 fps (one cycle encoded, then stream-copied).
Then extracts each with every CPU field (audio rgb landmarks mel parsing tdmm lip fbank meta) by
the real worker code in a child process (`pipelines/worker.py` on a one-utterance shard, no
--max-seconds: the whole clip is one utterance), and prints the child's peak RSS (the kernel's
high-water mark) against `features.media.MEMORY_BOUND`, and the stored tars' size. Between the
two phases a worker runs (every field but tdmm, then tdmm), the morphable model tdmm needs is
fitted in a process of its own, as the job's driver does, on FIT_FRAMES frames of the landmarks.
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
os.environ.setdefault("GLOG_minloglevel", "2")

CPU_FIELDS = ["audio", "rgb", "landmarks", "mel", "parsing", "tdmm", "lip", "fbank", "meta"]
GIB = 1024 ** 3
FIT_FRAMES = 4000  # frames the harness fits its morphable model on (evenly spaced over the clip)


def build_clip(out: Path, sources: list[Path], seconds: float, width: int, height: int,
               codec: str = "libx264", progress: bool = True, audio_rate: int = 16000,
               stereo: bool = False) -> Path:
    """An H.264/AAC mp4 of `seconds` at 25 fps: the sources in turn, each scaled to `height` and
    centred on a black `width` x `height` canvas, with their own audio (AAC at `audio_rate`, mono
    or the same signal on two channels), looped.

    One cycle through the sources is encoded (frame by frame, one source in memory); a longer
    clip repeats that cycle by stream copy (ffmpeg's concat demuxer), cut at `seconds`.
    """
    cycle_frames = sum(_grid_frames(src) for src in sources)
    n_total = int(round(seconds * 25))
    if n_total <= cycle_frames:
        return _encode_cycle(out, sources, n_total, width, height, codec, progress, audio_rate, stereo)
    cycle = _encode_cycle(out.with_name(out.stem + ".cycle.mp4"), sources, cycle_frames, width, height,
                          codec, progress, audio_rate, stereo)
    try:
        _concat(cycle, out, -(-n_total // cycle_frames), seconds)
    finally:
        cycle.unlink(missing_ok=True)
        out.with_name(out.stem + ".concat.txt").unlink(missing_ok=True)
    return out


def _grid_frames(path: Path) -> int:
    from features.media import read_timeline

    return read_timeline(path).n_frames


def _encode_cycle(out: Path, sources: list[Path], n_total: int, width: int, height: int, codec: str,
                  progress: bool, audio_rate: int = 16000, stereo: bool = False) -> Path:
    import av
    import cv2
    import numpy as np
    from tqdm import tqdm

    from features.media import load_media

    bar = tqdm(total=n_total, desc=f"build {out.name}", unit="frame", disable=not progress)
    written = 0
    with av.open(str(out), "w") as container:
        video = container.add_stream(codec, rate=25)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "20"}
        audio = container.add_stream("aac", rate=audio_rate)
        audio.layout = layout = "stereo" if stereo else "mono"
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
                samples = _at_rate(media.audio[: take * 640], audio_rate)
                planes = np.stack([samples, samples]) if stereo else samples[None]
                for i in range(0, samples.shape[-1], 1024):
                    chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(planes[:, i:i + 1024]),
                                                       format="fltp", layout=layout)
                    chunk.sample_rate, chunk.pts, chunk.time_base = audio_rate, audio_pts, Fraction(1, audio_rate)
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


def _at_rate(samples, rate: int):
    """16 kHz samples at `rate` (a lecture's camera records 44.1 or 48 kHz)."""
    import librosa

    return samples if rate == 16000 else librosa.resample(samples, orig_sr=16000, target_sr=rate, res_type="soxr_hq")


def _concat(cycle: Path, out: Path, copies: int, seconds: float) -> None:
    """`copies` x `cycle` by stream copy through the concat demuxer, cut at `seconds`."""
    import av

    listing = out.with_name(out.stem + ".concat.txt")
    listing.write_text("".join(f"file '{cycle.resolve()}'\n" for _ in range(copies)))
    with av.open(str(listing), format="concat", options={"safe": "0"}) as src, av.open(str(out), "w") as dst:
        streams = {s.index: dst.add_stream_from_template(s) for s in (src.streams.video[0], src.streams.audio[0])}
        last_dts: dict[int, int] = {}
        for packet in src.demux(*[src.streams[i] for i in streams]):
            index = packet.stream.index
            if packet.dts is None or packet.pts is None or float(packet.pts * packet.time_base) >= seconds:
                continue
            if packet.dts <= last_dts.get(index, -2 ** 62):
                continue  # a copy's AAC priming packet overlaps the previous copy's end
            last_dts[index] = packet.dts
            packet.stream = streams[index]
            dst.mux(packet)


def utterance_row(video: Path, key: str = "spk__clip") -> dict:
    """A one-utterance plan row for `video` (the `folder` adapter's shape)."""
    return {"utt_id": key.replace("__", "/"), "key": key, "dataset": "folder", "speaker_id": key.split("__")[0],
            "video_path": str(video), "audio_path": None, "transcript": "", "official_split": "",
            "shard_id": 0, "index_in_shard": 0, "start_s": None, "end_s": None, "language": ""}


def extract_in_this_process(video: Path, store: Path, fields: list[str], code: Path = REPO) -> dict:
    """The worker's job for one utterance, as Ray tasks would run it in one worker process:
    every field but tdmm, then (the model fitted elsewhere, `fit_model`) tdmm. Returns this
    process's peak RSS (bytes), the stored tars' sizes and the utterance's meta."""
    import resource

    from catalog.layout import tar_path
    from features.fields import Options
    from pipelines.worker import extract_shard

    row = utterance_row(video)
    started = time.perf_counter()
    first = [f for f in fields if f != "tdmm"]
    result = extract_shard(str(store), "folder", 0, [row], first, False, Options())
    meta = json.loads(_member(tar_path(store, "folder", "meta", 0), ".json"))
    if "tdmm" in fields and "landmarks" in fields and not meta.get("errors"):
        model_path = store / "models" / "tdmm-bench.npz"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), "--fit-tdmm", "--code", str(code),
                        "--store", str(store)], check=True, capture_output=True)
        extract_shard(str(store), "folder", 0, [row], ["tdmm"], False, Options(tdmm_model=model_path))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
    stored = {p.parent.name: p.stat().st_size for p in store.rglob("*.tar")}
    return {"peak_rss": peak, "seconds": time.perf_counter() - started, "frames": result["frames"],
            "stored_bytes": sum(stored.values()), "stored_bytes_by_field": stored,
            "meta": {k: meta.get(k) for k in ("n_frames", "expected_frames", "decoded_frames",
                                              "audio_coverage", "warnings", "detection_rate", "errors")}}


def fit_model(store: Path) -> Path:
    """The morphable model tdmm needs, fitted on FIT_FRAMES evenly spaced frames of the stored
    landmarks. Run in a process of its own (`--fit-tdmm`): the job fits it in the driver, not in
    a worker, so its memory is not the worker's."""
    import numpy as np

    from catalog.layout import tar_path
    from features import tdmm
    from features.fields import FIELDS

    lm = FIELDS["landmarks"].decode(_member(tar_path(store, "folder", "landmarks", 0), ".landmarks.npy"))
    lm = lm[::max(1, len(lm) // FIT_FRAMES)].astype(np.float32)
    model, report = tdmm.fit([lm[: len(lm) // 2], lm[len(lm) // 2:]])
    path = store / "models" / "tdmm-bench.npz"
    model.save(path, report)
    return path


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


def _parent(pid: int) -> int:
    stat = (Path("/proc") / str(pid) / "stat").read_text()
    return int(stat[stat.rindex(")") + 2:].split()[1])


def ray_worker_peaks(root: int) -> dict[int, int]:
    """Peak RSS (VmHWM, bytes) of every live Ray worker process descending from process `root`
    (the job's driver: its local Ray's workers, not other people's on a shared host)."""
    peaks = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "cmdline").read_bytes().startswith(b"ray::"):
                continue
            pid = int(proc.name)
            while pid > 1 and pid != root:
                pid = _parent(pid)
            if pid != root:
                continue
            for line in (proc / "status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    peaks[int(proc.name)] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):  # the process ended meanwhile
            continue
    return peaks


def measure_ray(videos: list[Path], fields: list[str], code: Path = REPO, workers: int = 2,
                timeout: float = 7200) -> dict:
    """The real Ray job (pipelines/extract.py, `folder` corpus, one utterance per shard) on
    `videos`; returns the highest peak RSS any Ray worker reached, sampled from /proc as it runs."""
    with tempfile.TemporaryDirectory(prefix="unisync-mem-ray-") as tmp:
        root = Path(tmp) / "corpus" / "spk"
        root.mkdir(parents=True)
        for v in videos:
            (root / v.name).symlink_to(v.resolve())
        store = Path(tmp) / "store"
        cmd = [sys.executable, str(code / "pipelines" / "extract.py"), "--dataset", "folder",
               "--root", str(root.parent), "--store", str(store), "--workers", str(workers),
               "--shard-size", "1", "--fields", *fields]
        if (code / "catalog" / "jobs.py").exists():  # a tree whose one-shard jobs run in-process: keep Ray
            cmd += ["--ray", "always"]
        started = time.perf_counter()
        log = open(Path(tmp) / "job.log", "w+")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env={**os.environ, "RAY_ADDRESS": "", "GLOG_minloglevel": "2"})
        peaks: dict[int, int] = {}
        while proc.poll() is None:
            for pid, peak in ray_worker_peaks(proc.pid).items():
                peaks[pid] = max(peak, peaks.get(pid, 0))
            if time.perf_counter() - started > timeout:
                proc.kill()
                raise TimeoutError(f"the Ray job ran over {timeout} s")
            time.sleep(0.5)
        log.seek(0)
        out = log.read()
        log.close()
        if proc.returncode != 0:
            raise RuntimeError(f"the Ray job failed (exit {proc.returncode}):\n{out[-3000:]}")
        report = json.loads((store / "extract_report.json").read_text())
        return {"peak_rss": max(peaks.values(), default=0), "workers_seen": len(peaks),
                "seconds": time.perf_counter() - started, "report": report}


def main(args: argparse.Namespace) -> int:
    from features.media import MEMORY_BOUND

    real = sorted(args.real.glob("*/*.mp4"))
    if not real:
        print(f"error: no real clips under {args.real}", file=sys.stderr)
        return 2
    results = {}
    with tempfile.TemporaryDirectory(prefix="unisync-mem-clips-") as tmp:
        folder = args.keep or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        clips = {}
        sound = "" if (args.audio_rate, args.stereo) == (16000, False) else \
            f"_{args.audio_rate // 1000}k{'stereo' if args.stereo else 'mono'}"
        if args.minutes_720p > 0:
            clips["720p"] = (folder / f"hd720_{args.minutes_720p:g}min{sound}.mp4", args.minutes_720p * 60, 1280, 720)
        if args.minutes_1080p > 0:
            clips["1080p"] = (folder / f"hd1080_{args.minutes_1080p:g}min{sound}.mp4", args.minutes_1080p * 60, 1920, 1080)
        if args.seconds_4k > 0:
            clips["4k"] = (folder / f"uhd2160_{args.seconds_4k:g}s{sound}.mp4", args.seconds_4k, 3840, 2160)
        for name, (path, seconds, width, height) in clips.items():
            if not path.exists():
                build_clip(path, real, seconds, width, height, audio_rate=args.audio_rate, stereo=args.stereo)
        if args.ray:
            r = measure_ray([c[0] for c in clips.values()], args.fields, args.code)
            results["ray"] = r
            print(f"Ray job ({r['workers_seen']} workers, {r['report']['frames_extracted']} frames, "
                  f"{r['seconds']:.0f} s): highest worker peak RSS {r['peak_rss'] / GIB:.2f} GiB "
                  f"(bound {MEMORY_BOUND / GIB:.1f} GiB)")
        else:
            for name, (path, seconds, width, height) in clips.items():
                r = measure_child(path, args.fields, args.code)
                results[name] = {**r, "width": width, "height": height, "seconds_of_video": seconds}
                print(f"{name} {width}x{height}, {seconds:g} s ({r['frames']} frames, fields {' '.join(args.fields)}, "
                      f"{r['seconds']:.0f} s): worker peak RSS {r['peak_rss'] / GIB:.2f} GiB "
                      f"(bound {MEMORY_BOUND / GIB:.1f} GiB), stored {r['stored_bytes'] / 2 ** 20:.0f} MiB; "
                      f"warnings {r['meta']['warnings']}", flush=True)
    worst = max(r["peak_rss"] for r in results.values())
    print(f"highest: {worst / GIB:.2f} GiB, {'within' if worst < MEMORY_BOUND else 'OVER'} the bound")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if worst < MEMORY_BOUND else 1


def child_main(args: argparse.Namespace) -> int:
    sys.path.insert(0, str(args.code.resolve()))
    if args.fit_tdmm:
        fit_model(args.store)
        return 0
    print("RESULT " + json.dumps(extract_in_this_process(args.video, args.store, args.fields, args.code)),
          flush=True)
    return 0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", type=Path, default=REPO.parent / "shared" / "corpus" / "real",
                   help="folder of real clips to build the large clips from (default: %(default)s)")
    p.add_argument("--minutes-720p", type=float, default=0.0,
                   help="length of a 1280x720 clip, e.g. 30 for a lecture-length utterance (default: none)")
    p.add_argument("--minutes-1080p", type=float, default=5.0, help="length of the 1080p clip (default: %(default)s)")
    p.add_argument("--seconds-4k", type=float, default=20.0, help="length of the 4K clip (default: %(default)s)")
    p.add_argument("--audio-rate", type=int, default=16000,
                   help="sample rate of the clips' AAC audio, e.g. 48000 as cameras record (default: %(default)s)")
    p.add_argument("--stereo", action="store_true", help="two-channel audio (default: mono)")
    p.add_argument("--fields", nargs="+", default=CPU_FIELDS, help="fields to extract (default: every CPU field)")
    p.add_argument("--code", type=Path, default=REPO,
                   help="run the worker on this checkout of the code, e.g. an older commit for a "
                        "before/after figure (default: this one)")
    p.add_argument("--ray", action="store_true",
                   help="measure through the real Ray job (pipelines/extract.py) instead of a worker child")
    p.add_argument("--keep", type=Path, default=None, help="build the clips here and keep them (default: a temp dir)")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here as JSON")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--fit-tdmm", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--video", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--store", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


if __name__ == "__main__":
    _args = parse_args()
    raise SystemExit(child_main(_args) if _args.child or _args.fit_tdmm else main(_args))
