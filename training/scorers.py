"""Sync scorers with one interface: a SyncNet (published weights) and any UniSync checkpoint.

    scorer = make_scorer("syncnet", syncnet_weights="syncnet_v2.model")
    scorer = make_scorer("unisync", checkpoint="runs/mel_landmarks/best.pt")
    score = scorer.score_video("clip.mp4", protocol="pipeline")   # -> sync_scoring.SyncScore

SyncNet follows syncnet_python's evaluate: windows t = 0 .. min_length - 6 with min_length =
min(video frames, floor(audio samples / 640)), 20 windows a batch, eval mode, BGR 0-255 crops
(N, 3, 5, 224, 224) and int16-scale MFCC windows (N, 1, 13, 20), L2 table over offsets -15..15.
UniSync embeds the windows of its combo's fields (the store's, or the same fields computed from a
video with the extraction code) and scores 1 - p_sync with the same rules; its visual input always
comes from our face track, so its protocol is `pipeline`.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from features.sync_audio import (SAMPLE_RATE, mfcc_window, syncnet_mfcc, syncnet_window_count)
from features.sync_crops import to_syncnet_input
from training.sync_scoring import VSHIFT, DistanceBand, SyncScore, cosine_rows, l2_rows, score_table

SCORERS = ("syncnet", "unisync")
SAMPLES_PER_FRAME = SAMPLE_RATE // 25


def file_digest(path: Path | str, n: int = 12) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:n]


class SyncNetScorer:
    """syncnet_python's SyncNet with weights from a local file."""

    name = "syncnet"

    def __init__(self, weights: Path | str, device: str = "cpu", batch_size: int = 20,
                 vshift: int = VSHIFT, edges: str = "pad"):
        from training.syncnet import VERSION, load_syncnet

        self.device = torch.device(device)
        self.model = load_syncnet(weights, self.device)
        self.version = f"{VERSION}+{file_digest(weights)}"
        self.batch_size, self.vshift, self.edges = batch_size, vshift, edges

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"

    @torch.no_grad()
    def score_arrays(self, crops: Iterable[np.ndarray], audio: np.ndarray) -> SyncScore:
        """Score 224 x 224 RGB crops (any iterable, consumed once) against int16-scale audio."""
        mfcc = syncnet_mfcc(audio)
        audio_frames = len(audio) // SAMPLES_PER_FRAME
        band = DistanceBand(l2_rows, self.vshift)
        for start, frames in self._batches(crops, audio_frames):
            k = frames.shape[1] - 4  # windows in this batch
            video = torch.from_numpy(frames).unfold(1, 5, 1).permute(1, 0, 4, 2, 3)  # (k, 3, 5, H, W)
            cc = np.stack([mfcc_window(mfcc, t) for t in range(start, start + k)]).astype(np.float32)
            band.add(self.model.forward_lip(video.contiguous().to(self.device)),
                     self.model.forward_aud(torch.from_numpy(cc).to(self.device)))
        return score_table(band.finish(), self.vshift, self.edges)

    def _batches(self, crops: Iterable[np.ndarray], audio_frames: int) -> Iterator[tuple[int, np.ndarray]]:
        """(first window, (3, k + 4, 224, 224) BGR float frames) for batches of k <= batch_size
        windows; window t is scored when frame t + 5 exists and t + 5 < audio frames, which is
        the reference's rule (t <= min_length - 6)."""
        buffer: list[np.ndarray] = []  # frames from index `first` on
        first, seen = 0, 0
        for crop in crops:
            if seen >= audio_frames:  # no window can use later frames: stop decoding
                break
            buffer.append(crop)
            seen += 1
            ready = syncnet_window_count(seen, audio_frames * SAMPLES_PER_FRAME) - first
            if ready >= self.batch_size:
                yield first, to_syncnet_input(np.stack(buffer[:self.batch_size + 4]))
                buffer = buffer[self.batch_size:]
                first += self.batch_size
        ready = syncnet_window_count(seen, audio_frames * SAMPLES_PER_FRAME) - first
        if ready > 0:
            yield first, to_syncnet_input(np.stack(buffer[:ready + 4]))

    def score_video(self, path: Path | str, protocol: str = "pipeline", max_frames: int | None = None,
                    audio_path: Path | str | None = None, save_crops: Path | str | None = None) -> SyncScore:
        """`save_crops`: also write the 224 x 224 crops scored and the audio (lossless .mkv)."""
        from features.sync_video import CropWriter, iter_crops, read_audio_int16, tee_crops

        audio = read_audio_int16(path, audio_path, max_frames)
        crops = iter_crops(path, protocol, max_frames)
        if save_crops is not None:
            crops = tee_crops(crops, CropWriter(save_crops, audio))
        try:
            return self.score_arrays(crops, audio)
        finally:
            if save_crops is not None:
                crops.close()  # the scorer may stop early (audio ends): finish the file


class UniSyncScorer:
    """A training/fit.py checkpoint scoring offsets -15..15 with 1 - p_sync."""

    name = "unisync"

    def __init__(self, checkpoint: Path | str, device: str = "cpu", batch_size: int = 256,
                 vshift: int = VSHIFT, edges: str = "pad"):
        from training.runtime import load_checkpoint

        self.device = torch.device(device)
        self.model, ckpt = load_checkpoint(checkpoint, map_location=str(self.device))
        self.model.to(self.device).eval()
        self.train_args = ckpt.get("args", {}) or {}
        self.combo = self.model.combo
        self.version = f"{self.combo}+{file_digest(checkpoint)}"
        self.batch_size, self.vshift, self.edges = batch_size, vshift, edges

    @property
    def id(self) -> str:
        return f"{self.name}:{self.version}"

    @torch.no_grad()
    def embeddings(self, utt) -> tuple[torch.Tensor, torch.Tensor]:
        """(windows, D) visual and audio embeddings of every window of a training.data.Utterance."""
        from training.combos import parse_combo
        from training.windows import stack_windows

        audio, visual = parse_combo(self.combo)
        utt.image_scale = self.train_args.get("image_scale", 1.0)
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
            raise ValueError(f"{utt.utt_id}: shorter than one 5-frame window")
        v, a = self.embeddings(utt)
        band = DistanceBand(cosine_rows, self.vshift)
        band.add(v, a)
        return score_table(band.finish(), self.vshift, self.edges)

    def score_video(self, path: Path | str, protocol: str = "pipeline", max_frames: int | None = None,
                    audio_path: Path | str | None = None) -> SyncScore:
        if protocol != "pipeline":
            raise ValueError(f"the unisync scorer reads our face track's fields: protocol must be "
                             f"'pipeline', got {protocol!r}")
        return self.score_utterance(video_utterance(path, self.combo, self.train_args, max_frames,
                                                    audio_path))


def video_utterance(path: Path | str, combo: str, train_args: dict, max_frames: int | None = None,
                    audio_path: Path | str | None = None):
    """The combo's fields of a video, computed with the extraction code and passed through the
    store's codecs (so they equal what extract.py would store), as a training Utterance."""
    from features.fields import FIELDS, Sources
    from features.face import FaceTracker
    from training.combos import combo_fields
    from training.data import Utterance, decode_member, frames_covered, norm_of, _length

    fields = list(combo_fields(combo))
    row = {"video_path": str(path), "audio_path": str(audio_path) if audio_path else None,
           "start_s": None, "end_s": None if max_frames is None else max_frames / 25}
    sources = Sources(row, FaceTracker, wanted=fields)  # one streaming pass over the video
    utt = Utterance(str(path), Path(path).stem, "video", "", "score", sources.timeline.n_frames)
    for name in fields:
        field = FIELDS[name]
        data = field.extract(sources)
        data = data if isinstance(data, bytes) else data[field.ext]
        value = decode_member(name, field.ext, data)
        utt.data[name] = value
        norm = norm_of(name, value, train_args.get("landmarks_center", True))
        if norm is not None:
            utt.norm[name] = norm
        utt.n_frames = frames_covered(name, _length(name, value), utt.n_frames)
    return utt


def make_scorer(name: str, syncnet_weights: Path | str | None = None,
                checkpoint: Path | str | None = None, device: str = "cpu", **kw):
    if name == "syncnet":
        if not syncnet_weights:
            raise ValueError("--scorer syncnet needs --syncnet-weights PATH (syncnet_v2.model)")
        return SyncNetScorer(syncnet_weights, device, **kw)
    if name == "unisync":
        if not checkpoint:
            raise ValueError("--scorer unisync needs --checkpoint PATH (a training/fit.py checkpoint)")
        return UniSyncScorer(checkpoint, device, **kw)
    raise ValueError(f"unknown scorer {name!r}; known: {SCORERS}")
