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


def log_fbank(audio: np.ndarray) -> np.ndarray:
    """(4 * len(audio) // 640, 26) float32 for 16 kHz audio of a whole number of video frames."""
    x = np.append(audio[:1], audio[1:] - 0.97 * audio[:-1]).astype(np.float64)
    x = np.pad(x, (0, FRAME - HOP))
    n = 1 + (len(x) - FRAME) // HOP
    frames = np.lib.stride_tricks.sliding_window_view(x, FRAME)[::HOP][:n]
    power = np.abs(np.fft.rfft(frames, NFFT)) ** 2 / NFFT
    energies = power @ _filters().T
    return np.log(np.maximum(energies, np.finfo(np.float64).eps)).astype(np.float32)


def encode(audio: np.ndarray) -> bytes:
    return encode_npy(log_fbank(audio).astype(np.float16))


decode = decode_npy
