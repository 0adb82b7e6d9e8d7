"""Face tracking in one streaming pass: detection at reduced resolution now and then, the face mesh
tracking in between, crops made a few frames behind with a bounded look-ahead.

Why crop before the mesh: FaceMesh misses small faces in large frames, so the full-range
detector finds the face first and the mesh runs on a square crop around it (MESH_INPUT px).
Why not detect every frame: the detector costs more than the mesh, and the mesh, in tracking
mode, follows the face by itself. So the detector runs on a DETECT_SIDE px copy of the frame
when there is no face yet, every DETECT_EVERY frames (to catch drift onto something else), and
whenever the mesh loses the face; otherwise the next frame's mesh square is placed around the
current frame's mesh (ROI_SCALE x its extent, the same framing as 1.8 x a detection box).

Memory: frames are consumed one at a time and held for LOOKAHEAD frames only, until the smoothed
track around them is settled; what is kept per frame is small: 478 float32 points (in blocks,
`PointStore`), a crop square, and whatever the crop makers encode (96x96 JPEGs, which go to a
spill file once a sequence passes features.codecs.SPILL_OVER when spilling is on). Smoothing and
gap filling run on those small arrays, and the landmarks are moved into crop coordinates a block
at a time into one float16 array (the stored precision), never through whole-clip float32 or
float64 copies. A crop maker's frame whose track is not settled within the look-ahead (no face
seen yet) is made in a second pass over the frames (`reopen`), never by holding frames.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Protocol, Sequence

import numpy as np

from features.codecs import SpillFile, spill_wanted
from features.quiet import QuietStart, quiet_native_logs
from features.timebase import CROP_SIZE  # noqa: F401 (re-exported: rgb.py)

quiet_native_logs()  # before mediapipe is imported (UNISYNC_VERBOSE=1 keeps its messages)

MESH_INPUT = 256  # side of the square the face region is resized to for the face mesh
N_LANDMARKS = 478
VERSION = "mediapipe-0.10.21-track-2"
DETECT_EVERY = 20  # frames between detector refreshes while the mesh holds the face (0.8 s)
DETECT_SIDE = 320  # long side of the frame copy the detector sees (its model input is 192)
ROI_SCALE = 1.7  # mesh square side / the mesh's extent (1.8 x a detection box, measured)
DETECTION_ROI = 1.8  # mesh square side / detection box side

# Face mesh indices of the face oval's extremes, used to place the aligned crop.
_FOREHEAD, _CHIN, _RIGHT_CHEEK, _LEFT_CHEEK = 10, 152, 234, 454


class FaceError(Exception):
    """No usable main face in an utterance; `reason` carries the figure that decided it."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason
        self.stage = "face"


@dataclass
class FaceTrack:
    landmarks: np.ndarray  # (n, 478, 3) float16 (as stored), crop pixel coordinates (z on the x scale)
    boxes: np.ndarray  # (n, 3) float32 crop square per frame in source pixels: x0, y0, side
    detection_rate: float  # share of frames where the mesh found the face before gap filling
    detection_confidence: float  # mean detector score over the detector runs that found the face
    missing_frames: list[int]  # frames filled by holding or interpolating neighbours
    detector_runs: int = 0  # how often the detector ran (the rest was mesh tracking)
    face_counts: list[int] = field(default_factory=list)  # faces the detector found, per run
    outputs: dict[str, Any] = field(default_factory=dict)  # crop maker name -> its bytes or SpilledMember


def crop_to_image(landmarks: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Crop-pixel landmarks (n, 478, 3) back to source-frame pixels, given the crop boxes."""
    scale = (boxes[:, 2] / CROP_SIZE)[:, None, None]
    out = landmarks.astype(np.float32) * scale
    out[:, :, :2] += boxes[:, None, :2]
    return out


def fill_gaps(values: np.ndarray, valid: np.ndarray, max_gap: int) -> tuple[np.ndarray, np.ndarray]:
    """Linearly interpolate runs of invalid frames no longer than max_gap (edges hold).

    Returns the filled values and the new validity mask; longer runs stay invalid.
    """
    values, valid = values.copy(), valid.copy()
    n = len(valid)
    t = 0
    while t < n:
        if valid[t]:
            t += 1
            continue
        end = t
        while end < n and not valid[end]:
            end += 1
        if end - t <= max_gap and (t > 0 or end < n):
            if t == 0:
                values[t:end] = values[end]
            elif end == n:
                values[t:end] = values[t - 1]
            else:
                w = (np.arange(t, end) - (t - 1)) / (end - (t - 1))
                w = w.reshape((-1,) + (1,) * (values.ndim - 1))
                values[t:end] = (1 - w) * values[t - 1] + w * values[end]
            valid[t:end] = True
        t = end
    return values, valid


def hold_nearest(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill every invalid frame with the nearest valid one (for gaps too long to interpolate)."""
    idx = np.flatnonzero(valid)
    nearest = idx[np.clip(np.searchsorted(idx, np.arange(len(valid))), 0, len(idx) - 1)]
    before = idx[np.clip(np.searchsorted(idx, np.arange(len(valid))) - 1, 0, len(idx) - 1)]
    pick = np.where(np.abs(before - np.arange(len(valid))) < np.abs(nearest - np.arange(len(valid))),
                    before, nearest)
    return values[pick]


def smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Centred moving average along time with edge padding (no lag, so no sync shift)."""
    if window <= 1 or len(values) < 2:
        return values
    half = window // 2
    padded = np.concatenate([np.repeat(values[:1], half, 0), values, np.repeat(values[-1:], half, 0)])
    kernel = np.ones(window) / window
    return np.stack([np.convolve(padded[:, j], kernel, mode="valid") for j in range(values.shape[1])], 1)


LANDMARK_BLOCK = 1024  # frames moved into crop coordinates at a time (a few MB of float32)


def filled_points(points: Sequence[np.ndarray | None], found: np.ndarray, max_gap: int) -> Iterator[np.ndarray]:
    """Each frame's (478, 3) float32 points after `fill_gaps` then `hold_nearest`, in order: the
    same values as the whole-clip rule, computed run by run (a short gap from its two neighbours,
    a long one held from the nearest found frame), so no (n, 478, 3) copy is ever made."""
    n = len(points)
    _, filled = fill_gaps(np.zeros((n, 1), np.float32), found, max_gap)  # which gaps interpolate
    pick = hold_nearest(np.arange(n), filled)  # the frame a frame left unfilled is held from
    zero = np.zeros((N_LANDMARKS, 3), np.float32)
    t = 0
    while t < n:
        if found[t]:
            yield points[t]
            t += 1
            continue
        end = t
        while end < n and not found[end]:
            end += 1
        if filled[t]:  # interpolated (or an edge held) by fill_gaps on the run and its neighbours
            lo, hi = max(t - 1, 0), min(end + 1, n)
            window = np.stack([zero if p is None else p for p in points[lo:hi]])
            yield from fill_gaps(window, found[lo:hi], max_gap)[0][t - lo:end - lo]
        else:
            for i in range(t, end):
                yield points[pick[i]]
        t = end


def crop_landmarks(points: Sequence[np.ndarray | None], found: np.ndarray, boxes_c: np.ndarray,
                   max_gap: int) -> np.ndarray:
    """(n, 478, 3) float16 landmarks in crop pixels (the stored precision) from per-frame image
    points (None where the mesh missed), gaps filled, each frame moved into its crop square
    (boxes_c: centre x, centre y, side). Made LANDMARK_BLOCK frames at a time with the whole-clip
    arithmetic (float64 transform into float32, then float16), so the bytes are the same."""
    n = len(points)
    out = np.empty((n, N_LANDMARKS, 3), np.float16)
    origin = boxes_c[:, :2] - boxes_c[:, 2:3] / 2
    scale = (CROP_SIZE / boxes_c[:, 2])[:, None]
    frames = filled_points(points, found, max_gap)
    for a in range(0, n, LANDMARK_BLOCK):
        b = min(n, a + LANDMARK_BLOCK)
        block = np.stack([next(frames) for _ in range(a, b)])
        block[:, :, :2] = (block[:, :, :2] - origin[a:b, None, :]) * scale[a:b, :, None]
        block[:, :, 2] = block[:, :, 2] * scale[a:b]
        out[a:b] = block
    return out


def square_warp(frame: np.ndarray, cx: float, cy: float, side: float, out: int) -> np.ndarray:
    """The square of `side` source pixels centred on (cx, cy), resized to out x out."""
    import cv2

    s = out / side
    m = np.array([[s, 0, out / 2 - s * cx], [0, s, out / 2 - s * cy]], dtype=np.float64)
    return cv2.warpAffine(frame, m, (out, out), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


@dataclass(frozen=True)
class Geometry:
    """Per-frame placement of a crop, computed from some landmarks (image pixels)."""

    indices: tuple[int, ...]  # the landmarks it reads
    params: Callable[[np.ndarray], np.ndarray]  # (k, len(indices), 3) points -> (k, d) parameters
    angle_column: int | None = None  # a column holding an angle: unwrapped before averaging


def _face_square(points: np.ndarray) -> np.ndarray:
    """Centre and side of the aligned crop: the face oval's extremes x 1.15 (Wav2Lip-style)."""
    x0, x1, y0, y1 = points[:, 0, 0], points[:, 1, 0], points[:, 2, 1], points[:, 3, 1]
    side = np.maximum(np.abs(x1 - x0), np.abs(y1 - y0)) * 1.15
    return np.column_stack([(x0 + x1) / 2, (y0 + y1) / 2, side])


FACE_SQUARE = Geometry((_RIGHT_CHEEK, _LEFT_CHEEK, _FOREHEAD, _CHIN), _face_square)


class CropMaker(Protocol):
    """Turns each frame and its settled placement into a per-frame output (e.g. a JPEG crop)."""

    name: str
    geometry: Geometry | None  # None: the aligned face square (FACE_SQUARE)
    # optional `sampled = True`: frames without a settled placement are skipped, not made in a
    # second pass (features/quality.py's probe keeps figures, not one output per frame)

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None: ...

    def result(self) -> Any: ...  # the member: bytes, or a features.codecs.SpilledMember


# A NormalizedLandmarkList serialised: per landmark a length-delimited entry (tag 0x0a, 15 bytes)
# holding x, y, z as fixed32 fields (tags 0x0d, 0x15, 0x1d). Reading it with one np.frombuffer is
# ~20x cheaper than 478 x 3 attribute reads; anything else falls back to the attribute reads.
_LANDMARK_WIRE = np.dtype([("tag", "u1"), ("len", "u1"), ("tx", "u1"), ("x", "<f4"), ("ty", "u1"),
                           ("y", "<f4"), ("tz", "u1"), ("z", "<f4")])


def landmark_array(landmarks) -> np.ndarray:
    """(478, 3) float32 normalised x, y, z of a MediaPipe NormalizedLandmarkList."""
    data = landmarks.SerializeToString()
    if len(data) == N_LANDMARKS * _LANDMARK_WIRE.itemsize:
        wire = np.frombuffer(data, _LANDMARK_WIRE)
        if ((wire["tag"] == 0x0A) & (wire["len"] == 15) & (wire["tx"] == 0x0D) & (wire["ty"] == 0x15)
                & (wire["tz"] == 0x1D)).all():
            return np.column_stack([wire["x"], wire["y"], wire["z"]])
    return np.array([(p.x, p.y, p.z) for p in landmarks.landmark], np.float32)


class _Detector:
    """MediaPipe's full-range detector on a reduced copy of the frame; boxes in frame pixels."""

    def __init__(self, mp, min_confidence: float, side: int):
        self.graph = QuietStart(lambda: mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence))
        self.side = side

    def __call__(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        import cv2

        h, w = frame.shape[:2]
        scale = min(1.0, self.side / max(h, w))
        small = frame if scale == 1.0 else cv2.resize(
            frame, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_LINEAR)
        result = self.graph.process(small)
        found = []
        for det in result.detections or []:
            b = det.location_data.relative_bounding_box
            box = np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h])
            found.append((box, float(det.score[0])))
        return found


def prominence(box: np.ndarray, score: float, width: int, height: int) -> float:
    """How much a face looks like the subject: area x centrality x detector score."""
    area = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
    off = np.linalg.norm((box[:2] + box[2:]) / 2 - np.array([width / 2, height / 2])) / np.hypot(width, height)
    return float(area * (1 - off) * score)


class PointStore:
    """Per-frame (478, 3) float32 points, or None where the mesh missed, kept in blocks of BLOCK
    frames (no Python object per frame). When spilling is on (features.codecs.spilling) and the
    points pass SPILL_OVER bytes, full blocks go to a spill file as the track moves on and are
    read back when asked for (the look-ahead and the gap filling read near the frames they
    settle: a few blocks are cached), so a long utterance's points do not stay in memory."""

    BLOCK = 256  # frames a block: 1.4 MB of float32, one allocation above glibc's mmap threshold
    CACHED = 4  # blocks read back from the spill file kept in memory

    def __init__(self):
        self.blocks: dict[int, np.ndarray] = {}  # block index -> its points, in memory
        self.valid = bytearray()
        self.spill: SpillFile | None = None
        self.on_disk = 0  # blocks [0, on_disk) are in the spill file, in order

    def append(self, points: np.ndarray | None) -> None:
        t = len(self.valid)
        if t % self.BLOCK == 0:
            if spill_wanted(t * N_LANDMARKS * 3 * 4):
                self._spill_before(t // self.BLOCK - 1)
            self.blocks[t // self.BLOCK] = np.empty((self.BLOCK, N_LANDMARKS, 3), np.float32)
        if points is not None:
            self.blocks[t // self.BLOCK][t % self.BLOCK] = points
        self.valid.append(points is not None)

    def _spill_before(self, keep: int) -> None:
        """Write the full blocks before block `keep` to the spill file and drop them."""
        if self.spill is None:
            self.spill = SpillFile()
        for k in sorted(k for k in self.blocks if k < keep):
            if k == self.on_disk:
                self.spill.append(self.blocks[k].reshape(-1).view(np.uint8))
                self.on_disk += 1
            del self.blocks[k]

    def _block(self, k: int) -> np.ndarray:
        block = self.blocks.get(k)
        if block is None:  # spilled: read it back, and drop the oldest block read back before
            size = self.BLOCK * N_LANDMARKS * 3 * 4
            block = np.frombuffer(self.spill.read(k * size, size), np.float32).reshape(self.BLOCK, N_LANDMARKS, 3)
            cached = [j for j in self.blocks if j < self.on_disk]
            if len(cached) >= self.CACHED:
                del self.blocks[cached[0]]
            self.blocks[k] = block
        return block

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, key: int | slice):
        if isinstance(key, slice):
            return [self[t] for t in range(*key.indices(len(self)))]
        if not self.valid[key]:
            return None
        return self._block(key // self.BLOCK)[key % self.BLOCK]

    def found(self) -> np.ndarray:
        """(n,) bool: the frames where the mesh found the face."""
        return np.frombuffer(bytes(self.valid), np.uint8).astype(bool)


class Rows:
    """Per-frame parameter rows (a few float64 each), or None, in one growing array: a list of
    small per-frame arrays interleaves long-lived objects with each frame's temporaries on the
    heap, and the fragmented heap grew ~6 KB per frame (270 MB over 30 minutes) for ~0.1 KB of data."""

    def __init__(self):
        self.data: np.ndarray | None = None
        self.valid = bytearray()

    def append(self, row: np.ndarray | None) -> None:
        t = len(self.valid)
        if row is not None:
            if self.data is None:
                self.data = np.zeros((max(1024, t + 1), len(row)))
            while t >= len(self.data):  # doubled: amortised, one array
                self.data = np.concatenate([self.data, np.zeros_like(self.data)])
            self.data[t] = row
        self.valid.append(row is not None)

    def __len__(self) -> int:
        return len(self.valid)

    def __getitem__(self, t: int) -> np.ndarray | None:
        return self.data[t].copy() if self.valid[t] else None

    def stacked(self, fallback: np.ndarray) -> np.ndarray:
        """(n, d): every row, `fallback` where there is none."""
        out = np.empty((len(self), len(fallback)))
        found = np.frombuffer(bytes(self.valid), np.uint8).astype(bool)
        out[~found] = fallback
        rows = np.flatnonzero(found)
        out[rows] = self.data[rows] if len(rows) else out[rows]
        return out


class _Pass:
    """The state of one utterance's tracking pass."""

    def __init__(self, tracker: "FaceTracker", makers: list[CropMaker]):
        self.tracker, self.makers = tracker, makers
        self.points = PointStore()  # per frame: (478, 3) image pixels, or None
        self.geometries = {"face": FACE_SQUARE, **{m.name: m.geometry for m in makers if m.geometry}}
        self.params: dict[str, Rows] = {k: Rows() for k in self.geometries}  # per frame, or None
        self.scores: list[float] = []  # detector scores of the main face
        self.roi: np.ndarray | None = None  # cx, cy, side of the next mesh square
        self.last_detection = -10 ** 9
        self.detector_runs = 0
        self.face_counts: list[int] = []  # faces found at each detector run (quality columns)
        self.boxes = Rows()  # per frame: the settled face square (cx, cy, side), or None
        self.held: dict[str, np.ndarray] = {}  # geometry key -> last settled parameters
        self.first: dict[str, np.ndarray] = {}  # geometry key -> first settled parameters
        self.pending: dict[str, list[int]] = {}  # maker name -> frames whose placement is unsettled

    # -- stage 1: where is the face in this frame ---------------------------------------------
    def observe(self, t: int, frame: np.ndarray, mesh) -> None:
        tr = self.tracker
        h, w = frame.shape[:2]
        if self.roi is None or t - self.last_detection >= tr.detect_every:
            self._detect(t, frame)
        points = self._mesh(frame, mesh) if self.roi is not None else None
        if points is None and self.roi is not None and self.last_detection != t:
            self._detect(t, frame)  # the mesh lost the face: look again now
            points = self._mesh(frame, mesh) if self.roi is not None else None
        self.points.append(points)
        for key, geometry in self.geometries.items():
            self.params[key].append(None if points is None else
                                    geometry.params(points[None, list(geometry.indices)].astype(np.float64))[0])
        if points is not None:
            lo, hi = points[:, :2].min(0), points[:, :2].max(0)
            self.roi = np.array([*(lo + hi) / 2, float((hi - lo).max()) * tr.roi_scale])

    def _detect(self, t: int, frame: np.ndarray) -> None:
        h, w = frame.shape[:2]
        self.last_detection = t
        self.detector_runs += 1
        candidates = self.tracker._detector(frame)
        self.face_counts.append(len(candidates))
        if not candidates:
            return
        if self.roi is None:  # no track yet: the most prominent face is the subject
            box, score = max(candidates, key=lambda c: prominence(c[0], c[1], w, h))
        else:  # the candidate nearest the track; a face far from it is someone else
            size = self.roi[2] / DETECTION_ROI
            dists = [np.linalg.norm((b[:2] + b[2:]) / 2 - self.roi[:2]) for b, _ in candidates]
            k = int(np.argmin(dists))
            if dists[k] >= size:
                return
            box, score = candidates[k]
        self.scores.append(score)
        found = np.array([*(box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).max()) * DETECTION_ROI])
        if self.roi is None or _disagree(self.roi, found):
            self.roi = found

    def _mesh(self, frame: np.ndarray, mesh) -> np.ndarray | None:
        cx, cy, s = self.roi
        result = mesh.process(square_warp(frame, cx, cy, s, MESH_INPUT))
        if not result.multi_face_landmarks:
            return None
        rel = landmark_array(result.multi_face_landmarks[0])
        points = np.empty((N_LANDMARKS, 3), np.float32)
        points[:, 0] = cx - s / 2 + rel[:, 0] * s
        points[:, 1] = cy - s / 2 + rel[:, 1] * s
        points[:, 2] = rel[:, 2] * s
        return points

    # -- stage 2: settle a frame's placement from the points around it ------------------------
    def settled(self, t: int, key: str, last: int) -> np.ndarray | None:
        """The smoothed placement at frame t from frames [t - H, t + H] (H = gap + half window + 1):
        gaps up to max_gap interpolated as in the whole-clip rule, longer ones held."""
        tr, geometry = self.tracker, self.geometries[key]
        half = tr.smooth_window // 2
        rows = np.clip(np.arange(t - half, t + half + 1), 0, last)
        near = [self.params[key][i] for i in rows]
        if all(p is not None for p in near):  # the usual case: no gap within the window
            params = np.stack(near)
            if geometry.angle_column is not None:
                params[:, geometry.angle_column] = np.unwrap(params[:, geometry.angle_column])
            return params.mean(axis=0)
        reach = half + tr.max_gap + 1
        lo, hi = max(0, t - reach), min(last + 1, t + reach + 1)
        window = self.points[lo:hi]
        valid = np.array([p is not None for p in window])
        if not valid.any():
            return None
        idx = list(geometry.indices)
        pts = np.stack([p[idx] if p is not None else np.zeros((len(idx), 3), np.float32) for p in window])
        if not valid.all():
            pts, filled = fill_gaps(pts, valid, tr.max_gap)
            pts = hold_nearest(pts, filled)
        params = geometry.params(pts.astype(np.float64))
        if geometry.angle_column is not None:
            params[:, geometry.angle_column] = np.unwrap(params[:, geometry.angle_column])
        rows = np.clip(np.arange(t - half, t + half + 1), 0, last) - lo
        return params[rows].mean(axis=0)

    def make(self, t: int, frame: np.ndarray | None, last: int) -> None:
        """Settle frame t: its face square (the crop box) and every maker's output."""
        square = self._placement("face", t, last)
        self.boxes.append(square)
        for maker in self.makers:
            params = square if maker.geometry is None else self._placement(maker.name, t, last)
            if params is None:
                if not getattr(maker, "sampled", False):  # a sampling maker skips it: no second pass
                    self.pending.setdefault(maker.name, []).append(t)
            elif frame is not None:
                maker.add(t, frame, params)

    def _placement(self, key: str, t: int, last: int) -> np.ndarray | None:
        params = self.settled(t, key, last)
        if params is None:  # no face within reach: hold the last placement (None before the first)
            return self.held.get(key)
        self.held[key] = params
        self.first.setdefault(key, params)
        return params


def import_mediapipe():
    """`import mediapipe`, without keeping the importer's stack alive.

    mediapipe keeps the exception of its optional `sounddevice` import (PortAudio is missing on
    servers) in a module global, `audio_record.sd_error`; its traceback holds the frames that
    were importing mediapipe, and through them every caller's frame: the first utterance a worker
    tracked, with all its arrays, stayed in memory for the life of the worker (a 30-minute one:
    ~260 MB). The traceback is dropped; the exception and its message stay."""
    import sys

    import mediapipe as mp

    record = sys.modules.get("mediapipe.tasks.python.audio.core.audio_record")
    error = getattr(record, "sd_error", None)
    if isinstance(error, BaseException):
        error.__traceback__ = None
    return mp


class FaceTracker:
    """Holds the MediaPipe graphs; build once per worker and call `track` per utterance."""

    def __init__(self, max_gap: int = 5, max_missing: float = 0.2, smooth_window: int = 5,
                 min_confidence: float = 0.5, detect_every: int = DETECT_EVERY,
                 detect_side: int = DETECT_SIDE, roi_scale: float = ROI_SCALE):
        mp = import_mediapipe()
        self.max_gap, self.max_missing, self.smooth_window = max_gap, max_missing, smooth_window
        self.min_confidence, self.detect_every, self.roi_scale = min_confidence, detect_every, roi_scale
        self._detector = _Detector(mp, min_confidence, detect_side)
        self._mp = mp

    @property
    def lookahead(self) -> int:
        """Frames held before a frame's placement is settled (gap + half window + 1)."""
        return self.smooth_window // 2 + self.max_gap + 1

    def track(self, frames: Iterable[np.ndarray], makers: Iterable[CropMaker] = (),
              reopen: Callable[[], Iterable[np.ndarray]] | None = None) -> FaceTrack:
        """Track the main face through `frames` (consumed once, in order) and feed the makers.

        `reopen` gives the frames again from the start; it is used only when a maker has frames
        whose placement was not settled in the first pass (the face appears late).
        """
        makers = list(makers)
        state = _Pass(self, makers)
        buffer: deque[tuple[int, np.ndarray]] = deque()
        n = 0
        with QuietStart(lambda: self._mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=self.min_confidence, min_tracking_confidence=0.5)) as mesh:
            for t, frame in enumerate(frames):
                state.observe(t, frame, mesh)
                buffer.append((t, frame if makers else None))
                n = t + 1
                while buffer and buffer[0][0] <= t - self.lookahead:
                    state.make(*buffer.popleft(), last=t)
        if n == 0:
            raise FaceError("no frames to track")
        while buffer:
            state.make(*buffer.popleft(), last=n - 1)
        return self._finish(state, n, makers, reopen)

    def _finish(self, state: _Pass, n: int, makers: list[CropMaker],
                reopen: Callable[[], Iterable[np.ndarray]] | None) -> FaceTrack:
        found = state.points.found()
        if not state.scores and not found.any():
            raise FaceError(f"no face detected in any of {n} frames")
        detection_rate = float(found.mean())
        if 1 - detection_rate > self.max_missing:
            raise FaceError(f"face mesh found the face in only {detection_rate:.1%} of {n} frames "
                            f"(at most {self.max_missing:.0%} may be missing)")
        # Frames before the face was first settled take the first settled placement (the nearest).
        boxes_c = state.boxes.stacked(state.first["face"])
        state.boxes = Rows()
        if state.pending:
            self._second_pass(state, makers, reopen)
        landmarks = crop_landmarks(state.points, found, boxes_c, self.max_gap)
        state.points = PointStore()
        boxes = np.column_stack([boxes_c[:, :2] - boxes_c[:, 2:3] / 2, boxes_c[:, 2]]).astype(np.float32)
        return FaceTrack(landmarks=landmarks, boxes=boxes, detection_rate=detection_rate,
                         detection_confidence=float(np.mean(state.scores)) if state.scores else 0.0,
                         missing_frames=np.flatnonzero(~found).tolist(), detector_runs=state.detector_runs,
                         face_counts=state.face_counts,
                         outputs={m.name: m.result() for m in makers})

    def _second_pass(self, state: _Pass, makers: list[CropMaker],
                     reopen: Callable[[], Iterable[np.ndarray]] | None) -> None:
        """Make the crops whose placement was unsettled in the first pass (before the face was
        first seen): each takes its maker's first settled placement."""
        if reopen is None:
            raise FaceError("the face appears only late and the frames cannot be read again")
        todo = {name: set(ts) for name, ts in state.pending.items()}
        first_params = {m.name: state.first["face" if m.geometry is None else m.name]
                        for m in makers if m.name in todo}
        stop = max(max(ts) for ts in todo.values())
        for t, frame in enumerate(reopen()):
            for maker in makers:
                if t in todo.get(maker.name, ()):
                    maker.add(t, frame, first_params[maker.name])
            if t >= stop:
                break


def _disagree(roi: np.ndarray, found: np.ndarray) -> bool:
    """Whether a detection places the face clearly elsewhere than the mesh's square does."""
    shift = np.linalg.norm(roi[:2] - found[:2]) / found[2]
    ratio = roi[2] / found[2]
    return bool(shift > 0.2 or ratio < 0.7 or ratio > 1.4)
