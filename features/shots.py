"""Where a long raw video can be cut into utterances: shot cuts and main-face runs.

`probe_video` streams the video once at low resolution with bounded memory (one small frame at
a time; PyAV scales each decoded frame down before it becomes an array): PySceneDetect's
ContentDetector (its default threshold, 27, on frames `SHOT_WIDTH` pixels wide, the width its
own auto-downscale aims at) finds shot cuts, and MediaPipe's full-range face detector, run
`FACE_RATE` times a second on `FACE_WIDTH`-pixel frames, samples the main face's box.

`cut_points` turns a probe into segments on the 25 fps grid: one per run of the main face inside
a shot (a run ends where the face is missing for more than `MAX_FACE_GAP_S` or its box jumps,
as when the camera moves to another person), each run split evenly into pieces of at most
`max_seconds`; pieces shorter than `MIN_SEGMENT_S` are dropped. A grid frame is left out on
each side of a shot cut, so no piece holds a frame of the neighbouring shot.

Identity cuts (`probe_video(identity=True)`, `--identity-cuts`): every IDENTITY_EVERY-th face
sample (2.5 Hz) also gets dlib's face-recognition descriptor (features/dlib_models.py: the
5-point predictor inside the sample's box on an IDENTITY_WIDTH-pixel copy of the frame, the
128-d ResNet), and the probe keeps, per such sample, its distance to the mean of the previous
IDENTITY_WINDOW descriptors (reset at a shot cut and where the face is missing). A face run
also breaks where that distance first exceeds the threshold (IDENTITY_THRESHOLD, catalog
identities' default) and the next sample's does too: one blurred frame is not a new person, and
a dissolve between two speakers, which neither the shot detector nor the box-jump rule sees,
is. The probe stores one float per sample, not the descriptors, so the threshold is chosen when
cutting. Opt-in because of its cost: one ResNet pass (~0.13 s of one core) per 0.4 s of video,
about 0.33 CPU seconds per video second on top of the probe's own ~0.12 (720 px), so ~4x (README).
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from features.media import DisplayConverter
from features.quiet import QuietStart, quiet_native_logs

quiet_native_logs()  # before mediapipe is imported (UNISYNC_VERBOSE=1 keeps its messages)

FPS = 25
SHOT_WIDTH = 256
FACE_WIDTH = 320
FACE_RATE = 5.0  # face samples per second
SHOT_THRESHOLD = 27.0  # PySceneDetect ContentDetector's default
MIN_SHOT_FRAMES = 15  # PySceneDetect's default min_scene_len
MAX_FACE_GAP_S = 0.5
JUMP_CENTRE = 0.5  # a jump: the box centre moves more than this many box widths between samples
JUMP_SIZE = 1.5  # ... or the box side changes by more than this factor
MIN_SEGMENT_S = 1.0
IDENTITY_EVERY = 2  # a descriptor at every 2nd face sample: 2.5 Hz
IDENTITY_WIDTH = 640  # frame width the descriptor's chip is aligned on
IDENTITY_WINDOW = 4  # a descriptor is compared with the mean of this many before it (1.6 s)
IDENTITY_THRESHOLD = 0.5  # Euclidean; catalog/identities.py's DEFAULT_THRESHOLD (features cannot import it)
VERSION = "shots-contentdetector27-w256area-face5hz-3"


@dataclass
class Probe:
    """What one streaming pass over a video found (times in seconds from its first frame)."""

    duration_s: float  # on the 25 fps grid: n_frames / 25, by the README's frame-count rule
    source_frames: int
    cuts_s: list[float] = field(default_factory=list)  # presentation time of each shot's first frame
    faces: list[tuple[float, list[float] | None]] = field(default_factory=list)  # (t, [cx, cy, side]) or None
    identity: list[tuple[float, float | None]] = field(default_factory=list)  # (t, distance to the window) or None
    seconds: float = 0.0  # wall time of the probe
    version: str = VERSION

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Probe":
        return cls(**{**d, "faces": [(t, b) for t, b in d["faces"]],
                      "identity": [(t, x) for t, x in d.get("identity", [])]})


def header_duration(path: Path | str) -> float | None:
    """The container's stated duration in seconds (no decoding), or None when it has none."""
    import av

    with av.open(str(path)) as container:
        if not container.streams.video:
            return None
        stream = container.streams.video[0]
        if stream.duration is not None and stream.time_base is not None:
            return float(stream.duration * stream.time_base)
        return container.duration / 1e6 if container.duration else None


class FaceSampler:
    """The most prominent face (area x score x centrality) per sampled frame, as (cx, cy, side).

    MediaPipe's short-range model first (close-ups: the full-range one misses about one in five
    frames of a talking head filling half the frame), the full-range model when it finds none
    (small faces in wide shots)."""

    def __init__(self):
        import mediapipe as mp

        self.detectors = [QuietStart(lambda m=m: mp.solutions.face_detection.FaceDetection(
                              model_selection=m, min_detection_confidence=0.5)) for m in (0, 1)]

    def __call__(self, rgb: np.ndarray) -> list[float] | None:
        found = []
        for detector in self.detectors:
            found = detector.process(rgb).detections or []
            if found:
                break
        best, best_score = None, 0.0
        for det in found:
            box = det.location_data.relative_bounding_box
            cx, cy = box.xmin + box.width / 2, box.ymin + box.height / 2
            side = max(box.width * rgb.shape[1], box.height * rgb.shape[0]) / rgb.shape[1]
            centrality = 1.0 - min(1.0, math.hypot(cx - 0.5, cy - 0.5))
            score = side * side * det.score[0] * centrality
            if score > best_score:
                best, best_score = [round(cx, 4), round(cy, 4), round(side, 4)], score
        return best

    def close(self) -> None:
        for detector in self.detectors:
            detector.close()


class IdentityTrack:
    """Per face sample with a face: dlib's descriptor in its box, and the distance to the mean of
    the last IDENTITY_WINDOW descriptors (None for the first after a reset)."""

    def __init__(self):
        from features import dlib_models

        self.dlib = dlib_models
        dlib_models.face_encoder(), dlib_models.shape_predictor_5()  # load now: ModelUnavailable up front
        self.window: list[np.ndarray] = []

    def reset(self) -> None:
        self.window = []

    def __call__(self, rgb: np.ndarray, box: list[float]) -> float | None:
        h, w = rgb.shape[:2]
        # the probe's box is MediaPipe's; its side matches dlib's detector box (measured on the
        # real clips: 0.92 .. 1.15, mean 1.02), and dlib_models sizes its box DLIB_BOX x a face square
        square = np.array([box[0] * w, box[1] * h, box[2] * w / self.dlib.DLIB_BOX])
        chip = self.dlib.face_chip(rgb, self.dlib.shape_5(rgb, square))
        desc = self.dlib.descriptors([chip])[0]
        out = round(float(np.linalg.norm(desc - np.mean(self.window, axis=0))), 4) if self.window else None
        self.window = (self.window + [desc])[-IDENTITY_WINDOW:]
        return out


def probe_video(path: Path | str, faces: bool = True, sampler: "FaceSampler | None" = None,
                identity: bool = False) -> Probe:
    """Shot cuts and main-face samples of a video in one low-resolution streaming pass (with
    `identity`, also the identity distances of every IDENTITY_EVERY-th face sample).

    Pass a FaceSampler to reuse its MediaPipe graphs across videos (loading them takes seconds)."""
    import av
    from scenedetect import ContentDetector
    from scenedetect.common import FrameTimecode

    started = time.perf_counter()
    detector = ContentDetector(threshold=SHOT_THRESHOLD, min_scene_len=MIN_SHOT_FRAMES)
    own = sampler is None and faces
    sampler = (FaceSampler() if own else sampler) if faces else None
    pts: list[float] = []
    cut_indices: list[int] = []
    samples: list[tuple[float, list[float] | None]] = []
    track = IdentityTrack() if identity and faces else None
    distances: list[tuple[float, float | None]] = []
    next_sample = 0.0
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            display = DisplayConverter(stream, path)  # frames as a player shows them (rotation, SAR)
            rate = float(stream.average_rate or FPS)
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t = float(frame.pts * frame.time_base)
                pts.append(t)
                i = len(pts) - 1
                cuts = detector.process_frame(FrameTimecode(i, fps=rate), display.small(frame, SHOT_WIDTH, "bgr24"))
                cut_indices += [int(c.frame_num) for c in cuts]
                if track is not None and (cuts or (samples and samples[-1][1] is None)):
                    track.reset()  # a new shot, or the face was lost
                if sampler is not None and t - pts[0] >= next_sample:
                    samples.append((round(t - pts[0], 4), sampler(display.small(frame, FACE_WIDTH, "rgb24"))))
                    next_sample += 1.0 / FACE_RATE
                    if track is not None and samples[-1][1] is not None and (len(samples) - 1) % IDENTITY_EVERY == 0:
                        distances.append((samples[-1][0], track(display.small(frame, IDENTITY_WIDTH, "rgb24"),
                                                                samples[-1][1])))
    finally:
        if own:
            sampler.close()
    if not pts:
        return Probe(duration_s=0.0, source_frames=0, seconds=time.perf_counter() - started)
    times = np.asarray(pts) - pts[0]
    typical = float(np.median(np.diff(np.sort(times)))) if len(times) > 1 else 1.0 / FPS
    n_grid = int(round((float(times.max()) + typical) * FPS))
    cuts_s = sorted({round(float(times[i]), 4) for i in cut_indices if 0 < i < len(times)})
    return Probe(duration_s=n_grid / FPS, source_frames=len(pts), cuts_s=cuts_s, faces=samples,
                 identity=distances, seconds=round(time.perf_counter() - started, 3))


def identity_changes(distances: list[tuple[float, float | None]], threshold: float = IDENTITY_THRESHOLD
                     ) -> list[float]:
    """Times where another person's face begins: the first sample whose distance exceeds the
    threshold, confirmed by the next sample's (so a single odd frame is no change)."""
    out = []
    for (_, prev), (t, d), (_, nxt) in zip([(0.0, None)] + distances, distances, distances[1:]):
        if d is not None and d > threshold and nxt is not None and nxt > threshold and not (prev or 0) > threshold:
            out.append(t)
    return out


def _face_runs(samples: list[tuple[float, list[float] | None]], start: float, end: float,
               changes: list[float] = ()) -> list[tuple[float, float]]:
    """Runs of the main face inside [start, end): broken by gaps over MAX_FACE_GAP_S, a jump, or
    at the face sample of an identity change."""
    changes = set(changes)
    runs: list[list[float]] = []
    last_t, last_box = None, None
    step = 1.0 / FACE_RATE
    for t, box in samples:
        if not (start <= t < end) or box is None:
            continue
        jump = last_box is not None and (
            math.hypot(box[0] - last_box[0], box[1] - last_box[1]) > JUMP_CENTRE * max(box[2], last_box[2])
            or max(box[2], last_box[2]) > JUMP_SIZE * min(box[2], last_box[2]))
        if last_t is None or t - last_t > MAX_FACE_GAP_S + 1e-6 or jump or t in changes:
            runs.append([start if last_t is None and t - start < step else t, t + step])  # from the cut
        else:
            runs[-1][1] = t + step
        last_t, last_box = t, box
    return [(max(a, start), min(b, end)) for a, b in runs]


def cut_points(probe: Probe, max_seconds: float, faces: bool = True,
               identity_threshold: float | None = IDENTITY_THRESHOLD) -> list[tuple[float, float, str]]:
    """(start_s, end_s, why) segments on the 25 fps grid, each at most max_seconds long; face runs
    also break at identity changes when the probe holds identity distances (None: never)."""
    if max_seconds <= 0:
        raise ValueError("max_seconds must be positive")
    changes = identity_changes(probe.identity, identity_threshold) if identity_threshold is not None else []
    change_frames = {f(c * FPS + e) for c in changes for f, e in ((math.floor, 1e-6), (math.ceil, -1e-6))}
    n = int(round(probe.duration_s * FPS))
    bounds = [0] + [int(math.ceil(c * FPS - 0.5)) for c in probe.cuts_s] + [n]  # grid frame of each cut
    out = []
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        a, b = a + (k > 0), b - (b < n)  # one grid frame of margin at each shot cut
        runs = _face_runs(probe.faces, a / FPS, b / FPS, changes) if faces else [(a / FPS, b / FPS)]
        for lo, hi in runs:
            first, last = max(a, int(math.ceil(lo * FPS - 1e-6))), min(b, int(math.floor(hi * FPS + 1e-6)))
            if (last - first) / FPS < MIN_SEGMENT_S:
                continue
            pieces = math.ceil((last - first) / max(1, int(max_seconds * FPS + 1e-9)))
            edges = [first + (i * (last - first)) // pieces for i in range(pieces + 1)]
            why = "+".join(w for w, on in (("shot", len(bounds) > 2), ("face", (first, last) != (a, b)),
                                           ("identity", bool(change_frames & {first, last})),
                                           ("max", pieces > 1)) if on) or "whole"
            out.extend((round(lo_f / FPS, 4), round(hi_f / FPS, 4), why) for lo_f, hi_f in zip(edges, edges[1:]))
    return out


def main(argv=None) -> int:
    """`python -m features.shots VIDEO --max-seconds S`: the probe's cuts and segments as JSON."""
    import argparse
    import json

    from features.cli import HelpFormatter

    p = argparse.ArgumentParser(description="Probe one video and print its shot cuts and the "
                                            "segments --max-seconds would plan (pipelines/probe.py).",
                                formatter_class=HelpFormatter)
    p.add_argument("video", type=Path)
    p.add_argument("--max-seconds", type=float, default=10.0, help="longest segment")
    p.add_argument("--identity-cuts", action="store_true",
                   help="also cut where the face's identity changes (dlib's face-recognition descriptor "
                        f"at {FACE_RATE / IDENTITY_EVERY:g} Hz; slower: see the README's probe figures)")
    p.add_argument("--identity-threshold", type=float, default=IDENTITY_THRESHOLD,
                   help="Euclidean distance between dlib descriptors that counts as another person")
    args = p.parse_args(argv)
    probe = probe_video(args.video, identity=args.identity_cuts)
    segments = [{"start_s": s, "end_s": e, "why": w}
                for s, e, w in cut_points(probe, args.max_seconds, identity_threshold=args.identity_threshold)]
    print(json.dumps({"duration_s": probe.duration_s, "source_frames": probe.source_frames,
                      "cuts_s": probe.cuts_s, "probe_seconds": probe.seconds,
                      "face_samples_without_face": sum(b is None for _, b in probe.faces),
                      "identity_changes_s": identity_changes(probe.identity, args.identity_threshold),
                      "segments": segments}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
