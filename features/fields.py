"""The field registry: what each field is made from, its tar member extension and its rate.

Extraction is lazy per utterance: `Sources` reads the video in one streaming pass and tracks the
face at most once, and only when a requested field needs them (bounded memory: no frame stack). Audio features read the utterance's stored audio
and parsing / tdmm its stored landmarks when those are already in the store, so adding such a
field never touches the video (but parsing's person masks, features/segmentation.py, which need
the frames: parsing decodes and tracks again; it fails rather than draw the mesh alone). Fresh audio and landmarks pass through their storage codecs
first, so a field computes the same bytes whether its inputs were stored earlier or not.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from features import aligned as aligned_field
from features import audio as audio_field
from features import fbank as fbank_field
from features import hubert as hubert_field
from features import identity as identity_field
from features import landmarks as landmarks_field
from features import landmarks68 as landmarks68_field
from features import landmarks_fan as landmarks_fan_field
from features import lip as lip_field
from features import mel as mel_field
from features import parsing as parsing_field
from features import quality as quality_field
from features import rgb as rgb_field
from features import segmentation as segmentation_field
from features import tdmm as tdmm_field
from features import whisper as whisper_field
from features.codecs import decode_npy, encode_npy
from features.errors import ModelUnavailable
from features.face import VERSION as FACE_VERSION
from features.face import FaceTrack, FaceTracker
from features.media import MediaError, Timeline, VideoStream, load_audio, quality_warnings, read_timeline


@dataclass
class Options:
    """Extraction settings that change a field's content (recorded in store.json)."""

    hubert_model: str = hubert_field.DEFAULT_MODEL
    hubert_layer: int = -1
    whisper_model: str = whisper_field.DEFAULT_MODEL
    whisper_layer: int | str = -1  # or 'all': every hidden state
    tdmm_model: Path | None = None  # <store>/models/tdmm-<version>.npz once fitted
    fan_weights: str | None = None  # landmarks68_fan: a local 2D-FAN-4 state dict (never downloaded)


# the model fields' options (model, layer): recorded per tar (sidecar provenance) and in store.json
MODEL_OPTIONS = {"hubert": ("hubert_model", "hubert_layer"), "whisper": ("whisper_model", "whisper_layer"),
                 "landmarks68_fan": ("fan_weights", None)}  # no layer: the layer is recorded as None


def model_provenance(name: str, options: Options) -> dict | None:
    """{"model", "layer"} a model field's members are made with; None for other fields."""
    if name not in MODEL_OPTIONS:
        return None
    model, layer = MODEL_OPTIONS[name]
    return {"model": getattr(options, model), "layer": getattr(options, layer) if layer else None}


ALIGNED_FIELDS = tuple(f"aligned{size}" for size in aligned_field.SIZES)  # upright crops by size
DLIB_FIELDS = {"landmarks68": landmarks68_field.Landmarks68, "identity": identity_field.IdentitySamples}  # dlib models
FAN_FIELDS = {"landmarks68_fan": lambda options: landmarks_fan_field.FanLandmarks(options.fan_weights)}  # face-alignment
MODEL_CROP_FIELDS = (*DLIB_FIELDS, *FAN_FIELDS)  # a pretrained model run on the tracked frames
FACE_FIELDS = ("rgb", "landmarks", "lip", *ALIGNED_FIELDS, *MODEL_CROP_FIELDS)  # fields made from the face track
TRACKED_INPUTS = ("parsing", "tdmm")  # made from the landmarks, stored or tracked


class Sources:
    """One utterance's inputs, each computed at most once, and only for the fields wanted.

    The video is read in one streaming pass (`features.media.VideoStream`): when a wanted field
    needs the face, the tracker consumes the frames as they are decoded and the rgb / lip crop
    makers encode their crops on the way, so no frame stack is ever held; otherwise the pass
    only decodes, for the timeline. The audio is decoded on its own, onto that timeline.
    """

    def __init__(self, row: dict, tracker: Callable[[], FaceTracker],
                 stored: dict[str, bytes] | None = None, options: Options | None = None,
                 tdmm_model: Callable[[], "tdmm_field.MorphableModel"] | None = None,
                 wanted: Iterable[str] | None = None):
        self.row, self._tracker, self.stored = row, tracker, stored or {}
        self.options = options or Options()
        self._tdmm_model = tdmm_model
        self.wanted = set(FIELDS) if wanted is None else set(wanted)
        self._errors: dict[str, Exception] = {}

    def needs_face(self) -> bool:
        """Whether the video pass must track the face (else it only reads the timeline)."""
        if "parsing" in self.wanted and segmentation_field.available():  # hair, neck: the frames
            return True
        if self.wanted & {"rgb", "lip", *ALIGNED_FIELDS, *MODEL_CROP_FIELDS}:
            return True
        return "landmarks" not in self.stored and bool(self.wanted & {"landmarks", *TRACKED_INPUTS})

    def _makers(self) -> list:
        return ([rgb_field.FaceCrops()] if "rgb" in self.wanted else []) + \
               ([lip_field.MouthRois()] if "lip" in self.wanted else []) + \
               ([segmentation_field.PersonMasks()] if "parsing" in self.wanted and segmentation_field.available()
                else []) + \
               [aligned_field.AlignedCrops(int(n[len("aligned"):])) for n in ALIGNED_FIELDS if n in self.wanted] + \
               [quality_field.QualityProbe()] + \
               self._dlib_makers()

    def _dlib_makers(self) -> list:
        """The model fields' makers (dlib, FAN); one whose model cannot load is left out and its field fails
        alone (ModelUnavailable: job level), the tracking pass and the other fields go on."""
        makers = []
        for name in (n for n in MODEL_CROP_FIELDS if n in self.wanted):
            try:
                makers.append(DLIB_FIELDS[name]() if name in DLIB_FIELDS else FAN_FIELDS[name](self.options))
            except ModelUnavailable as exc:
                self._errors[name] = exc
        return makers

    @cached_property
    def _video(self) -> tuple[Timeline | None, FaceTrack | None]:
        """The one pass over the video; a decode failure is kept and raised on every use."""
        r = self.row
        path, start, end = r["video_path"], r.get("start_s"), r.get("end_s")
        stream = VideoStream(path, start, end, pixels=self.needs_face())
        face = None
        try:
            if self.needs_face():
                try:
                    face = self._tracker().track(stream, self._makers(),
                                                 reopen=lambda: VideoStream(path, start, end))
                except MediaError:
                    raise
                except Exception as exc:  # no usable face: the audio fields still get their timeline
                    self._errors["face"] = exc
            else:
                for _ in stream:
                    pass
            timeline = stream.timeline or read_timeline(path, start, end)
        except MediaError as exc:
            self._errors["video"] = exc
            return None, None
        return timeline, face

    @property
    def timeline(self) -> Timeline:
        timeline, _ = self._video
        if timeline is None:
            raise self._errors["video"]
        return timeline

    @property
    def face(self) -> FaceTrack:
        timeline, face = self._video
        if timeline is None:
            raise self._errors["video"]
        if face is None:
            raise self._errors.get("face") or RuntimeError("the face was not tracked (no face field wanted)")
        return face

    @cached_property
    def _decoded_audio(self) -> tuple[np.ndarray, dict]:
        try:
            return load_audio(self.row["video_path"], self.row.get("audio_path"), self.timeline)
        except MediaError as exc:
            self._errors["audio"] = exc
            raise

    def facts(self) -> dict | None:
        """Source facts and decode figures for the meta field (None when the video was not read),
        with the quality figures: expected / decoded frames, audio coverage and `warnings`."""
        if "_video" not in self.__dict__ or self._video[0] is None:
            return None
        facts = dict(self.timeline.facts)
        if "_decoded_audio" not in self.__dict__ and "audio" not in self._errors:
            try:  # meta reports audio coverage even when no audio field was wanted
                self._decoded_audio
            except MediaError:
                pass
        if "_decoded_audio" in self.__dict__:
            facts.update(self._decoded_audio[1])
        warnings = quality_warnings(facts)
        if "audio" in self._errors:
            facts["audio_coverage"] = 0.0
            warnings.append(f"no audio: {self._errors['audio'].reason}")
        if self.__dict__.get("_video", (None, None))[1] is not None:
            missing = len(self._video[1].missing_frames)
            if missing:
                warnings.append(f"face: mesh missed {missing} of {facts['n_frames']} frames "
                                f"(interpolated or held)")
        facts["warnings"] = warnings
        return facts

    @cached_property
    def audio_bytes(self) -> bytes:
        return self.stored.get("audio") or audio_field.encode(self._decoded_audio[0])

    @cached_property
    def audio(self) -> np.ndarray:
        """The audio as stored (FLAC, 16 bit): the source of every audio feature."""
        return audio_field.decode(self.audio_bytes)

    @cached_property
    def landmarks_bytes(self) -> bytes:
        return self.stored.get("landmarks") or landmarks_field.encode(self.face.landmarks)

    @cached_property
    def landmarks(self) -> np.ndarray:
        """The landmarks as stored (float16 crop pixels), without a copy (read-only): parsing and
        tdmm only read them, widening a block at a time."""
        return landmarks_field.view(self.landmarks_bytes)

    def person_masks(self) -> np.ndarray:
        """The tracking pass's person masks (features/segmentation.py), one per landmarks frame.
        Never a silent mesh-only parsing: a selfie model that cannot load fails the job
        (SegmenterUnavailable), a failed pass or masks that do not fit the landmarks fail this
        utterance's parsing (PersonMaskError, with the reason)."""
        segmentation_field.segmenter()
        try:
            face = self.face
        except MediaError:
            raise
        except Exception as exc:
            raise segmentation_field.PersonMaskError(f"no person masks: the face pass failed: {exc}",
                                                     getattr(exc, "stage", "face")) from exc
        return segmentation_field.fitted(face.outputs.get("person"), face.landmarks, self.landmarks)

    def crops(self, name: str) -> bytes:
        """The bytes a crop maker made during the tracking pass (rgb, lip, landmarks68, ...)."""
        face = self.face
        if name in self._errors:  # its maker could not be set up (features.errors.ModelUnavailable)
            raise self._errors[name]
        return face.outputs[name]

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
          lambda s: s.crops("rgb"), rgb_field.decode),
    Field("landmarks", "landmarks.npy", 25, FACE_VERSION, "face",
          lambda s: s.landmarks_bytes, landmarks_field.decode),
    Field("mel", "mel.npy", 80, mel_field.VERSION, "feature",
          lambda s: encode_npy(mel_field.wav2lip_mel(s.audio).astype(np.float16)), decode_npy,
          needs=("audio",)),
    Field("parsing", "parsing.npy.gz", 25, parsing_field.VERSION, "feature",
          lambda s: parsing_field.encode(s.landmarks, s.person_masks()), parsing_field.decode,
          needs=("landmarks",)),
    Field("tdmm", "tdmm.npy", 25, tdmm_field.VERSION, "model",
          lambda s: tdmm_field.encode(s.landmarks, s.tdmm_model()), tdmm_field.decode,
          needs=("landmarks",)),
    Field("hubert", "hubert.npy", 50, "hubert-1", "model",
          lambda s: hubert_field.encode(hubert_field.hubert_features(
              s.audio, s.options.hubert_model, s.options.hubert_layer)),
          hubert_field.decode, needs=("audio",), gpu=True),
    Field("whisper", "whisper.npy", 50, whisper_field.VERSION, "model",
          lambda s: whisper_field.encode(whisper_field.whisper_features(
              s.audio, s.options.whisper_model, s.options.whisper_layer)),
          whisper_field.decode, needs=("audio",), gpu=True),
    Field("lip", "lip.jpgs", 25, f"{lip_field.VERSION}+{FACE_VERSION}", "face",
          lambda s: s.crops("lip"), lip_field.decode),
    Field("landmarks68", "landmarks68.npy", 25, f"{landmarks68_field.VERSION}+{FACE_VERSION}", "model",
          lambda s: s.crops("landmarks68"), landmarks68_field.decode),
    Field("landmarks68_fan", "landmarks68_fan.npy", 25, f"{landmarks_fan_field.VERSION}+{FACE_VERSION}", "model",
          lambda s: s.crops("landmarks68_fan"), landmarks68_field.decode),  # opt-in: needs --fan-weights
    Field("identity", "identity.json", 0, f"{identity_field.VERSION}+{FACE_VERSION}", "model",
          lambda s: s.crops("identity"), identity_field.decode),  # rate 0: one member per utterance
    *[Field(name, f"{name}.jpgs", 25, f"{aligned_field.VERSION}+{rgb_field.VERSION}+{FACE_VERSION}", "face",
            lambda s, name=name: s.crops(name), aligned_field.decode) for name in ALIGNED_FIELDS],
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
