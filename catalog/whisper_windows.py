"""Per-frame Whisper windows as LatentSync and MuseTalk feed them to their generators.

The stored `whisper` field has 2 rows (50 Hz) per video frame (25 fps): (2 n, d) for one layer,
(2 n, layers + 1, d) with --whisper-layer all. Both models condition video frame t on the rows
of frames t - 2 .. t + 2, i.e. rows [2t - 4, 2t + 6): 10 rows, each with every hidden state of
Whisper-tiny (5 x 384), flattened rows first to (50, 384). They differ at the utterance's ends:

- LatentSync (latentsync/whisper/audio2feature.py, `get_sliced_feature`, audio_feat_length
  [2, 2]): a row outside the audio is the nearest one (clamped index);
- MuseTalk (musetalk/utils/audio_processor.py, `get_whisper_chunk`, audio_padding_length 2, 2):
  zero rows.

Which hidden states: MuseTalk stacks transformers' `hidden_states` (the last one after the
encoder's final layer norm), which is what --whisper-layer all stores. LatentSync's copy of
OpenAI's whisper records the last block's output before that layer norm, so its fifth state
differs from ours by that LayerNorm; the other four are the same. A single-layer store gives
(10, d) windows with the same rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from features.timebase import FPS

ROWS_PER_FRAME = 50 // FPS  # Whisper's 50 Hz rows per 25 fps video frame


@dataclass(frozen=True)
class WindowRule:
    """Frames of context either side of frame t, and what a row outside the audio is."""

    left: int = 2
    right: int = 2
    edge: str = "clamp"  # "clamp": the nearest row (LatentSync); "zeros": zero rows (MuseTalk)

    @property
    def offsets(self) -> np.ndarray:
        """Row offsets from 2t: [-2 left, 2 (right + 1))."""
        return np.arange(-ROWS_PER_FRAME * self.left, ROWS_PER_FRAME * (self.right + 1))


RULES = {"latentsync": WindowRule(2, 2, "clamp"), "musetalk": WindowRule(2, 2, "zeros")}


def frame_windows(features: np.ndarray, rule: str | WindowRule = "latentsync",
                  frames: np.ndarray | range | None = None) -> np.ndarray:
    """(len(frames), rows * layers, d) windows of `features` ((2 n, d) or (2 n, layers, d)),
    one per video frame (default: every frame 0 .. n - 1), rows first then layers, as stored
    (float16 stays float16)."""
    rule = RULES[rule] if isinstance(rule, str) else rule
    if rule.edge not in ("clamp", "zeros"):
        raise ValueError(f"unknown edge rule {rule.edge!r}: 'clamp' or 'zeros'")
    n_rows = len(features)
    frames = np.arange(n_rows // ROWS_PER_FRAME) if frames is None else np.asarray(frames)
    index = ROWS_PER_FRAME * frames[:, None] + rule.offsets[None, :]
    inside = (index >= 0) & (index < n_rows)
    out = features[np.clip(index, 0, max(n_rows - 1, 0))] if n_rows else \
        np.zeros((*index.shape, *features.shape[1:]), features.dtype)
    if rule.edge == "zeros":
        out[~inside] = 0
    return out.reshape(len(frames), -1, features.shape[-1])


def frame_window(features: np.ndarray, t: int, rule: str | WindowRule = "latentsync") -> np.ndarray:
    """The window of video frame t: (rows * layers, d), e.g. (50, 384) for Whisper-tiny, all layers."""
    return frame_windows(features, rule, np.array([t]))[0]
