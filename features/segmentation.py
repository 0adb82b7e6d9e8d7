"""Person masks for the parsing field: MediaPipe's selfie segmentation on the face crop's frame.

The model (selfie_segmentation.tflite, the "general" 256x256 one) ships inside the installed
mediapipe wheel: real weights, no download. It separates a person (head, hair, neck, body) from
the background; the parsing field combines that with the mesh geometry into hair, neck and
background (features/parsing.py).

Why a context square and not the 96 px crop itself: the segmenter is trained on head-and-shoulders
views, so it runs on a square twice the face crop's side around the same centre, resized to its
256 px input, and the mask's central half is resampled into the 96x96 crop frame (the frame of the
landmarks, rgb and parsing). `PersonMasks` is the crop maker the face tracker feeds while it
streams through a clip, as rgb's FaceCrops: only a bit-packed mask (1.2 kB) is kept per frame.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np

from features.errors import ModelUnavailable
from features.face import CROP_SIZE, Geometry, square_warp

VERSION = "selfie-general-1"
CONTEXT = 2.0  # side of the segmented square / side of the face crop
INPUT = 256  # the general model's input side
THRESHOLD = 0.5  # person probability above which a pixel is the person's


class SegmenterUnavailable(ModelUnavailable):
    """The selfie model cannot load: parsing (mesh-selfie-2) fails for the whole job, as HuBERT
    without weights does, rather than storing a mesh-only map under its version."""


class PersonMaskError(RuntimeError):
    """An utterance's person masks are missing or do not fit its landmarks: its parsing fails."""

    def __init__(self, reason: str, stage: str = "face"):
        super().__init__(reason)
        self.reason, self.stage = reason, stage


@lru_cache(maxsize=1)
def load() -> tuple[Any, str]:
    """(the selfie segmenter, "") or (None, why it cannot load); tried once per process."""
    try:
        import mediapipe as mp

        return mp.solutions.selfie_segmentation.SelfieSegmentation(model_selection=0), ""
    except Exception as exc:  # no mediapipe, no packaged model: reported by segmenter()
        return None, f"{type(exc).__name__}: {exc}"


def segmenter():
    """The selfie segmenter (legacy MediaPipe solution, general model); SegmenterUnavailable
    (job level) when it cannot load: there is no silent landmarks-only parsing."""
    seg, reason = load()
    if seg is None:
        raise SegmenterUnavailable(
            f"MediaPipe selfie segmentation cannot load ({reason}); the parsing field needs it for "
            f"hair, neck and background. Its model ships in the mediapipe wheel "
            f"(mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite): reinstall it with "
            f"pip install -c constraints.txt mediapipe")
    return seg


def available() -> bool:
    return load()[0] is not None


def person_mask(frame: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
    """(96, 96) bool: the person's pixels in the face crop of (cx, cy, side) source pixels."""
    context = square_warp(frame, cx, cy, side * CONTEXT, INPUT)
    prob = segmenter().process(np.ascontiguousarray(context)).segmentation_mask
    inner = square_warp(prob, INPUT / 2, INPUT / 2, INPUT / CONTEXT, CROP_SIZE)
    return inner >= THRESHOLD


class PersonMasks:
    """Crop maker for the parsing field: the person mask of each frame in the face crop frame."""

    name = "person"
    geometry: Geometry | None = None  # the aligned face square, as rgb

    def __init__(self):
        self.bits: dict[int, np.ndarray] = {}

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        self.bits[t] = np.packbits(person_mask(frame, *params))

    def result(self) -> np.ndarray:
        """(n, 96, 96) bool masks in frame order."""
        n = len(self.bits)
        if sorted(self.bits) != list(range(n)):
            raise ValueError(f"person masks are missing frames: have {n} of {max(self.bits, default=-1) + 1}")
        if not n:
            return np.zeros((0, CROP_SIZE, CROP_SIZE), bool)
        packed = np.stack([self.bits[t] for t in range(n)])
        return np.unpackbits(packed, axis=1, count=CROP_SIZE * CROP_SIZE).astype(bool).reshape(n, CROP_SIZE, CROP_SIZE)


MAX_DRIFT = 1.0  # crop pixels: a re-track farther than this from the stored landmarks is refused


def fitted(masks: np.ndarray | None, tracked: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """The masks, checked to lie in the frame of the landmarks parsing draws them under: one per
    frame, from a track (`tracked`: its landmarks) that agrees with `landmarks` (stored ones, when
    parsing is added to a store: the masks come from a fresh pass). Else PersonMaskError."""
    if masks is None:
        raise PersonMaskError("the tracking pass made no person masks")
    if len(masks) != len(landmarks) or len(tracked) != len(landmarks):
        raise PersonMaskError(f"{len(masks)} person masks from a {len(tracked)}-frame track for "
                              f"{len(landmarks)} landmark frames", "feature")
    drift = max((float(np.abs(tracked[a:a + 1024, :, :2].astype(np.float32)
                              - landmarks[a:a + 1024, :, :2].astype(np.float32)).max())
                 for a in range(0, len(landmarks), 1024)), default=0.0)
    if drift > MAX_DRIFT:
        raise PersonMaskError(f"the re-tracked face lies {drift:.2f} px from the stored landmarks "
                              f"(at most {MAX_DRIFT}): its person masks would not fit them; "
                              f"re-extract landmarks with --overwrite or use a fresh store", "feature")
    return masks
