"""Loader benchmark: training windows per second per core with 0, 1 and 2 loader workers, and the
bytes read per field, per combo.

    python -m benchmarks.loader --store STORE [--combos mel_landmarks mel_rgb] [--workers 0 1 2] [--json out.json]

For each combo whose fields the store holds (all eight by default):

1. read: the combo's utterances of --split are read through the trainer's reader
   (training.data.stream_utterances -> catalog.tars.iter_shard) with every tar byte counted per
   field, next to what the combo needs (the full tars of its two fields for the split's shards:
   a shard is read whole, front to back) and what reading every field would cost.
2. fit.py's own loader (training.loader.RankData over the training split's shards) is drained
   by this process for --windows pairs after every worker has delivered its first message
   (start-up excluded). 0 workers: the batches are cut in this process; windows per second per
   core = pairs / CPU seconds of this process (one torch thread). N workers: windows per second
   = pairs / wall seconds, and pairs per CPU second of the workers and this process together
   (what a window costs, the hand-off to the training process included). Each figure is the
   median of --repeats intervals, interleaved across the worker counts (a shared VM's
   neighbours come and go); before an interval the messages the workers prepared while idle
   are drained untimed, and after it the workers are left to go idle, so every interval is
   steady state and no setting's refill runs in another's interval.
3. Np: N independent processes, each cutting with its own in-process loader, drained at once:
   the machine's ceiling for N workers with no hand-off at all (N cores of a shared VM often
   give less than N times one). On a
   machine with N free cores, N workers give about N times the per-core rate; on a loaded
   machine the wall figure shows the load, not the loader.

A "window" is one training pair: a 5-frame visual window and its audio window. `--lip` adds a
row for the lip field's windows (grayscale mouth ROIs; no combo reads them yet).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from catalog.layout import tar_path
from training.combos import COMBOS, combo_fields, parse_combo
from training.data import StoreError, load_utterances, read_catalog, select_rows, shard_list, stream_utterances
from training.handoff import chunk_batches
from training.loader import RankData
from training.windows import raw_window


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", required=True, help="store root")
    p.add_argument("--combos", nargs="+", default=list(COMBOS), choices=COMBOS, help="combos to measure")
    p.add_argument("--split", default="train", help="split to read")
    p.add_argument("--windows", type=int, default=8192, help="pairs to cut per combo and setting")
    p.add_argument("--repeats", type=int, default=3,
                   help="intervals of --windows pairs per worker count, interleaved; the medians are reported")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per batch")
    p.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2],
                   help="loader worker counts to measure (0: in this process, CPU time)")
    p.add_argument("--handoff-pairs", type=int, default=512, help="as fit.py --handoff-pairs")
    p.add_argument("--prefetch", type=int, default=2, help="as fit.py --prefetch")
    p.add_argument("--image-scale", type=float, default=1.0, help="as fit.py --image-scale")
    p.add_argument("--cache-frames", action="store_true", help="as fit.py --cache-frames")
    p.add_argument("--lip", action="store_true", help="also time lip windows (when the store has them)")
    p.add_argument("--with-hubert", type=Path, default=None, metavar="WORKDIR",
                   help="when the store has no hubert field, measure the hubert combos on a copy under "
                        "WORKDIR with the field added by a tiny random HuBERT (benchmarks/hubert_store.py); "
                        "the other combos are measured on the store itself")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--json", type=Path, default=None, help="write the results here as JSON")
    return p


def store_fields(store: Path, rows: list[dict]) -> list[str]:
    """Fields with a column in the catalog and a tar series on disk."""
    names = [c[len("field_"):] for c in rows[0] if c.startswith("field_")] if rows else []
    return [n for n in names if n != "meta" and any((store / "shards").glob(f"*/{n}/*.tar"))]


def tar_bytes(store: Path, shards: list[tuple[str, int]], name: str) -> int:
    return sum(p.stat().st_size for p in (tar_path(store, d, name, s) for d, s in shards) if p.exists())


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far (Linux /proc)."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Drain:
    """fit.py's loader with `workers` processes, started and warmed (every worker has delivered
    its first message), drained interval by interval."""

    def __init__(self, store: Path, audio: str, visual: str, workers: int, args: argparse.Namespace):
        import os
        data = RankData.from_store(str(store), audio, visual, 0, 1, workers, seed=args.seed,
                                   batch_size=args.batch_size, image_scale=args.image_scale,
                                   cache_frames=args.cache_frames,
                                   cross_speaker_ratio=0.2, handoff_pairs=args.handoff_pairs)
        self.batches = data.batches(0, prefetch=args.prefetch)
        for _ in range(max(1, workers)):
            batch = next(self.batches)
        self.shapes = {"visual": list(batch.visual.shape), "audio": list(batch.audio.shape)}
        self.pids = [os.getpid()] + self.batches.worker_pids
        # what the workers hold ready after a pause: drained untimed, so intervals are steady state
        self.buffered = workers * args.prefetch * chunk_batches(args.batch_size, args.handoff_pairs) * args.batch_size
        self.walls: list[float] = []
        self.cpus: list[float] = []

    def interval(self, pairs: int) -> None:
        """Drain `pairs`; record windows/s (wall) and per CPU second of the workers + this process.
        Then wait until the workers have refilled their prefetch and gone idle, so that their
        refill does not run during the next setting's interval."""
        n = 0
        while n < self.buffered:
            n += len(next(self.batches))
        n, wall0, cpu0 = 0, time.perf_counter(), sum(cpu_seconds(p) for p in self.pids)
        while n < pairs:
            n += len(next(self.batches))
        self.walls.append(n / (time.perf_counter() - wall0))
        self.cpus.append(n / max(sum(cpu_seconds(p) for p in self.pids) - cpu0, 1e-9))
        settle(self.pids[1:])


def settle(pids: list[int], quiet_s: float = 0.2, limit_s: float = 30.0) -> None:
    """Return once `pids` have used no CPU for `quiet_s` (bounded by `limit_s`)."""
    deadline = time.monotonic() + limit_s
    last = sum(cpu_seconds(p) for p in pids)
    while pids and time.monotonic() < deadline:
        time.sleep(quiet_s)
        now = sum(cpu_seconds(p) for p in pids)
        if now == last:
            return
        last = now


class Independent:
    """The machine's own ceiling for N workers: N separate processes, each cutting with an
    in-process loader (no hand-off at all), drained at the same time. Their summed rate over the
    0-worker rate is what N cores give here when nothing is shared; a shared VM often gives less
    than N. Each process is told how many pairs to drain and answers with its wall seconds."""

    def __init__(self, store: Path, audio: str, visual: str, n: int, args: argparse.Namespace):
        import multiprocessing as mp

        ctx = mp.get_context("fork")
        self.pipes, self.procs = [], []
        for i in range(n):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=_independent, args=(theirs, str(store), audio, visual, i, args), daemon=True)
            proc.start()
            self.pipes.append(mine)
            self.procs.append(proc)
        for pipe in self.pipes:
            pipe.recv()  # warmed
        self.walls: list[float] = []

    def interval(self, pairs: int) -> None:
        for pipe in self.pipes:
            pipe.send(pairs // len(self.pipes))
        seconds = [pipe.recv() for pipe in self.pipes]
        self.walls.append(pairs / max(seconds))

    def close(self) -> None:
        for pipe in self.pipes:
            pipe.send(0)
        for proc in self.procs:
            proc.join(timeout=10)


def _independent(pipe, store: str, audio: str, visual: str, index: int, args: argparse.Namespace) -> None:
    import torch
    torch.set_num_threads(1)
    data = RankData.from_store(store, audio, visual, 0, 1, 0, seed=args.seed + 1000 * (index + 1),
                               batch_size=args.batch_size, image_scale=args.image_scale,
                               cache_frames=args.cache_frames, cross_speaker_ratio=0.2)
    batches = data.batches(0)
    next(batches)
    pipe.send("ready")
    while (pairs := pipe.recv()) > 0:
        n, wall0 = 0, time.perf_counter()
        while n < pairs:
            n += len(next(batches))
        pipe.send(time.perf_counter() - wall0)


def loader_rates(store: Path, audio: str, visual: str, args: argparse.Namespace) -> tuple[dict, dict]:
    """Median rates per worker count; the settings' intervals are interleaved (0, 1, 2, 0, 1, 2,
    ...) so that a neighbour's load on the VM falls on all of them alike, not on one setting.
    Idle loaders wait on their queues and cost nothing while another is measured."""
    drains = {w: Drain(store, audio, visual, w, args) for w in args.workers}
    ceiling = Independent(store, audio, visual, max(args.workers), args) if max(args.workers) > 1 else None
    for _ in range(args.repeats):
        for d in drains.values():
            d.interval(args.windows)
        if ceiling is not None:
            ceiling.interval(args.windows)
    rates: dict[str, float] = {}
    for w, d in drains.items():
        wall, per_cpu = float(np.median(d.walls)), float(np.median(d.cpus))
        if w == 0:  # one process: CPU seconds are its core's
            rates["0"], rates["0_wall"] = per_cpu, wall
        else:
            rates[str(w)], rates[f"{w}_per_cpu_s"] = wall, per_cpu
        rates[f"{w}_intervals_wall"] = [round(x) for x in d.walls]
    if ceiling is not None:
        ceiling.close()
        rates[f"{len(ceiling.procs)}_independent"] = float(np.median(ceiling.walls))
    shapes = next(iter(drains.values())).shapes
    del drains  # stops the workers
    return rates, shapes


def measure(store: Path, combo: str, all_rows: list[dict], fields_on_disk: list[str],
            args: argparse.Namespace) -> dict:
    audio, visual = parse_combo(combo)
    fields = combo_fields(combo)
    rows = select_rows(all_rows, fields, [args.split], store)
    shards = shard_list(rows)
    counted: Counter = Counter()
    wall0 = time.perf_counter()
    utts = list(stream_utterances(store, fields, rows, all_rows, bytes_read=counted))
    load_wall = time.perf_counter() - wall0
    rates, shapes = loader_rates(store, audio, visual, args) if args.split == "train" else ({}, None)
    return {
        "combo": combo, "split": args.split, "utterances": len(utts), "shards": len(shards),
        "windows_in_split": int(sum(u.n_windows for u in utts)),
        "windows_per_s_per_core": rates.get("0"), "windows_per_s": rates,
        "load_wall_s": round(load_wall, 3),
        "bytes_read": {f: int(counted.get(f, 0)) for f in fields_on_disk},
        "bytes_needed": {f: tar_bytes(store, shards, f) for f in fields},
        "bytes_all_fields": sum(tar_bytes(store, shards, f) for f in fields_on_disk),
        "batch_shapes": shapes,
    }


def lip_rate(store: Path, args: argparse.Namespace) -> dict:
    """Lip windows (5 grayscale JPEGs each) per second per core, cut at seeded random starts."""
    utts = load_utterances(store, ["lip"], [args.split])
    rng = np.random.default_rng(args.seed)
    picks = [(u, int(rng.integers(u.n_windows))) for u in
             (utts[i] for i in rng.integers(len(utts), size=args.windows))]
    cpu0 = time.process_time()
    for u, t in picks:
        raw_window(u, "lip", t)
    return {"combo": "lip (windows only)", "windows_per_s_per_core": len(picks) / (time.process_time() - cpu0)}


def format_table(results: list[dict], fields_on_disk: list[str], workers: list[int]) -> str:
    m = max(workers)
    cols = [f"{w}w win/s" if w else "0w /core" for w in workers] + [f"{w}w /cpu-s" for w in workers if w]
    cols += [f"{m}p win/s"] if m > 1 else []
    ratios = [f"{m}w/0w", f"{m}p/0w", f"{m}w/{m}p"] if m > 1 else []
    head = (f"{'combo':<19}" + "".join(f"{c:>11}" for c in cols) + "".join(f"{c:>7}" for c in ratios)
            + f"{'load s':>8}  " + "".join(f"{f + ' MB':>13}" for f in fields_on_disk)
            + f"{'needed MB':>11}{'all MB':>9}")
    lines = [head, "-" * len(head)]
    for r in results:
        rates = r.get("windows_per_s") or {"0": r["windows_per_s_per_core"]}
        keys = [str(w) for w in workers] + [f"{w}_per_cpu_s" for w in workers if w]
        keys += [f"{m}_independent"] if m > 1 else []
        cells = "".join(f"{rates[k]:>11.0f}" if rates.get(k) else f"{'-':>11}" for k in keys)
        pairs = [(str(m), "0"), (f"{m}_independent", "0"), (str(m), f"{m}_independent")] if m > 1 else []
        cells += "".join(f"{rates[a] / rates[b]:>7.2f}" if rates.get(a) and rates.get(b) else f"{'-':>7}"
                         for a, b in pairs)
        if "bytes_read" not in r:
            lines.append(f"{r['combo']:<19}{cells}")
            continue
        read = "".join(f"{r['bytes_read'][f] / 1e6:>13.2f}" for f in fields_on_disk)
        lines.append(f"{r['combo']:<19}{cells}{r['load_wall_s']:>8.2f}  {read}"
                     f"{sum(r['bytes_needed'].values()) / 1e6:>11.2f}{r['bytes_all_fields'] / 1e6:>9.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    torch.set_num_threads(1)
    store = Path(args.store)
    try:
        all_rows = read_catalog(store)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    on_disk = store_fields(store, all_rows)
    stores = {c: (store, all_rows, on_disk) for c in args.combos}  # combo -> where it is measured
    hubert = [c for c in args.combos if "hubert" in combo_fields(c)]
    if args.with_hubert and hubert and "hubert" not in on_disk:
        from benchmarks.hubert_store import store_with_hubert

        copy = store_with_hubert(store, args.with_hubert)
        copy_rows = read_catalog(copy)
        on_disk = on_disk + ["hubert"]
        stores = {c: (store, all_rows, on_disk) for c in args.combos}
        stores.update({c: (copy, copy_rows, on_disk) for c in hubert})
        print(f"hubert combos on {copy} (a tiny random HuBERT's field: real shapes, no speech "
              "information)", file=sys.stderr)
    results, skipped = [], {}
    for combo in args.combos:
        where, rows, fields = stores[combo]
        have = store_fields(where, rows)
        if not set(combo_fields(combo)) <= set(have):
            skipped[combo] = f"store lacks {sorted(set(combo_fields(combo)) - set(have))}"
            continue
        try:
            results.append(measure(where, combo, rows, fields, args))
        except StoreError as exc:
            skipped[combo] = str(exc)
        print(f"  measured {combo}", file=sys.stderr, flush=True)
    if args.lip and "lip" in on_disk:
        results.append(lip_rate(store, args))
    print(f"store {store}, split {args.split}, batch {args.batch_size}, image scale {args.image_scale}; "
          "0w /core = windows/s per core cutting in this process (CPU time); Nw win/s = windows/s "
          "drained from N loader workers (wall); Nw /cpu-s = the same per CPU second of workers + "
          "this process; Np win/s = N independent in-process cutters at once (the machine's ceiling "
          "for N workers); MB = bytes read from each field's tars")
    print(format_table(results, on_disk, args.workers))
    for combo, why in skipped.items():
        print(f"skipped {combo}: {why}")
    report = {"store": str(store), "split": args.split, "batch_size": args.batch_size,
              "image_scale": args.image_scale, "workers": args.workers, "fields_on_disk": on_disk,
              "results": results, "skipped": skipped}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
