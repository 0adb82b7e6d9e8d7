"""The field registry: what each field is made from, its tar member extension and its rate.

Extraction is lazy per utterance: `Sources` decodes the media and tracks the face at most once,
and only when a requested field needs them. Audio features read the utterance's stored audio
and parsing / tdmm its stored landmarks when those are already in the store, so adding such a
field never touches the video. Fresh audio and landmarks pass through their storage codecs
first, so a field computes the same bytes whether its inputs were stored earlier or not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

import numpy as np

from features import audio as audio_field
from features import fbank as fbank_field
from features import hubert as hubert_field
from features import landmarks as landmarks_field
from features import lip as lip_field
from features import mel as mel_field
from features import parsing as parsing_field
from features import rgb as rgb_field
from features import tdmm as tdmm_field
from features.codecs import decode_npy, encode_npy
from features.face import VERSION as FACE_VERSION
from features.face import FaceTrack, FaceTracker, crop_to_image
from features.media import Media, load_media


@dataclass
class Options:
    """Extraction settings that change a field's content (recorded in store.json)."""

    hubert_model: str = hubert_field.DEFAULT_MODEL
    hubert_layer: int = -1
    tdmm_model: Path | None = None  # <store>/models/tdmm-<version>.npz once fitted


class Sources:
    """One utterance's inputs, each computed once on first use."""

    def __init__(self, row: dict, tracker: Callable[[], FaceTracker],
                 stored: dict[str, bytes] | None = None, options: Options | None = None,
                 tdmm_model: Callable[[], "tdmm_field.MorphableModel"] | None = None):
        self.row, self._tracker, self.stored = row, tracker, stored or {}
        self.options = options or Options()
        self._tdmm_model = tdmm_model

    @cached_property
    def media(self) -> Media:
        r = self.row
        return load_media(r["video_path"], r.get("audio_path"), r.get("start_s"), r.get("end_s"))

    @cached_property
    def face(self) -> FaceTrack:
        return self._tracker().track(self.media.frames)

    @cached_property
    def audio_bytes(self) -> bytes:
        return self.stored.get("audio") or audio_field.encode(self.media.audio)

    @cached_property
    def audio(self) -> np.ndarray:
        """The audio as stored (FLAC, 16 bit): the source of every audio feature."""
        return audio_field.decode(self.audio_bytes)

    @cached_property
    def landmarks_bytes(self) -> bytes:
        return self.stored.get("landmarks") or landmarks_field.encode(self.face.landmarks)

    @cached_property
    def landmarks(self) -> np.ndarray:
        """The landmarks as stored (float16 crop pixels), as float32."""
        return landmarks_field.decode(self.landmarks_bytes).astype(np.float32)

    def tdmm_model(self) -> "tdmm_field.MorphableModel":
        if self._tdmm_model is None:
            raise RuntimeError("no morphable model: fit one before extracting tdmm")
        return self._tdmm_model()


@dataclass(frozen=True)
class Field:
    name: str
    ext: str  # tar member extension: "<key>.<ext>"
    rate: int  # rows per second on the shared timebase
    version: str
    stage: str  # what an error in this field is blamed on: decode, face, feature or model
    extract: Callable[[Sources], bytes | dict[str, bytes]]  # a dict: several members (ext -> bytes)
    decode: Callable[[bytes], Any]
    needs: tuple[str, ...] = field(default=())  # stored fields it can be computed from
    gpu: bool = False  # worth a GPU when the cluster has one


FIELDS: dict[str, Field] = {f.name: f for f in [
    Field("audio", "flac", 16000, audio_field.VERSION, "decode",
          lambda s: s.audio_bytes, audio_field.decode),
    Field("rgb", "rgb.jpgs", 25, f"{rgb_field.VERSION}+{FACE_VERSION}", "face",
          lambda s: rgb_field.encode(s.face.crops), rgb_field.decode),
    Field("landmarks", "landmarks.npy", 25, FACE_VERSION, "face",
          lambda s: s.landmarks_bytes, landmarks_field.decode),
    Field("mel", "mel.npy", 80, mel_field.VERSION, "feature",
          lambda s: encode_npy(mel_field.wav2lip_mel(s.audio).astype(np.float16)), decode_npy,
          needs=("audio",)),
    Field("parsing", "parsing.npy.gz", 25, parsing_field.VERSION, "feature",
          lambda s: parsing_field.encode(s.landmarks), parsing_field.decode, needs=("landmarks",)),
    Field("tdmm", "tdmm.npy", 25, tdmm_field.VERSION, "model",
          lambda s: tdmm_field.encode(s.landmarks, s.tdmm_model()), tdmm_field.decode,
          needs=("landmarks",)),
    Field("hubert", "hubert.npy", 50, "hubert-1", "model",
          lambda s: hubert_field.encode(hubert_field.hubert_features(
              s.audio, s.options.hubert_model, s.options.hubert_layer)),
          hubert_field.decode, needs=("audio",), gpu=True),
    Field("lip", "lip.jpgs", 25, f"{lip_field.VERSION}+{FACE_VERSION}", "face",
          lambda s: lip_field.encode(lip_field.mouth_rois(
              s.media.frames, crop_to_image(s.face.landmarks, s.face.boxes))), lip_field.decode),
    Field("fbank", "fbank.npy", 100, fbank_field.VERSION, "feature",
          lambda s: fbank_field.encode(s.audio), fbank_field.decode, needs=("audio",)),
]}
# meta is written by the extraction job for every utterance, whatever failed.
META_EXT = "json"
ERROR_EXT = "error.json"  # placeholder member: keeps a failed field's series aligned
SLICE_FIELDS = ["audio", "rgb", "landmarks", "mel", "meta"]
DEFAULT_FIELDS = SLICE_FIELDS


def resolve(names: list[str]) -> list[str]:
    """Validate field names ('all' expands); meta is always included."""
    known = list(FIELDS) + ["meta"]
    if names == ["all"] or not names:
        return known
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; known: {known}")
    return sorted(set(names) | {"meta"}, key=known.index)
