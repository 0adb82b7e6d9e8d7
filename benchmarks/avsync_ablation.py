"""AV-SyncNet on the synthetic corpus, and the ablation of SyncTalklip's Table 3 for the expert.

    python -m benchmarks.avsync_ablation --work /work/tmp/avsync            # corpus, store, 4 runs
    python -m benchmarks.avsync_ablation --work W --variants eq6 --steps 3000
    python -m benchmarks.avsync_ablation --work W2 --store W/store --variants av lip   # a second table

Builds (once) a synthetic corpus (pipelines/synthetic.py: every utterance's transcript is the
vowels its mouth shows) and a store of its lip, fbank and meta fields with speaker-disjoint
val / test splits (pipelines/extract.py), then trains AV-SyncNet through fit.py once per variant:

    eq6      L_av + L_lip (Eq. 6, both lambdas 1)
    av       L_av only (--lambda-lip 0)
    lip      L_lip only (--lambda-av 0): nothing trains the sync head or the audio front
    infonce  the conventional contrastive loss (InfoNCE over frames of the positive pairs,
             p_sync = (1 + cos) / 2) + L_lip

and reports, on the held-out test speakers, sync balanced accuracy (fixed seeded pairs, threshold
0.5), offset accuracy per window and per utterance (evaluate.py's protocols), and the lip
reader's CER and vowel CER against the majority-vowel baseline (training/lipread.py). Every run
is the same command a user types (printed); the table goes to <work>/ablation.md and .json.

All variants share one recipe (the defaults below): the reader trained as hybrid CTC / attention
(--lip-ctc 1; scaled with L_lip, so it is off where L_lip is), 8 whole utterances per step for
L_lip, no ROI augmentation, a cosine learning rate, 1500 steps, 48 speakers. With 24 speakers, 4
utterances per step, augmentation on and no CTC, the reader stays near-constant (CHANGELOG.md).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from features.cli import HelpFormatter

VARIANTS = {
    "eq6": ["--lambda-av", "1", "--lambda-lip", "1"],
    "av": ["--lambda-av", "1", "--lambda-lip", "0"],
    "lip": ["--lambda-av", "0", "--lambda-lip", "1"],
    "infonce": ["--contrastive", "infonce", "--lambda-av", "1", "--lambda-lip", "1"],
}
LABELS = {"eq6": "L_av + L_lip (Eq. 6)", "av": "L_av only", "lip": "L_lip only",
          "infonce": "InfoNCE + L_lip"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--work", type=Path, default=Path("avsync_bench"), help="corpus/, store/, runs/ go here")
    p.add_argument("--store", type=Path, default=None, help="an existing store with lip, fbank and "
                   "transcripts (unset: <work>/store, built from a synthetic corpus when absent)")
    p.add_argument("--speakers", type=int, default=48, help="synthetic speakers")
    p.add_argument("--utterances", type=int, default=8, help="utterances per speaker")
    p.add_argument("--seed", type=int, default=7, help="corpus seed")
    p.add_argument("--held-out", type=float, default=0.17, help="val and test share of speakers (each)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--preset", default="tiny", help="AV-SyncNet size (training/avsync.py PRESETS)")
    p.add_argument("--steps", type=int, default=1500, help="training steps per variant")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step")
    p.add_argument("--lip-batch", type=int, default=8, help="whole utterances per step for L_lip")
    p.add_argument("--lip-ctc", type=float, default=1.0, help="weight of the reader's auxiliary CTC term")
    p.add_argument("--lip-augment", action=argparse.BooleanOptionalAction, default=False,
                   help="random stretch / move / contrast of each L_lip utterance's ROIs")
    p.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate")
    p.add_argument("--lr-schedule", default="cosine", choices=["constant", "cosine"], help="fit.py --lr-schedule")
    p.add_argument("--eval-every", type=int, default=250, help="val evaluations (best-val weights are reported)")
    p.add_argument("--max-minutes", type=float, default=0.0, help="stop each run's training after this many "
                   "minutes (fit.py --max-minutes; 0: no limit); the table gives the steps reached")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    return p.parse_args(argv)


def build_store(args: argparse.Namespace) -> Path:
    """The synthetic corpus and its lip + fbank + meta store (skipped when already there)."""
    from pipelines.synthetic import generate_corpus

    corpus, store = args.work / "corpus", args.work / "store"
    if not any(corpus.glob("*/*.mp4")):
        generate_corpus(corpus, n_speakers=args.speakers, n_utterances=args.utterances, seed=args.seed,
                        progress=False)
    if not (store / "catalog" / "utterances.parquet").exists():
        cmd = [sys.executable, "pipelines/extract.py", "--dataset", "folder", "--root", str(corpus),
               "--store", str(store), "--fields", "lip", "fbank", "meta", "--workers", "2",
               "--shard-size", "8", "--val", str(args.held_out), "--test", str(args.held_out)]
        print(" ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    return store


def fit_command(args: argparse.Namespace, store: Path, out: Path, variant: str) -> list[str]:
    return ["--model", "avsync", "--combo", "fbank_lip", "--preset", args.preset, "--store", str(store),
            "--out", str(out), "--steps", str(args.steps), "--batch-size", str(args.batch_size),
            "--lip-batch", str(args.lip_batch), "--lip-ctc", str(args.lip_ctc),
            "--lip-augment" if args.lip_augment else "--no-lip-augment", "--lr", str(args.lr),
            "--lr-schedule", args.lr_schedule, "--eval-every", str(args.eval_every),
            "--eval-pairs", "1000", "--offset-windows", "400", "--threads", str(args.threads),
            "--max-minutes", str(args.max_minutes),
            "--workers", "0", "--no-progress", *VARIANTS[variant]]


def row_of(variant: str, final: dict) -> dict:
    test, lip = final["test"], final["test"].get("lip_reading", {})
    return {"variant": variant, "label": LABELS[variant], "steps": final["steps"], "best_step": final["best_step"],
            "minutes": round(final["seconds"] / 60, 1), "params": final["params"],
            "test_balanced_accuracy": test["balanced_accuracy"], "test_per_type": test["per_type"],
            "test_offset_accuracy": test.get("offset_accuracy"),
            "test_utterance_offset_accuracy": test.get("utterance_offset_accuracy"),
            "val_balanced_accuracy": final["val"]["balanced_accuracy"],
            "test_cer": lip.get("cer"), "test_vowel_cer": lip.get("vowel_cer"),
            "baseline_vowel_cer": lip.get("baseline_vowel_cer"), "test_speakers": test["speakers"],
            "examples": lip.get("examples", [])[:2]}


def table(rows: list[dict]) -> str:
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    out = ["| objective | sync balanced acc. | offset acc. (window) | offset acc. (utterance) | vowel CER "
           "| CER | majority-vowel CER | steps (best) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['label']} | {f(r['test_balanced_accuracy'])} | {f(r['test_offset_accuracy'])} | "
                   f"{f(r['test_utterance_offset_accuracy'])} | {f(r['test_vowel_cer'])} | {f(r['test_cer'])} | "
                   f"{f(r['baseline_vowel_cer'])} | {r['steps']} ({r['best_step']}) |")
    return "\n".join(out)


def main(argv=None) -> int:
    from training.fit import parse_args as fit_args, train

    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    store = args.store or build_store(args)
    rows, started = [], time.perf_counter()
    for variant in args.variants:
        out = args.work / "runs" / variant
        cmd = fit_command(args, store, out, variant)
        print("python training/fit.py " + " ".join(cmd), flush=True)
        final = train(fit_args(cmd))
        rows.append(row_of(variant, final))
        print(json.dumps(rows[-1]), flush=True)
        (args.work / "ablation.json").write_text(json.dumps({"rows": rows, "args": vars(args)}, indent=1,
                                                            default=str))
    md = table(rows)
    (args.work / "ablation.md").write_text(md + "\n")
    print(md)
    print(f"{len(rows)} runs in {(time.perf_counter() - started) / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
