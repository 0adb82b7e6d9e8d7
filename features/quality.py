"""Curation figures of a face track, for the catalog's quality columns (meta -> utterances).

- `aligned_face_size`: the face's size in source pixels, measured in the aligned frame (the
  template-fitted crop side x FACE_SHARE, i.e. the face oval's extent forehead to chin, cheek to
  cheek): unlike `face_size` (the unrotated crop square) it does not grow when the head rolls.
  Median over frames. LatentSync keeps faces >= 256 px, MuseTalk >= 200 px.
- `faces_max`, `one_face_share`: faces the full-range detector found, at its runs (the tracker runs
  it on the first frames until a face is found, every DETECT_EVERY = 20 frames and when the mesh
  loses the face; features/face.py): the largest count and the share of runs with exactly one face.
  The detector sees a 320 px copy of the frame at confidence 0.5, so very small background faces
  are not counted.
- `sharpness`: variance of the Laplacian of the grey aligned crop at SHARPNESS_SIZE px (every
  SHARPNESS_EVERY-th frame), median: at one scale for every clip, so a small face upscaled into
  the crop, or a blurred clip, scores low.
- `yaw`, `pitch`, `roll` (degrees, medians over frames) and `yaw_abs_max`: head pose from the 3D
  mesh (`head_pose`). Conventions, in the displayed image: yaw > 0 the face turns towards the
  image's right (the subject's left), pitch > 0 the chin comes up, roll > 0 the head tilts
  counter-clockwise (the eye on the image's right higher).
"""
from __future__ import annotations

import numpy as np

from features.aligned import FACE_SHARE, GEOMETRY, affine, aligned_crop

SHARPNESS_SIZE = 256
SHARPNESS_EVERY = 5
# Mirror pairs (the subject's right, shown on the image's left; then the left) read for the
# face's left-right axis: outer and inner eye corners, temples, cheeks at the ears, brows.
LEFT_RIGHT = ((33, 263), (133, 362), (127, 356), (234, 454), (21, 251), (70, 300))
# Frankfurt-like plane: ear-side face oval point (tragion) to the lower eyelid's centre (orbitale),
# both sides. Level (pitch 0) when this line is perpendicular to the image's vertical.
TRAGION, ORBITALE = (127, 356), (145, 374)


def head_pose(landmarks: np.ndarray) -> np.ndarray:
    """(n, 3) yaw, pitch, roll in degrees from (n, 478, 3) mesh points (any frame where x, y, z
    share one pixel scale: source or crop pixels). The face's axes are built from the mesh
    itself: x along the mirror pairs, forward along the Frankfurt-like plane orthogonal to x, up
    their cross product; the rotation is read as R = Rz(roll) Ry(yaw) Rx(pitch), the roll last and
    about the camera's axis, so turning the camera (or the frame) changes the roll alone."""
    from scipy.spatial.transform import Rotation

    p = landmarks.astype(np.float64) * np.array([1.0, -1.0, -1.0])  # right-handed: x right, y up, z to the viewer
    ex = sum(_unit(p[:, b] - p[:, a]) for a, b in LEFT_RIGHT)
    ex = _unit(ex)
    forward = sum(p[:, o] - p[:, t] for t, o in zip(TRAGION, ORBITALE))
    ez = _unit(forward - (forward * ex).sum(-1, keepdims=True) * ex)
    rotation = np.stack([ex, np.cross(ez, ex), ez], axis=-1)  # columns: the face's axes in the camera's
    pitch_x, yaw, roll = Rotation.from_matrix(rotation).as_euler("xyz").T  # R = Rz(roll) Ry(yaw) Rx(pitch_x)
    return np.degrees(np.column_stack([yaw, -pitch_x, roll]))  # chin up: a negative turn about x


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)


def laplacian_variance(gray: np.ndarray) -> float:
    import cv2

    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


class QualityProbe:
    """A crop maker that keeps figures, not pixels: the aligned placement's side per frame and the
    sharpness of every SHARPNESS_EVERY-th aligned crop. `sampled`: frames the tracker could not
    place are skipped (no second pass over the video for it)."""

    name = "quality"
    geometry = GEOMETRY
    sampled = True

    def __init__(self):
        self.sides: list[float] = []
        self.sharpness: list[float] = []

    def add(self, t: int, frame: np.ndarray, params: np.ndarray) -> None:
        import cv2

        self.sides.append(float(params[3]))
        if t % SHARPNESS_EVERY == 0:
            crop = aligned_crop(frame, affine(*params, SHARPNESS_SIZE), SHARPNESS_SIZE)
            self.sharpness.append(laplacian_variance(cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)))

    def result(self) -> dict:
        return {"aligned_face_size": float(np.median(self.sides)) * FACE_SHARE if self.sides else None,
                "sharpness": float(np.median(self.sharpness)) if self.sharpness else None}


def face_quality(landmarks: np.ndarray, face_counts: list[int], probe: dict | None) -> dict:
    """The quality columns of one face track (module doc); None where a figure has no data."""
    pose = head_pose(landmarks)
    out = dict(probe or {"aligned_face_size": None, "sharpness": None})
    out.update(faces_max=max(face_counts) if face_counts else None,
               one_face_share=float(np.mean([c == 1 for c in face_counts])) if face_counts else None,
               yaw=float(np.median(pose[:, 0])), pitch=float(np.median(pose[:, 1])),
               roll=float(np.median(pose[:, 2])), yaw_abs_max=float(np.abs(pose[:, 0]).max()))
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


QUALITY_KEYS = ("aligned_face_size", "faces_max", "one_face_share", "sharpness", "yaw", "pitch", "roll",
                "yaw_abs_max")  # what face_quality gives: meta keys and catalog columns
