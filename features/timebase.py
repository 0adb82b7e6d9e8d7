"""The shared timebase: every field's frames for a 5-frame sync window starting at video frame t."""
from __future__ import annotations

FPS = 25
SAMPLE_RATE = 16000  # Hz, every stored and decoded audio signal
SAMPLES_PER_FRAME = SAMPLE_RATE // FPS  # 640 audio samples per video frame
WINDOW = 5  # video frames per sync window (0.2 s)
CROP_SIZE = 96  # side in pixels of every face crop (rgb, parsing, lip) and of the landmarks' crop frame


def window_slice(rate: int, t: int) -> slice:
    """Rows of a field sampled at `rate` Hz covering video frames [t, t + 5).

    mel (80 Hz) -> [int(80 t / 25), +16); hubert (50 Hz) -> [2t, +10); fbank (100 Hz) -> [4t, +20);
    video-rate fields (25 Hz) -> [t, t + 5).
    """
    start = int(rate * t / FPS)
    return slice(start, start + rate * WINDOW // FPS)


def n_windows(n_frames: int) -> int:
    """How many window start frames an utterance of n_frames has."""
    return max(0, n_frames - WINDOW + 1)
