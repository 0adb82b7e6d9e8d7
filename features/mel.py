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


CHUNK_FRAMES = 4096  # mel frames computed at a time (~20 s of audio, ~26 MB of complex STFT)


def wav2lip_mel(audio: np.ndarray) -> np.ndarray:
    """(80, 1 + len(audio) // 200) float32 in [-4, 4] from 16 kHz mono audio.

    Up to CHUNK_FRAMES frames in one STFT; longer audio in chunks of that many frames (the STFT
    of 30 minutes is ~1 GB of complex128), each from the pre-emphasised samples its frames cover
    (the reflect padding rebuilt at the true edges): the same frames as the one-shot STFT."""
    n = 1 + len(audio) // HOP
    if n <= CHUNK_FRAMES:
        return _normalised(_spectrum(_emphasised(audio, 0, len(audio)), center=True))
    out = np.empty((N_MELS, n), np.float32)
    for a in range(0, n, CHUNK_FRAMES):
        b = min(n, a + CHUNK_FRAMES)
        out[:, a:b] = _normalised(_spectrum(_frames_input(audio, a, b), center=False))
    return out


def _emphasised(audio: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Pre-emphasised samples [lo, hi) of the whole signal (the filter's one-sample memory is
    primed from sample lo - 1, so a slice equals the whole signal's filtered samples)."""
    from scipy.signal import lfilter

    start = max(0, lo - 1)
    return lfilter([1.0, -PREEMPHASIS], [1.0], audio[start:hi].astype(np.float64))[lo - start:]


def _frames_input(audio: np.ndarray, a: int, b: int) -> np.ndarray:
    """The stretch of the reflect-padded, pre-emphasised signal that centred STFT frames
    [a, b) read: padded samples [a * HOP, (b - 1) * HOP + N_FFT)."""
    pad, length = N_FFT // 2, len(audio)
    lo, hi = a * HOP - pad, (b - 1) * HOP + N_FFT - pad  # in signal samples
    ext_lo = max(0, min(lo, length - pad - 1))  # the reflections read up to `pad` samples inward
    ext_hi = min(length, max(hi, pad + 1))
    ext = _emphasised(audio, ext_lo, ext_hi)
    ext = np.pad(ext, (pad if ext_lo == 0 else 0, pad if ext_hi == length else 0), mode="reflect")
    first = ext_lo - pad if ext_lo == 0 else ext_lo  # signal sample at ext[0]
    return ext[lo - first:hi - first]


def _spectrum(signal: np.ndarray, center: bool) -> np.ndarray:
    import librosa

    return np.abs(librosa.stft(y=signal, n_fft=N_FFT, hop_length=HOP, win_length=WIN, center=center,
                               pad_mode="reflect"))


def _normalised(spec: np.ndarray) -> np.ndarray:
    mel = _mel_basis() @ spec
    db = 20.0 * np.log10(np.maximum(1e-5, mel)) - REF_LEVEL_DB
    norm = 2 * MAX_ABS * ((db - MIN_LEVEL_DB) / -MIN_LEVEL_DB) - MAX_ABS
    return np.clip(norm, -MAX_ABS, MAX_ABS).astype(np.float32)


def mel_window_start(t: int) -> int:
    """First mel frame of the sync window that starts at video frame t (Wav2Lip's rule)."""
    return int(80.0 * (t / 25.0))
