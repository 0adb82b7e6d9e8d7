"""Combo names (`<audio>_<visual>`) and the per-combo defaults the paper fixes.

One place knows which audio and visual representations exist, so the loader, the model and the
CLI agree on what `mel_landmarks` means.
"""
from __future__ import annotations

AUDIO = ("mel", "hubert")
VISUAL = ("rgb", "parsing", "landmarks", "tdmm")
COMBOS = tuple(f"{a}_{v}" for a in AUDIO for v in VISUAL)

# Eq. 1 margins (same-speaker, cross-speaker): the paper's best per audio representation.
DEFAULT_MARGINS = {"mel": (0.1, 0.3), "hubert": (0.3, 0.7)}


def parse_combo(combo: str) -> tuple[str, str]:
    """'mel_landmarks' -> ('mel', 'landmarks'); a clear error for anything else."""
    audio, _, visual = combo.partition("_")
    if audio not in AUDIO or visual not in VISUAL:
        raise ValueError(f"unknown combo {combo!r}; known: {', '.join(COMBOS)}")
    return audio, visual


def combo_fields(combo: str) -> list[str]:
    """The store fields a combo reads: exactly its audio and visual field, nothing else."""
    audio, visual = parse_combo(combo)
    return [audio, visual]
