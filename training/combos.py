"""Combo names (`<audio>_<visual>`) and the per-combo defaults the paper fixes.

One place knows which audio and visual representations exist, so the loader, the model and the
CLI agree on what `mel_landmarks` means.
"""
from __future__ import annotations

AUDIO = ("mel", "hubert")
VISUAL = ("rgb", "parsing", "landmarks", "tdmm")
COMBOS = tuple(f"{a}_{v}" for a in AUDIO for v in VISUAL)
# AV-SyncNet (SyncTalklip, training/avsync.py) reads its paper's inputs (fbank, lip) and these
AVSYNC_AUDIO = ("fbank", "mel", "hubert")
AVSYNC_VISUAL = ("lip", "rgb", "landmarks")
AVSYNC_COMBOS = tuple(f"{a}_{v}" for a in AVSYNC_AUDIO for v in AVSYNC_VISUAL)
MODEL_COMBOS = {"unisync": COMBOS, "avsync": AVSYNC_COMBOS}

# Eq. 1 margins (same-speaker, cross-speaker): the paper's best per audio representation.
DEFAULT_MARGINS = {"mel": (0.1, 0.3), "hubert": (0.3, 0.7)}


def parse_combo(combo: str, model: str | None = None) -> tuple[str, str]:
    """'mel_landmarks' -> ('mel', 'landmarks'); a clear error for anything else. Without `model`
    a combo of either model is accepted (UniSync's or AV-SyncNet's)."""
    known = MODEL_COMBOS[model] if model else COMBOS + tuple(c for c in AVSYNC_COMBOS if c not in COMBOS)
    if combo not in known:
        raise ValueError(f"unknown combo {combo!r}{f' for model {model}' if model else ''}; "
                         f"known: {', '.join(known)}")
    audio, _, visual = combo.partition("_")
    return audio, visual


def combo_fields(combo: str) -> list[str]:
    """The store fields a combo reads: exactly its audio and visual field, nothing else."""
    audio, visual = parse_combo(combo)
    return [audio, visual]
