"""SyncNet's audio input, exactly as syncnet_python builds it: MFCC of int16-scale 16 kHz audio.

The reference reads a 16 kHz mono pcm_s16le WAV (values -32768..32767, not [-1, 1]) and calls
`python_speech_features.mfcc(audio, 16000)`: 25 ms windows every 10 ms (100 Hz), 26 filters,
13 cepstra with the log frame energy in c0, so the int16 scale changes c0 and therefore the
embedding. The sync window that starts at video frame t is MFCC rows [4t, 4t + 20) (0.2 s), fed
to the audio stream as (1, 13, 20).

`syncnet_mfcc` gives the numbers of one whole-signal call (to 1e-12: BLAS rounding) in chunks of rows, so a
long clip never builds python_speech_features' (frames x 400) index and frame arrays for all of
it at once: each row depends only on its own 400 samples and the sample before them
(pre-emphasis), and the last chunk runs to the end of the signal, so its zero padding is the same.
"""
from __future__ import annotations

import numpy as np

from features.timebase import FPS, SAMPLE_RATE, SAMPLES_PER_FRAME, WINDOW

MFCC_RATE = 100  # rows per second (10 ms step)
MFCC_STEP = SAMPLE_RATE // MFCC_RATE  # 160 samples
MFCC_WIN = 400  # 25 ms
N_CEPSTRA = 13
ROWS_PER_FRAME = MFCC_RATE // FPS  # 4 MFCC rows per video frame
WINDOW_ROWS = ROWS_PER_FRAME * WINDOW  # 20 rows: 5 video frames
PREEMPHASIS = 0.97


def int16_scale(audio: np.ndarray) -> np.ndarray:
    """Float audio in [-1, 1] (as decoded or stored) -> int16 sample values, as a WAV reader gives.

    Our stored audio is 16-bit FLAC decoded as value / 32768, so this recovers those integers
    exactly; int16 input is returned unchanged.
    """
    if audio.dtype == np.int16:
        return audio
    return np.clip(np.round(np.asarray(audio, np.float64) * 32768.0), -32768, 32767).astype(np.int16)


def n_mfcc_rows(n_samples: int) -> int:
    """Rows python_speech_features makes from n_samples (it pads the last frame with zeros)."""
    if n_samples <= MFCC_WIN:
        return 1
    return 1 + int(np.ceil((n_samples - MFCC_WIN) / MFCC_STEP))


def syncnet_mfcc(audio: np.ndarray, chunk_rows: int = 6000) -> np.ndarray:
    """(13, T) float64 MFCC of int16-scale 16 kHz mono audio, identical to
    `python_speech_features.mfcc(audio, 16000).T`, computed `chunk_rows` rows at a time."""
    from python_speech_features import mfcc

    if audio.dtype != np.int16:
        raise TypeError(f"SyncNet MFCC takes int16-scale audio, got {audio.dtype} "
                        "(convert with int16_scale)")
    total = n_mfcc_rows(len(audio))
    if total <= chunk_rows:
        return mfcc(audio, SAMPLE_RATE).T
    signal = audio.astype(np.float64)
    out = np.empty((N_CEPSTRA, total), np.float64)
    for r0 in range(0, total, chunk_rows):
        r1 = min(total, r0 + chunk_rows)
        s0 = r0 * MFCC_STEP
        s1 = len(signal) if r1 == total else (r1 - 1) * MFCC_STEP + MFCC_WIN
        piece = signal[s0:s1]
        # pre-emphasis as the whole-signal call does it: x[i] - 0.97 x[i-1], x[0] kept
        previous = signal[s0 - 1:s1 - 1] if s0 > 0 else np.concatenate([[0.0], signal[:s1 - 1]])
        emphasised = piece - PREEMPHASIS * previous
        if s0 == 0:
            emphasised[0] = piece[0]
        rows = mfcc(emphasised, SAMPLE_RATE, preemph=0.0)
        if len(rows) != r1 - r0:
            raise AssertionError(f"MFCC chunk rows {len(rows)} != {r1 - r0}")
        out[:, r0:r1] = rows.T
    return out


def mfcc_window(mfcc: np.ndarray, t: int) -> np.ndarray:
    """The (1, 13, 20) audio input of the window that starts at video frame t: rows [4t, 4t + 20)."""
    start = ROWS_PER_FRAME * t
    window = mfcc[:, start:start + WINDOW_ROWS]
    if window.shape[1] != WINDOW_ROWS:
        raise IndexError(f"window {t} needs MFCC rows [{start}, {start + WINDOW_ROWS}), "
                         f"the audio has {mfcc.shape[1]}")
    return window[None]


def syncnet_window_count(n_video_frames: int, n_audio_samples: int) -> int:
    """Windows the reference scores: min_length = min(frames, floor(samples / 640)); its loop runs
    t = 0 .. min_length - 6, so min_length - 5 windows (125 frames give 120)."""
    min_length = min(n_video_frames, n_audio_samples // SAMPLES_PER_FRAME)
    return max(0, min_length - WINDOW)
