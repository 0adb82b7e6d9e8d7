"""The field registry: what each field is made from, its tar member extension and its rate.

Extraction is lazy per utterance: `Sources` decodes the media and tracks the face at most once,
and only when a requested field needs them, so an audio-only field never touches the video.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from features import audio as audio_field
from features import landmarks as landmarks_field
from features import mel as mel_field
from features import rgb as rgb_field
from features.codecs import decode_npy, encode_npy
from features.face import VERSION as FACE_VERSION
from features.face import FaceTrack, FaceTracker
from features.media import Media, load_media


class Sources:
    """One utterance's inputs, each computed once on first use."""

    def __init__(self, video_path: Path | str, audio_path: Path | str | None,
                 tracker: Callable[[], FaceTracker], start_s: float | None = None,
                 end_s: float | None = None):
        self.video_path, self.audio_path = Path(video_path), audio_path
        self.segment = (start_s, end_s)
        self._tracker = tracker

    @cached_property
    def media(self) -> Media:
        return load_media(self.video_path, self.audio_path, *self.segment)

    @cached_property
    def face(self) -> FaceTrack:
        return self._tracker().track(self.media.frames)


@dataclass(frozen=True)
class Field:
    name: str
    ext: str  # tar member extension: "<key>.<ext>"
    rate: int  # rows per second on the shared timebase
    version: str
    stage: str  # what an error in this field is blamed on: decode, face or feature
    extract: Callable[[Sources], bytes]
    decode: Callable[[bytes], Any]


FIELDS: dict[str, Field] = {f.name: f for f in [
    Field("audio", "flac", 16000, audio_field.VERSION, "decode",
          lambda s: audio_field.encode(s.media.audio), audio_field.decode),
    Field("rgb", "rgb.jpgs", 25, f"{rgb_field.VERSION}+{FACE_VERSION}", "face",
          lambda s: rgb_field.encode(s.face.crops), rgb_field.decode),
    Field("landmarks", "landmarks.npy", 25, FACE_VERSION, "face",
          lambda s: landmarks_field.encode(s.face.landmarks), landmarks_field.decode),
    Field("mel", "mel.npy", 80, mel_field.VERSION, "feature",
          lambda s: encode_npy(mel_field.wav2lip_mel(s.media.audio).astype(np.float16)), decode_npy),
]}
# meta is written by the extraction job for every utterance, whatever failed.
META_EXT = "json"
ERROR_EXT = "error.json"  # placeholder member: keeps a failed field's series aligned
SLICE_FIELDS = ["audio", "rgb", "landmarks", "mel", "meta"]


def resolve(names: list[str]) -> list[str]:
    """Validate field names ('all' expands); meta is always included."""
    known = list(FIELDS) + ["meta"]
    if names == ["all"] or not names:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: {known}")
    return sorted(set(names) | {"meta"}, key=known.index)
