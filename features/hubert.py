"""hubert field: `transformers` HubertModel features at 50 Hz, padded to 2 rows per video frame.

The model comes from a hub id or a local directory (`--hubert-model`); default
`facebook/hubert-large-ls960-ft`, `TencentGameMate/chinese-hubert-large` for Mandarin corpora.
It loads once per worker process and runs on the GPU when one is visible (Ray sets
CUDA_VISIBLE_DEVICES for tasks that ask for a GPU), else on the CPU. Long audio is cut into
chunks with a second of context on each side, so memory stays flat and the output frame grid
matches one pass over the whole utterance.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

from features.codecs import decode_npy, encode_npy
from features.errors import ModelUnavailable
from features.hub import load_error, load_pretrained
from features.hub import hub_reachable  # noqa: F401  (features.hub; tests clear its cache here)

DEFAULT_MODEL = "facebook/hubert-large-ls960-ft"
MANDARIN_MODEL = "TencentGameMate/chinese-hubert-large"
HOP = 320  # samples per HuBERT frame at 16 kHz (50 Hz)
CHUNK = 20 * 16000  # samples per inference chunk (a multiple of HOP)
CONTEXT = 16000  # samples of context on each side of a chunk (a multiple of HOP)


class HubertLoadError(ModelUnavailable):
    """The weights could not be loaded; the message says which id or path and what to do.
    A job-level failure (features.errors): it is not the utterance's."""


_FAILED: dict[str, HubertLoadError] = {}  # a model that failed to load fails fast afterwards


def _load_error(model: str, why: str) -> HubertLoadError:
    return load_error(HubertLoadError, "HuBERT", model, why, "--hubert-model", DEFAULT_MODEL)


@lru_cache(maxsize=2)
def load_model(model: str = DEFAULT_MODEL, device: str | None = None):
    """(model in eval mode, device, revision) — cached, so a worker loads it once.

    A local directory loads without the network; a hub id is tried online only when one quick
    probe reaches the hub, else from the local cache; a failure raises HubertLoadError at once
    (and again, without retrying, on every later call in this process).
    """
    import torch
    from transformers import HubertModel

    net, _ = load_pretrained(lambda kwargs: HubertModel.from_pretrained(model, **kwargs), model,
                             lambda why: _load_error(model, why), _FAILED)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
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


def save_tiny_random_model(path: Path | str, hidden_size: int = 16) -> Path:
    """Save a randomly initialised HuBERT of the real architecture where `--hubert-model` loads it.

    Random weights, real architecture (transformers HubertModel, 50 Hz: conv strides
    5,2,2,2,2,2,2): two thin layers, so it runs in seconds on a CPU. `hidden_size` is the row
    size of its features (16: a few thousand parameters; 1024: rows as large as
    facebook/hubert-large-ls960-ft's). For tests and benchmarks only, never for results: its
    features carry no speech information.
    """
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(hidden_size=hidden_size, num_hidden_layers=2, num_attention_heads=2,
                          intermediate_size=32, conv_dim=(8,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
                          conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16,
                          num_conv_pos_embedding_groups=max(2, hidden_size // 8),
                          feat_extract_norm="layer", do_stable_layer_norm=True)
    path = Path(path)
    HubertModel(config).save_pretrained(path)
    return path


def encode(features: np.ndarray) -> bytes:
    return encode_npy(features.astype(np.float16))


decode = decode_npy
