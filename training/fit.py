"""Train a UniSync sync expert on one combo of a store (nanoGPT's train.py, in miniature).

    python training/fit.py --combo mel_landmarks --store data/store --out runs/mel_landmarks
    python training/fit.py --combo mel_landmarks --store S --out D --width 0.25 --max-minutes 4
    torchrun --nproc-per-node 8 training/fit.py --combo hubert_rgb --store S --out D
    python training/fit.py --combo mel_landmarks --store S --out D --steps 40000 --resume
    python training/fit.py --print-model --combo hubert_rgb

Reads only the combo's two field series. Each rank reads its own shard list of the train split
(data.rank_shards: round-robin, never empty) and draws pairs from it with `PairSampler` (50% in
sync; negatives same-speaker shifted, with and without overlap, or cross-speaker), minimises the
paper's margin BCE with Adam (lr 1e-4, betas (0.5, 0.999), coupled L2 1e-4), bf16 autocast on
CUDA, and rank 0 evaluates balanced accuracy on fixed held-out pairs every --eval-every steps.
Every rank runs exactly --steps steps of --batch-size pairs (a time limit is agreed by all ranks
each step), so no rank waits on another that has stopped.

Writes to --out (rank 0):
    checkpoint.pt   last state: model, optimiser, step, args, every rank's sampler and shard-buffer
                    position and RNG state: --resume continues exactly where it stopped
    best.pt         the weights with the best val balanced accuracy so far
    metrics.jsonl   one JSON line per log / eval: step, loss, val balanced accuracy, elapsed s
    ranks.json      each rank's shard list, utterances and windows
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
import os
import time

import numpy as np
import torch
from tqdm import tqdm

from training.combos import COMBOS, DEFAULT_MARGINS, combo_fields, parse_combo
from training.data import (ShardBuffer, StoreError, Utterance, load_splits, rank_shards,
                           read_catalog, select_rows, shards_of, stream_utterances)
from training.evaluate import autocast, evaluate, full_report, held_out_set
from training.loss import make_optimizer, margin_bce, margins_for
from training.model import UniSync, count_parameters, describe
from training.sampler import PairSampler
from training.windows import make_batch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a UniSync sync expert on a unisync store.",
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--combo", required=True, choices=COMBOS + ("all",),
                   help="<audio>_<visual> representations ('all': --print-model only)")
    p.add_argument("--store", help="store root (holds catalog/ and shards/)")
    p.add_argument("--out", help="run directory for checkpoints and metrics")
    p.add_argument("--steps", type=int, default=20000, help="optimiser steps (total, resume included)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step per rank")
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
    p.add_argument("--eval-cross-speaker-ratio", type=float, default=0.2,
                   help="cross-speaker share of the held-out negatives (fixed, whatever the training "
                        "ratio, so runs of an ablation are scored on the same pairs)")
    p.add_argument("--offset-windows", type=int, default=200,
                   help="at most this many windows in the final per-window offset protocol "
                        "(0: skip both offset protocols)")
    p.add_argument("--offset-shifts", default="-10,10",
                   help="injected audio shifts 'lo,hi' of the final per-utterance offset protocol")
    p.add_argument("--log-every", type=int, default=50, help="log the mean training loss every N steps")
    p.add_argument("--save-every", type=int, default=0,
                   help="also write checkpoint.pt every N steps (it is written at every eval and at the end)")
    p.add_argument("--max-minutes", type=float, default=0.0,
                   help="stop training after this many minutes (0: no limit)")
    p.add_argument("--resume", action="store_true",
                   help="continue from --out/checkpoint.pt (same step, same sampler position)")
    p.add_argument("--buffer-shards", type=int, default=0,
                   help="keep only N of a rank's shards in memory, swapping one every "
                        "--refresh-every steps (0: all of them)")
    p.add_argument("--refresh-every", type=int, default=200, help="steps between shard swaps")
    p.add_argument("--cache-frames", action="store_true",
                   help="keep decoded rgb frames (lower halves, ~14 KB a frame) after first use "
                        "instead of decoding a window's JPEGs every time it is drawn (small stores)")
    p.add_argument("--image-scale", type=float, default=1.0,
                   help="rgb / parsing windows at this scale (0.5: 24 x 48 lower halves, ~4x cheaper "
                        "image adapters on CPU; the adaptive pool keeps the trunk shapes)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda', ...")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"),
                   help="autocast dtype on CUDA (CPU always runs float32)")
    p.add_argument("--landmarks-center", "--center", action=argparse.BooleanOptionalAction, default=True,
                   help="subtract each utterance's mean landmark shape / 3DMM coefficients")
    p.add_argument("--print-model", action="store_true",
                   help="print parameters and multiply-adds per pair of --combo at --width and exit")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def resolve_margins(args: argparse.Namespace) -> tuple[float, float]:
    if args.margins in (None, ""):
        return DEFAULT_MARGINS[parse_combo(args.combo)[0]]
    same, cross = (float(x) for x in str(args.margins).split(","))
    return same, cross


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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


# ---------------------------------------------------------------------------------------------
# distributed helpers (all no-ops in a single process)
# ---------------------------------------------------------------------------------------------
class Dist:
    """rank / world / collectives; a plain `python training/fit.py` is rank 0 of 1."""

    def __init__(self, device_name: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        device = pick_device(device_name)
        if self.enabled and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if self.enabled:
            import torch.distributed as dist
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)

    @property
    def master(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank."""
        if not self.enabled:
            return bool(flag)
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def gather(self, obj):
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            dist.destroy_process_group()


# ---------------------------------------------------------------------------------------------
# a rank's training data: its shards, sampler and (if needed) foreign audio
# ---------------------------------------------------------------------------------------------
def prepare_utterances(utts: list[Utterance], args: argparse.Namespace) -> None:
    """Per-run window settings: the rgb frame cache and the image scale."""
    for u in utts:
        u.image_scale = getattr(args, "image_scale", 1.0)
        if getattr(args, "cache_frames", False) and "rgb" in u.data and u.frame_cache is None:
            u.frame_cache = {}


class RankData:
    """The rank's shard buffer, the pair sampler over it, and its resumable position."""

    def __init__(self, args: argparse.Namespace, dist: Dist):
        self.args = args
        self.audio, self.visual = parse_combo(args.combo)
        fields = combo_fields(args.combo)
        all_rows = read_catalog(args.store)
        rows = select_rows(all_rows, fields, ["train"], args.store)
        self.all_shards = shards_of(rows)
        self.shards = rank_shards(self.all_shards, dist.rank, dist.world)
        self.buffer = ShardBuffer(args.store, fields, rows, all_rows, self.shards,
                                  args.buffer_shards, seed=args.seed * 1000 + dist.rank,
                                  landmarks_center=args.landmarks_center)
        self.foreign = self._foreign_audio(rows, all_rows, dist)
        self.rng = np.random.default_rng([args.seed, dist.rank])
        self.sampler = self._sampler()

    def _foreign_audio(self, rows: list[dict], all_rows: list[dict], dist: Dist) -> list[Utterance]:
        """Audio of other shards' speakers when the rank's own shards hold a single speaker.

        Cross-speaker negatives need a second speaker; a rank whose shards are one speaker's
        (corpora are often sharded by speaker) borrows the audio field only of the following
        train shards until another speaker turns up.
        """
        if self.args.cross_speaker_ratio <= 0:
            return []
        mine = {u.speaker_id for u in self.buffer.utterances}
        # a streaming buffer may hold a single speaker at any time: then the reserve itself
        # must hold two speakers, so that every buffered speaker has another one to draw from
        streaming = self.buffer.streaming
        if not streaming and len(mine) >= 2:
            return []
        speakers_by_shard: dict = {}
        for r in rows:
            speakers_by_shard.setdefault((r["dataset"], int(r["shard_id"])), set()).add(r["speaker_id"])
        start = self.all_shards.index(self.shards[0])
        ordered = self.all_shards[start + 1:] + self.all_shards[:start + 1]
        foreign: list[Utterance] = []
        for shard in ordered:
            have = {u.speaker_id for u in foreign}
            if (len(have) >= 2) if streaming else bool(have - mine):
                return foreign
            new = speakers_by_shard[shard] - (have if streaming else mine | have)
            if new:
                shard_rows = [r for r in rows if (r["dataset"], int(r["shard_id"])) == shard
                              and r["speaker_id"] in new]
                foreign += stream_utterances(self.args.store, [self.audio], shard_rows, all_rows,
                                             self.args.landmarks_center, shards=[shard])
        have = {u.speaker_id for u in foreign}
        if (len(have) >= 2) if streaming else bool(have - mine):
            return foreign
        raise StoreError(f"store {self.args.store}: the train split has a single speaker; "
                         "cross-speaker negatives need two (or pass --cross-speaker-ratio 0)")

    def _sampler(self) -> PairSampler:
        utts = self.buffer.utterances
        prepare_utterances(utts + self.foreign, self.args)
        return PairSampler(utts, cross_speaker_ratio=self.args.cross_speaker_ratio,
                           audio_pool=utts + self.foreign, rng=self.rng)

    def batch(self, step: int):
        """The pairs of `step` (the shard buffer moves on every --refresh-every steps)."""
        if self.buffer.streaming and step > 0 and step % self.args.refresh_every == 0:
            drawn = self.sampler.drawn
            self.buffer.advance()
            self.sampler = self._sampler()
            self.sampler.drawn = drawn
        pairs = self.sampler.sample(self.args.batch_size)
        return make_batch(pairs, self.sampler.utts, self.sampler.pool, self.audio, self.visual)

    def state(self) -> dict:
        return {"sampler": self.sampler.state(), "buffer": self.buffer.state()}

    def restore(self, state: dict) -> None:
        self.buffer.restore(state["buffer"])
        self.rng.bit_generator.state = state["sampler"]["rng"]
        self.sampler = self._sampler()
        self.sampler.set_state(state["sampler"])

    def describe(self) -> dict:
        utts = self.buffer.utterances
        return {"shards": [list(s) for s in self.shards], "buffered": len(self.buffer.buffered),
                "utterances": len(utts), "windows": int(sum(u.n_windows for u in utts)),
                "speakers": len({u.speaker_id for u in utts}),
                "foreign_audio_utterances": len(self.foreign)}


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------
def print_model(args: argparse.Namespace) -> list[dict]:
    combos = COMBOS if args.combo == "all" else (args.combo,)
    rows = [describe(c, args.width, args.depth) for c in combos]
    print(f"{'combo':<18}{'params':>12}{'vs 16.3M':>10}{'MACs/pair':>12}{'vs 1.73G':>10}"
          f"{'FLOPs (2/MAC)':>15}   eps1 / eps2 / eps3 / eps4 params")
    for d in rows:
        parts = " / ".join(f"{v / 1e6:.2f}M" for v in d["params_by_part"].values())
        print(f"{d['combo']:<18}{d['params'] / 1e6:>11.2f}M{d['params'] / 16.3e6 - 1:>+10.1%}"
              f"{d['macs_per_pair'] / 1e9:>11.3f}G{d['macs_per_pair'] / 1.73e9 - 1:>+10.1%}"
              f"{d['flops_per_pair_2x'] / 1e9:>14.3f}G   {parts}")
    print(f"width {args.width}, depth {rows[0]['depth']}; MACs = multiply-adds of convolutions and "
          "linear layers for one (visual, audio) window pair (torch.utils.flop_counter / 2), the "
          "paper's FLOPs convention (1 multiply-add = 1 FLOP); 'FLOPs (2/MAC)' counts 2.")
    return rows


def train(args: argparse.Namespace) -> dict:
    """Run one training job as configured by `args` (see build_parser); returns final.json."""
    if args.combo == "all" or not args.store or not args.out:
        raise SystemExit("fit.py: training needs one --combo, --store and --out")
    started = time.perf_counter()
    dist = Dist(args.device)
    device, master = dist.device, dist.master
    out = Path(args.out)
    if master:
        out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    audio, visual = parse_combo(args.combo)
    margins = resolve_margins(args)
    lo, hi = (int(x) for x in args.offset_shifts.split(","))
    shifts = tuple(range(lo, hi + 1))

    # data: this rank's train shards; rank 0 also holds the held-out splits
    try:
        data = RankData(args, dist)
        held = load_splits(args.store, combo_fields(args.combo), ["val", "test"],
                           landmarks_center=args.landmarks_center) if master else {}
    except BaseException:
        dist.close()
        raise
    prepare_utterances([u for us in held.values() for u in us], args)
    eval_ratio = args.eval_cross_speaker_ratio
    val_set = held_out_set(held, "val", args.eval_pairs, eval_ratio) if master else None
    test_set = held_out_set(held, "test", args.eval_pairs, eval_ratio) if master else None
    load_seconds = time.perf_counter() - started
    ranks = dist.gather(data.describe())
    if master:
        (out / "ranks.json").write_text(json.dumps(ranks, indent=2))

    # model and optimiser (same init on every rank; DDP also broadcasts rank 0's weights)
    train_utts = data.buffer.utterances
    raw_model = UniSync(args.combo, args.width, args.depth, row_size(train_utts, visual),
                        row_size(train_utts, audio)).to(device)
    if device.type == "cpu":  # matches Batch.to: channels-last convolutions are faster on CPU
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(raw_model.parameters(), args.lr, args.weight_decay)
    model = raw_model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None)
    n_params = count_parameters(raw_model)

    # resume: weights, optimiser, step, best-so-far, every rank's sampler / buffer position
    start, best_acc, best_step, losses = 0, -1.0, 0, []
    ckpt_path = out / "checkpoint.pt"
    if args.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        start, best_acc, best_step = ckpt["step"], ckpt.get("best_acc", -1.0), ckpt.get("best_step", 0)
        losses = list(ckpt.get("pending_losses", []))
        states = ckpt.get("rank_states", [])
        if len(states) == dist.world:
            data.restore(states[dist.rank])
        elif master:
            print(f"warning: checkpoint has {len(states)} rank states for {dist.world} ranks; "
                  "samplers restart from their seeds", file=sys.stderr)
        if "torch_rng" in ckpt:
            torch.set_rng_state(ckpt["torch_rng"])
    if master:
        print(f"{args.combo}: {n_params / 1e6:.2f}M params (width {args.width}, depth "
              f"{raw_model.depth}), {dist.world} rank(s); rank 0: {ranks[0]['utterances']} utts / "
              f"{ranks[0]['speakers']} speakers from {len(ranks[0]['shards'])} of "
              f"{len(data.all_shards)} train shards; val {len(held['val'])}, test {len(held['test'])}"
              f"; loaded in {load_seconds:.1f}s" + (f"; resumed at step {start}" if start else ""),
              file=sys.stderr)

    metrics = None
    if master:
        mpath = out / "metrics.jsonl"
        kept = []
        if start and mpath.exists():  # drop records past the checkpoint (a crash after it)
            kept = [ln for ln in mpath.read_text().splitlines() if ln and json.loads(ln)["step"] <= start]
        metrics = open(mpath, "w")
        metrics.writelines(ln + "\n" for ln in kept)

    def checkpoint(done: int) -> None:
        states = dist.gather(data.state())  # every rank takes part
        if master:
            save_checkpoint(ckpt_path, raw_model, optimizer, done, args,
                            {"best_acc": best_acc, "best_step": best_step, "rank_states": states,
                             "pending_losses": list(losses), "torch_rng": torch.get_rng_state(),
                             "world": dist.world})

    t0 = time.perf_counter()
    bar = tqdm(range(start, args.steps), desc=args.combo, unit="step", dynamic_ncols=True,
               mininterval=1.0, initial=start, total=args.steps,
               disable=not master or args.no_progress)
    use_amp = device.type == "cuda" and args.dtype == "bf16"
    step = start - 1
    for step in bar:
        batch = data.batch(step).to(device)
        with autocast(device, use_amp):
            p = model(batch.visual, batch.audio)
        loss = margin_bce(p.float(), batch.label, margins_for(batch.kind, margins))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if not math.isfinite(losses[-1]):
            raise FloatingPointError(f"loss is {losses[-1]} at step {step + 1} (rank {dist.rank})")

        done = step + 1
        out_of_time = dist.any(bool(args.max_minutes) and time.perf_counter() - t0 > 60 * args.max_minutes)
        last = done == args.steps or out_of_time
        evaluate_now = last or bool(args.eval_every and done % args.eval_every == 0)
        if evaluate_now or done % args.log_every == 0:
            record = {"step": done, "loss": dist.mean(sum(losses) / len(losses)),
                      "elapsed_s": round(time.perf_counter() - t0, 2),
                      "pairs_drawn": data.sampler.drawn * dist.world}
            losses = []
            if master and evaluate_now:
                report = evaluate(raw_model, val_set, device=device)
                record["val_balanced_accuracy"] = report["balanced_accuracy"]
                record["val_per_type"] = report["per_type"]
                if report["balanced_accuracy"] > best_acc:
                    best_acc, best_step = report["balanced_accuracy"], done
                    save_checkpoint(out / "best.pt", raw_model, optimizer, done, args, {"val": report})
                bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{best_acc:.3f}")
            elif master:
                bar.set_postfix(loss=f"{record['loss']:.3f}")
            if master:
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
        if evaluate_now or (args.save_every and done % args.save_every == 0):
            checkpoint(done)
        if out_of_time:
            break
    bar.close()
    steps_run = step + 1  # the last step wrote checkpoint.pt (it always evaluates)
    seconds = time.perf_counter() - t0
    dist.close()
    if not master:
        return {"rank": dist.rank, "steps": steps_run}
    metrics.close()

    # final reports: the best-val state (selected on val, so test is the unbiased figure)
    if best_step:
        raw_model.load_state_dict(torch.load(out / "best.pt", map_location=device,
                                             weights_only=False)["model"])
    final = {"combo": args.combo, "steps": steps_run, "resumed_from": start, "params": n_params,
             "width": args.width, "depth": raw_model.depth, "seconds": round(seconds, 2),
             "load_seconds": round(load_seconds, 2),
             "step_seconds": round(seconds / max(1, steps_run - start), 4), "best_step": best_step,
             "weights": "best" if best_step else "last", "world_size": dist.world,
             "batch_size": args.batch_size, "lr": args.lr, "margins": list(margins),
             "cross_speaker_ratio": args.cross_speaker_ratio,
             "eval_cross_speaker_ratio": args.eval_cross_speaker_ratio, "seed": args.seed,
             "train": {"utterances_rank0": len(train_utts),
                       "speakers_rank0": len({u.speaker_id for u in train_utts}),
                       "shards": len(data.all_shards)}}
    for name, data_set in (("val", val_set), ("test", test_set)):
        report = full_report(raw_model, held, name, ratio=eval_ratio,
                             offsets=bool(args.offset_windows), shifts=shifts, device=device,
                             data=data_set, max_windows=args.offset_windows)
        final[name] = report
    (out / "final.json").write_text(json.dumps(final, indent=2))
    return final


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.print_model:
        print_model(args)
        return 0
    try:
        final = train(args)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "val" in final:
        print(json.dumps({k: final[k] for k in ("combo", "steps", "params", "seconds")}
                         | {"val_balanced_accuracy": final["val"]["balanced_accuracy"],
                            "test_balanced_accuracy": final["test"]["balanced_accuracy"],
                            "val_offset_accuracy": final["val"].get("utterance_offset_accuracy"),
                            "test_offset_accuracy": final["test"].get("utterance_offset_accuracy")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
