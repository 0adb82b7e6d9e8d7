"""hubert field: `transformers` HubertModel features at 50 Hz, padded to 2 rows per video frame.

The model comes from a hub id or a local directory (`--hubert-model`); default
`facebook/hubert-large-ls960-ft`, `TencentGameMate/chinese-hubert-large` for Mandarin corpora.
It loads once per worker process and runs on the GPU when one is visible (Ray sets
CUDA_VISIBLE_DEVICES for tasks that ask for a GPU), else on the CPU. Long audio is cut into
chunks with a second of context on each side, so memory stays flat and the output frame grid
matches one pass over the whole utterance.
"""
from __future__ import annotations

import os
from functools import lru_cache

import numpy as np

from features.codecs import decode_npy, encode_npy

DEFAULT_MODEL = "facebook/hubert-large-ls960-ft"
MANDARIN_MODEL = "TencentGameMate/chinese-hubert-large"
HOP = 320  # samples per HuBERT frame at 16 kHz (50 Hz)
CHUNK = 20 * 16000  # samples per inference chunk (a multiple of HOP)
CONTEXT = 16000  # samples of context on each side of a chunk (a multiple of HOP)


class HubertLoadError(RuntimeError):
    """The weights could not be loaded; the message says which id or path and what to do."""

    stage = "model"


_FAILED: dict[str, HubertLoadError] = {}  # a model that failed to load fails fast afterwards


@lru_cache(maxsize=2)
def load_model(model: str = DEFAULT_MODEL, device: str | None = None):
    """(model in eval mode, device, revision) — cached, so a worker loads it once."""
    import torch
    from transformers import HubertModel

    if model in _FAILED:
        raise _FAILED[model]
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        net = HubertModel.from_pretrained(model)
    except Exception as exc:
        _FAILED[model] = HubertLoadError(
            f"cannot load HuBERT weights {model!r} ({type(exc).__name__}: {str(exc).splitlines()[0]}). "
            "Download them where the hub is reachable (huggingface-cli download "
            f"{model} --local-dir DIR) and pass --hubert-model DIR, a local directory holding "
            "config.json and the weights.")
        raise _FAILED[model] from exc
    net = net.to(device).eval()
    if device.startswith("cuda"):
        net = net.half()
    revision = getattr(net.config, "_commit_hash", None) or "local"
    return net, device, revision


def hubert_features(audio: np.ndarray, model: str = DEFAULT_MODEL, layer: int = -1) -> np.ndarray:
    """(2 * len(audio) // 640, hidden) float32: `layer`'s hidden states (-1: the last)."""
    import torch

    net, device, _ = load_model(model)
    n_rows = 2 * len(audio) // 640
    wav = np.pad(audio.astype(np.float32), (CONTEXT, CONTEXT + CHUNK))
    parts = []
    with torch.inference_mode():
        for start in range(0, n_rows * HOP, CHUNK):
            piece = torch.from_numpy(wav[start: start + CHUNK + 2 * CONTEXT + 80])[None].to(device)
            if device.startswith("cuda"):
                piece = piece.half()
            out = net(piece, output_hidden_states=layer != -1)
            hidden = out.last_hidden_state if layer == -1 else out.hidden_states[layer]
            first = CONTEXT // HOP  # chunk frame i covers samples [start + i*HOP, +400) of the audio
            parts.append(hidden[0, first: first + CHUNK // HOP].float().cpu().numpy())
    feats = np.concatenate(parts)[:n_rows]
    if len(feats) < n_rows:  # the model's last frame needs 400 samples: repeat it to 2n rows
        feats = np.concatenate([feats, np.repeat(feats[-1:], n_rows - len(feats), axis=0)])
    return feats


def encode(features: np.ndarray) -> bytes:
    return encode_npy(features.astype(np.float16))


decode = decode_npy
