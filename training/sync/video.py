"""A video file as SyncNet input, streamed: 25 fps grid frames cropped per protocol, and int16 audio.

Frames come from `features.media.VideoStream` one at a time and leave as 224 x 224 crops, so
scoring a long HD clip holds a few frames, never the clip. They follow the shared timebase (grid
frame t is the source frame nearest to t / 25 s); the reference assumes 25 fps input
(run_pipeline converts with ffmpeg -r 25) and reads its frames back from JPEG files, which we skip.
The `mesh` protocol makes two passes: face tracking (`features.face.FaceTracker`, streamed),
then cropping.

Audio follows syncnet_python: 16 kHz mono as int16 values, its own length (not trimmed or padded
to the video), time zero at the first video frame (or at the start of a separate audio file).

`io` names the input path: `exact` (the default) is the above, lossless and timestamp-exact;
`reference` is syncnet_python's own path (training/sync/reference_io.py): the stream's own frames
through ffmpeg's JPEG round trip, taken as 25 fps, and ffmpeg's 16 kHz audio from the file's start.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from features.media import MediaError, VideoStream, decode_audio
from features.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME
from training.sync.audio import int16_scale
from training.sync.crops import (PROTOCOLS, SIZE, frame_crop, landmark_boxes, none_crop, pipeline_crop,
                                 smooth_boxes)


def first_video_pts(path: Path | str) -> float:
    """Presentation time (s) of the first decoded video frame: the audio's time zero."""
    import av

    path = Path(path)
    if not path.is_file():
        raise MediaError(path, "file does not exist")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                if frame.pts is not None:
                    return float(frame.pts * frame.time_base)
    except MediaError:
        raise
    except Exception as exc:
        raise MediaError(path, f"unreadable or not a media file ({type(exc).__name__}: {exc})") from exc
    raise MediaError(path, "video stream has zero decodable frames")


IO_MODES = ("exact", "reference")


def check_io(io: str) -> None:
    if io not in IO_MODES:
        raise ValueError(f"unknown io mode {io!r}; known: {IO_MODES}")


def read_audio_int16(path: Path | str, audio_path: Path | str | None = None,
                     max_frames: int | None = None, io: str = "exact") -> np.ndarray:
    """16 kHz mono int16 audio from the first video frame on (io `reference`: from the file's
    start, as ffmpeg writes it), at its own length."""
    check_io(io)
    if io == "reference":
        from training.sync.reference_io import reference_audio

        return reference_audio(audio_path or path, max_frames)
    if audio_path is None:
        audio, _ = decode_audio(Path(path), start_s=first_video_pts(path))
    else:
        audio, _ = decode_audio(Path(audio_path), start_s=0.0)
    if max_frames is not None:
        audio = audio[:max_frames * SAMPLES_PER_FRAME]
    return int16_scale(audio)


def _stream(path: Path | str, max_frames: int | None, io: str = "exact") -> Iterable[np.ndarray]:
    """RGB frames: the 25 fps grid (`exact`) or the reference's JPEG-round-tripped frames."""
    check_io(io)
    if io == "reference":
        from training.sync.reference_io import reference_frames

        return (bgr[..., ::-1] for bgr in reference_frames(path, max_frames=max_frames))
    return VideoStream(path, None, None if max_frames is None else max_frames / FPS)


def face_boxes(path: Path | str, max_frames: int | None = None, io: str = "exact") -> np.ndarray:
    """(n, 4) x0 y0 x1 y1 face boxes in frame pixels per grid frame, from our face tracker (the
    extent of its face mesh: forehead to chin, cheek to cheek), tracked in one streaming pass."""
    from features.face import FaceTracker, crop_to_image

    track = FaceTracker().track(_stream(path, max_frames, io))
    return landmark_boxes(crop_to_image(track.landmarks, track.boxes))


def iter_crops(path: Path | str, protocol: str, max_frames: int | None = None,
               io: str = "exact") -> Iterator[np.ndarray]:
    """224 x 224 RGB crops per frame under `protocol` (see training.sync.crops), frames by `io`."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown crop protocol {protocol!r}; known: {PROTOCOLS}")
    if protocol == "mesh":
        boxes = smooth_boxes(face_boxes(path, max_frames, io))
        for t, frame in enumerate(_stream(path, max_frames, io)):
            yield pipeline_crop(frame, *boxes[min(t, len(boxes) - 1)])
    elif protocol == "frame":
        for frame in _stream(path, max_frames, io):
            yield frame_crop(frame)
    else:
        for frame in _stream(path, max_frames, io):
            yield none_crop(frame, str(path))


class CropWriter:
    """Writes 224 x 224 crops and their int16 audio losslessly (FFV1 + PCM in Matroska), as
    run_pipeline writes its crop videos: the file scores with protocol `none` to the same numbers."""

    def __init__(self, path: Path | str, audio: np.ndarray, fps: int = FPS):
        import av

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.audio = audio
        self._out = av.open(str(self.path), "w")
        self._video = self._out.add_stream("ffv1", rate=fps)
        self._video.width = self._video.height = SIZE
        self._video.pix_fmt = "bgr0"
        self._sound = self._out.add_stream("pcm_s16le", rate=SAMPLE_RATE)
        self._sound.layout = "mono"

    def add(self, crop: np.ndarray) -> None:
        import av

        for packet in self._video.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(crop), format="rgb24")):
            self._out.mux(packet)

    def close(self) -> None:
        from fractions import Fraction

        import av

        for packet in self._video.encode():
            self._out.mux(packet)
        for i in range(0, len(self.audio), 1024):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(self.audio[None, i:i + 1024]),
                                               format="s16", layout="mono")
            frame.sample_rate, frame.pts, frame.time_base = SAMPLE_RATE, i, Fraction(1, SAMPLE_RATE)
            for packet in self._sound.encode(frame):
                self._out.mux(packet)
        for packet in self._sound.encode():
            self._out.mux(packet)
        self._out.close()


def tee_crops(crops: Iterator[np.ndarray], writer: CropWriter) -> Iterator[np.ndarray]:
    """Pass crops on while writing them; the file is closed when the consumer stops."""
    try:
        for crop in crops:
            writer.add(crop)
            yield crop
    finally:
        writer.close()
