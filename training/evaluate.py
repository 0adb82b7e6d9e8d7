"""Evaluation, both DESIGN.md protocols, on a split the model never trained on.

    python training/evaluate.py --checkpoint runs/mel_landmarks/best.pt --store STORE --split test [--json]

1. Balanced binary accuracy at threshold 0.5 over a fixed, seeded set of pairs drawn exactly as
   in training (`PairSampler`): (TPR + TNR) / 2, so the 50/50 pos/neg draw does not matter. Per
   negative type (same-speaker, split into overlapping and far shifts; cross-speaker): the
   accuracy on that type and the balanced accuracy of positives against that type alone.
2. Offset detection, scored on offsets -15..+15 frames of the same utterance:
   - per window (DESIGN.md): for a visual window, the audio offset with the highest p_sync;
     correct if within 1 frame of the truth (0);
   - per utterance (SyncNet's protocol): inject a shift s in -10..+10 frames into the audio of a
     held-out utterance, average p_sync over the utterance's windows for each candidate offset
     and take the best; correct if within 1 frame of s. Mean absolute offset error is reported
     for both.

p_sync of a (visual, audio) window pair is the cosine of their embeddings, so the offset
protocols embed each window of an utterance once and score every offset from those embeddings.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from features.cli import HelpFormatter
from training.combos import parse_combo
from training.data import Utterance
from training.runtime import CheckpointError, autocast, load_checkpoint, pick_device
from training.sampler import FAR_SHIFT, KINDS, Pair, PairSampler
from training.windows import make_batch, model_windows

EVAL_SEED = 1234  # a fixed set of pairs, whatever the training seed
MAX_OFFSET = 15
SHIFTS = tuple(range(-10, 11))


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


def held_out_set(splits: dict[str, list[Utterance]], split: str, n_pairs: int,
                 ratio: float, seed: int = EVAL_SEED) -> EvalSet:
    """Fixed pairs of a held-out split; a one-speaker split borrows the other held-out splits'
    audio for its cross-speaker negatives (never a training speaker's if it can help it)."""
    utts = splits[split]
    others: list[Utterance] = []
    if len({u.speaker_id for u in utts}) < 2 and ratio > 0:
        others = [u for s in ("val", "test") if s != split and s in splits for u in splits[s]]
        if not {u.speaker_id for u in others} - {u.speaker_id for u in utts}:
            others += [u for s, us in splits.items() if s not in ("val", "test", split) for u in us]
    return eval_set(utts, n_pairs, seed=seed, cross_speaker_ratio=ratio, others=others)


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
        with autocast(device):
            out.append(model(batch.visual, batch.audio).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def accuracy_report(p: np.ndarray, pairs: Sequence[Pair], threshold: float = 0.5) -> dict:
    """Balanced accuracy, plain accuracy, accuracy, balanced accuracy and mean p per kind."""
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
        "balanced_per_type": {k: float((tpr + correct[m].mean()) / 2)
                              for k, m in groups.items() if m.any() and k != "pos"},
        "mean_p": {k: float(p[m].mean()) for k, m in groups.items() if m.any()},
    }


def evaluate(model: torch.nn.Module, data: EvalSet, batch_size: int = 256,
             device: torch.device | str = "cpu", threshold: float = 0.5) -> dict:
    """Protocol 1 on a fixed `EvalSet`."""
    p = predict(model, data.pairs, data.utts, data.pool, batch_size, device)
    return accuracy_report(p, data.pairs, threshold)


# ---------------------------------------------------------------------------------------------
# offset detection
# ---------------------------------------------------------------------------------------------
@torch.no_grad()
def sync_matrix(model: torch.nn.Module, utt: Utterance, batch_size: int = 256,
                device: torch.device | str = "cpu") -> np.ndarray:
    """P[t, t'] = p_sync(visual window t, audio window t') for every pair of window starts."""
    audio, visual = parse_combo(model.combo)
    was_training = model.training
    model.eval()
    v_emb, a_emb = [], []
    starts = [(0, t) for t in range(utt.n_windows)]
    for i in range(0, len(starts), batch_size):
        chunk = starts[i:i + batch_size]
        v = model_windows([utt], visual, chunk, device)
        a = model_windows([utt], audio, chunk, device)
        with autocast(device):
            v_emb.append(model.embed_visual(v).float())
            a_emb.append(model.embed_audio(a).float())
    model.train(was_training)
    if hasattr(model, "pair_matrix"):  # AV-SyncNet: per-frame embeddings, its own p_sync
        return model.pair_matrix(torch.cat(v_emb), torch.cat(a_emb)).float().cpu().numpy()
    v = F.normalize(torch.cat(v_emb), dim=1, eps=1e-8)
    a = F.normalize(torch.cat(a_emb), dim=1, eps=1e-8)
    return (v @ a.T).clamp(0.0, 1.0).cpu().numpy()


def window_offsets(P: np.ndarray, max_offset: int = MAX_OFFSET) -> np.ndarray:
    """Per visual window with every offset in range, the best audio offset (argmax p_sync)."""
    n = len(P)
    offsets = np.arange(-max_offset, max_offset + 1)
    best = []
    for t in range(max_offset, n - max_offset):
        best.append(int(offsets[int(np.argmax(P[t, t + offsets]))]))
    return np.array(best, dtype=int)


def utterance_offset(P: np.ndarray, shift: int, max_offset: int = MAX_OFFSET) -> int | None:
    """SyncNet-style offset of an utterance whose audio was delayed by `shift` frames.

    With audio'(t) = audio(t - shift), candidate offset o pairs visual window t with audio'
    window t + o, i.e. original audio window t + o - shift. The windows used are those for which
    every candidate exists; each candidate's score is p_sync averaged over them. None when the
    utterance is too short for the search.
    """
    n = len(P)
    offsets = np.arange(-max_offset, max_offset + 1)
    d = offsets - shift  # original audio start minus visual start
    lo, hi = max(0, -int(d.min())), min(n, n - int(d.max()))
    if hi <= lo:
        return None
    t = np.arange(lo, hi)
    scores = P[t[:, None], t[:, None] + d[None, :]].mean(axis=0)
    return int(offsets[int(np.argmax(scores))])


def offset_report(model: torch.nn.Module, utts: Sequence[Utterance], shifts: Sequence[int] = SHIFTS,
                  max_offset: int = MAX_OFFSET, tolerance: int = 1, max_windows: int = 0,
                  seed: int = EVAL_SEED, device: torch.device | str = "cpu") -> dict:
    """Both offset protocols over `utts` (see the module docstring).

    `max_windows` > 0 scores at most that many (seeded) windows in the per-window protocol.
    """
    errors, utt_errors, usable = [], [], 0
    for utt in utts:
        P = sync_matrix(model, utt, device=device)
        errors.append(np.abs(window_offsets(P, max_offset)))
        trial = [utterance_offset(P, s, max_offset) for s in shifts]
        if any(o is not None for o in trial):
            usable += 1
        utt_errors += [abs(o - s) for o, s in zip(trial, shifts) if o is not None]
    err = np.concatenate(errors) if errors else np.zeros(0, int)
    if max_windows and len(err) > max_windows:
        err = np.random.default_rng(seed).choice(err, max_windows, replace=False)
    uerr = np.array(utt_errors, dtype=float)
    return {
        "offset_accuracy": float((err <= tolerance).mean()) if len(err) else None,
        "offset_mean_abs_error": float(err.mean()) if len(err) else None,
        "n_windows": int(len(err)),
        "utterance_offset_accuracy": float((uerr <= tolerance).mean()) if len(uerr) else None,
        "utterance_offset_mean_abs_error": float(uerr.mean()) if len(uerr) else None,
        "utterance_offset_trials": int(len(uerr)), "utterance_offset_utterances": usable,
        "offset_protocol": {"max_offset": max_offset, "tolerance": tolerance,
                            "shifts": [int(min(shifts)), int(max(shifts))] if len(shifts) else []},
    }


def offset_accuracy(model: torch.nn.Module, utts: Sequence[Utterance], n_windows: int = 200,
                    max_offset: int = MAX_OFFSET, tolerance: int = 1, seed: int = EVAL_SEED,
                    device: torch.device | str = "cpu") -> dict:
    """Per-window offset protocol only (kept for callers of the first cut)."""
    r = offset_report(model, utts, (), max_offset, tolerance, n_windows, seed, device)
    return {k: r[k] for k in ("offset_accuracy", "offset_mean_abs_error", "n_windows")}


def full_report(model: torch.nn.Module, splits: dict[str, list[Utterance]], split: str,
                n_pairs: int = 1000, ratio: float = 0.2, offsets: bool = True,
                shifts: Sequence[int] = SHIFTS, max_offset: int = MAX_OFFSET,
                device: torch.device | str = "cpu", data: EvalSet | None = None,
                max_windows: int = 0) -> dict:
    """Both protocols on one split: what final.json and the CLI report."""
    data = data or held_out_set(splits, split, n_pairs, ratio)
    report = evaluate(model, data, device=device)
    if offsets:
        report.update(offset_report(model, splits[split], shifts, max_offset,
                                    max_windows=max_windows, device=device))
    report["speakers"] = len({u.speaker_id for u in splits[split]})
    report["utterances"] = len(splits[split])
    return report


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Evaluate a UniSync checkpoint on a split of a store.",
                                formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="checkpoint.pt or best.pt of a fit.py run")
    p.add_argument("--store", required=True, help="store root (holds catalog/ and shards/)")
    p.add_argument("--split", default="test", help="split to evaluate")
    p.add_argument("--pairs", type=int, default=1000, help="fixed seeded pairs for protocol 1")
    p.add_argument("--seed", type=int, default=EVAL_SEED, help="seed of the evaluation pairs")
    p.add_argument("--cross-speaker-ratio", type=float, default=None,
                   help="cross-speaker share of negatives (unset: the ratio fit.py evaluated with, 0.2)")
    p.add_argument("--max-offset", type=int, default=MAX_OFFSET, help="offsets searched: +/- this")
    p.add_argument("--shifts", default="-10,10", help="injected shifts 'lo,hi' (per-utterance protocol)")
    p.add_argument("--no-offsets", action="store_true", help="skip protocol 2")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def format_report(r: dict) -> str:
    lines = [f"{r['combo']} on {r['split']} ({r['utterances']} utterances, {r['speakers']} speakers, "
             f"{r['n_pairs']} pairs)",
             f"  balanced accuracy  {r['balanced_accuracy']:.4f}   (accuracy {r['accuracy']:.4f})"]
    for k, v in r["per_type"].items():
        bal = r["balanced_per_type"].get(k)
        lines.append(f"    {k:<13} accuracy {v:.4f}" + (f"   balanced vs pos {bal:.4f}" if bal else ""))
    if r.get("offset_accuracy") is not None:
        lines.append(f"  offset per window   accuracy {r['offset_accuracy']:.4f}   mean |error| "
                     f"{r['offset_mean_abs_error']:.2f} frames  ({r['n_windows']} windows)")
    if r.get("utterance_offset_accuracy") is not None:
        lo, hi = r["offset_protocol"]["shifts"]
        lines.append(f"  offset per utterance accuracy {r['utterance_offset_accuracy']:.4f}   mean |error| "
                     f"{r['utterance_offset_mean_abs_error']:.2f} frames  "
                     f"({r['utterance_offset_trials']} trials: shifts {lo}..{hi} x "
                     f"{r['utterance_offset_utterances']} utterances)")
    lip = r.get("lip_reading") or {}
    if lip.get("n_utterances"):
        lines.append(f"  lip reading         CER {lip['cer']:.4f}   vowel CER {lip['vowel_cer']:.4f}   "
                     f"(majority-vowel baseline {lip['baseline_vowel_cer']:.4f}; {lip['n_utterances']} utterances)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from training.combos import combo_fields
    from training.data import StoreError, load_splits, read_catalog, select_rows
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    lo, hi = (int(x) for x in args.shifts.split(","))
    try:
        model, ckpt = load_checkpoint(args.checkpoint, map_location=str(device))
        model.to(device)
        train_args = ckpt.get("args", {})
        ratio = args.cross_speaker_ratio if args.cross_speaker_ratio is not None else \
            train_args.get("eval_cross_speaker_ratio", 0.2)
        fields = combo_fields(model.combo)
        rows = read_catalog(args.store)
        select_rows(rows, fields, [args.split], args.store)  # names the split if it has nothing
        # the other held-out splits lend cross-speaker audio to a one-speaker split
        wanted = [args.split]
        for s in ("val", "test"):
            if s != args.split and any(r["split"] == s for r in rows):
                try:
                    select_rows(rows, fields, [s], args.store)
                    wanted.append(s)
                except StoreError:
                    pass
        splits = load_splits(args.store, fields, wanted,
                             landmarks_center=train_args.get("landmarks_center", True))
        for us in splits.values():
            for u in us:  # cut windows as the model was trained on them
                u.image_scale = train_args.get("image_scale", 1.0)
    except (StoreError, CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    report = {"combo": model.combo, "split": args.split, "checkpoint": str(args.checkpoint),
              "step": ckpt.get("step")}
    report |= full_report(model, splits, args.split, args.pairs, ratio, not args.no_offsets,
                          range(lo, hi + 1), args.max_offset, device,
                          data=held_out_set(splits, args.split, args.pairs, ratio, args.seed))
    if getattr(model, "vocab", 0) and ckpt.get("tokenizer"):  # AV-SyncNet: its lip reader's CER
        from training.lipread import CharTokenizer, lip_report, train_transcripts
        report["lip_reading"] = lip_report(model, splits[args.split], CharTokenizer.from_json(ckpt["tokenizer"]),
                                           train_transcripts(args.store), device)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
