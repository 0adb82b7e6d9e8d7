"""Face tracking: MediaPipe full-range detection, one main face, face mesh on a crop, aligned crops.

Why crop before the mesh: FaceMesh misses small faces in large frames, so we find the face with
the full-range detector first and run the mesh on a square crop around it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

CROP_SIZE = 96
MESH_INPUT = 256  # side of the square the detection crop is resized to for the face mesh
N_LANDMARKS = 478
VERSION = "mediapipe-0.10.21-track-1"

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
    landmarks: np.ndarray  # (n, 478, 3) float32, crop pixel coordinates (z on the x scale)
    crops: np.ndarray  # (n, 96, 96, 3) uint8 aligned RGB face crops
    boxes: np.ndarray  # (n, 3) float32 crop square per frame in source pixels: x0, y0, side
    detection_rate: float  # share of frames where the mesh found the face before gap filling
    detection_confidence: float  # mean detector score over frames with a detection
    missing_frames: list[int]  # frames filled by holding or interpolating neighbours


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


def choose_main_face(detections: list[list[tuple[np.ndarray, float]]], width: int, height: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pick one face per frame: the largest, most central one, then the candidate nearest its track.

    Returns boxes (n, 4) x0 y0 x1 y1, a validity mask and the detector score per frame.
    """
    n = len(detections)
    centre = np.array([width / 2, height / 2])
    diag = float(np.hypot(width, height))

    def prominence(box: np.ndarray, score: float) -> float:
        area = (box[2] - box[0]) * (box[3] - box[1]) / (width * height)
        off = np.linalg.norm((box[:2] + box[2:]) / 2 - centre) / diag
        return area * (1 - off) * score

    best = [max(c, key=lambda d: prominence(*d))[0] for c in detections if c]
    boxes, valid, scores = np.zeros((n, 4)), np.zeros(n, bool), np.zeros(n)
    if not best:
        return boxes, valid, scores
    best = np.array(best)
    track_centre = np.median((best[:, :2] + best[:, 2:]) / 2, axis=0)
    track_size = float(np.median(np.maximum(best[:, 2] - best[:, 0], best[:, 3] - best[:, 1])))
    for t, cands in enumerate(detections):
        if not cands:
            continue
        dists = [np.linalg.norm((b[:2] + b[2:]) / 2 - track_centre) for b, _ in cands]
        k = int(np.argmin(dists))
        if dists[k] < track_size:  # a face far from the track is someone else
            boxes[t], scores[t], valid[t] = cands[k][0], cands[k][1], True
    return boxes, valid, scores


def square_warp(frame: np.ndarray, cx: float, cy: float, side: float, out: int) -> np.ndarray:
    """The square of `side` source pixels centred on (cx, cy), resized to out x out."""
    import cv2

    s = out / side
    m = np.array([[s, 0, out / 2 - s * cx], [0, s, out / 2 - s * cy]], dtype=np.float64)
    return cv2.warpAffine(frame, m, (out, out), flags=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_REPLICATE)


class FaceTracker:
    """Holds the MediaPipe graphs; build once per worker and call `track` per utterance."""

    def __init__(self, max_gap: int = 5, max_missing: float = 0.2, smooth_window: int = 5,
                 min_confidence: float = 0.5):
        os.environ.setdefault("GLOG_minloglevel", "2")  # MediaPipe's per-graph warnings drown progress
        import mediapipe as mp

        self.max_gap, self.max_missing, self.smooth_window = max_gap, max_missing, smooth_window
        self.min_confidence = min_confidence
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=1, min_detection_confidence=min_confidence)
        self._mp = mp

    def _detect(self, frame: np.ndarray) -> list[tuple[np.ndarray, float]]:
        h, w = frame.shape[:2]
        result = self._detector.process(frame)
        found = []
        for det in result.detections or []:
            b = det.location_data.relative_bounding_box
            box = np.array([b.xmin * w, b.ymin * h, (b.xmin + b.width) * w, (b.ymin + b.height) * h])
            found.append((box, float(det.score[0])))
        return found

    def track(self, frames: np.ndarray) -> FaceTrack:
        n, h, w = frames.shape[:3]
        boxes, valid, scores = choose_main_face([self._detect(f) for f in frames], w, h)
        detected_share = valid.mean()
        if detected_share == 0:
            raise FaceError(f"no face detected in any of {n} frames")
        boxes, valid = fill_gaps(boxes, valid, self.max_gap)
        boxes = hold_nearest(boxes, valid)
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) * 1.8
        det_track = smooth(np.column_stack([centre, side]), self.smooth_window)

        points = np.zeros((n, N_LANDMARKS, 3), np.float32)
        found = np.zeros(n, bool)
        with self._mp.solutions.face_mesh.FaceMesh(
                static_image_mode=False, max_num_faces=1, refine_landmarks=True,
                min_detection_confidence=self.min_confidence, min_tracking_confidence=0.5) as mesh:
            for t in range(n):
                cx, cy, s = det_track[t]
                result = mesh.process(square_warp(frames[t], cx, cy, s, MESH_INPUT))
                if not result.multi_face_landmarks:
                    continue
                lm = result.multi_face_landmarks[0].landmark
                rel = np.array([(p.x, p.y, p.z) for p in lm], np.float32)
                points[t, :, 0] = cx - s / 2 + rel[:, 0] * s
                points[t, :, 1] = cy - s / 2 + rel[:, 1] * s
                points[t, :, 2] = rel[:, 2] * s
                found[t] = True
        detection_rate = float(found.mean())
        if 1 - detection_rate > self.max_missing:
            raise FaceError(f"face mesh found the face in only {detection_rate:.1%} of {n} frames "
                            f"(at most {self.max_missing:.0%} may be missing)")
        points, filled = fill_gaps(points, found, self.max_gap)
        missing = np.flatnonzero(~found).tolist()
        points = hold_nearest(points, filled)
        return self._align(frames, points, detection_rate, scores, missing)

    def _align(self, frames: np.ndarray, points: np.ndarray, detection_rate: float,
               scores: np.ndarray, missing: list[int]) -> FaceTrack:
        """Aligned 96x96 crops around the mesh's face oval; landmarks moved into crop pixels."""
        x0 = points[:, _RIGHT_CHEEK, 0]
        x1 = points[:, _LEFT_CHEEK, 0]
        y0 = points[:, _FOREHEAD, 1]
        y1 = points[:, _CHIN, 1]
        side = np.maximum(np.abs(x1 - x0), np.abs(y1 - y0)) * 1.15
        track = smooth(np.column_stack([(x0 + x1) / 2, (y0 + y1) / 2, side]), self.smooth_window)
        crops = np.stack([square_warp(f, *track[t], CROP_SIZE) for t, f in enumerate(frames)])
        origin = track[:, :2] - track[:, 2:3] / 2
        scale = (CROP_SIZE / track[:, 2])[:, None]
        local = points.copy()
        local[:, :, :2] = (points[:, :, :2] - origin[:, None, :]) * scale[:, :, None]
        local[:, :, 2] = points[:, :, 2] * scale
        boxes = np.column_stack([origin, track[:, 2]]).astype(np.float32)
        confident = scores[scores > 0]
        return FaceTrack(landmarks=local.astype(np.float32), crops=crops, boxes=boxes,
                         detection_rate=detection_rate,
                         detection_confidence=float(confident.mean()) if len(confident) else 0.0,
                         missing_frames=missing)
