"""Training step benchmark: UniSync steps/s on the device at hand, and whether the loader keeps up.

    python -m benchmarks.step [--combos mel_rgb mel_landmarks] [--width 1.0] [--batch-size 64]
    python -m benchmarks.step --store STORE --combos mel_rgb --workers 2    # + loader / step ratio

A step is exactly fit.py's: raw uint8 / float16 windows copied to the device (non_blocking from
pinned memory on CUDA) and normalised there (windows.Batch.to), forward under bf16 autocast on
CUDA (float32 on CPU), the margin BCE, backward, the paper's Adam. Inputs are random windows of
each combo's real shapes and dtypes, so no store is needed for the step rate. With --store, the
combo's loader rate is measured too (benchmarks/loader.py's in-process per-core rate, and the
wall rate of --workers loader processes) and the ratio loader windows/s / (steps/s x batch)
printed: >= 1 means the device would not wait for data.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from training.combos import COMBOS, parse_combo
from training.loss import make_optimizer, margin_bce, margins_for
from training.model import UniSync, count_parameters
from training.runtime import autocast, pick_device
from training.windows import Batch

RAW = {"rgb": ((5, 48, 96, 3), torch.uint8), "parsing": ((5, 48, 96), torch.uint8),
       "landmarks": ((5, 1434), torch.float16), "tdmm": ((5, 71), torch.float32),
       "mel": ((1, 80, 16), torch.float16), "hubert": ((10, 1024), torch.float16)}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--combos", nargs="+", default=["mel_rgb", "mel_landmarks"], choices=COMBOS)
    p.add_argument("--width", type=float, default=1.0, help="model width (1.0: paper size)")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step")
    p.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--device", default="auto", help="'auto' (cuda if available), 'cpu', 'cuda'")
    p.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"), help="autocast dtype on CUDA")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    p.add_argument("--hubert-dim", type=int, default=1024, help="HuBERT feature size (16: the tiny test model)")
    p.add_argument("--store", default=None, help="also measure this store's loader for each combo")
    p.add_argument("--workers", type=int, default=2, help="loader workers for the loader wall rate")
    p.add_argument("--loader-windows", type=int, default=2048, help="pairs per loader measurement")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    return p


def random_batch(combo: str, batch_size: int, hubert_dim: int, image_scale: float = 1.0) -> Batch:
    """A batch of random raw windows with the loader's shapes, dtypes and normalisation."""
    audio, visual = parse_combo(combo)
    g = torch.Generator().manual_seed(0)

    def raw(name: str) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        shape, dtype = RAW[name]
        if name == "hubert":
            shape = (10, hubert_dim)
        if dtype == torch.uint8:
            x = torch.randint(0, 19 if name == "parsing" else 256, (batch_size, *shape), generator=g,
                              dtype=torch.uint8)
            return x, None, None
        x = (torch.randn((batch_size, *shape), generator=g) * 3).to(dtype)
        if name in ("landmarks", "tdmm"):
            return x, torch.zeros(batch_size, shape[-1]), torch.ones(shape[-1])
        return x, None, None

    (v, vo, vs), (a, ao, as_) = raw(visual), raw(audio)
    label = (torch.rand(batch_size, generator=g) < 0.5).float()
    kind = torch.where(label > 0, 0, torch.randint(1, 3, (batch_size,), generator=g))
    return Batch(v, a, label, kind, visual, audio, vo, ao, vs, as_)


def step_rate(combo: str, args: argparse.Namespace, device: torch.device) -> dict:
    audio, _ = parse_combo(combo)
    model = UniSync(combo, args.width, None, None, args.hubert_dim if audio == "hubert" else None).to(device)
    if device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model.parameters())
    batch = random_batch(combo, args.batch_size, args.hubert_dim)
    if device.type == "cuda":
        batch = batch.pin_memory()
    use_amp = device.type == "cuda" and args.dtype == "bf16"

    def one() -> float:
        b = batch.to(device)
        with autocast(device, use_amp):
            p = model(b.visual, b.audio)
        loss = margin_bce(p.float(), b.label, margins_for(b.kind, (0.1, 0.3)))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    for _ in range(args.warmup):
        one()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = one()
    loss.item()  # waits for the device
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"combo": combo, "params": count_parameters(model), "steps_per_s": args.steps / seconds,
            "pairs_per_s": args.steps * args.batch_size / seconds}


def loader_rates(combo: str, args: argparse.Namespace) -> dict:
    """fit.py's loader on the store: windows/s per core in this process, and with --workers."""
    from benchmarks.loader import Drain

    audio, visual = parse_combo(combo)
    ns = argparse.Namespace(seed=0, batch_size=args.batch_size, image_scale=1.0, cache_frames=False,
                            handoff_pairs=512, prefetch=2)
    inline = Drain(Path(args.store), audio, visual, 0, ns)
    inline.interval(args.loader_windows)
    out = {"loader_per_core": inline.cpus[-1]}
    del inline
    if args.workers:
        drain = Drain(Path(args.store), audio, visual, args.workers, ns)
        drain.interval(args.loader_windows)
        out["loader_workers"], out["loader_workers_per_cpu_s"] = drain.walls[-1], drain.cpus[-1]
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU, {torch.get_num_threads()} torch threads"
    results = []
    for combo in args.combos:
        r = step_rate(combo, args, device)
        if args.store:
            r |= loader_rates(combo, args)
            need = r["pairs_per_s"]
            r["ratio_per_core"] = r["loader_per_core"] / need
            if "loader_workers" in r:
                r["ratio_workers"] = r["loader_workers"] / need
        results.append(r)
    print(f"device: {name}; width {args.width}, batch {args.batch_size}, "
          f"{'bf16 autocast' if device.type == 'cuda' and args.dtype == 'bf16' else 'float32'}")
    print(f"{'combo':<18}{'params':>10}{'steps/s':>10}{'pairs/s':>10}"
          + (f"{'loader/core':>13}{'ratio':>9}" if args.store else "")
          + (f"{f'loader {args.workers}w':>12}{'ratio':>9}" if args.store and args.workers else ""))
    for r in results:
        line = f"{r['combo']:<18}{r['params'] / 1e6:>9.2f}M{r['steps_per_s']:>10.2f}{r['pairs_per_s']:>10.0f}"
        if args.store:
            line += f"{r['loader_per_core']:>13.0f}{r['ratio_per_core']:>9.2f}"
            if "loader_workers" in r:
                line += f"{r['loader_workers']:>12.0f}{r['ratio_workers']:>9.2f}"
        print(line)
    if args.store:
        print("ratio = loader windows/s / the step's pairs/s (>= 1: the device never waits for data)")
    if args.json:
        args.json.write_text(json.dumps({"device": name, "width": args.width,
                                         "batch_size": args.batch_size, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
