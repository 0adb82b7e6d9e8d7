"""Train a UniSync sync expert on one combo of a store (nanoGPT's train.py, in miniature).

    python training/fit.py --combo mel_landmarks --store data/store --out runs/mel_landmarks
    python training/fit.py --combo mel_landmarks --store S --out D --width 0.25 --max-minutes 4

Reads only the combo's two field series (train, val and test splits; speaker-disjoint), samples
pairs with `PairSampler` (50% in sync, negatives same-speaker shifted or cross-speaker), minimises
the paper's margin BCE with Adam (lr 1e-4, betas (0.5, 0.999), coupled L2 1e-4) and evaluates
balanced accuracy on fixed held-out pairs every --eval-every steps.

Writes to --out:
    checkpoint.pt   last state: model, optimiser, step, args (load with `load_checkpoint`)
    best.pt         the state with the best val balanced accuracy so far
    metrics.jsonl   one JSON line per log / eval: step, loss, val balanced accuracy, elapsed s
    final.json      combo, steps, params, width, seconds, val and test reports of the best state
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import math
import time

import torch
from tqdm import tqdm

from training.combos import COMBOS, DEFAULT_MARGINS, combo_fields, parse_combo
from training.data import StoreError, Utterance, load_splits
from training.evaluate import EvalSet, eval_set, evaluate, offset_accuracy
from training.loss import make_optimizer, margin_bce, margins_for
from training.model import UniSync, count_parameters
from training.sampler import PairSampler
from training.windows import make_batch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a UniSync sync expert on a unisync store.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--combo", required=True, choices=COMBOS, help="<audio>_<visual> representations")
    p.add_argument("--store", required=True, help="store root (holds catalog/ and shards/)")
    p.add_argument("--out", required=True, help="run directory for checkpoints and metrics")
    p.add_argument("--steps", type=int, default=20000, help="optimiser steps")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (paper: 1e-4)")
    p.add_argument("--weight-decay", type=float, default=1e-4, help="coupled L2 (paper: 1e-4)")
    p.add_argument("--width", type=float, default=1.0,
                   help="channel multiplier: 1.0 is paper size (~16.3M params), 0.25 a CPU demo")
    p.add_argument("--depth", type=float, default=None,
                   help="residual-block multiplier; unset: 1 at width >= 0.5, else 0")
    p.add_argument("--seed", type=int, default=0, help="model init and pair sampling seed")
    p.add_argument("--cross-speaker-ratio", type=float, default=0.2,
                   help="share of negatives taken from another speaker")
    p.add_argument("--margins", default=None,
                   help="Eq. 1 margins 'same,cross'; unset: 0.1,0.3 for mel, 0.3,0.7 for hubert")
    p.add_argument("--eval-every", type=int, default=500, help="evaluate on val every N steps (0: end only)")
    p.add_argument("--eval-pairs", type=int, default=1000, help="fixed seeded pairs per held-out split")
    p.add_argument("--offset-windows", type=int, default=200,
                   help="windows for the final offset-detection protocol (0: skip)")
    p.add_argument("--log-every", type=int, default=50, help="log the mean training loss every N steps")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop training after this many minutes (0: no limit)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    p.add_argument("--landmarks-center", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract each utterance's mean landmark shape (helps unseen speakers)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def resolve_margins(args: argparse.Namespace) -> tuple[float, float]:
    if args.margins in (None, ""):
        return DEFAULT_MARGINS[parse_combo(args.combo)[0]]
    same, cross = (float(x) for x in str(args.margins).split(","))
    return same, cross


def held_out_set(splits: dict[str, list[Utterance]], split: str, n_pairs: int,
                 ratio: float) -> EvalSet:
    """Fixed pairs of a held-out split; a one-speaker split borrows the other held-out split's
    audio for its cross-speaker negatives (never the training speakers')."""
    utts = splits[split]
    others: list[Utterance] = []
    if len({u.speaker_id for u in utts}) < 2 and ratio > 0:
        others = [u for s in ("val", "test") if s != split for u in splits[s]]
    return eval_set(utts, n_pairs, cross_speaker_ratio=ratio, others=others)


def row_size(utts: list[Utterance], name: str) -> int | None:
    """Row size of a sequence representation as stored (landmarks 478*3, tdmm, hubert)."""
    if name not in ("landmarks", "tdmm", "hubert"):
        return None
    shape = utts[0].data[name].shape
    return int(shape[1] * shape[2]) if name == "landmarks" else int(shape[-1])


def model_config(model: UniSync) -> dict:
    """What `UniSync(**config)` needs to rebuild the model of a checkpoint."""
    return {"combo": model.combo, "width": model.width, "depth": model.depth,
            "visual_dim": model.visual_dim, "audio_dim": model.audio_dim}


def save_checkpoint(path: Path, model: UniSync, optimizer: torch.optim.Optimizer, step: int,
                    args: argparse.Namespace, extra: dict | None = None) -> None:
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "args": vars(args), "config": model_config(model), **(extra or {})}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str, map_location: str = "cpu") -> tuple[UniSync, dict]:
    """The model of a checkpoint (eval mode) and the whole checkpoint dict."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    model = UniSync(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def train(args: argparse.Namespace) -> dict:
    """Run one training job as configured by `args` (see build_parser); returns final.json."""
    started = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else "cpu" if args.device == "auto" else args.device)
    audio, visual = parse_combo(args.combo)
    margins = resolve_margins(args)

    # data: only the combo's two fields, all three speaker-disjoint splits
    splits = load_splits(args.store, combo_fields(args.combo), ["train", "val", "test"],
                         landmarks_center=args.landmarks_center)
    train_utts = splits["train"]
    sampler = PairSampler(train_utts, args.seed, args.cross_speaker_ratio)
    val_set = held_out_set(splits, "val", args.eval_pairs, args.cross_speaker_ratio)
    test_set = held_out_set(splits, "test", args.eval_pairs, args.cross_speaker_ratio)
    load_seconds = time.perf_counter() - started

    # model and optimiser
    model = UniSync(args.combo, args.width, args.depth, row_size(train_utts, visual),
                    row_size(train_utts, audio)).to(device)
    if device.type == "cpu":  # matches Batch.to: channels-last convolutions are faster on CPU
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters(), args.lr, args.weight_decay)
    n_params = count_parameters(model)
    print(f"{args.combo}: {n_params / 1e6:.2f}M params (width {args.width}, depth {model.depth}), "
          f"train {len(train_utts)} utts / {len({u.speaker_id for u in train_utts})} speakers, "
          f"val {len(splits['val'])}, test {len(splits['test'])}; loaded in {load_seconds:.1f}s",
          file=sys.stderr)

    metrics = open(out / "metrics.jsonl", "w")
    best_acc, best_step, losses, step = -1.0, 0, [], 0  # best_step 0: no eval yet
    t0 = time.perf_counter()
    bar = tqdm(range(args.steps), desc=args.combo, unit="step", dynamic_ncols=True, mininterval=1.0)
    for step in bar:
        batch = make_batch(sampler.sample(args.batch_size), train_utts, train_utts,
                           audio, visual).to(device)
        p = model(batch.visual, batch.audio)
        loss = margin_bce(p, batch.label, margins_for(batch.kind, margins))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss is {losses[-1]} at step {step + 1}")

        done = step + 1
        out_of_time = args.max_minutes and time.perf_counter() - t0 > 60 * args.max_minutes
        last = done == args.steps or out_of_time
        evaluate_now = last or (args.eval_every and done % args.eval_every == 0)
        if evaluate_now or done % args.log_every == 0:
            record = {"step": done, "loss": sum(losses) / len(losses),
                      "elapsed_s": round(time.perf_counter() - t0, 2)}
            losses = []
            if evaluate_now:
                report = evaluate(model, val_set, device=device)
                record["val_balanced_accuracy"] = report["balanced_accuracy"]
                record["val_per_type"] = report["per_type"]
                if report["balanced_accuracy"] > best_acc:
                    best_acc, best_step = report["balanced_accuracy"], done
                    save_checkpoint(out / "best.pt", model, optimizer, done, args,
                                    {"val": report})
                bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{best_acc:.3f}")
            else:
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            metrics.write(json.dumps(record) + "\n")
            metrics.flush()
        if out_of_time:
            break
    bar.close()
    metrics.close()
    steps_run = step + 1 if args.steps else 0
    seconds = time.perf_counter() - t0
    save_checkpoint(out / "checkpoint.pt", model, optimizer, steps_run, args)

    # final reports: the best-val state (selected on val, so test is the unbiased figure)
    if best_step:
        model.load_state_dict(torch.load(out / "best.pt", map_location=device,
                                         weights_only=False)["model"])
    final = {"combo": args.combo, "steps": steps_run, "params": n_params, "width": args.width,
             "depth": model.depth, "seconds": round(seconds, 2), "load_seconds": round(load_seconds, 2),
             "step_seconds": round(seconds / max(1, steps_run), 4), "best_step": best_step,
             "weights": "best" if best_step else "last",
             "batch_size": args.batch_size, "lr": args.lr, "margins": list(margins),
             "cross_speaker_ratio": args.cross_speaker_ratio,
             "train": {"utterances": len(train_utts),
                       "speakers": len({u.speaker_id for u in train_utts})}}
    for name, data in (("val", val_set), ("test", test_set)):
        report = evaluate(model, data, device=device)
        if args.offset_windows:
            report.update(offset_accuracy(model, data.utts, args.offset_windows, device=device))
        report["speakers"] = len({u.speaker_id for u in data.utts})
        final[name] = report
    (out / "final.json").write_text(json.dumps(final, indent=2))
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        final = train(args)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({k: final[k] for k in ("combo", "steps", "params", "seconds")}
                     | {"val_balanced_accuracy": final["val"]["balanced_accuracy"],
                        "test_balanced_accuracy": final["test"]["balanced_accuracy"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
