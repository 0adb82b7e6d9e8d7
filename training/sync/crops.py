"""SyncNet's visual input: 224 x 224 BGR crops as float 0-255, under three named crop protocols.

syncnet_python reads frames with OpenCV, so its network sees **BGR** channel order, float values
0-255 with no normalisation. Published LSE numbers differ mostly by how the 224 x 224 crop was made,
so every score names its protocol:

- `mesh`: run_pipeline.py's crop around a face track. Per frame the face box gives a half size
  s = max(w, h) / 2 and a centre (x, y); the three series are median-filtered (kernel 13, zero
  padded at the ends as scipy's medfilt does); the frame is padded by int(s (1 + 2 * 0.4)) pixels of
  value 110 and the crop is rows [y - s, y + s (1 + 2 * 0.4)), columns [x - s (1 + 0.4),
  x + s (1 + 0.4)) (the box's top edge to well below the chin), resized to 224 x 224 (bilinear).
  The reference's box comes from S3FD; ours is the extent of the tracked face mesh (forehead to
  chin, cheek to cheek), which covers the same face region.
- `frame`: the whole frame resized to 224 x 224 (Wav2Lip's calculate_scores_LRS.py, for videos that
  are already face crops).
- `none`: the frames already are 224 x 224 crops and are used as they are.
"""
from __future__ import annotations

import numpy as np

SIZE = 224
CROP_SCALE = 0.40  # run_pipeline --crop_scale
BOX_FILTER = 13  # run_pipeline's median filter over the box series
PAD_VALUE = 110
PROTOCOLS = ("mesh", "frame", "none", "s3fd")  # s3fd: training.sync.s3fd_pipeline


def to_syncnet_input(crops_rgb: np.ndarray) -> np.ndarray:
    """(k, 224, 224, 3) uint8 RGB crops -> (3, k, 224, 224) float32 BGR 0-255 (channels, time)."""
    bgr = crops_rgb[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(bgr.transpose(3, 0, 1, 2))


def frame_crop(frame: np.ndarray) -> np.ndarray:
    """`frame` protocol: the whole frame resized to 224 x 224 (cv2 bilinear, as the LRS script)."""
    import cv2

    if frame.shape[:2] == (SIZE, SIZE):
        return frame
    return cv2.resize(frame, (SIZE, SIZE))


def none_crop(frame: np.ndarray, source: str = "<video>") -> np.ndarray:
    """`none` protocol: the frame must already be 224 x 224."""
    if frame.shape[:2] != (SIZE, SIZE):
        raise ValueError(f"{source}: crop protocol 'none' needs 224 x 224 frames, got "
                         f"{frame.shape[1]} x {frame.shape[0]} (use --crop frame or mesh)")
    return frame


def smooth_boxes(boxes: np.ndarray) -> np.ndarray:
    """(n, 4) x0 y0 x1 y1 face boxes -> (n, 3) centre x, centre y, half size s, each series
    median-filtered with kernel 13 (scipy.signal.medfilt, as run_pipeline's crop_video)."""
    from scipy.signal import medfilt

    boxes = np.asarray(boxes, np.float64)
    s = np.maximum(boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]) / 2
    y = (boxes[:, 1] + boxes[:, 3]) / 2
    x = (boxes[:, 0] + boxes[:, 2]) / 2
    return np.column_stack([medfilt(x, kernel_size=BOX_FILTER), medfilt(y, kernel_size=BOX_FILTER),
                            medfilt(s, kernel_size=BOX_FILTER)])


def pipeline_crop(frame: np.ndarray, x: float, y: float, s: float,
                  crop_scale: float = CROP_SCALE) -> np.ndarray:
    """`mesh` protocol for one frame, given its smoothed box centre (x, y) and half size s."""
    import cv2

    bsi = int(s * (1 + 2 * crop_scale))  # padding on every side
    padded = cv2.copyMakeBorder(frame, bsi, bsi, bsi, bsi, cv2.BORDER_CONSTANT,
                                value=(PAD_VALUE,) * frame.shape[2])
    my, mx = y + bsi, x + bsi
    face = padded[int(my - s):int(my + s * (1 + 2 * crop_scale)),
                  int(mx - s * (1 + crop_scale)):int(mx + s * (1 + crop_scale))]
    if face.size == 0:
        raise ValueError(f"empty pipeline crop at box centre ({x:.1f}, {y:.1f}), half size {s:.1f}")
    return cv2.resize(face, (SIZE, SIZE))


def landmark_boxes(points: np.ndarray) -> np.ndarray:
    """(n, P, 2+) face mesh points in frame pixels -> (n, 4) x0 y0 x1 y1 extent boxes."""
    xy = np.asarray(points)[:, :, :2]
    return np.concatenate([xy.min(axis=1), xy.max(axis=1)], axis=1)
