"""whisper field: the `transformers` Whisper encoder's hidden states at 50 Hz, 2 rows per video frame.

What LatentSync and MuseTalk condition their generators on (Whisper-tiny, 384-d). Only the
encoder runs (no decoding, no transcript). The model comes from a hub id or a local directory
(`--whisper-model`, default `openai/whisper-tiny`), loads once per worker process and runs on the
GPU when one is visible, else on the CPU; it fails as fast and as clearly as the hubert field
without the hub (features.hub, features.errors.ModelUnavailable).

The encoder takes a fixed window: 30 s of audio, 3000 log-mel frames (WhisperFeatureExtractor
pads shorter audio with silence), 1500 rows of 20 ms. An utterance that fits is one pass and its
rows are the first 2 * n_frames of it (the padding's rows dropped): what MuseTalk computes. A
longer one is cut into passes that overlap by a second of context on each side (rows kept from
28 s of each pass but the first and last), so a row never sits at a window edge that one pass
over the whole audio would not have.

Layers (`--whisper-layer`): -1 the last hidden state (after the encoder's final layer norm),
k >= 0 transformers' hidden_states[k] (0: the convolutional embedding plus positions, k: after
block k), 'all' every hidden state stacked on axis 1: (2 n, layers + 1, d), MuseTalk's stack.
catalog/whisper_windows.py cuts LatentSync's and MuseTalk's per-frame windows out of either.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from features.codecs import decode_npy, encode_npy
from features.errors import ModelUnavailable
from features.hub import load_error, load_pretrained
from features.timebase import SAMPLES_PER_FRAME

DEFAULT_MODEL = "openai/whisper-tiny"
VERSION = "whisper-1"
HOP = 320  # samples per encoder row at 16 kHz (50 Hz: 2 mel hops of 160, conv2 stride 2)
CONTEXT_ROWS = 50  # 1 s of context on each side of a pass's kept rows, when the audio goes on
Layer = int | str  # -1, k >= 0, or "all"


class WhisperLoadError(ModelUnavailable):
    """The weights could not be loaded; the message says which id or path and what to do.
    A job-level failure (features.errors): it is not the utterance's."""


_FAILED: dict[str, WhisperLoadError] = {}  # a model that failed to load fails fast afterwards


def parse_layer(text: str | int) -> Layer:
    """--whisper-layer: an integer (-1: the last hidden state) or 'all'."""
    if str(text).strip().lower() == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"--whisper-layer takes an integer or 'all', not {text!r}") from None


def _load_error(model: str, why: str) -> WhisperLoadError:
    return load_error(WhisperLoadError, "Whisper", model, why, "--whisper-model", DEFAULT_MODEL)


@lru_cache(maxsize=2)
def load_model(model: str = DEFAULT_MODEL, device: str | None = None):
    """(encoder in eval mode, feature extractor, device, revision) — cached, so a worker loads once.

    A local directory loads without the network; a hub id is tried online only when one quick
    probe reaches the hub, else from the local cache; a failure raises WhisperLoadError at once
    (and again, without retrying, on every later call in this process). A directory without
    preprocessor_config.json gets Whisper's standard extractor for the model's mel bins.
    """
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel

    encoder, kwargs = load_pretrained(lambda kw: WhisperModel.from_pretrained(model, **kw).get_encoder(), model,
                                      lambda why: _load_error(model, why), _FAILED)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    window = encoder.config.max_source_positions * HOP  # samples per pass (30 s for every Whisper)
    try:
        extractor = WhisperFeatureExtractor.from_pretrained(model, **kwargs)
    except OSError:  # no preprocessor_config.json: the standard one
        extractor = WhisperFeatureExtractor(feature_size=encoder.config.num_mel_bins,
                                            chunk_length=window // 16000)
    if extractor.n_samples != window or extractor.feature_size != encoder.config.num_mel_bins:
        _FAILED[model] = _load_error(model, f"its feature extractor ({extractor.n_samples} samples, "
                                     f"{extractor.feature_size} mels) does not fit the encoder ({window} "
                                     f"samples, {encoder.config.num_mel_bins} mels)")
        raise _FAILED[model]
    encoder = encoder.to(device).eval()
    if device.startswith("cuda"):
        encoder = encoder.half()
    revision = getattr(encoder.config, "_commit_hash", None) or "local"
    return encoder, extractor, device, revision


def passes(n_rows: int, window_rows: int) -> list[tuple[int, int, int]]:
    """(first input row, first kept row, rows kept) of each encoder pass over n_rows rows.

    One pass when the audio fits the window; else each pass starts CONTEXT_ROWS before its kept
    rows (but the first) and keeps all but the last CONTEXT_ROWS of its window (but the last)."""
    out, row = [], 0
    while row < n_rows:
        start = max(0, row - CONTEXT_ROWS)
        keep = n_rows - row if n_rows - start <= window_rows else window_rows - (row - start) - CONTEXT_ROWS
        out.append((start, row, keep))
        row += keep
    return out


def whisper_features(audio: np.ndarray, model: str = DEFAULT_MODEL, layer: Layer = -1) -> np.ndarray:
    """(2 n, d) float32 rows of `layer` (-1: the last hidden state), n = len(audio) // 640 video
    frames (a partial last frame has no rows); with layer 'all' (2 n, layers + 1, d): every
    hidden state."""
    import torch

    encoder, extractor, device, _ = load_model(model)
    layer = parse_layer(layer)
    n_layers = encoder.config.encoder_layers
    if layer != "all" and not -1 <= layer <= n_layers:
        raise ValueError(f"--whisper-layer {layer}: the encoder has hidden states 0..{n_layers} (-1: the last)")
    n_rows = 2 * (len(audio) // SAMPLES_PER_FRAME)  # 2 per whole video frame
    window_rows = encoder.config.max_source_positions
    wav = audio.astype(np.float32)
    parts = []
    with torch.inference_mode():
        for start, row, keep in passes(n_rows, window_rows):
            piece = wav[start * HOP: (start + window_rows) * HOP]
            mel = extractor(piece, sampling_rate=16000, return_tensors="pt").input_features.to(device)
            if device.startswith("cuda"):
                mel = mel.half()
            out = encoder(mel, output_hidden_states=layer != -1)
            if layer == "all":
                hidden = torch.stack(out.hidden_states, dim=2)  # (1, rows, layers + 1, d)
            else:
                hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
            parts.append(hidden[0, row - start: row - start + keep].float().cpu().numpy())
    if not parts:  # no audio: no rows, of the right width
        d = encoder.config.d_model
        return np.zeros((0, n_layers + 1, d) if layer == "all" else (0, d), np.float32)
    return np.concatenate(parts)


def save_tiny_random_model(path: Path | str, d_model: int = 16, layers: int = 2) -> Path:
    """Save a randomly initialised Whisper of the real architecture where `--whisper-model` loads it.

    Random weights, real architecture and input geometry (transformers WhisperModel, 80 mels,
    3000-frame windows, 1500 positions: 30 s per pass, 50 Hz rows) with thin layers, so it runs
    in a fraction of a second per pass on a CPU; its preprocessor config is saved beside it. For
    tests and benchmarks only, never for results: its features carry no speech information.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    config = WhisperConfig(d_model=d_model, encoder_layers=layers, decoder_layers=1,
                           encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                           decoder_ffn_dim=2 * d_model, num_mel_bins=80, max_source_positions=1500,
                           max_target_positions=32, vocab_size=64, pad_token_id=0, bos_token_id=1,
                           eos_token_id=2, decoder_start_token_id=1)
    path = Path(path)
    WhisperModel(config).save_pretrained(path)
    WhisperFeatureExtractor(feature_size=80).save_pretrained(path)
    return path


def encode(features: np.ndarray) -> bytes:
    return encode_npy(features.astype(np.float16))


decode = decode_npy
