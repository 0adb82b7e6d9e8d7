"""The Wav2Lip mel spectrogram, exactly: the audio feature of the Mel combos (80 Hz, 80 bands).

STFT pad mode: Wav2Lip was published with librosa < 0.10, whose `stft(center=True)` padded with
`reflect`; librosa 0.10 changed the default to `constant`. We pass pad_mode="reflect" so stored
mels match the published recipe (and checkpoints trained on it).
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np

N_FFT, HOP, WIN, N_MELS = 800, 200, 800, 80
FMIN, FMAX, PREEMPHASIS = 55.0, 7600.0, 0.97
MIN_LEVEL_DB, REF_LEVEL_DB, MAX_ABS = -100.0, 20.0, 4.0
VERSION = "wav2lip-mel-1"


@lru_cache(maxsize=1)
def _mel_basis() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=16000, n_fft=N_FFT, n_mels=N_MELS, fmin=FMIN, fmax=FMAX)


def wav2lip_mel(audio: np.ndarray) -> np.ndarray:
    """(80, 1 + len(audio) // 200) float32 in [-4, 4] from 16 kHz mono audio."""
    import librosa
    from scipy.signal import lfilter

    emphasised = lfilter([1.0, -PREEMPHASIS], [1.0], audio.astype(np.float64))
    spec = np.abs(librosa.stft(y=emphasised, n_fft=N_FFT, hop_length=HOP, win_length=WIN,
                               center=True, pad_mode="reflect"))
    mel = _mel_basis() @ spec
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(norm, -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_window_start(t: int) -> int:
    """First mel frame of the sync window that starts at video frame t (Wav2Lip's rule)."""
    return int(80.0 * (t / 25.0))
