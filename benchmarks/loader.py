"""Loader benchmark: training windows per second per CPU core, and bytes read per field, per combo.

    python benchmarks/loader.py --store STORE [--combos mel_landmarks mel_rgb] [--json out.json]

For each combo whose fields the store holds (all eight by default):

1. read: the combo's utterances of --split are read through the trainer's loader
   (training.data.stream_utterances) with every tar read counted, per field. The table shows the
   bytes read from each field's tars next to what the combo needs (the full tars of its two
   fields for the split's shards: a shard is read whole, front to back) and what reading every
   field of those shards would cost.
2. cut: pairs are drawn with the training sampler and their windows cut into batches exactly as
   fit.py does (training.windows.make_batch), for --windows pairs; windows per second per core =
   pairs / CPU seconds of this process (one torch / OpenCV thread), with wall time alongside.

A "window" here is one training pair: a 5-frame visual window and its audio window.
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import argparse
import json
import time
from collections import Counter

from catalog.layout import tar_path
from training.combos import COMBOS, combo_fields, parse_combo
from training.data import StoreError, read_catalog, select_rows, shards_of, stream_utterances
from training.sampler import PairSampler
from training.windows import make_batch


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", required=True, help="store root")
    p.add_argument("--combos", nargs="+", default=list(COMBOS), choices=COMBOS, help="combos to measure")
    p.add_argument("--split", default="train", help="split to read")
    p.add_argument("--windows", type=int, default=8192, help="pairs to cut per combo")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per batch")
    p.add_argument("--threads", type=int, default=1, help="torch / OpenCV threads")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--cache-frames", action="store_true",
                   help="as fit.py --cache-frames: keep decoded rgb frames after first use")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    return p


def store_fields(store: Path, rows: list[dict]) -> list[str]:
    """Fields with a column in the catalog and a tar series on disk."""
    names = [c[len("field_"):] for c in rows[0] if c.startswith("field_")] if rows else []
    return [n for n in names if n != "meta" and any((store / "shards").glob(f"*/{n}/*.tar"))]


def tar_bytes(store: Path, shards: list[tuple[str, int]], name: str) -> int:
    return sum(p.stat().st_size for p in (tar_path(store, d, name, s) for d, s in shards) if p.exists())


def measure(store: Path, combo: str, all_rows: list[dict], fields_on_disk: list[str],
            args: argparse.Namespace) -> dict:
    audio, visual = parse_combo(combo)
    fields = combo_fields(combo)
    rows = select_rows(all_rows, fields, [args.split], store)
    shards = shards_of(rows)
    counted: Counter = Counter()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    utts = list(stream_utterances(store, fields, rows, all_rows, bytes_read=counted))
    load_cpu, load_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    if args.cache_frames:
        for u in utts:
            u.frame_cache = {} if "rgb" in u.data else None

    sampler = PairSampler(utts, seed=args.seed, cross_speaker_ratio=0.2
                          if len({u.speaker_id for u in utts}) > 1 else 0.0)
    make_batch(sampler.sample(args.batch_size), utts, utts, audio, visual)  # warm-up
    n = 0
    cpu0, wall0 = time.process_time(), time.perf_counter()
    while n < args.windows:
        batch = make_batch(sampler.sample(args.batch_size), utts, utts, audio, visual)
        n += len(batch)
    cut_cpu, cut_wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "combo": combo, "split": args.split, "utterances": len(utts), "shards": len(shards),
        "windows_in_split": int(sum(u.n_windows for u in utts)),
        "pairs_cut": n, "windows_per_s_per_core": n / max(cut_cpu, 1e-9),
        "windows_per_s_wall": n / max(cut_wall, 1e-9),
        "load_cpu_s": round(load_cpu, 3), "load_wall_s": round(load_wall, 3),
        "bytes_read": {f: int(counted.get(f, 0)) for f in fields_on_disk},
        "bytes_needed": {f: tar_bytes(store, shards, f) for f in fields},
        "bytes_all_fields": sum(tar_bytes(store, shards, f) for f in fields_on_disk),
        "batch_shapes": {"visual": list(batch.visual.shape), "audio": list(batch.audio.shape)},
    }


def format_table(results: list[dict], fields_on_disk: list[str]) -> str:
    head = (f"{'combo':<18}{'win/s/core':>11}{'win/s wall':>11}{'load s':>8}  "
            + "".join(f"{f + ' MB':>13}" for f in fields_on_disk)
            + f"{'needed MB':>11}{'all MB':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        read = "".join(f"{r['bytes_read'][f] / 1e6:>13.2f}" for f in fields_on_disk)
        lines.append(f"{r['combo']:<18}{r['windows_per_s_per_core']:>11.0f}{r['windows_per_s_wall']:>11.0f}"
                     f"{r['load_wall_s']:>8.2f}  {read}{sum(r['bytes_needed'].values()) / 1e6:>11.2f}"
                     f"{r['bytes_all_fields'] / 1e6:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    try:
        import cv2
        cv2.setNumThreads(args.threads)
    except ImportError:
        pass
    store = Path(args.store)
    try:
        all_rows = read_catalog(store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    on_disk = store_fields(store, all_rows)
    results, skipped = [], {}
    for combo in args.combos:
        if not set(combo_fields(combo)) <= set(on_disk):
            skipped[combo] = f"store lacks {sorted(set(combo_fields(combo)) - set(on_disk))}"
            continue
        try:
            results.append(measure(store, combo, all_rows, on_disk, args))
        except StoreError as exc:
            skipped[combo] = str(exc)
    print(f"store {store}, split {args.split}, {args.threads} thread(s), batch {args.batch_size}; "
          "MB = bytes read from each field's tars")
    print(format_table(results, on_disk))
    for combo, why in skipped.items():
        print(f"skipped {combo}: {why}")
    report = {"store": str(store), "split": args.split, "threads": args.threads,
              "batch_size": args.batch_size, "fields_on_disk": on_disk, "results": results,
              "skipped": skipped}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
