"""Media decoding onto the shared timebase: 25 fps RGB frames and 16 kHz mono audio.

Frame-count rule (documented in the README):
    the source video's duration D is the last frame's presentation time minus the first's, plus
    one typical frame duration (the median gap between presentation times);
    n_frames = round(D * 25).
Grid frame t (covering [t/25, (t+1)/25)) is the source frame whose presentation time, measured
from the first video frame, is nearest to t/25. Frames are never re-numbered, so 30 fps and
variable-rate sources keep their timing.

Audio time zero is the first video frame's presentation time; the audio is read from the same
file or from a separate one (whose own start is taken as time zero), downmixed, resampled to
16 kHz and trimmed or zero-padded to exactly 640 * n_frames samples.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

FPS = 25
SAMPLE_RATE = 16000
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640


class MediaError(Exception):
    """A source file that cannot become frames and audio; the message names the file and why."""

    def __init__(self, path: Path | str, reason: str, stage: str = "decode"):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason
        self.stage = stage


@dataclass
class Media:
    frames: np.ndarray  # (n, H, W, 3) uint8 RGB on the 25 fps grid
    audio: np.ndarray  # (640 * n,) float32 in [-1, 1]
    facts: dict = field(default_factory=dict)  # source stream facts for the meta field

    @property
    def n_frames(self) -> int:
        return len(self.frames)


def grid_indices(pts: np.ndarray) -> np.ndarray:
    """Source frame index for each 25 fps grid slot, by nearest presentation time.

    `pts` are seconds from the first frame, sorted ascending.
    """
    if len(pts) == 0:
        return np.zeros(0, dtype=np.int64)
    gaps = np.diff(pts)
    typical = float(np.median(gaps)) if len(gaps) else 1.0 / FPS
    duration = float(pts[-1] - pts[0]) + typical
    n = int(round(duration * FPS))
    grid = np.arange(n) / FPS + pts[0]
    right = np.clip(np.searchsorted(pts, grid), 0, len(pts) - 1)
    left = np.clip(right - 1, 0, len(pts) - 1)
    take_left = np.abs(grid - pts[left]) <= np.abs(pts[right] - grid)
    return np.where(take_left, left, right)


def _open(path: Path):
    import av

    if not path.exists():
        raise MediaError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise MediaError(path, "file is empty (0 bytes)")
    try:
        return av.open(str(path))
    except Exception as exc:  # PyAV raises many error types for unreadable input
        raise MediaError(path, f"unreadable or not a media file ({type(exc).__name__}: {exc})") from exc


def decode_video(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """All frames of the first video stream as RGB with their presentation times (seconds)."""
    container = _open(path)
    with container:
        if not container.streams.video:
            raise MediaError(path, "no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        frames, pts = [], []
        try:
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                pts.append(float(frame.pts * frame.time_base))
                frames.append(frame.to_ndarray(format="rgb24"))
        except Exception as exc:
            if not frames:
                raise MediaError(path, f"video stream is truncated or corrupt ({exc})") from exc
            # A damaged tail keeps the frames decoded so far; the facts record it.
            truncated = str(exc)
        else:
            truncated = ""
        facts = {
            "video_codec": stream.codec_context.name,
            "width": stream.codec_context.width,
            "height": stream.codec_context.height,
            "source_fps": float(stream.average_rate) if stream.average_rate else None,
            "source_frames": len(frames),
        }
        if truncated:
            facts["video_truncated"] = truncated
    if not frames:
        raise MediaError(path, "video stream has zero decodable frames")
    order = np.argsort(pts, kind="stable")
    pts_arr = np.asarray(pts)[order]
    return np.stack([frames[i] for i in order]), pts_arr, facts


def decode_audio(path: Path, start_s: float = 0.0) -> tuple[np.ndarray, dict]:
    """The first audio stream as 16 kHz mono float32, starting at `start_s` seconds of stream time."""
    import librosa

    container = _open(path)
    with container:
        if not container.streams.audio:
            raise MediaError(path, "no audio stream")
        stream = container.streams.audio[0]
        rate = stream.codec_context.sample_rate
        chunks, first_pts = [], None
        try:
            for frame in container.decode(stream):
                if first_pts is None and frame.pts is not None:
                    first_pts = float(frame.pts * frame.time_base)
                data = frame.to_ndarray().astype(np.float32)
                if frame.format.is_planar:
                    data = data.mean(axis=0)
                else:  # interleaved: (1, samples * channels)
                    data = data.reshape(-1, len(frame.layout.channels)).mean(axis=1)
                if frame.format.name.startswith("s16"):
                    data /= 32768.0
                elif frame.format.name.startswith("s32"):
                    data /= 2147483648.0
                chunks.append(data)
        except Exception as exc:
            if not chunks:
                raise MediaError(path, f"audio stream is truncated or corrupt ({exc})") from exc
        facts = {"audio_codec": stream.codec_context.name, "audio_rate": rate,
                 "audio_channels": stream.codec_context.channels}
    if not chunks:
        raise MediaError(path, "audio stream has no decodable samples")
    audio = np.concatenate(chunks)
    if rate != SAMPLE_RATE:
        audio = librosa.resample(audio, orig_sr=rate, target_sr=SAMPLE_RATE, res_type="soxr_hq")
    # Align to the requested time zero: positive offset means the audio starts late -> pad.
    offset = int(round(((first_pts or 0.0) - start_s) * SAMPLE_RATE))
    if offset > 0:
        audio = np.concatenate([np.zeros(offset, np.float32), audio])
    elif offset < 0:
        audio = audio[-offset:]
    facts["audio_offset_samples"] = offset
    return np.clip(audio, -1.0, 1.0).astype(np.float32), facts


def fit_length(audio: np.ndarray, n_samples: int) -> np.ndarray:
    """Trim or zero-pad to exactly n_samples."""
    if len(audio) >= n_samples:
        return audio[:n_samples]
    return np.pad(audio, (0, n_samples - len(audio)))


def load_media(video_path: Path | str, audio_path: Path | str | None = None,
               start_s: float | None = None, end_s: float | None = None) -> Media:
    """Decode one utterance onto the shared timebase; raises MediaError naming the file.

    `start_s` / `end_s` (seconds from the first video frame) cut a segment out of a long source,
    e.g. a pretrain utterance split at word boundaries; the cut is made on the 25 fps grid.
    """
    video_path = Path(video_path)
    frames, pts, facts = decode_video(video_path)
    idx = grid_indices(pts - pts[0])
    if len(idx) == 0:
        raise MediaError(video_path, "zero frames on the 25 fps grid")
    if audio_path is None:
        audio, afacts = decode_audio(video_path, start_s=float(pts[0]))
    else:
        audio, afacts = decode_audio(Path(audio_path), start_s=0.0)
    facts.update(afacts)
    facts.update({"first_pts": float(pts[0]), "source_duration_s": round(len(idx) / FPS, 4)})
    first = 0 if start_s is None else max(0, int(round(start_s * FPS)))
    last = len(idx) if end_s is None else min(len(idx), int(round(end_s * FPS)))
    if last <= first:
        raise MediaError(video_path, f"segment [{start_s}, {end_s}) s holds no frames")
    audio = fit_length(audio, last * SAMPLES_PER_FRAME)[first * SAMPLES_PER_FRAME:]
    facts.update({"n_frames": last - first, "segment_frames": [first, last]})
    return Media(frames=frames[idx[first:last]], audio=audio, facts=facts)
