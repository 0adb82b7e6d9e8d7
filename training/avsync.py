"""AV-SyncNet (SyncTalklip section 3.2), small: a shared transformer encoder over audio-only and
video-only frame tokens, the alignment head F and a lip-reading decoder.

    visual window (5 frames)  -> per-frame front (CNN on the mouth ROI) -+
                                                                          +-> shared encoder -> f^v (5, D)
    audio window (5 frames)   -> per-frame front (4 fbank rows stacked) -+                    f^a (5, D)
    theta = mean_t F(tau |f^a_t - f^v_t|);  p_sync = sigmoid(-theta)        (training/objectives.py)
    whole utterance's mouth ROIs -> the same encoder -> f^v (T, D) -> transformer decoder -> characters

The paper's encoder is a 24-block AV-HuBERT-large pretrained with Eq. 3 on LRS3 + VoxCeleb2 (out
of scope here); `PRESETS["paper"]` has its sizes (24 blocks, 1024 dims, FFN 4096, 16 heads) for a
GPU, `"tiny"` is the 2-CPU-core demo size. The encoder is shared by the two modalities (a learned
modality embedding tells them apart), as AV-HuBERT's is; the decoder reads f^v only (Eq. 4).

Inputs are the trainer's windows (training/windows.py layout after `Batch.to`):

| field | window input | front |
|---|---|---|
| lip | (B, 5, 96, 96) in [0, 1] | centre crop 88 (AV-HuBERT's), area-resized to the preset's `image` side (88 / 2 or 88 / 4: plain pooling), (x - 0.421) / 0.165, stride-2 conv stack, linear to D |
| rgb | (B, 15, 48, 96) lower halves, frames on channels | the same conv stack with 3 input channels (no crop) |
| landmarks | (B, 5, 1434) | per-frame MLP |
| fbank | (B, 20, 26): 4 rows per video frame | floored at the window's maximum - 20 (log units: digital silence is log eps), standardised (one mean / std over the window: relative loudness kept), 4 rows stacked per frame (AV-HuBERT's), linear to D |
| mel | (B, 1, 80, 16) | rows resampled to 4 per frame, then as fbank |
| hubert | (B, 10, D) | rows resampled to 4 per frame, then as fbank |

With `scoring="cosine"` (an expert trained with the conventional InfoNCE of the paper's
ablation) p_sync is (1 + mean_t cos(f^a_t, f^v_t)) / 2 instead of sigmoid(-theta).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from features.timebase import WINDOW
from training.combos import AVSYNC_COMBOS, parse_combo
from training.objectives import AlignmentHead, cosine_p_sync, window_theta

COMBOS = AVSYNC_COMBOS
ROWS_PER_FRAME = 4  # fbank's 100 Hz over 25 fps; other audio fields are resampled to it
AUDIO_DIMS = {"fbank": 26, "mel": 80, "hubert": 1024}
LIP_CROP, LIP_MEAN, LIP_STD = 88, 0.421, 0.165  # AV-HuBERT's mouth ROI crop and normalisation
SCORINGS = ("theta", "cosine")
FBANK_RANGE = 20.0  # natural-log units (~87 dB) kept below a window's loudest fbank energy

PRESETS = {
    "micro": {"dim": 32, "layers": 1, "heads": 2, "ffn": 64, "decoder_layers": 1, "image": 22,
              "channels": (8, 16)},  # tests
    "tiny": {"dim": 64, "layers": 2, "heads": 4, "ffn": 128, "decoder_layers": 1, "image": 44,
             "channels": (16, 32, 64)},
    "small": {"dim": 128, "layers": 4, "heads": 4, "ffn": 512, "decoder_layers": 2, "image": 44,
              "channels": (32, 64, 128)},
    "paper": {"dim": 1024, "layers": 24, "heads": 16, "ffn": 4096, "decoder_layers": 6, "image": 88,
              "channels": (64, 128, 256, 512)},
}


def sinusoids(n: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """(n, dim) sinusoidal position codes (Vaswani et al.): any length, nothing to learn."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


class ImageFront(nn.Module):
    """(B, T, C, H, W) frames -> (B, T, D): a stride-2 conv stack per frame, then a linear map."""

    def __init__(self, cin: int, channels: tuple[int, ...], image: int | None, dim: int, crop: int | None):
        super().__init__()
        self.image, self.crop, self.gray = image, crop, cin == 1
        layers, c = [], cin
        for cout in channels:
            layers += [nn.Conv2d(c, cout, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
            c = cout
        self.convs = nn.Sequential(*layers, nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten())
        self.proj = nn.Sequential(nn.Linear(4 * c, dim), nn.LayerNorm(dim))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        b, t = frames.shape[:2]
        x = frames.reshape(b * t, *frames.shape[2:]).float()
        if self.crop and x.shape[-1] > self.crop:
            top, left = (x.shape[-2] - self.crop) // 2, (x.shape[-1] - self.crop) // 2
            x = x[..., top:top + self.crop, left:left + self.crop]
        if self.image and x.shape[-1] != self.image:  # area resize first: less to normalise
            k = x.shape[-1] // self.image
            if k * self.image == x.shape[-1] and x.shape[-2] % k == 0:  # 88 -> 44 or 22: plain pooling
                x = F.avg_pool2d(x, k)
            else:
                x = F.adaptive_avg_pool2d(x, (self.image * x.shape[-2] // x.shape[-1], self.image))
        if self.gray:
            x = (x - LIP_MEAN) / LIP_STD
        return self.proj(self.convs(x)).reshape(b, t, -1)


class RowFront(nn.Module):
    """(B, T, F) per-frame rows (landmarks) -> (B, T, D)."""

    def __init__(self, rows: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(rows, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim), nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float())


class AudioFront(nn.Module):
    """(B, L, C) audio rows over T video frames -> (B, T, D): the window standardised, rows
    resampled to 4 per frame where needed, 4 rows stacked per frame, a linear map."""

    def __init__(self, cin: int, dim: int, log_floor: float | None = None):
        super().__init__()
        self.log_floor = log_floor
        self.proj = nn.Sequential(nn.Linear(ROWS_PER_FRAME * cin, dim), nn.GELU(), nn.Linear(dim, dim),
                                  nn.LayerNorm(dim))

    def forward(self, x: torch.Tensor, frames: int = WINDOW) -> torch.Tensor:
        x = x.float()
        if self.log_floor is not None:  # digital silence (log eps) would dominate the window's spread
            x = torch.maximum(x, x.amax(dim=(1, 2), keepdim=True) - self.log_floor)
        mean = x.mean(dim=(1, 2), keepdim=True)
        x = (x - mean) / torch.sqrt(x.var(dim=(1, 2), keepdim=True) + 1.0)
        rows = ROWS_PER_FRAME * frames
        if x.shape[1] != rows:
            x = F.interpolate(x.transpose(1, 2), size=rows, mode="linear", align_corners=False).transpose(1, 2)
        return self.proj(x.reshape(x.shape[0], frames, -1))


class AVSyncNet(nn.Module):
    """The expert; `forward(visual, audio)` is p_sync of window pairs, like UniSync's."""

    def __init__(self, combo: str = "fbank_lip", preset: str = "tiny", vocab: int = 0, tau: float = 5.0,
                 dropout: float = 0.1, scoring: str = "theta", visual_dim: int | None = None,
                 audio_dim: int | None = None, ctc: bool = False):
        super().__init__()
        if preset not in PRESETS:
            raise ValueError(f"preset {preset!r} unknown; known: {', '.join(PRESETS)}")
        if scoring not in SCORINGS:
            raise ValueError(f"scoring must be one of {SCORINGS}, got {scoring!r}")
        self.combo, self.preset, self.vocab, self.tau = combo, preset, int(vocab), float(tau)
        self.dropout, self.scoring, self.use_ctc = float(dropout), scoring, bool(ctc and vocab)
        self.audio, self.visual = parse_combo(combo, "avsync")
        self.audio_dim = int(audio_dim or AUDIO_DIMS[self.audio])
        self.visual_dim = visual_dim
        p = PRESETS[preset]
        d = self.dim = p["dim"]
        self.depth = p["layers"]  # encoder blocks (fit.py reports a model's depth)
        if self.visual == "landmarks":
            self.visual_dim = int(visual_dim or 478 * 3)
            self.visual_front: nn.Module = RowFront(self.visual_dim, d)
        else:
            lip = self.visual == "lip"
            self.visual_front = ImageFront(1 if lip else 3, p["channels"], p["image"], d, LIP_CROP if lip else None)
        self.audio_front = AudioFront(self.audio_dim, d, FBANK_RANGE if self.audio == "fbank" else None)
        self.modality = nn.Parameter(torch.randn(2, d) * 0.02)  # 0 audio, 1 video
        layer = nn.TransformerEncoderLayer(d, p["heads"], p["ffn"], dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, p["layers"], enable_nested_tensor=False)
        self.encoder_norm = nn.LayerNorm(d)
        self.head = AlignmentHead(d, tau)
        if self.vocab:
            self.token = nn.Embedding(self.vocab, d)
            dec = nn.TransformerDecoderLayer(d, p["heads"], p["ffn"], dropout, activation="gelu",
                                             batch_first=True, norm_first=True)
            self.decoder = nn.TransformerDecoder(dec, p["decoder_layers"])
            self.decoder_norm = nn.LayerNorm(d)
            self.out = nn.Linear(d, self.vocab)
            if self.use_ctc:  # the auxiliary CTC head on f^v (blank = pad id 0; fit.py --lip-ctc)
                self.ctc = nn.Linear(d, self.vocab)

    # -- settings -------------------------------------------------------------------------
    def config(self) -> dict:
        """What `AVSyncNet(**config)` needs (stored in checkpoints; `model` names the class)."""
        return {"model": "avsync", "combo": self.combo, "preset": self.preset, "vocab": self.vocab,
                "tau": self.tau, "dropout": self.dropout, "scoring": self.scoring,
                "visual_dim": self.visual_dim, "audio_dim": self.audio_dim, "ctc": self.use_ctc}

    # -- encoder --------------------------------------------------------------------------
    def encode(self, tokens: torch.Tensor, modality: int, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) front tokens -> (B, T, D) embeddings; `lengths` masks padded frames."""
        t = tokens.shape[1]
        x = tokens + self.modality[modality] + sinusoids(t, self.dim, tokens.device)
        pad = None
        if lengths is not None:
            pad = torch.arange(t, device=tokens.device)[None, :] >= lengths[:, None]
        return self.encoder_norm(self.encoder(x, src_key_padding_mask=pad))

    def visual_frames(self, visual: torch.Tensor) -> torch.Tensor:
        """A visual window in the trainer's layout -> (B, T, ...) per-frame inputs."""
        if self.visual == "rgb" and visual.dim() == 4:  # (B, 15, H, W): frames stacked on channels
            b, c, h, w = visual.shape
            return visual.reshape(b, c // 3, 3, h, w)
        if self.visual == "lip":
            return visual.unsqueeze(2)  # (B, T, 1, H, W)
        return visual

    def embed_visual(self, visual: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """f^v: (B, T, D) from a window (or, with `lengths`, whole padded utterances)."""
        return self.encode(self.visual_front(self.visual_frames(visual)), 1, lengths)

    def embed_audio(self, audio: torch.Tensor) -> torch.Tensor:
        """f^a: (B, T, D) from an audio window (T = 5 frames)."""
        if self.audio == "mel" and audio.dim() == 4:  # (B, 1, 80, 16) -> rows (B, 16, 80)
            audio = audio[:, 0].transpose(1, 2)
        return self.encode(self.audio_front(audio, WINDOW), 0)

    # -- sync -----------------------------------------------------------------------------
    def p_from_embeddings(self, fv: torch.Tensor, fa: torch.Tensor) -> torch.Tensor:
        if self.scoring == "cosine":
            return cosine_p_sync(fa, fv)
        return torch.sigmoid(-window_theta(self.head, fa, fv))

    def forward(self, visual: torch.Tensor, audio: torch.Tensor, lip: tuple | None = None,
                outputs: bool = False) -> torch.Tensor | dict:
        """p_sync (B,) of window pairs; with `outputs` a dict of f^v, f^a, theta, p and, given
        `lip` = (frames, lengths, tokens_in) of whole utterances, their decoder logits: the
        training step's one forward call (what DDP needs to see)."""
        fv, fa = self.embed_visual(visual), self.embed_audio(audio)
        if not outputs:
            return self.p_from_embeddings(fv, fa)
        th = window_theta(self.head, fa, fv)
        out = {"fv": fv, "fa": fa, "theta": th, "p": self.p_from_embeddings(fv, fa)}
        if lip is not None:
            frames, lengths, tokens_in = lip
            fl = self.embed_visual(self.lip_frames_input(frames), lengths)
            out["logits"] = self.lip_logits(fl, lengths, tokens_in)
            if self.use_ctc:
                out["ctc_logits"] = self.ctc(fl)
        return out

    def pair_matrix(self, fv: torch.Tensor, fa: torch.Tensor, chunk: int = 64) -> torch.Tensor:
        """P[n, m] = p_sync(visual window n, audio window m) from embeddings (N, T, D), (M, T, D)."""
        rows = []
        for i in range(0, len(fv), chunk):
            v = fv[i:i + chunk, None]  # (c, 1, T, D)
            rows.append(self.p_from_embeddings(v, fa[None]))
        return torch.cat(rows)

    # -- lip reading ----------------------------------------------------------------------
    def lip_frames_input(self, frames: torch.Tensor) -> torch.Tensor:
        """Stored uint8 mouth ROIs (B, T, H, W) -> the visual layout in [0, 1]."""
        return frames.float() / 255.0 if frames.dtype == torch.uint8 else frames

    def lip_logits(self, fv: torch.Tensor, lengths: torch.Tensor | None, tokens_in: torch.Tensor) -> torch.Tensor:
        """Teacher-forced decoder logits (B, S, V) over f^v (B, T, D) (Eq. 4's p(w_t | w_<t, f^v))."""
        if not self.vocab:
            raise ValueError("this AV-SyncNet has no lip-reading decoder (vocab 0)")
        s = tokens_in.shape[1]
        x = self.token(tokens_in) + sinusoids(s, self.dim, tokens_in.device)
        causal = torch.triu(torch.full((s, s), float("-inf"), device=x.device), diagonal=1)
        pad = None
        if lengths is not None:
            pad = torch.arange(fv.shape[1], device=fv.device)[None, :] >= lengths[:, None]
        h = self.decoder(x, fv, tgt_mask=causal, memory_key_padding_mask=pad)
        return self.out(self.decoder_norm(h))

    def read_lips(self, frames: torch.Tensor, lengths: torch.Tensor | None,
                  tokens_in: torch.Tensor) -> torch.Tensor:
        """Logits of whole utterances' mouth frames (B, T, H, W)."""
        fv = self.embed_visual(self.lip_frames_input(frames), lengths)
        return self.lip_logits(fv, lengths, tokens_in)

    @torch.no_grad()
    def greedy_decode(self, frames: torch.Tensor, lengths: torch.Tensor | None, max_len: int,
                      bos: int = 1, eos: int = 2) -> torch.Tensor:
        """(B, <= max_len) token ids, argmax at each step, stopping when every row said eos."""
        fv = self.embed_visual(self.lip_frames_input(frames), lengths)
        ids = torch.full((fv.shape[0], 1), bos, dtype=torch.long, device=fv.device)
        done = torch.zeros(fv.shape[0], dtype=torch.bool, device=fv.device)
        for _ in range(max_len):
            nxt = self.lip_logits(fv, lengths, ids)[:, -1].argmax(dim=-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            done |= nxt == eos
            if bool(done.all()):
                break
        return ids[:, 1:]


def build_avsync(config: dict) -> AVSyncNet:
    """An AVSyncNet from a checkpoint's `config` (its `model` key names the class)."""
    config = {k: v for k, v in config.items() if k != "model"}
    return AVSyncNet(**config)
