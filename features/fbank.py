"""fbank field: 26 log mel filterbank energies at 100 Hz, the SyncTalklip / AV-HuBERT audio input.

The python_speech_features `logfbank` recipe AV-HuBERT uses: pre-emphasis 0.97, 25 ms frames
(400 samples) every 10 ms (160), no window, 512-point power spectrum, 26 HTK-mel triangles over
0-8000 Hz, natural log. The audio is zero-padded by 240 samples at the end so an utterance of
n video frames gives exactly 4n rows (the window of frame t is rows [4t, 4t + 20)).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

from features.codecs import decode_npy, encode_npy

N_FILTERS, FRAME, HOP, NFFT = 26, 400, 160, 512
VERSION = "logfbank26-1"


@lru_cache(maxsize=1)
def _filters() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=16000, n_fft=NFFT, n_mels=N_FILTERS, fmin=0.0, fmax=8000.0,
                               htk=True, norm=None)


CHUNK_ROWS = 4096  # rows computed at a time (~41 s of audio, ~17 MB of complex spectra)


def log_fbank(audio: np.ndarray) -> np.ndarray:
    """(4 * len(audio) // 640, 26) float32 for 16 kHz audio of a whole number of video frames.

    Computed CHUNK_ROWS rows at a time from the samples those rows' frames cover (the spectra of
    30 minutes are ~0.7 GB of complex128): the same rows as the whole-signal computation."""
    n = 1 + (len(audio) - HOP) // HOP  # frames of the signal padded by FRAME - HOP at the end
    if n <= CHUNK_ROWS:
        x = np.append(audio[:1], audio[1:] - 0.97 * audio[:-1]).astype(np.float64)
        return _rows(np.pad(x, (0, FRAME - HOP)), n)
    out = np.empty((n, N_FILTERS), np.float32)
    for a in range(0, n, CHUNK_ROWS):
        b = min(n, a + CHUNK_ROWS)
        out[a:b] = _rows(_emphasised(audio, a * HOP, (b - 1) * HOP + FRAME), b - a)
    return out


def _emphasised(audio: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Samples [lo, hi) of the pre-emphasised, end-padded signal, as float64 (the whole-signal
    arithmetic: float32 differences, then widened)."""
    seg = audio[max(0, lo - 1):min(hi, len(audio))]
    x = seg[1:] - 0.97 * seg[:-1] if lo > 0 else np.append(seg[:1], seg[1:] - 0.97 * seg[:-1])
    return np.pad(x.astype(np.float64), (0, hi - lo - len(x)))


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    """The first n log filterbank rows of the frames of x (FRAME samples every HOP)."""
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:n]
    power = np.abs(np.fft.rfft(frames, NFFT)) ** 2 / NFFT
    energies = power @ _filters().T
    return np.log(np.maximum(energies, np.finfo(np.float64).eps)).astype(np.float32)


def encode(audio: np.ndarray) -> bytes:
    return encode_npy(log_fbank(audio).astype(np.float16))


decode = decode_npy
