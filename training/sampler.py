"""Seeded window-pair sampling: positives, same-speaker negatives and cross-speaker negatives.

A pair is a visual window (utterance, start frame) and an audio window (utterance, start frame):

- 'pos':   the audio window of the same utterance at the same start frame (label 1);
- 'same':  the audio window of the same utterance shifted in time (label 0); half of them overlap
           the visual window (|shift| 2..4 frames, hard) and half do not (|shift| >= 5);
- 'cross': an audio window of an utterance of a DIFFERENT speaker (label 0). The paper adds these
           so the model cannot call a pair "in sync" just because voice and face are the same
           person's; their share of the negatives is `cross_speaker_ratio` (0.2 by default).

Everything comes from one numpy Generator, so a seed fixes the whole sequence of batches (the
evaluation set is simply the first n pairs of a sampler with a fixed seed), and the generator's
state is the sampler's position: `state()` / `set_state()` make a resumed run draw exactly the
pairs the uninterrupted run would have drawn. Speaker ids are the catalog's (`speaker_id`), so a
cross-speaker negative's audio really is another speaker's.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from training.data import Utterance

KINDS = ("pos", "same", "cross")
OVERLAP_SHIFTS = (2, 3, 4)  # a shift of 1 frame is too close to sync to call it a negative
FAR_SHIFT = 5  # >= one whole window: no frame in common


@dataclass(frozen=True)
class Pair:
    """Indices into the visual and audio utterance lists, window starts, label and kind."""

    v_utt: int
    v_t: int
    a_utt: int  # index into the sampler's audio pool
    a_t: int
    label: int  # 1 in sync, 0 not
    kind: str  # 'pos' | 'same' | 'cross'

    @property
    def shift(self) -> int | None:
        """Audio start minus visual start in frames (None across utterances)."""
        return None if self.kind == "cross" else self.a_t - self.v_t


class PairSampler:
    """Draws pairs i.i.d. with P(pos) = pos_ratio and P(cross | neg) = cross_speaker_ratio.

    `audio_pool` is where cross-speaker audio comes from (default: `utterances` themselves); the
    visual utterance of a same-utterance pair is used for its audio too, and the pool must then
    start with `utterances` so indices agree (pass `utterances + others`). A held-out split of a
    single speaker needs another split's audio for its cross-speaker negatives.
    """

    def __init__(self, utterances: Sequence[Utterance], seed: int | Sequence[int] = 0,
                 cross_speaker_ratio: float = 0.2, pos_ratio: float = 0.5,
                 audio_pool: Sequence[Utterance] | None = None,
                 rng: np.random.Generator | None = None):
        """`seed` seeds a fresh generator; `rng` (shared, e.g. across a shard-buffer refresh)
        is used as is instead."""
        pool = list(audio_pool) if audio_pool is not None else list(utterances)
        if any(pool[i] is not u for i, u in enumerate(utterances)):
            raise ValueError("audio_pool must start with the visual utterances, in order")
        self.utts, self.pool = list(utterances), pool
        self.cross_ratio, self.pos_ratio = float(cross_speaker_ratio), float(pos_ratio)
        self.rng = rng if rng is not None else np.random.default_rng(seed)
        self.drawn = 0  # pairs drawn so far
        windows = np.array([u.n_windows for u in self.utts])
        if windows.sum() == 0:
            raise ValueError("no utterance has a full 5-frame window")
        # cross-speaker audio: uniform over the pool's utterances of any other speaker, drawn by
        # rejection (O(1) memory per utterance, whatever the number of speakers)
        codes = {s: i for i, s in enumerate(sorted({u.speaker_id for u in pool}))}
        self.pool_valid = np.array([i for i, u in enumerate(pool) if u.n_windows > 0])
        self.pool_speaker = np.array([codes[pool[i].speaker_id] for i in self.pool_valid])
        self.speaker = [codes[u.speaker_id] for u in self.utts]
        if self.cross_ratio > 0 and len(set(self.pool_speaker.tolist())) < 2:
            raise ValueError("cross-speaker negatives need utterances of at least two speakers "
                             "(pass an audio_pool with other speakers, or cross_speaker_ratio=0)")
        # utterances long enough for an overlapping (False) / a far (True) shift
        self.can_shift = {False: windows > OVERLAP_SHIFTS[0], True: windows > FAR_SHIFT}
        if not self.can_shift[False].any() and self.cross_ratio < 1:
            raise ValueError("same-speaker negatives need an utterance of at least 7 frames")
        # cumulative window counts: a uniform visual window is one searchsorted away
        self.cdf = {None: np.cumsum(windows)}
        for far, ok in self.can_shift.items():
            self.cdf[far] = np.cumsum(windows * ok)

    def _visual(self, far: bool | None = None) -> tuple[int, int]:
        """A uniform visual window (of utterances long enough for the shift kind `far`)."""
        cdf = self.cdf[far]
        i = min(int(np.searchsorted(cdf, self.rng.random() * cdf[-1], side="right")), len(cdf) - 1)
        return i, int(self.rng.integers(self.utts[i].n_windows))

    def _same(self) -> Pair:
        far = bool(self.rng.random() < 0.5) and bool(self.can_shift[True].any())
        for _ in range(1000):
            i, t = self._visual(far)
            starts = np.arange(self.utts[i].n_windows)
            dist = np.abs(starts - t)
            ok = dist >= FAR_SHIFT if far else (dist >= OVERLAP_SHIFTS[0]) & (dist <= OVERLAP_SHIFTS[-1])
            if ok.any():
                cands = starts[ok]
                return Pair(i, t, i, int(cands[self.rng.integers(len(cands))]), 0, "same")
        raise RuntimeError("could not draw a same-speaker negative")

    def _cross(self) -> Pair:
        i, t = self._visual()
        while True:
            k = int(self.rng.integers(len(self.pool_valid)))
            if self.pool_speaker[k] != self.speaker[i]:
                break
        j = int(self.pool_valid[k])
        return Pair(i, t, j, int(self.rng.integers(self.pool[j].n_windows)), 0, "cross")

    def draw(self) -> Pair:
        if self.rng.random() < self.pos_ratio:
            i, t = self._visual()
            return Pair(i, t, i, t, 1, "pos")
        if self.rng.random() < self.cross_ratio:
            return self._cross()
        return self._same()

    def sample(self, n: int) -> list[Pair]:
        """The next n pairs of this sampler's seeded sequence."""
        self.drawn += n
        return [self.draw() for _ in range(n)]

    def state(self) -> dict:
        """The sampler's position: its generator state and the pairs drawn so far."""
        return {"rng": self.rng.bit_generator.state, "drawn": self.drawn}

    def set_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.drawn = int(state["drawn"])
