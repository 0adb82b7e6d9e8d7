"""Sync correction: read utterances whose audio is off by a detected offset as if in sync.

Wav2Lip's README asks for sync-corrected data, LatentSync shifts each clip's audio by SyncNet's
offset. We do not rewrite any stored field: the store reader (catalog.reader, and so the trainer
and `open_store(...).dataset(..., sync_correct=True)`) applies the catalog's offset when it reads.
With the catalog's `sync_offset` o (syncnet_python's sign: audio late by d frames reads o = -d),
the sound of video frame t sits at audio frame t + d, so

    visual fields (rgb, landmarks, parsing, tdmm, lip) start at frame t + max(0, -d)
    audio fields (audio, mel, hubert, whisper, fbank) start at frame t + max(0, d)

for corrected window t = 0 .. n - |d| - 5. The |d| frames that have no partner at one end (the
first d video frames and the last d audio frames when the audio is late; the reverse when it is
early) are dropped, and counted: `SyncCorrection.trimmed_frames`, summed by `summarize`, so the
loss is never silent. Offsets beyond `max_offset` (the scorer's search range: such a figure is
a search edge, not a measurement) are not applied, and are counted too.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from features.timebase import WINDOW

AUDIO_FIELDS = frozenset({"audio", "mel", "hubert", "whisper", "fbank"})
MAX_OFFSET = 14  # |offset| 15 is the edge of the -15..15 search: not trusted


@dataclass(frozen=True)
class SyncCorrection:
    """How one utterance's windows are re-paired; `audio_delay` d = -sync_offset."""

    audio_delay: int
    n_frames: int  # the utterance's frames before correction

    @property
    def visual_start(self) -> int:
        return max(0, -self.audio_delay)

    @property
    def audio_start(self) -> int:
        return max(0, self.audio_delay)

    @property
    def trimmed_frames(self) -> int:
        return min(abs(self.audio_delay), self.n_frames)

    @property
    def frames(self) -> int:
        """Frames of the corrected utterance (every field covers windows 0 .. frames - 5)."""
        return self.n_frames - self.trimmed_frames

    def start(self, name: str, t: int) -> int:
        """The stored frame at which field `name`'s window of corrected window t starts."""
        return t + (self.audio_start if name in AUDIO_FIELDS else self.visual_start)


def correction_for(sync_offset: int | None, n_frames: int,
                   max_offset: int = MAX_OFFSET) -> SyncCorrection | None:
    """The correction for a catalog row's sync_offset; None when there is nothing to apply
    (no offset, offset 0, or beyond max_offset)."""
    if sync_offset is None or int(sync_offset) == 0 or abs(int(sync_offset)) > max_offset:
        return None
    return SyncCorrection(audio_delay=-int(sync_offset), n_frames=int(n_frames))


def field_start(utt, name: str, t: int) -> int:
    """The frame at which field `name`'s window of window t starts, for an Utterance that may
    carry a correction (attribute `sync`)."""
    correction = getattr(utt, "sync", None)
    return t if correction is None else correction.start(name, t)


def apply(utt, sync_offset: int | None, max_offset: int = MAX_OFFSET) -> SyncCorrection | None:
    """Attach the correction to a loaded Utterance and shrink its frame count to what stays
    paired; returns the correction (None: the utterance is used as stored)."""
    correction = correction_for(sync_offset, utt.n_frames, max_offset)
    utt.sync = correction
    if correction is not None:
        utt.n_frames = correction.frames
    return correction


def summarize(rows: Iterable[dict], n_frames_key: str = "n_frames",
              max_offset: int = MAX_OFFSET) -> dict:
    """What correcting these catalog rows costs: utterances shifted, frames trimmed, offsets
    not applied (beyond max_offset), utterances left without a window."""
    shifted = trimmed = untrusted = emptied = scored = 0
    for r in rows:
        o = r.get("sync_offset")
        if o is None:
            continue
        scored += 1
        if abs(int(o)) > max_offset:
            untrusted += 1
            continue
        c = correction_for(o, r[n_frames_key] or 0, max_offset)
        if c is not None:
            shifted += 1
            trimmed += c.trimmed_frames
            emptied += c.frames < WINDOW
    return {"scored": scored, "shifted": shifted, "frames_trimmed": trimmed,
            "offsets_not_applied": untrusted, "left_without_a_window": emptied}
