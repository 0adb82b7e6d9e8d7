"""Train a UniSync sync expert on one combo of a store (nanoGPT's train.py, in miniature).

    python training/fit.py --combo mel_landmarks --store data/store --out runs/mel_landmarks
    python training/fit.py --combo mel_landmarks --store S --out D --width 0.25 --max-minutes 4
    torchrun --nproc-per-node 8 training/fit.py --combo hubert_rgb --store S --out D
    python training/fit.py --combo mel_landmarks --store S --out D --steps 40000 --resume
    python training/fit.py --print-model --combo hubert_rgb

Reads top to bottom: settings (config.TrainConfig), data (loader.RankData: this rank's train
shards, --workers loader processes drawing pairs: 50% in sync; negatives same-speaker shifted,
with and without overlap, or cross-speaker), model, optimiser (the paper's Adam), one loop
(margin BCE, bf16 autocast on CUDA, DDP under torchrun), evaluation on fixed held-out pairs
every --eval-every steps (rank 0) and checkpoints. Every rank runs exactly --steps steps of
--batch-size pairs; the --max-minutes stop is agreed by all ranks each step, so no rank waits on
one that has stopped; under --max-minutes the progress bar follows the nearer end, budget or
--steps (training/progress.py).

Writes to --out (rank 0; the folder is made only once the data, the model and any --resume
checkpoint are known to be good, so a failed start leaves no empty run folder behind):
    checkpoint.pt   last state: model, optimiser, step, settings, every rank's loader positions
                    and the torch RNG state: --resume continues exactly where it stopped
    best.pt         the weights with the best val score so far (--select: balanced accuracy, and for
                    an AV-SyncNet with a lip reader that accuracy minus the val vowel CER)
    metrics.jsonl   one JSON line per log / eval: step, loss, val balanced accuracy, elapsed s
    ranks.json      each rank's shard list, utterances and windows
    final.json      combo, steps, params, width, seconds, val and test reports of the best state
The .pt files hold only tensors and JSON-able settings; every load is weights_only=True
(training/runtime.py), so a crafted checkpoint.pt given to --resume never runs code.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from training.avsync_train import AVSyncExpert
from training.combos import COMBOS, combo_fields, parse_combo
from training.config import TrainConfig, build_parser, parse_args  # noqa: F401 (re-exported)
from training.data import StoreError, Utterance, load_splits
from training.evaluate import evaluate, full_report, held_out_set
from training.loader import RankData, default_workers, prepare_utterances
from training.loss import lr_at, make_optimizer, margin_bce, margins_for, set_lr
from training.model import SEQUENCE_DIMS, UniSync, count_parameters, describe
from training.progress import Progress
from training.runtime import (CheckpointError, Dist, autocast, load_checkpoint,  # noqa: F401
                              read_checkpoint, save_checkpoint)


def print_model(cfg: TrainConfig) -> list[dict]:
    combos = COMBOS if cfg.combo == "all" else (cfg.combo,)
    rows = [describe(c, cfg.width, cfg.depth) for c in combos]
    print(f"{'combo':<18}{'params':>12}{'vs 16.3M':>10}{'MACs/pair':>12}{'vs 1.73G':>10}"
          f"{'FLOPs (2/MAC)':>15}   eps1 / eps2 / eps3 / eps4 params")
    for d in rows:
        parts = " / ".join(f"{v / 1e6:.2f}M" for v in d["params_by_part"].values())
        print(f"{d['combo']:<18}{d['params'] / 1e6:>11.2f}M{d['params'] / 16.3e6 - 1:>+10.1%}"
              f"{d['macs_per_pair'] / 1e9:>11.3f}G{d['macs_per_pair'] / 1.73e9 - 1:>+10.1%}"
              f"{d['flops_per_pair_2x'] / 1e9:>14.3f}G   {parts}")
    print(f"width {cfg.width}, depth {rows[0]['depth']}; MACs = multiply-adds of convolutions and "
          "linear layers for one (visual, audio) window pair (torch.utils.flop_counter / 2), the "
          "paper's FLOPs convention (1 multiply-add = 1 FLOP); 'FLOPs (2/MAC)' counts 2.")
    return rows


def row_size(utt: Utterance, name: str) -> int | None:
    """Row size of a sequence representation as stored (landmarks 478*3, tdmm, hubert): what the
    model's per-row MLP takes (training/model.py SEQUENCE_DIMS); None for the others."""
    if name not in SEQUENCE_DIMS:
        return None
    return math.prod(utt.data[name].shape[1:])


RESUME_KEYS = ("model", "optimizer", "step")


class RunError(Exception):
    """--out cannot hold a run (a file, or not writable): said before any data is read."""


def check_run_folder(out: Path) -> None:
    """Fail early on an --out that could never be written; the folder itself is made only once
    data, model and checkpoint are known to be good, so a failed start leaves nothing behind."""
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a run folder")
    existing = next(p for p in (out, *out.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise RunError(f"--out {out}: cannot write in {existing}")


def read_resume(path: Path, device: torch.device | str = "cpu") -> dict:
    """checkpoint.pt for --resume: weights_only (runtime.read_checkpoint), with the keys resume needs."""
    ckpt = read_checkpoint(path, map_location=device)
    missing = [k for k in RESUME_KEYS if not isinstance(ckpt, dict) or k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: cannot resume from it: no {', '.join(map(repr, missing))} "
                              "(training/fit.py's checkpoint.pt holds model, optimizer, step and the "
                              "loader positions)")
    return ckpt


def train(cfg: TrainConfig) -> dict:
    """Run one training job (see TrainConfig); returns what final.json holds (rank 0)."""
    if cfg.combo == "all" or not cfg.store or not cfg.out:
        raise SystemExit("fit.py: training needs one --combo, --store and --out")
    started = time.perf_counter()
    check_run_folder(Path(cfg.out))
    dist = Dist(cfg.device)
    device, master, out = dist.device, dist.master, Path(cfg.out)  # --out is made once the run can start
    # on a CPU the model step, not the loader, is the bottleneck: cut in-process, torch takes the cores
    workers = cfg.workers if cfg.workers is not None else (
        default_workers(dist.local_world) if device.type == "cuda" else 0)
    if cfg.threads or (device.type == "cpu" and workers):  # leave the loader workers their cores
        torch.set_num_threads(cfg.threads or max(1, default_workers(dist.local_world) + 1 - workers))
    torch.manual_seed(cfg.seed)
    try:
        audio, visual = parse_combo(cfg.combo, cfg.model)
    except ValueError as exc:  # e.g. --combo fbank_lip without --model avsync
        raise SystemExit(f"fit.py: {exc}") from None
    margins = cfg.margins_pair()
    select = cfg.selection()
    if select == "sync+lip" and not (cfg.model == "avsync" and cfg.lambda_lip > 0):
        raise SystemExit("fit.py: --select sync+lip needs --model avsync with L_lip (--lambda-lip > 0)")

    # data: this rank's train shards behind the loader; rank 0 also holds the held-out splits
    try:
        data = RankData.from_store(
            cfg.store, audio, visual, dist.rank, dist.world, workers, seed=cfg.seed,
            batch_size=cfg.batch_size, cross_speaker_ratio=cfg.cross_speaker_ratio,
            buffer_shards=cfg.buffer_shards, refresh_every=cfg.refresh_every, handoff_pairs=cfg.handoff_pairs,
            image_scale=cfg.image_scale, cache_frames=cfg.cache_frames,
            landmarks_center=cfg.landmarks_center, sync_correct=cfg.sync_correct)
        ranks = dist.gather(data.describe())  # also checks every rank's cross-speaker audio
        first = data.first_utterance()
        held = load_splits(cfg.store, combo_fields(cfg.combo), ["val", "test"],
                           landmarks_center=cfg.landmarks_center) if master else {}
        # --model avsync: AV-SyncNet, its tokenizer and L_lip's stream (training/avsync_train.py)
        expert = AVSyncExpert.from_config(cfg, dist.rank, dist.world, first, row_size(first, visual),
                                          row_size(first, audio)) if cfg.model == "avsync" else None
    except BaseException:
        dist.close()
        raise
    prepare_utterances([u for us in held.values() for u in us], cfg.image_scale, cfg.cache_frames)
    ratio = cfg.eval_cross_speaker_ratio
    val_set = held_out_set(held, "val", cfg.eval_pairs, ratio) if master else None
    test_set = held_out_set(held, "test", cfg.eval_pairs, ratio) if master else None
    load_seconds = time.perf_counter() - started

    # model and optimiser (same init on every rank; DDP also broadcasts rank 0's weights)
    raw_model = expert.model.to(device) if expert else UniSync(
        cfg.combo, cfg.width, cfg.depth, row_size(first, visual), row_size(first, audio)).to(device)
    if device.type == "cpu" and not expert:  # matches Batch.to: channels-last convolutions are faster on CPU
        raw_model = raw_model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(raw_model.parameters(), cfg.lr, cfg.weight_decay)
    model = raw_model
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel
        model = DistributedDataParallel(raw_model, device_ids=[device.index] if device.type == "cuda" else None,
                                        find_unused_parameters=expert is not None)  # a lambda of 0
    n_params = count_parameters(raw_model)

    # resume: weights, optimiser, step, best-so-far, every rank's loader positions
    start, best_acc, best_step, losses = 0, -math.inf, 0, []
    ckpt_path = out / "checkpoint.pt"
    if cfg.resume and ckpt_path.exists():
        try:
            ckpt = read_resume(ckpt_path, device)
            raw_model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
        except (CheckpointError, RuntimeError, ValueError) as exc:
            dist.close()
            if isinstance(exc, CheckpointError):
                raise
            raise CheckpointError(f"{ckpt_path}: does not fit this run (--combo {cfg.combo}, --width "
                                  f"{cfg.width}): {str(exc).splitlines()[0]}") from None
        start, best_acc, best_step = ckpt["step"], ckpt.get("best_acc", -math.inf), ckpt.get("best_step", 0)
        losses = list(ckpt.get("pending_losses", []))
        states = ckpt.get("rank_states", [])
        if len(states) == dist.world:
            data.restore(states[dist.rank])
        elif master:
            print(f"warning: checkpoint has {len(states)} rank states for {dist.world} ranks; "
                  "samplers restart from their seeds", file=sys.stderr)
        if "torch_rng" in ckpt:
            torch.set_rng_state(ckpt["torch_rng"])
        if expert:
            expert.restore(ckpt, dist.rank)
    elif cfg.resume and master:
        print(f"warning: --resume: no {ckpt_path}; training starts at step 0", file=sys.stderr)
    if master:  # data, model and checkpoint are good: only now does the run folder appear
        out.mkdir(parents=True, exist_ok=True)
        (out / "ranks.json").write_text(json.dumps(ranks, indent=2))
        print(f"{cfg.combo}: {n_params / 1e6:.2f}M params (width {cfg.width}, depth "
              f"{raw_model.depth}), {dist.world} rank(s) x {workers} loader worker(s); rank 0: "
              f"{ranks[0]['utterances']} utts / {ranks[0]['speakers']} speakers from "
              f"{len(ranks[0]['shards'])} of {len(data.spec.all_shards)} train shards; val "
              f"{len(held['val'])}, test {len(held['test'])}; loaded in {load_seconds:.1f}s"
              + (f"; resumed at step {start}" if start else "")
              + (f"; sync correction {ranks[0]['sync_correction']}" if "sync_correction" in ranks[0] else "")
              + (f"; avsync {expert.describe()}" if expert else ""),
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
        lip_states = dist.gather(expert.stream_state()) if expert else None
        if master:
            save_checkpoint(ckpt_path, raw_model, optimizer, done, cfg.as_dict(),
                            {"best_acc": best_acc, "best_step": best_step, "rank_states": states,
                             "pending_losses": list(losses), "torch_rng": torch.get_rng_state(),
                             "world": dist.world,
                             **({"lip_states": lip_states, **expert.extra()} if expert else {})})

    # the loop
    t0 = time.perf_counter()
    batches = data.batches(start, pin_memory=device.type == "cuda", prefetch=cfg.prefetch)
    bar = Progress(cfg.combo, start, cfg.steps, cfg.max_minutes, disable=not master or cfg.no_progress)
    use_amp = device.type == "cuda" and cfg.dtype == "bf16"
    step = start - 1
    for step in range(start, cfg.steps):
        set_lr(optimizer, lr_at(step, cfg.lr, cfg.steps, cfg.lr_schedule, cfg.lr_floor))
        raw = next(batches)
        data.consumed(raw)
        batch = raw.to(device)
        if expert:  # Eq. 6 on this pair batch and one lip batch
            with autocast(device, use_amp):
                loss = expert.loss(model, batch, device)
        else:
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
        bar.step(done)
        out_of_time = dist.any(bool(cfg.max_minutes) and time.perf_counter() - t0 > 60 * cfg.max_minutes)
        last = done == cfg.steps or out_of_time
        evaluate_now = last or bool(cfg.eval_every and done % cfg.eval_every == 0)
        if evaluate_now or done % cfg.log_every == 0:
            record = {"step": done, "loss": dist.mean(sum(losses) / len(losses)),
                      "elapsed_s": round(time.perf_counter() - t0, 2), "pairs_drawn": data.drawn * dist.world}
            losses = []
            if expert:
                record.update(expert.log_terms())
            if master and evaluate_now:
                report = evaluate(raw_model, val_set, device=device)
                record["val_balanced_accuracy"] = report["balanced_accuracy"]
                record["val_per_type"] = report["per_type"]
                score = report["balanced_accuracy"]
                if select == "sync+lip":  # a lip reader is only as good as its held-out transcriptions
                    lip = expert.report(raw_model, held["val"], device).get("lip_reading", {})
                    record["val_vowel_cer"] = lip.get("vowel_cer")
                    score -= lip.get("vowel_cer", 1.0)
                    report = {**report, "lip_reading": lip}
                record["val_score"] = score
                if score > best_acc:
                    best_acc, best_step = score, done
                    save_checkpoint(out / "best.pt", raw_model, optimizer, done, cfg.as_dict(),
                                    {"val": report, **(expert.extra() if expert else {})})
            if master:
                bar.note(loss=f"{record['loss']:.3f}", **({"val": f"{best_acc:.3f}"} if evaluate_now else {}))
                metrics.write(json.dumps(record) + "\n")
                metrics.flush()
        if evaluate_now or (cfg.save_every and done % cfg.save_every == 0):
            checkpoint(done)
        if out_of_time:
            break
    bar.close()
    del batches  # stops the loader workers
    steps_run = step + 1  # the last step wrote checkpoint.pt (it always evaluates)
    seconds = time.perf_counter() - t0
    dist.close()
    if not master:
        return {"rank": dist.rank, "steps": steps_run}
    metrics.close()

    # final reports: the best-val state (selected on val, so test is the unbiased figure)
    if best_step:
        raw_model.load_state_dict(read_checkpoint(out / "best.pt", map_location=device)["model"])
    final = {"combo": cfg.combo, "steps": steps_run, "resumed_from": start, "params": n_params,
             "width": cfg.width, "depth": raw_model.depth, "seconds": round(seconds, 2),
             "load_seconds": round(load_seconds, 2),
             "step_seconds": round(seconds / max(1, steps_run - start), 4), "best_step": best_step,
             "weights": "best" if best_step else "last", "world_size": dist.world, "workers": workers,
             "batch_size": cfg.batch_size, "lr": cfg.lr, "lr_schedule": cfg.lr_schedule, "select": select,
             "best_score": best_acc if math.isfinite(best_acc) else None, "margins": list(margins),
             "cross_speaker_ratio": cfg.cross_speaker_ratio, "eval_cross_speaker_ratio": ratio,
             "seed": cfg.seed, "image_scale": cfg.image_scale,
             "train": {"utterances_rank0": ranks[0]["utterances"], "speakers_rank0": ranks[0]["speakers"],
                       "shards": len(data.spec.all_shards)}}
    for name, data_set in (("val", val_set), ("test", test_set)):
        final[name] = full_report(raw_model, held, name, ratio=ratio, offsets=bool(cfg.offset_windows),
                                  shifts=cfg.shifts(), device=device, data=data_set,
                                  max_windows=cfg.offset_windows)
        if expert:  # lip reading on the held-out speakers: CER, vowel CER, majority baseline
            final[name].update(expert.report(raw_model, held[name], device))
    if expert:
        final["model"], final["avsync"] = "avsync", expert.describe()
    (out / "final.json").write_text(json.dumps(final, indent=2))
    return final


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    if cfg.print_model:
        print_model(cfg)
        return 0
    try:
        final = train(cfg)
    except (StoreError, CheckpointError, RunError) as exc:
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
