"""Lip reading for AV-SyncNet (SyncTalklip Eq. 4): the tokenizer, transcript batches and CER.

    tok = CharTokenizer.from_texts(train_transcripts)     # characters by default; stored with the
    tok.to_json() / CharTokenizer.from_json(d)            # checkpoint as plain JSON (weights_only)
    stream = TranscriptStream.from_store(store, "lip", rank, world, batch_size=8, tokenizer=tok)
    batch = stream.next_batch()                           # whole utterances' mouth frames + ids
    report = lip_report(model, held_out_utts, tok)        # CER, vowel CER, majority baseline

Transcripts come from the catalog's `transcript` column (the synthetic corpus writes one per
utterance: the vowels its mouth shows, words separated by spaces; the folder and LRS adapters
read the corpus's own). Text is normalised (lower case, single spaces), as case is not visible.

L_lip needs the frames a transcript covers, so it is trained on whole utterances (at most
`max_frames`; longer ones and those without a transcript are left out of L_lip and counted),
drawn from the rank's train shards through the trainer's shard buffer (`data.ShardBuffer`), with
a seeded generator whose state is saved with the checkpoint, so resume is exact. With `augment`
(fit.py --lip-augment, the default) each drawn utterance's mouth ROIs are stretched, moved and
contrast-scaled by one random draw (`augment_frames`), for L_lip only.

CER = sum of character edit distances / sum of reference lengths. The vowel CER is the CER of
the vowel-only strings (a-e-i-o-u, spaces dropped): what a mouth shows of the synthetic speech.
The majority-class baseline predicts, for every held-out utterance, the train transcripts' most
frequent vowel repeated to the reference's length (a baseline that is even told the length).
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch

from features.codecs import decode_jpeg_sequence
from training.data import (ShardBuffer, StoreError, Utterance, rank_shards, read_catalog, rows_by_shard,
                           select_rows, shard_plan)

PAD, BOS, EOS, UNK = 0, 1, 2, 3
SPECIALS = ("<pad>", "<bos>", "<eos>", "<unk>")
VOWELS = "aeiou"
MAX_FRAMES = 250  # 10 s at 25 fps: longer utterances are left out of L_lip


def normalise_text(text: str | None) -> str:
    """Lower case, whitespace runs -> one space, trimmed."""
    return re.sub(r"\s+", " ", (text or "").lower()).strip()


@dataclass
class CharTokenizer:
    """Characters -> ids after the four specials (pad 0, bos 1, eos 2, unk 3)."""

    symbols: list[str]
    kind: str = "char"

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        chars = sorted({c for t in texts for c in normalise_text(t)})
        if not chars:
            raise ValueError("no transcript text to build a tokenizer from")
        return cls(chars)

    @property
    def size(self) -> int:
        return len(SPECIALS) + len(self.symbols)

    def encode(self, text: str) -> list[int]:
        index = {c: i + len(SPECIALS) for i, c in enumerate(self.symbols)}
        return [index.get(c, UNK) for c in normalise_text(text)]

    def decode(self, ids: Iterable[int]) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == EOS:
                break
            if i >= len(SPECIALS):
                out.append(self.symbols[i - len(SPECIALS)])
        return "".join(out)

    def to_json(self) -> dict:
        return {"kind": self.kind, "symbols": list(self.symbols), "specials": list(SPECIALS)}

    @classmethod
    def from_json(cls, d: dict) -> "CharTokenizer":
        if d.get("kind", "char") != "char" or list(d.get("specials", SPECIALS)) != list(SPECIALS):
            raise ValueError(f"not a character tokenizer of this version: {d}")
        return cls(list(d["symbols"]))


# ---------------------------------------------------------------------------------------------
# error rates
# ---------------------------------------------------------------------------------------------
def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance (substitutions, deletions, insertions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def cer(refs: Sequence[str], hyps: Sequence[str]) -> float:
    """Character error rate over a corpus: total edits / total reference characters."""
    total = sum(len(r) for r in refs)
    if total == 0:
        return float("nan")
    return sum(edit_distance(r, h) for r, h in zip(refs, hyps)) / total


def vowels_of(text: str) -> str:
    return "".join(c for c in normalise_text(text) if c in VOWELS)


def majority_vowel(texts: Iterable[str]) -> str:
    counts = Counter(c for t in texts for c in vowels_of(t))
    return counts.most_common(1)[0][0] if counts else VOWELS[0]


# ---------------------------------------------------------------------------------------------
# frames and batches
# ---------------------------------------------------------------------------------------------
def lip_frames(utt: Utterance, name: str = "lip", start: int = 0, n: int | None = None) -> np.ndarray:
    """(n, H, W) uint8 mouth ROIs of frames [start, start + n) (the whole utterance by default)."""
    if name != "lip":
        raise ValueError(f"lip reading reads the 'lip' field, not {name!r}")
    n = utt.n_frames - start if n is None else n
    return decode_jpeg_sequence(utt.data[name], start, start + n, gray=True)


@dataclass
class LipBatch:
    """Whole utterances: frames (B, T, H, W) uint8 zero-padded, lengths (B,), decoder input ids
    (bos + text) and target ids (text + eos), both (B, S) padded with PAD; with augmentation, one
    draw in [-1, 1] per utterance of (x scale, y scale, x shift, y shift, contrast) (B, 5)."""

    frames: torch.Tensor
    lengths: torch.Tensor
    tokens_in: torch.Tensor
    tokens_out: torch.Tensor
    augment: torch.Tensor | None = None

    def to(self, device: torch.device | str) -> "LipBatch":
        return LipBatch(*(None if x is None else x.to(device) for x in
                          (self.frames, self.lengths, self.tokens_in, self.tokens_out, self.augment)))


AUGMENT = (0.15, 0.15, 0.06, 0.06, 0.15)  # max |x scale - 1|, |y scale - 1|, shifts (of the side), contrast


def augment_frames(frames: torch.Tensor, draws: torch.Tensor, limits: tuple = AUGMENT) -> torch.Tensor:
    """Stored mouth ROIs (B, T, H, W) uint8 -> float [0, 1], each utterance stretched, moved and
    contrast-scaled by its own draw (the same for all its frames): speakers' mouths differ in size
    and place in the ROI, and a reader trained on few speakers should not learn theirs."""
    x = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    lim = torch.tensor(limits, dtype=x.dtype, device=x.device)
    d = draws.to(x.dtype) * lim
    b, t, h, w = x.shape
    theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / (1 + d[:, 0]), 1 / (1 + d[:, 1])
    theta[:, 0, 2], theta[:, 1, 2] = 2 * d[:, 2], 2 * d[:, 3]
    grid = torch.nn.functional.affine_grid(theta, (b, t, h, w), align_corners=False)
    y = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return ((y - 0.5) * (1 + d[:, 4])[:, None, None, None] + 0.5).clamp(0.0, 1.0)


def transcript_of(utt: Utterance) -> str:
    return normalise_text((utt.row or {}).get("transcript"))


def make_lip_batch(utts: Sequence[Utterance], tokenizer: CharTokenizer, name: str = "lip") -> LipBatch:
    frames = [lip_frames(u, name) for u in utts]
    ids = [tokenizer.encode(transcript_of(u)) for u in utts]
    b, t = len(utts), max(len(f) for f in frames)
    x = np.zeros((b, t, *frames[0].shape[1:]), np.uint8)
    for i, f in enumerate(frames):
        x[i, :len(f)] = f
    s = max(len(i) for i in ids) + 1
    tin = torch.full((b, s), PAD, dtype=torch.long)
    tout = torch.full((b, s), PAD, dtype=torch.long)
    for i, seq in enumerate(ids):
        tin[i, :len(seq) + 1] = torch.tensor([BOS, *seq])
        tout[i, :len(seq) + 1] = torch.tensor([*seq, EOS])
    return LipBatch(torch.from_numpy(x), torch.tensor([len(f) for f in frames]), tin, tout)


def usable_for_lip(row: dict, max_frames: int = MAX_FRAMES) -> bool:
    return bool(normalise_text(row.get("transcript"))) and int(row["n_frames"]) <= max_frames


def train_transcripts(store: Path | str) -> list[str]:
    """The train split's transcripts (the tokenizer's alphabet and the majority baseline)."""
    rows = read_catalog(store, [], extra=("transcript",))
    return [normalise_text(r.get("transcript")) for r in rows
            if r.get("split") == "train" and normalise_text(r.get("transcript"))]


class TranscriptStream:
    """Seeded batches of whole transcribed train utterances of one rank (L_lip's data)."""

    def __init__(self, store: str, visual: str, by_shard: dict, plan: dict, shards: list,
                 tokenizer: CharTokenizer, batch_size: int = 8, seed: int | list[int] = 0,
                 buffer_shards: int = 0, refresh_every: int = 200, skipped: int = 0, augment: bool = False):
        self.visual, self.tokenizer, self.batch_size, self.augment = visual, tokenizer, batch_size, augment
        self.refresh_every = max(1, refresh_every)
        self.buffer = ShardBuffer(store, [visual], by_shard, plan, shards, buffer_shards,
                                  seed=[*np.atleast_1d(seed).tolist(), 31])
        self.rng = np.random.default_rng([*np.atleast_1d(seed).tolist(), 37])
        self.batches = 0
        self.skipped = skipped  # train utterances left out of L_lip (no transcript, too long)

    @classmethod
    def from_store(cls, store: str, visual: str, rank: int, world: int, tokenizer: CharTokenizer,
                   batch_size: int = 8, seed: int = 0, max_frames: int = MAX_FRAMES,
                   buffer_shards: int = 0, refresh_every: int = 200, augment: bool = False) -> "TranscriptStream":
        all_rows = read_catalog(store, [visual], extra=("transcript",))
        rows = select_rows(all_rows, [visual], ["train"], store)
        usable = [r for r in rows if usable_for_lip(r, max_frames)]
        if not usable:
            raise StoreError(f"store {store}: no train utterance has a transcript and at most "
                             f"{max_frames} frames (L_lip needs them; pass --lambda-lip 0 without)")
        by_shard = rows_by_shard(usable)
        shards = rank_shards(sorted(by_shard), rank, world)
        return cls(str(store), visual, by_shard, shard_plan(all_rows), shards, tokenizer, batch_size,
                   [seed, rank], buffer_shards, refresh_every, skipped=len(rows) - len(usable), augment=augment)

    def next_batch(self) -> LipBatch:
        if self.buffer.streaming and self.batches and self.batches % self.refresh_every == 0:
            self.buffer.advance()
        utts = self.buffer.utterances
        pick = self.rng.integers(len(utts), size=self.batch_size)
        self.batches += 1
        batch = make_lip_batch([utts[i] for i in pick], self.tokenizer, self.visual)
        if self.augment:  # drawn here, from the saved generator: a resumed run draws the same
            batch.augment = torch.from_numpy(self.rng.uniform(-1, 1, (self.batch_size, len(AUGMENT))).astype(np.float32))
        return batch

    def describe(self) -> dict:
        return {"utterances": len(self.buffer.utterances), "skipped": self.skipped,
                "shards": len(self.buffer.shards)}

    def state(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "batches": self.batches, "buffer": self.buffer.state()}

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.batches = int(state["batches"])
        self.buffer.restore(state["buffer"])


# ---------------------------------------------------------------------------------------------
# evaluation
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def transcribe(model: torch.nn.Module, utts: Sequence[Utterance], tokenizer: CharTokenizer,
               device: torch.device | str = "cpu", batch_size: int = 8, max_len: int | None = None) -> list[str]:
    """Greedy decoding of each utterance's mouth frames (eval mode)."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, len(utts), batch_size):
        batch = make_lip_batch(utts[i:i + batch_size], tokenizer, model.visual).to(device)
        limit = max_len or int(batch.tokens_out.shape[1]) + 8
        ids = model.greedy_decode(batch.frames, batch.lengths, limit)
        out += [tokenizer.decode(row) for row in ids.tolist()]
    model.train(was)
    return out


def lip_report(model: torch.nn.Module, utts: Sequence[Utterance], tokenizer: CharTokenizer,
               train_texts: Sequence[str] = (), device: torch.device | str = "cpu",
               max_frames: int = MAX_FRAMES, examples: int = 3) -> dict:
    """CER and vowel CER of greedy transcriptions of the held-out `utts` that have a transcript,
    and the majority-vowel baseline (from `train_texts`, else from the references themselves)."""
    utts = [u for u in utts if transcript_of(u) and u.n_frames <= max_frames]
    if not utts:
        return {"n_utterances": 0}
    refs = [transcript_of(u) for u in utts]
    hyps = transcribe(model, utts, tokenizer, device)
    vowel_refs = [vowels_of(r) for r in refs]
    major = majority_vowel(train_texts or refs)
    return {"n_utterances": len(utts), "speakers": len({u.speaker_id for u in utts}),
            "cer": cer(refs, hyps), "vowel_cer": cer(vowel_refs, [vowels_of(h) for h in hyps]),
            "baseline_vowel_cer": cer(vowel_refs, [major * len(r) for r in vowel_refs]),
            "baseline": f"majority vowel {major!r} x reference length", "majority_vowel": major,
            "examples": [{"ref": r, "hyp": h} for r, h in list(zip(refs, hyps))[:examples]]}
