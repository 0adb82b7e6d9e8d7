"""A video file as SyncNet input, streamed: 25 fps grid frames cropped per protocol, and int16 audio.

Frames are decoded one at a time and handed on as 224 x 224 crops, so scoring a long HD clip
holds a few frames, never the clip. Frames follow the shared timebase (features.media: grid frame
t is the source frame nearest to t / 25 s); the reference assumes 25 fps input (run_pipeline
converts with ffmpeg -r 25) and reads its frames back from JPEG files, which we skip.

Audio follows syncnet_python: 16 kHz mono as int16 values, its own length (not trimmed or padded
to the video), time zero at the first video frame.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from features.media import MediaError, decode_audio, grid_indices
from features.sync_audio import int16_scale
from features.sync_crops import (PROTOCOLS, frame_crop, landmark_boxes, none_crop, pipeline_crop,
                                 smooth_boxes)


@dataclass
class VideoInfo:
    path: str
    first_pts: float
    grid: np.ndarray  # source frame index (decode order) of each 25 fps grid frame
    width: int
    height: int

    @property
    def n_frames(self) -> int:
        return len(self.grid)


def probe_video(path: Path | str) -> VideoInfo:
    """Decode once without converting pixels to learn every frame's time and the 25 fps grid."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file does not exist")
    try:
        container = av.open(str(path))
    except Exception as exc:
        raise MediaError(path, f"unreadable or not a media file ({type(exc).__name__}: {exc})") from exc
    with container:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        pts = []
        try:
            for frame in container.decode(stream):
                pts.append(float(frame.pts * frame.time_base) if frame.pts is not None else np.nan)
        except Exception as exc:
            if not pts:
                raise MediaError(path, f"video stream is truncated or corrupt ({exc})") from exc
        width, height = stream.codec_context.width, stream.codec_context.height
    times = np.asarray(pts, np.float64)
    order = np.flatnonzero(~np.isnan(times))
    if len(order) == 0:
        raise MediaError(path, "video stream has zero decodable frames")
    times = times[order]
    if np.any(np.diff(times) < 0):
        sort = np.argsort(times, kind="stable")
        order, times = order[sort], times[sort]
    grid = order[grid_indices(times - times[0])]
    return VideoInfo(str(path), float(times[0]), grid, width, height)


def iter_grid_frames(info: VideoInfo, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """RGB frames of grid slots [start, stop), decoded one by one (a source frame that fills
    several grid slots is yielded for each; frames no slot uses are skipped)."""
    import av

    stop = info.n_frames if stop is None else min(stop, info.n_frames)
    if stop <= start:
        return
    wanted = info.grid[start:stop]
    slot = 0
    with av.open(info.path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        needed = set(wanted.tolist())
        cache: dict[int, np.ndarray] = {}  # frames decoded ahead of their slot (out-of-order pts)
        for j, frame in enumerate(container.decode(stream)):
            if j in needed:
                cache[j] = frame.to_ndarray(format="rgb24")
            while slot < len(wanted) and wanted[slot] in cache:
                yield cache[wanted[slot]]
                if slot + 1 >= len(wanted) or wanted[slot + 1] != wanted[slot]:
                    cache.pop(wanted[slot])
                slot += 1
            if slot >= len(wanted):
                return
    if slot < len(wanted):
        raise MediaError(info.path, f"video ended after grid frame {start + slot} of {stop}")


def read_audio_int16(path: Path | str, info: VideoInfo, audio_path: Path | str | None = None) -> np.ndarray:
    """16 kHz mono int16 audio from the first video frame on (its own length)."""
    if audio_path is None:
        audio, _ = decode_audio(Path(path), start_s=info.first_pts)
    else:
        audio, _ = decode_audio(Path(audio_path), start_s=0.0)
    return int16_scale(audio)


def face_boxes(info: VideoInfo) -> np.ndarray:
    """(n, 4) x0 y0 x1 y1 face boxes in frame pixels per grid frame, from our face tracker
    (the extent of its face mesh: forehead to chin, cheek to cheek)."""
    from features.face import FaceTracker, crop_to_image

    frames = np.stack(list(iter_grid_frames(info)))
    track = FaceTracker().track(frames)
    return landmark_boxes(crop_to_image(track.landmarks, track.boxes))


def iter_crops(info: VideoInfo, protocol: str, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """224 x 224 RGB crops per grid frame under `protocol` (see features.sync_crops)."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown crop protocol {protocol!r}; known: {PROTOCOLS}")
    stop = info.n_frames if max_frames is None else min(info.n_frames, max_frames)
    if protocol == "pipeline":
        boxes = smooth_boxes(face_boxes(info)[:stop])
        for t, frame in enumerate(iter_grid_frames(info, 0, stop)):
            yield pipeline_crop(frame, *boxes[t])
    elif protocol == "frame":
        for frame in iter_grid_frames(info, 0, stop):
            yield frame_crop(frame)
    else:
        for frame in iter_grid_frames(info, 0, stop):
            yield none_crop(frame, info.path)
