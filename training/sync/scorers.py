"""Sync scorers behind one registry: a SyncNet (published weights), any UniSync checkpoint and any
AV-SyncNet checkpoint (fit.py --model avsync).

    scorer = get_scorer("syncnet", "syncnet_v2.model")            # cached: one model per process
    scorer = get_scorer("unisync", "runs/mel_landmarks/best.pt")
    score = scorer.score_video("clip.mp4", protocol="mesh")   # -> scoring.SyncScore

A new scorer is one class (a `Scorer` with its facts as class attributes) and one row of
`SCORERS`; score.py's --scorer choices and weight options, the sync pass's `name:PATH` specs, the
plots' axis label and SyncLoss's experts all read the registry.

SyncNet follows syncnet_python's evaluate: windows t = 0 .. min_length - 6 with min_length =
min(video frames, floor(audio samples / 640)), 20 windows a batch, eval mode, BGR 0-255 crops
(N, 3, 5, 224, 224) and int16-scale MFCC windows (N, 1, 13, 20), L2 table over offsets -15..15.
UniSync embeds the windows of its combo's fields (the store's, or the same fields computed from a
video with the extraction code) and scores 1 - p_sync with the same rules; its visual input always
comes from our face track, so its protocol is `mesh`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import ClassVar, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from features.timebase import FPS, SAMPLES_PER_FRAME, WINDOW
from training.sync.audio import mfcc_window, syncnet_mfcc, syncnet_window_count
from training.sync.crops import PROTOCOLS, to_syncnet_input
from training.sync.scoring import VSHIFT, DistanceBand, SyncScore, cosine_rows, l2_rows, score_table


def file_digest(path: Path | str, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


class Scorer:
    """What every scorer states about itself (class attributes) and does (methods)."""

    name: ClassVar[str]  # registry key; every score row's `scorer`
    weights_flag: ClassVar[str]  # score.py's option that names its file
    weights_label: ClassVar[str]  # the file in a sync pass spec: NAME:LABEL
    weights_help: ClassVar[str]
    protocols: ClassVar[tuple[str, ...]]  # crop protocols score_video takes
    stored_input: ClassVar[str]  # what the sync pass feeds it: "utterance" (score_utterance of a
    # catalog.reader.Utterance of stored_fields()) or "frames" (score_arrays of pipeline crops
    # around the stored face track and the stored audio)
    distance_label: ClassVar[str]  # what its table holds (the plots' axis)
    saves_crops: ClassVar[bool] = False  # score_video takes save_crops
    note: ClassVar[str] = ""  # printed under score.py's summary

    model: nn.Module
    version: str

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"

    @staticmethod
    def load_model(path: Path | str, device: str = "cpu") -> nn.Module:
        """The expert network in eval mode (also SyncLoss's expert)."""
        raise NotImplementedError

    @staticmethod
    def p_sync(model: nn.Module, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(B,) differentiable probability that the windows are in sync (SyncLoss)."""
        raise NotImplementedError

    def stored_fields(self) -> list[str]:
        """Store fields the sync pass reads for this scorer."""
        raise NotImplementedError


class SyncNetScorer(Scorer):
    """syncnet_python's SyncNet with weights from a local file."""

    name = "syncnet"
    weights_flag = "--syncnet-weights"
    weights_label = "WEIGHTS"
    weights_help = "syncnet_v2.model (syncnet_python's published state dict; not downloadable here)"
    protocols = PROTOCOLS
    stored_input = "frames"
    distance_label = "mean distance"
    saves_crops = True
    note = ("LSE figures are comparable to published ones only with the published syncnet_v2.model "
            "weights and the same crop protocol")

    def __init__(self, weights: Path | str, device: str = "cpu", batch_size: int = 20,
                 vshift: int = VSHIFT, edges: str = "pad"):
        from training.sync.syncnet import VERSION

        self.device = torch.device(device)
        self.model = self.load_model(weights, self.device)
        self.version = f"{VERSION}+{file_digest(weights)}"
        self.batch_size, self.vshift, self.edges = batch_size, vshift, edges
        self._trunk: nn.Module | None = None  # the folded lip trunk, built on first use

    def embed_lip(self, video: torch.Tensor) -> torch.Tensor:
        """forward_lip for scoring, through the folded 2-d trunk (syncnet.folded_lip_trunk: same
        embeddings to ~2e-6, ~1.4x faster on a CPU)."""
        from training.sync.syncnet import fast_forward_lip, folded_lip_trunk

        if self._trunk is None:
            self._trunk = folded_lip_trunk(self.model)
        return fast_forward_lip(self.model, self._trunk, video)

    @staticmethod
    def load_model(path: Path | str, device: str = "cpu") -> nn.Module:
        from training.sync.syncnet import load_syncnet

        return load_syncnet(path, device)

    @staticmethod
    def p_sync(model: nn.Module, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """(1 + cos) / 2 of the embeddings: SyncNet was trained on L2 distances with a linear last
        layer, so its cosine spans [-1, 1]; this keeps a probability with gradient everywhere."""
        v, a = model.forward_lip(visual), model.forward_aud(audio)
        return (1 + F.cosine_similarity(v, a, dim=1, eps=1e-8)) / 2

    def stored_fields(self) -> list[str]:
        return ["audio", "landmarks", "meta"]

    @torch.no_grad()
    def score_arrays(self, crops: Iterable[np.ndarray], audio: np.ndarray) -> SyncScore:
        """Score 224 x 224 RGB crops (any iterable, consumed once) against int16-scale audio."""
        mfcc = syncnet_mfcc(audio)
        audio_frames = len(audio) // SAMPLES_PER_FRAME
        band = DistanceBand(l2_rows, self.vshift)
        for start, frames in self._batches(crops, audio_frames):
            k = frames.shape[1] - (WINDOW - 1)  # windows in this batch
            video = torch.from_numpy(frames).unfold(1, WINDOW, 1).permute(1, 0, 4, 2, 3)  # (k, 3, 5, H, W)
            cc = np.stack([mfcc_window(mfcc, t) for t in range(start, start + k)]).astype(np.float32)
            band.add(self.embed_lip(video.to(self.device)),
                     self.model.forward_aud(torch.from_numpy(cc).to(self.device)))
        return score_table(band.finish(), self.vshift, self.edges)

    def _batches(self, crops: Iterable[np.ndarray], audio_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first window, (3, k + 4, 224, 224) BGR float frames) for batches of k <= batch_size
        windows; window t is scored when frame t + 5 exists and t + 5 < audio frames, which is
        the reference's rule (t <= min_length - 6)."""
        extra = WINDOW - 1  # frames a batch of k windows needs beyond k
        buffer: list[np.ndarray] = []  # frames from index `first` on
        first, seen = 0, 0
        for crop in crops:
            if seen >= audio_frames:  # no window can use later frames: stop decoding
                break
            buffer.append(crop)
            seen += 1
            ready = syncnet_window_count(seen, audio_frames * SAMPLES_PER_FRAME) - first
            if ready >= self.batch_size:
                yield first, to_syncnet_input(np.stack(buffer[:self.batch_size + extra]))
                buffer = buffer[self.batch_size:]
                first += self.batch_size
        ready = syncnet_window_count(seen, audio_frames * SAMPLES_PER_FRAME) - first
        if ready > 0:
            yield first, to_syncnet_input(np.stack(buffer[:ready + extra]))

    def score_video(self, path: Path | str, protocol: str = "mesh", max_frames: int | None = None,
                    audio_path: Path | str | None = None, save_crops: Path | str | None = None) -> SyncScore:
        """`save_crops`: also write the 224 x 224 crops scored and the audio (lossless .mkv)."""
        from training.sync.video import CropWriter, iter_crops, read_audio_int16, tee_crops

        audio = read_audio_int16(path, audio_path, max_frames)
        crops = iter_crops(path, protocol, max_frames)
        if save_crops is not None:
            crops = tee_crops(crops, CropWriter(save_crops, audio))
        try:
            return self.score_arrays(crops, audio)
        finally:
            if save_crops is not None:
                crops.close()  # the scorer may stop early (audio ends): finish the file


class UniSyncScorer(Scorer):
    """A training/fit.py checkpoint scoring offsets -15..15 with 1 - p_sync."""

    name = "unisync"
    weights_flag = "--checkpoint"
    weights_label = "CHECKPOINT"
    weights_help = "a training/fit.py checkpoint (best.pt)"
    protocols = ("mesh",)  # its visual fields come from our face track
    stored_input = "utterance"
    distance_label = "mean 1 - p_sync"

    def __init__(self, checkpoint: Path | str, device: str = "cpu", batch_size: int = 256,
                 vshift: int = VSHIFT, edges: str = "pad"):
        from training.runtime import load_checkpoint

        self.device = torch.device(device)
        self.model, ckpt = load_checkpoint(checkpoint, map_location=str(self.device))
        self.check_model(checkpoint)
        self.model.to(self.device).eval()
        self.train_args = ckpt.get("args", {}) or {}
        self.combo = self.model.combo
        self.version = f"{self.combo}+{file_digest(checkpoint)}"
        self.batch_size, self.vshift, self.edges = batch_size, vshift, edges

    def check_model(self, checkpoint: Path | str) -> None:
        """An AV-SyncNet checkpoint scores with its own distance: it belongs to --scorer avsync."""
        if hasattr(self.model, "pair_matrix"):
            raise ValueError(f"{checkpoint}: an AV-SyncNet checkpoint (fit.py --model avsync): use "
                             "--scorer avsync")

    @staticmethod
    def load_model(path: Path | str, device: str = "cpu") -> nn.Module:
        from training.runtime import load_checkpoint

        model, _ = load_checkpoint(path, map_location=str(device))
        return model.to(device).eval()

    @staticmethod
    def p_sync(model: nn.Module, visual: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        """The model's own output: cosine of its ReLU embeddings, what it was trained on."""
        return model(visual, audio)

    def stored_fields(self) -> list[str]:
        from training.combos import combo_fields

        return list(combo_fields(self.combo))

    def model_input(self, utt):
        """A read utterance (catalog.reader.Utterance) as the model's windows want it: the
        trainer's Utterance with the per-field normalisation and image scale the checkpoint was
        trained with (training.data; its data arrays are shared, not copied)."""
        from dataclasses import fields

        from catalog.reader import Utterance as Read
        from training.data import Utterance, attach_norms

        if not isinstance(utt, Utterance):
            utt = Utterance(**{f.name: getattr(utt, f.name) for f in fields(Read)})
        if not utt.norm:
            attach_norms(utt, self.train_args.get("landmarks_center", True))
        utt.image_scale = self.train_args.get("image_scale", 1.0)
        return utt

    @torch.no_grad()
    def embeddings(self, utt) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows, D) visual and audio embeddings of every window of a read utterance."""
        from training.combos import parse_combo
        from training.windows import stack_windows

        audio, visual = parse_combo(self.combo)
        utt = self.model_input(utt)
        v_emb, a_emb = [], []
        for i in range(0, utt.n_windows, self.batch_size):
            starts = [(0, t) for t in range(i, min(utt.n_windows, i + self.batch_size))]
            v = stack_windows([utt], visual, starts).to(self.device)
            a = stack_windows([utt], audio, starts).to(self.device)
            v_emb.append(self.model.embed_visual(v).float().cpu())
            a_emb.append(self.model.embed_audio(a).float().cpu())
        return torch.cat(v_emb), torch.cat(a_emb)

    def score_utterance(self, utt) -> SyncScore:
        """Offset and confidence of one utterance from its stored (or computed) fields."""
        if utt.n_windows <= 0:
            raise ValueError(f"{utt.utt_id}: shorter than one {WINDOW}-frame window")
        v, a = self.embeddings(utt)
        band = DistanceBand(cosine_rows, self.vshift)
        band.add(v, a)
        return score_table(band.finish(), self.vshift, self.edges)

    def score_video(self, path: Path | str, protocol: str = "mesh", max_frames: int | None = None,
                    audio_path: Path | str | None = None) -> SyncScore:
        if protocol not in self.protocols:
            raise ValueError(f"the unisync scorer reads our face track's fields: protocol must be "
                             f"'mesh', got {protocol!r}")
        return self.score_utterance(video_utterance(path, self.combo, max_frames, audio_path))


class AVSyncScorer(UniSyncScorer):
    """A fit.py --model avsync checkpoint (SyncTalklip's AV-SyncNet) scoring offsets -15..15 with
    1 - p_sync, p_sync = sigmoid(-theta) of its per-frame embeddings (training/objectives.py)."""

    name = "avsync"
    weights_help = "a training/fit.py --model avsync checkpoint (best.pt)"
    distance_label = "mean 1 - p_sync (AV-SyncNet)"

    def check_model(self, checkpoint: Path | str) -> None:
        if not hasattr(self.model, "pair_matrix"):
            raise ValueError(f"{checkpoint}: a UniSync checkpoint, not AV-SyncNet: use --scorer unisync")

    def rows(self, video: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
        """1 - p_sync of each video window (N, T*D) against its audio neighbours (N, K, T*D)."""
        n, k = windows.shape[:2]
        t = WINDOW
        v = video.reshape(n, 1, t, -1).to(self.device)
        a = windows.reshape(n, k, t, -1).to(self.device)
        return (1.0 - self.model.p_from_embeddings(v, a)).float().cpu()

    @torch.no_grad()
    def score_utterance(self, utt) -> SyncScore:
        if utt.n_windows <= 0:
            raise ValueError(f"{utt.utt_id}: shorter than one {WINDOW}-frame window")
        v, a = self.embeddings(utt)  # (N, 5, D) per-frame embeddings of every window
        band = DistanceBand(self.rows, self.vshift)
        band.add(v.flatten(1), a.flatten(1))
        return score_table(band.finish(), self.vshift, self.edges)


# The registry: one row per scorer.
SCORERS: dict[str, type[Scorer]] = {
    "syncnet": SyncNetScorer,
    "unisync": UniSyncScorer,
    "avsync": AVSyncScorer,
}

_CACHE: dict[tuple, Scorer] = {}  # one model per process (score.py's tasks, the sync pass's shards)


def scorer_class(name: str) -> type[Scorer]:
    if name not in SCORERS:
        raise ValueError(f"unknown scorer {name!r}; known: {', '.join(SCORERS)}")
    return SCORERS[name]


def make_scorer(name: str, weights: Path | str | None, device: str = "cpu", **kw) -> Scorer:
    """A new scorer `name` loading `weights` (SyncNet weights or a UniSync checkpoint)."""
    cls = scorer_class(name)
    if not weights:
        raise ValueError(f"--scorer {name} needs {cls.weights_flag} PATH ({cls.weights_help})")
    return cls(weights, device, **kw)


def get_scorer(name: str, weights: Path | str | None, device: str = "cpu", **kw) -> Scorer:
    """make_scorer, cached by its arguments: each process loads a model once."""
    key = (name, str(Path(weights).resolve()) if weights else None, str(device), *sorted(kw.items()))
    if key not in _CACHE:
        _CACHE[key] = make_scorer(name, weights, device, **kw)
    return _CACHE[key]


def clear_cache() -> None:
    """Drop the cached models (before shipping a task, so no model travels with it)."""
    _CACHE.clear()


def spec_forms() -> str:
    """The `name:PATH` forms the sync pass takes, e.g. 'syncnet:WEIGHTS' or 'unisync:CHECKPOINT'."""
    return " or ".join(f"'{name}:{cls.weights_label}'" for name, cls in SCORERS.items())


def parse_spec(spec: str) -> tuple[str, str]:
    """'unisync:PATH' / 'syncnet:PATH' (any registered name) -> (name, absolute path)."""
    name, _, path = spec.partition(":")
    if name not in SCORERS or not path:
        raise ValueError(f"--scorer must be {spec_forms()}, got {spec!r}")
    return name, str(Path(path).resolve())


def video_utterance(path: Path | str, combo: str, max_frames: int | None = None,
                    audio_path: Path | str | None = None):
    """The combo's fields of a video, computed with the extraction code and passed through the
    store's codecs and reader (so they equal what extract.py would store and the sync pass would
    read), as a catalog.reader.Utterance (UniSyncScorer.model_input normalises it)."""
    from catalog.reader import Utterance, decode_member, frames_covered, length_of
    from features.fields import FIELDS, Sources
    from features.face import FaceTracker
    from training.combos import combo_fields

    fields = list(combo_fields(combo))
    row = {"video_path": str(path), "audio_path": str(audio_path) if audio_path else None,
           "start_s": None, "end_s": None if max_frames is None else max_frames / FPS}
    sources = Sources(row, FaceTracker, wanted=fields)  # one streaming pass over the video
    utt = Utterance(str(path), Path(path).stem, "video", "", "score", sources.timeline.n_frames)
    for name in fields:
        field = FIELDS[name]
        data = field.extract(sources)
        data = data if isinstance(data, bytes) else data[field.ext]
        value = decode_member(name, field.ext, data)
        utt.data[name] = value
        utt.n_frames = frames_covered(name, length_of(name, value), utt.n_frames)
    return utt
