"""fit.py --model avsync: what AV-SyncNet adds to the trainer's loop (SyncTalklip Eq. 6).

    python training/fit.py --model avsync --combo fbank_lip --store S --out D --preset tiny
    python training/fit.py --model avsync --combo fbank_lip ... --lambda-lip 0        # L_av only
    python training/fit.py --model avsync --combo fbank_lip ... --lambda-av 0         # L_lip only
    python training/fit.py --model avsync --combo fbank_lip ... --contrastive infonce # InfoNCE + L_lip

Everything else is fit.py's: the same pair loader and sampler feed L_av (positives, same-speaker
shifted and cross-speaker negatives), the same DDP, resume, held-out pairs and both offset
protocols; p_sync = sigmoid(-theta) plugs into evaluate.py as UniSync's cosine does. What is
added per step is one batch of whole transcribed train utterances (`lipread.TranscriptStream`)
for L_lip, decoded by the same forward call (DDP sees one forward), and at the end the CER of
greedy transcriptions of the held-out speakers (`lipread.lip_report`). The character tokenizer
(built from the train transcripts) is stored in every checkpoint as JSON, and the lip stream's
position of every rank, so --resume is exact.
"""
from __future__ import annotations

import torch

from training.avsync import AVSyncNet
from training.combos import parse_combo
from training.data import StoreError, Utterance
from training.lipread import (EOS, PAD, CharTokenizer, LipBatch, TranscriptStream, augment_frames, lip_report,
                              train_transcripts)
from training.objectives import eq6, l_av, l_ctc, l_infonce, l_lip

CONTRASTIVE = ("theta", "infonce")


class AVSyncExpert:
    """AV-SyncNet, its tokenizer and L_lip's data stream for one rank; `loss` is Eq. 6."""

    def __init__(self, model: AVSyncNet, tokenizer: CharTokenizer | None, stream: TranscriptStream | None,
                 lambda_av: float = 1.0, lambda_lip: float = 1.0, contrastive: str = "theta",
                 temperature: float = 0.1, train_texts: list[str] | None = None, ctc: float = 0.0):
        if contrastive not in CONTRASTIVE:
            raise ValueError(f"contrastive must be one of {CONTRASTIVE}, got {contrastive!r}")
        self.model, self.tokenizer, self.stream = model, tokenizer, stream
        self.lambda_av, self.lambda_lip = float(lambda_av), float(lambda_lip)
        self.contrastive, self.temperature = contrastive, float(temperature)
        self.train_texts, self.ctc = train_texts or [], float(ctc)
        self.terms: dict[str, list[float]] = {"l_av": [], "l_lip": [], "l_ctc": []}

    @classmethod
    def from_config(cls, cfg, rank: int, world: int, first: Utterance,
                    visual_dim: int | None = None, audio_dim: int | None = None) -> "AVSyncExpert":
        """The model, tokenizer and lip stream fit.py's settings describe (training/config.py)."""
        audio, visual = parse_combo(cfg.combo, "avsync")
        texts = train_transcripts(cfg.store)
        tokenizer = CharTokenizer.from_texts(texts) if texts else None
        if cfg.lambda_lip > 0 and tokenizer is None:
            raise StoreError(f"store {cfg.store}: no train utterance has a transcript; L_lip needs them "
                             "(pass --lambda-lip 0 to train L_av alone)")
        if cfg.lambda_lip > 0 and visual != "lip":
            raise ValueError(f"L_lip reads mouth ROIs (the lip field); --combo {cfg.combo} has {visual}: "
                             "pass --lambda-lip 0")
        model = AVSyncNet(cfg.combo, cfg.preset, tokenizer.size if tokenizer and visual == "lip" else 0,
                          cfg.tau, scoring="cosine" if cfg.contrastive == "infonce" else "theta",
                          visual_dim=visual_dim, audio_dim=audio_dim, ctc=cfg.lip_ctc > 0)
        stream = None
        if cfg.lambda_lip > 0:
            stream = TranscriptStream.from_store(cfg.store, visual, rank, world, tokenizer, cfg.lip_batch,
                                                 cfg.seed, cfg.lip_max_frames, cfg.buffer_shards,
                                                 cfg.refresh_every, cfg.lip_augment)
        return cls(model, tokenizer, stream, cfg.lambda_av, cfg.lambda_lip, cfg.contrastive,
                   cfg.infonce_temperature, texts, cfg.lip_ctc)

    # -- the step -------------------------------------------------------------------------
    def loss(self, model: torch.nn.Module, batch, device: torch.device) -> torch.Tensor:
        """Eq. 6 on one pair batch (L_av, or InfoNCE over its positives) and one lip batch."""
        lip: LipBatch | None = self.stream.next_batch().to(device) if self.stream else None
        frames = None
        if lip is not None:
            frames = lip.frames if lip.augment is None else augment_frames(lip.frames, lip.augment)
        out = model(batch.visual, batch.audio, outputs=True,
                    lip=None if lip is None else (frames, lip.lengths, lip.tokens_in))
        if self.contrastive == "infonce":
            pos = batch.label > 0.5
            sync = l_infonce(out["fa"][pos].flatten(0, 1), out["fv"][pos].flatten(0, 1), self.temperature)
        else:
            sync = l_av(out["theta"].float(), batch.label)
        lip_loss = l_lip(out["logits"], lip.tokens_out) if lip is not None else torch.zeros((), device=device)
        self.terms["l_av"].append(float(sync.detach()))
        self.terms["l_lip"].append(float(lip_loss.detach()))
        if lip is not None and self.ctc:  # hybrid CTC / attention: the reader's L_lip gets a CTC term
            ctc = l_ctc(out["ctc_logits"], lip.lengths, lip.tokens_out.masked_fill(lip.tokens_out == EOS, PAD))
            self.terms["l_ctc"].append(float(ctc.detach()))
            lip_loss = lip_loss + self.ctc * ctc
        return eq6(sync, lip_loss, self.lambda_av, self.lambda_lip)

    def log_terms(self) -> dict:
        """Mean of each term since the last call (fit.py's metrics lines)."""
        out = {k: round(sum(v) / len(v), 5) for k, v in self.terms.items() if v}
        self.terms = {k: [] for k in self.terms}
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def extra(self) -> dict:
        """What every checkpoint carries besides fit.py's own keys (JSON only)."""
        return {"tokenizer": self.tokenizer.to_json() if self.tokenizer else None,
                "objective": {"lambda_av": self.lambda_av, "lambda_lip": self.lambda_lip,
                              "contrastive": self.contrastive, "temperature": self.temperature,
                              "lip_ctc": self.ctc}}

    def stream_state(self) -> dict | None:
        return self.stream.state() if self.stream else None

    def restore(self, ckpt: dict, rank: int) -> None:
        states = ckpt.get("lip_states") or []
        if self.stream and rank < len(states) and states[rank] is not None:
            self.stream.restore(states[rank])

    def describe(self) -> dict:
        return {"preset": self.model.preset, "vocab": self.model.vocab, "lambda_av": self.lambda_av,
                "lambda_lip": self.lambda_lip, "contrastive": self.contrastive, "lip_ctc": self.ctc,
                **({"lip_stream": self.stream.describe()} if self.stream else {})}

    # -- the final report -----------------------------------------------------------------
    def report(self, model: AVSyncNet, utts: list[Utterance], device: torch.device) -> dict:
        """Lip reading on a held-out split: CER, vowel CER and the majority baseline."""
        if not self.tokenizer or not model.vocab:
            return {}
        return {"lip_reading": lip_report(model, utts, self.tokenizer, self.train_texts, device)}


def tokenizer_of(ckpt: dict) -> CharTokenizer | None:
    """The tokenizer a checkpoint of fit.py --model avsync stored (None without one)."""
    data = ckpt.get("tokenizer")
    return CharTokenizer.from_json(data) if data else None
