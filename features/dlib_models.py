"""dlib's pretrained face models, as the `face_recognition_models` package ships them.

Real weights, no download at run time: `face-recognition-models` (0.3.0) holds dlib-models'
68-point iBUG shape predictor, the 128-d face-recognition ResNet (and the 5-point predictor and
the CNN detector, unused here); `dlib-bin` is the binary wheel of dlib. Each model loads once
per process (the 68-point predictor, 100 MB, takes ~2 s). A missing package or file is a
`ModelUnavailable` (a job-level failure: the field fails for every utterance, the other fields
do not), raised when a field is set up, never in the middle of a tracking pass.

Licences (README, "dlib's 68 points and face identity"): the package and dlib are CC0 / Boost;
dlib-models says the 68-point predictor was trained on iBUG 300-W, whose licence excludes
commercial use, so the identity field aligns its chips with the 5-point predictor instead.

dlib's shape predictor expects the box of dlib's own face detector. We never run that detector:
the box is derived from OUR face track's square (features/face.py, the 96 px crop square): the
same centre, a side of DLIB_BOX x the square's. DLIB_BOX is dlib's HOG detector box side over
our square side, measured on the real clips (per-clip means 0.73 .. 0.87, their mean 0.78; centres
within 0.08 square sides); identity embeddings from our box and from dlib's detector
box differ by 0.008 (Euclidean), against 0.6 between people.
"""
from __future__ import annotations

import importlib.util
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from features.errors import ModelUnavailable

PACKAGE = "face_recognition_models"
SHAPE_68 = "shape_predictor_68_face_landmarks.dat"
SHAPE_5 = "shape_predictor_5_face_landmarks.dat"  # eye corners and nose: aligns the identity chips
RESNET = "dlib_face_recognition_resnet_model_v1.dat"
DLIB_BOX = 0.78  # dlib detector box side / our face square side (measured, see above)
CHIP_SIZE, CHIP_PADDING = 150, 0.25  # the aligned chip the face-recognition ResNet reads


def model_path(name: str) -> Path:
    """The packaged model file (found without importing the package: its __init__ needs
    pkg_resources, which newer setuptools drop)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(f"dlib model {name}: package {PACKAGE!r} is not installed "
                               f"(pip install -c constraints.txt face-recognition-models)")
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / name
    if not path.is_file():
        raise ModelUnavailable(f"dlib model {name}: no file {path} (reinstall face-recognition-models)")
    return path


def _dlib():
    try:
        import dlib
    except ImportError as exc:
        raise ModelUnavailable(f"dlib is not installed (pip install -c constraints.txt dlib-bin): {exc}") from None
    return dlib


@lru_cache(maxsize=None)
def shape_predictor() -> Any:
    """dlib's 68-point iBUG shape predictor (loaded once per process)."""
    return _dlib().shape_predictor(str(model_path(SHAPE_68)))


@lru_cache(maxsize=None)
def shape_predictor_5() -> Any:
    """dlib's 5-point predictor (trained on dlib's own public annotations, not 300-W): what dlib's
    face-recognition example aligns its chips with."""
    return _dlib().shape_predictor(str(model_path(SHAPE_5)))


@lru_cache(maxsize=None)
def face_encoder() -> Any:
    """dlib's face-recognition ResNet (128-d descriptors of 150 px aligned chips)."""
    return _dlib().face_recognition_model_v1(str(model_path(RESNET)))


def box_of(params: np.ndarray) -> Any:
    """The dlib rectangle for a frame's face square (cx, cy, side, in source pixels)."""
    cx, cy, side = (float(v) for v in params[:3])
    half = side * DLIB_BOX / 2
    return _dlib().rectangle(int(round(cx - half)), int(round(cy - half)),
                             int(round(cx + half)), int(round(cy + half)))


def shape_68(frame: np.ndarray, params: np.ndarray) -> Any:
    """dlib's full_object_detection (68 parts) on a frame, inside the face square's box."""
    return shape_predictor()(np.ascontiguousarray(frame), box_of(params))


def shape_5(frame: np.ndarray, params: np.ndarray) -> Any:
    """dlib's 5-point full_object_detection on a frame, inside the face square's box."""
    return shape_predictor_5()(np.ascontiguousarray(frame), box_of(params))


def points_of(shape: Any) -> np.ndarray:
    """(68, 2) float32 source-pixel points of a full_object_detection."""
    return np.array([(p.x, p.y) for p in shape.parts()], np.float32)


def face_chip(frame: np.ndarray, shape: Any) -> np.ndarray:
    """The 150 x 150 chip dlib aligns from a 5- or 68-point shape (what the ResNet reads)."""
    return _dlib().get_face_chip(np.ascontiguousarray(frame), shape, size=CHIP_SIZE, padding=CHIP_PADDING)


def descriptors(chips: list[np.ndarray]) -> np.ndarray:
    """(k, 128) float32 face descriptors of aligned chips, in one batch."""
    if not chips:
        return np.zeros((0, 128), np.float32)
    return np.array(face_encoder().compute_face_descriptor(chips), np.float32)
