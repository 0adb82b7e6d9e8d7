"""Shared fixtures: the real clips (skipped when ../shared is absent) and small media writers."""
from __future__ import annotations

import io
import os
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_CORPUS = REPO.parent / "shared" / "corpus" / "real"


@pytest.fixture(scope="session")
def real_corpus() -> Path:
    if not any(REAL_CORPUS.glob("*/*.mp4")):
        pytest.skip(f"real clips not found at {REAL_CORPUS} (a fresh clone without ../shared)")
    return REAL_CORPUS


def write_video(path: Path, frames: np.ndarray, fps: int = 25, audio: np.ndarray | None = None,
                video: bool = True, rotation: float | None = None, hflip: bool = False,
                sar: Fraction | None = None, tags: dict | None = None) -> Path:
    """A small H.264/AAC mp4 (or any container the suffix names) with or without either stream.

    `rotation` (counter-clockwise degrees, PyAV's convention) and `hflip` write a display matrix,
    `sar` a sample aspect ratio, `tags` video stream metadata (e.g. a legacy `rotate` tag): how a
    player should show the stored frames."""
    import av

    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=fps) if video else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
            if rotation is not None or hflip:
                vs.set_display_rotation(rotation or 0, hflip=hflip)
            if sar is not None:
                vs.codec_context.sample_aspect_ratio = sar
            vs.metadata.update(tags or {})
        as_ = out.add_stream("aac", rate=16000) if audio is not None else None
        if as_ is not None:
            as_.layout = "mono"
        if vs is not None:
            for img in frames:
                for pkt in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    out.mux(pkt)
            for pkt in vs.encode():
                out.mux(pkt)
        if as_ is not None:
            for i in range(0, len(audio), 1024):
                frame = av.AudioFrame.from_ndarray(audio[None, i:i + 1024].astype(np.float32),
                                                   format="fltp", layout="mono")
                frame.sample_rate, frame.pts, frame.time_base = 16000, i, Fraction(1, 16000)
                for pkt in as_.encode(frame):
                    out.mux(pkt)
            for pkt in as_.encode():
                out.mux(pkt)
    return path


def write_pcm(path: Path, signal: np.ndarray, codec: str, rate: int = 16000,
              frames: np.ndarray | None = None) -> Path:
    """`signal` ((channels, samples) float32) in a file whose audio is `codec` (pcm_u8, pcm_s16le,
    pcm_s32le_planar, pcm_f64le, ...): PyAV converts the float frames to the codec's sample format.
    With `frames`, an MJPEG video stream goes first (an .avi with 8-bit PCM, as old cameras wrote;
    MJPEG has no reordered frames, whose missing timestamps in AVI would shift the video)."""
    import av

    layout = {1: "mono", 2: "stereo"}[len(signal)]
    with av.open(str(path), "w") as out:
        vs = out.add_stream("mjpeg", rate=25) if frames is not None else None
        if vs is not None:
            vs.width, vs.height, vs.pix_fmt = frames.shape[2], frames.shape[1], "yuvj420p"
        st = out.add_stream(codec, rate=rate)
        st.layout = layout
        if vs is not None:
            for img in frames:
                for pkt in vs.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")):
                    out.mux(pkt)
            for pkt in vs.encode():
                out.mux(pkt)
        for i in range(0, signal.shape[1], 1000):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(signal[:, i:i + 1000], dtype=np.float32),
                                               format="fltp", layout=layout)
            frame.sample_rate, frame.pts, frame.time_base = rate, i, Fraction(1, rate)
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


def tone(seconds: float, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * 16000)) / 16000
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def noise_frames(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, size, size, 3), dtype=np.uint8)


def make_bad_inputs(root: Path) -> dict[str, Path]:
    """The bad inputs of the issue: each must become an error row with a reason."""
    root.mkdir(parents=True, exist_ok=True)
    files = {"empty": root / "empty.mp4", "text": root / "text.mp4", "truncated": root / "truncated.mp4",
             "no_audio": root / "no_audio.mp4", "no_video": root / "no_video.m4a",
             "no_face": root / "no_face.mp4"}
    files["empty"].write_bytes(b"")
    files["text"].write_text("this is not a video\n")
    full = write_video(root / "full.mp4", noise_frames(50), audio=tone(2.0))
    files["truncated"].write_bytes(full.read_bytes()[:3000])
    full.unlink()
    write_video(files["no_audio"], noise_frames(25))
    write_video(files["no_video"], noise_frames(1), audio=tone(1.0), video=False)
    write_video(files["no_face"], noise_frames(40, seed=1), audio=tone(1.6))
    return files


@pytest.fixture
def bad_inputs(tmp_path) -> dict[str, Path]:
    return make_bad_inputs(tmp_path / "bad")


def tiny_hubert(path: Path) -> Path:
    """A randomly initialised HuBERT of the real architecture (features.hubert.save_tiny_random_model),
    saved where `--hubert-model` can load it."""
    from features.hubert import save_tiny_random_model

    return save_tiny_random_model(path)


def tiny_whisper(path: Path) -> Path:
    """A randomly initialised Whisper of the real architecture and 30-s input geometry
    (features.whisper.save_tiny_random_model), saved where `--whisper-model` can load it."""
    from features.whisper import save_tiny_random_model

    return save_tiny_random_model(path)


# -- extraction in this process, on one warm local worker --------------------------------------------
# A test whose point is the store (not Ray, not the command line) runs pipelines/extract.py's main
# here with `--ray never`: no Ray start-up (20-40 s on a busy machine) and no second Python; its
# tasks run in catalog/jobs.py's local worker, the very code path of a one-shard job. That worker
# is shared by every such run of the session (started again when it died or the environment
# changed), so MediaPipe and the models load once, as the warm workers of a shared Ray did.
_WARM: dict = {}  # "worker": the shared catalog.jobs.LocalWorker, "env": what it inherited, "open"


def _environment() -> dict[str, str]:
    """What a spawned worker inherits and may read (the fault hook, UNISYNC_VERBOSE, HF_HOME, ...);
    not pytest's per-test marker."""
    return {k: v for k, v in os.environ.items() if k != "PYTEST_CURRENT_TEST"}


@contextmanager
def warm_local_worker() -> Iterator[None]:
    """While open, every job of this process runs its local-worker tasks on the shared worker:
    Runner.close leaves it running; a worker that died (or was killed) is replaced as usual."""
    from catalog import jobs

    if _WARM.get("open"):  # nested: the outer one has it in hand
        yield
        return
    real, real_stop = jobs.LocalWorker, jobs.LocalWorker.stop

    def shared():
        worker = _WARM.get("worker")
        if worker is not None and (worker._conn.closed or not worker.process.is_alive()
                                   or _WARM["env"] != _environment()):
            real_stop(worker)
            worker = None
        if worker is None:
            worker = real()
            _WARM.update(worker=worker, env=_environment())
        return worker

    jobs.LocalWorker = shared
    real.stop = lambda self: None if self is _WARM.get("worker") else real_stop(self)
    _WARM["open"] = True
    try:
        yield
    finally:
        jobs.LocalWorker, real.stop = real, real_stop
        _WARM["open"] = False


@pytest.fixture(scope="session", autouse=True)
def _stop_warm_local_worker() -> Iterator[None]:
    yield
    worker = _WARM.pop("worker", None)
    if worker is not None:
        worker.stop()


@dataclass
class Extraction:
    """What one in-process run of pipelines/extract.py gave: exit code, stdout, stderr."""

    code: int
    out: str
    err: str

    def ok(self) -> "Extraction":
        assert self.code == 0, f"exit {self.code}\n{self.out[-3000:]}\n{self.err[-3000:]}"
        return self


def extract_here(*argv: str | Path) -> Extraction:
    """pipelines/extract.py's main(argv) in this process, `--ray never` unless argv says --ray,
    its tasks on the warm local worker (see above); stdout and stderr captured."""
    from pipelines.extract import main

    args = [str(a) for a in argv]
    if "--ray" not in args:
        args += ["--ray", "never"]
    out, err = io.StringIO(), io.StringIO()
    with warm_local_worker(), redirect_stdout(out), redirect_stderr(err):
        code = main(args)
    return Extraction(code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="session")
def real_store(real_corpus, tmp_path_factory) -> Path:
    """The real clips extracted with every field ("all"; tiny random HuBERT and Whisper): one
    store for the session, which tests only read (test_representations, test_dlib_fields)."""
    models = tmp_path_factory.mktemp("tiny_models")
    store = tmp_path_factory.mktemp("real_all")
    extract_here("--dataset", "folder", "--root", real_corpus, "--store", store, "--shard-size", "4",
                 "--fields", "all", "--hubert-model", tiny_hubert(models / "hubert"),
                 "--whisper-model", tiny_whisper(models / "whisper")).ok()
    return store
