"""Evaluation, both DESIGN.md protocols, on a split the model never trained on.

1. Balanced binary accuracy at threshold 0.5 over a fixed, seeded set of pairs drawn exactly as
   in training (`PairSampler`): (TPR + TNR) / 2, so the 50/50 pos/neg draw does not matter, plus
   accuracy per kind (pos, same, cross, and same split into overlapping / far shifts).
2. Offset detection: for a visual window, score audio offsets -15..+15 frames of the same
   utterance; correct if the best-scoring offset is within 1 frame of 0.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from training.combos import parse_combo
from training.data import Utterance
from training.sampler import FAR_SHIFT, KINDS, Pair, PairSampler
from training.windows import make_batch

EVAL_SEED = 1234  # a fixed set of pairs, whatever the training seed


@dataclass
class EvalSet:
    """A fixed set of pairs of one split, with where its visual and audio windows come from."""

    utts: list[Utterance]
    pool: list[Utterance]
    pairs: list[Pair]


def eval_set(utts: Sequence[Utterance], n_pairs: int = 1000, seed: int = EVAL_SEED,
             cross_speaker_ratio: float = 0.2, others: Sequence[Utterance] = ()) -> EvalSet:
    """The first `n_pairs` pairs of a sampler seeded with `seed`.

    Cross-speaker audio comes from `utts` and, when given, `others` (e.g. another held-out split:
    a split of one speaker has no other speaker of its own).
    """
    utts = list(utts)
    pool = utts + [u for u in others if all(u is not v for v in utts)]
    sampler = PairSampler(utts, seed, cross_speaker_ratio, audio_pool=pool)
    return EvalSet(utts, pool, sampler.sample(n_pairs))


@torch.no_grad()
def predict(model: torch.nn.Module, pairs: Sequence[Pair], utts: Sequence[Utterance],
            pool: Sequence[Utterance], batch_size: int = 256,
            device: torch.device | str = "cpu") -> np.ndarray:
    """p_sync of every pair, in eval mode (BatchNorm uses its running statistics)."""
    audio, visual = parse_combo(model.combo)
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(pairs), batch_size):
        batch = make_batch(pairs[i:i + batch_size], utts, pool, audio, visual).to(device)
        out.append(model(batch.visual, batch.audio).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def accuracy_report(p: np.ndarray, pairs: Sequence[Pair], threshold: float = 0.5) -> dict:
    """Balanced accuracy, plain accuracy, accuracy and mean p per kind."""
    labels = np.array([q.label for q in pairs])
    kinds = np.array([q.kind for q in pairs])
    shifts = np.array([abs(q.shift) if q.shift is not None else -1 for q in pairs])
    correct = (p >= threshold) == (labels == 1)
    groups = {k: kinds == k for k in KINDS}
    groups["same_overlap"] = (kinds == "same") & (shifts < FAR_SHIFT)
    groups["same_far"] = (kinds == "same") & (shifts >= FAR_SHIFT)
    tpr = correct[labels == 1].mean() if (labels == 1).any() else float("nan")
    tnr = correct[labels == 0].mean() if (labels == 0).any() else float("nan")
    return {
        "balanced_accuracy": float((tpr + tnr) / 2),
        "accuracy": float(correct.mean()),
        "n_pairs": int(len(pairs)),
        "per_type": {k: float(correct[m].mean()) for k, m in groups.items() if m.any()},
        "mean_p": {k: float(p[m].mean()) for k, m in groups.items() if m.any()},
    }


def evaluate(model: torch.nn.Module, data: EvalSet, batch_size: int = 256,
             device: torch.device | str = "cpu", threshold: float = 0.5) -> dict:
    """Protocol 1 on a fixed `EvalSet`."""
    p = predict(model, data.pairs, data.utts, data.pool, batch_size, device)
    return accuracy_report(p, data.pairs, threshold)


@torch.no_grad()
def offset_accuracy(model: torch.nn.Module, utts: Sequence[Utterance], n_windows: int = 200,
                    max_offset: int = 15, tolerance: int = 1, seed: int = EVAL_SEED,
                    device: torch.device | str = "cpu") -> dict:
    """Protocol 2: share of visual windows whose best audio offset is within `tolerance` of 0.

    Only windows with every offset in [-max_offset, max_offset] inside the utterance are used.
    """
    rng = np.random.default_rng(seed)
    utts = list(utts)
    usable = [i for i, u in enumerate(utts) if u.n_windows > 2 * max_offset]
    if not usable:
        return {"offset_accuracy": None, "n_windows": 0}
    offsets = np.arange(-max_offset, max_offset + 1)
    hits = []
    for _ in range(n_windows):
        i = int(rng.choice(usable))
        t = int(rng.integers(max_offset, utts[i].n_windows - max_offset))
        pairs = [Pair(i, t, i, t + int(o), int(o == 0), "pos" if o == 0 else "same") for o in offsets]
        p = predict(model, pairs, utts, utts, len(pairs), device)
        hits.append(abs(int(offsets[int(np.argmax(p))])) <= tolerance)
    return {"offset_accuracy": float(np.mean(hits)), "n_windows": len(hits)}
