"""The paper's Table IV (combos) and Table V (cross-speaker share, margins) on a store.

    python training/ablate.py --store STORE --out runs/ablate --seeds 0 1 2 --minutes 3
    python training/ablate.py --store S --out D --combos mel_landmarks mel_rgb --seeds 0 --steps 300 --dry-run

Runs a grid of fit.py jobs, one after the other, in this process:

- Table IV: every combo of --combos (those whose fields the store lacks are skipped and listed) at
  the defaults (cross-speaker ratio 0.2, margins 0.1,0.3 for mel, 0.3,0.7 for hubert), per seed;
  max and mean accuracy over seeds.
- Table V: for each audio representation of --ablation-audio with the visual representation
  --ablation-visual: cross-speaker ratio in --ratios (default margins; mean over seeds, as the
  paper's footnote 1) and margins in --margin-grid (ratio 0.2; max over seeds, footnote 2).

A configuration shared by both tables runs once. Accuracy is the held-out balanced accuracy at
threshold 0.5 (test split by default, --metric val), of the best-val weights, in percent, on the
same fixed held-out pairs for every run (cross-speaker share 0.2 whatever the training ratio). Each run
writes its own fit.py directory under --out; a run whose final.json exists is reused, so an
interrupted grid continues where it stopped. Writes <out>/ablation.json and <out>/ablation.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from features.cli import HelpFormatter
from training.combos import AUDIO, COMBOS, DEFAULT_MARGINS, VISUAL, combo_fields, parse_combo
from training.config import TrainConfig
from training.data import StoreError, read_catalog, select_rows

RATIOS = (0.0, 0.2, 0.5)
MARGINS = ((0.0, 0.0), (0.1, 0.3), (0.3, 0.7))
AUDIO_NAMES = {"mel": "Mel spec.", "hubert": "HuBERT"}
VISUAL_NAMES = {"rgb": "RGB images", "parsing": "Face parsing map", "landmarks": "Landmarks",
                "tdmm": "3DMM"}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Table IV / Table V grid of UniSync runs on a store.",
                                formatter_class=HelpFormatter)
    p.add_argument("--store", required=True, help="store root")
    p.add_argument("--out", required=True, help="grid directory (one fit.py run directory per job)")
    p.add_argument("--combos", nargs="+", default=list(COMBOS), choices=COMBOS,
                   help="Table IV combos (skipped when the store lacks their fields)")
    p.add_argument("--ablation-visual", default="landmarks", choices=VISUAL,
                   help="visual representation of Table V")
    p.add_argument("--ablation-audio", nargs="+", default=list(AUDIO), choices=AUDIO,
                   help="audio representations of Table V (its columns)")
    p.add_argument("--ratios", nargs="+", type=float, default=list(RATIOS),
                   help="cross-speaker ratios of Table V")
    p.add_argument("--margin-grid", nargs="+", default=[f"{a},{b}" for a, b in MARGINS],
                   help="margins 'same,cross' of Table V")
    p.add_argument("--no-table-v", action="store_true", help="Table IV only")
    p.add_argument("--no-table-iv", action="store_true", help="Table V only")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds per configuration")
    p.add_argument("--steps", type=int, default=3000, help="step cap per run")
    p.add_argument("--minutes", type=float, default=3.0, help="time cap per run (0: none)")
    p.add_argument("--width", type=float, default=0.25, help="model width (1.0: paper size)")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    p.add_argument("--batch-size", type=int, default=64, help="pairs per step")
    p.add_argument("--eval-every", type=int, default=250, help="val evaluation (checkpoint selection) every N steps")
    p.add_argument("--eval-pairs", type=int, default=1000, help="fixed held-out pairs per split")
    p.add_argument("--offsets", action="store_true", help="also run the offset protocols in each run")
    p.add_argument("--metric", default="test", choices=("test", "val"), help="split the tables report")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per run (0: default)")
    p.add_argument("--fit-arg", action="append", default=[],
                   help="extra fit.py setting NAME=VALUE, repeatable (e.g. --fit-arg depth=0)")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")
    return p


def parse_margins(text: str) -> tuple[float, float]:
    a, b = (float(x) for x in text.split(","))
    return a, b


def available(store: str, combos: list[str]) -> tuple[list[str], dict[str, str]]:
    """Combos whose fields the store holds for train, val and test; the others with the reason."""
    rows = read_catalog(store)
    ok, skipped = [], {}
    for combo in combos:
        try:
            for split in ("train", "val", "test"):
                select_rows(rows, combo_fields(combo), [split], store)
            ok.append(combo)
        except StoreError as exc:
            skipped[combo] = str(exc)
    return ok, skipped


def plan(args: argparse.Namespace, usable: set[str]) -> list[dict]:
    """The unique runs of both tables (combos in `usable` only), each tagged with the table
    cells it feeds."""
    runs: dict[tuple, dict] = {}

    def add(combo: str, ratio: float, margins: tuple[float, float], seed: int, tag: tuple) -> None:
        key = (combo, float(ratio), tuple(float(m) for m in margins), seed)
        runs.setdefault(key, {"combo": combo, "ratio": float(ratio), "margins": list(key[2]),
                              "seed": seed, "tags": []})["tags"].append(list(tag))

    if not args.no_table_iv:
        for combo in (c for c in args.combos if c in usable):
            audio, _ = parse_combo(combo)
            for seed in args.seeds:
                add(combo, 0.2, DEFAULT_MARGINS[audio], seed, ("iv", combo))
    if not args.no_table_v:
        for audio in args.ablation_audio:
            combo = f"{audio}_{args.ablation_visual}"
            if combo not in usable:
                continue
            for ratio in args.ratios:
                for seed in args.seeds:
                    add(combo, ratio, DEFAULT_MARGINS[audio], seed, ("v_ratio", audio, ratio))
            for text in args.margin_grid:
                for seed in args.seeds:
                    add(combo, 0.2, parse_margins(text), seed, ("v_margin", audio, text))
    return list(runs.values())


def run_dir(out: Path, run: dict) -> Path:
    same, cross = run["margins"]
    return out / run["combo"] / f"ratio{run['ratio']:g}_margins{same:g}-{cross:g}_seed{run['seed']}"


def fit_config(args: argparse.Namespace, run: dict, directory: Path) -> TrainConfig:
    """The fit.py settings of one run of the grid."""
    cfg = TrainConfig(combo=run["combo"], store=str(args.store), out=str(directory), steps=args.steps,
                      max_minutes=args.minutes, width=args.width, lr=args.lr, batch_size=args.batch_size,
                      seed=run["seed"], cross_speaker_ratio=run["ratio"],
                      margins=",".join(str(m) for m in run["margins"]), eval_every=args.eval_every,
                      eval_pairs=args.eval_pairs, no_progress=True, threads=args.threads,
                      offset_windows=200 if args.offsets else 0)
    for extra in args.fit_arg:  # --fit-arg depth=0 (or --fit-arg=--depth=0)
        name, _, value = extra.lstrip("-").partition("=")
        name = name.replace("-", "_")
        if not hasattr(cfg, name):
            raise SystemExit(f"ablate.py: --fit-arg {extra!r}: fit.py has no setting {name!r}")
        default = getattr(cfg, name)
        kind = type(default) if default is not None else (float if name == "depth" else str)
        setattr(cfg, name, value.lower() in ("1", "true", "yes") if kind is bool else kind(value))
    return cfg


def execute(args: argparse.Namespace, runs: list[dict]) -> list[dict]:
    from training.fit import train

    out = Path(args.out)
    for i, run in enumerate(runs, 1):
        directory = run_dir(out, run)
        final_path = directory / "final.json"
        if final_path.exists():
            final, reused = json.loads(final_path.read_text()), True
        else:
            started = time.perf_counter()
            print(f"[{i}/{len(runs)}] {run['combo']} ratio {run['ratio']:g} margins "
                  f"{run['margins']} seed {run['seed']}", file=sys.stderr, flush=True)
            final, reused = train(fit_config(args, run, directory)), False
            run["wall_s"] = round(time.perf_counter() - started, 1)
        run.update({"dir": str(directory), "reused": reused, "steps": final["steps"],
                    "val": final["val"]["balanced_accuracy"], "test": final["test"]["balanced_accuracy"]})
        for split in ("val", "test"):
            if final[split].get("utterance_offset_accuracy") is not None:
                run[f"{split}_offset"] = final[split]["utterance_offset_accuracy"]
    return runs


def tables(runs: list[dict], metric: str) -> dict:
    """Table IV and Table V cells: accuracies in percent, with the runs behind each."""
    cells: dict[tuple, list[float]] = {}
    for run in runs:
        if metric not in run:
            continue
        for tag in run["tags"]:
            cells.setdefault(tuple(tag), []).append(100.0 * run[metric])

    def stats(values: list[float]) -> dict:
        return {"max": float(np.max(values)), "mean": float(np.mean(values)), "n": len(values)}

    iv = [{"combo": tag[1], "audio": parse_combo(tag[1])[0], "visual": parse_combo(tag[1])[1],
           **stats(v)} for tag, v in cells.items() if tag[0] == "iv"]
    iv.sort(key=lambda r: -r["mean"])
    v_ratio = [{"audio": tag[1], "ratio": tag[2], **stats(v)} for tag, v in cells.items() if tag[0] == "v_ratio"]
    v_margin = [{"audio": tag[1], "margins": tag[2], **stats(v)} for tag, v in cells.items()
                if tag[0] == "v_margin"]
    return {"table_iv": iv, "table_v_ratio": v_ratio, "table_v_margin": v_margin}


def markdown(t: dict, args: argparse.Namespace, skipped: dict[str, str]) -> str:
    split = args.metric
    lines = [f"# UniSync ablation on `{args.store}`", "",
             f"Balanced accuracy (%) at threshold 0.5 on the held-out **{split}** split (best-val "
             f"weights); seeds {args.seeds}; width {args.width}, lr {args.lr}, batch {args.batch_size}, "
             f"at most {args.steps} steps / {args.minutes} min per run.", ""]
    if t["table_iv"]:
        lines += ["## Table IV: audio-visual representation combos", "",
                  "| Audio rep. | Visual rep. | Max Acc. (%) | Average Acc. (%) | runs |",
                  "|---|---|---|---|---|"]
        for r in t["table_iv"]:
            lines.append(f"| {AUDIO_NAMES[r['audio']]} | {VISUAL_NAMES[r['visual']]} | {r['max']:.2f} "
                         f"| {r['mean']:.2f} | {r['n']} |")
        lines.append("")
    if t["table_v_ratio"] or t["table_v_margin"]:
        audios = [a for a in args.ablation_audio
                  if any(r["audio"] == a for r in t["table_v_ratio"] + t["table_v_margin"])]
        head = " | ".join(f"Acc. ({AUDIO_NAMES[a]})" for a in audios)
        lines += [f"## Table V: ablations (visual: {VISUAL_NAMES.get(args.ablation_visual, args.ablation_visual)})", "",
                  f"| Aspect | Value | {head} |", "|---|---|" + "---|" * len(audios)]
        for name, key, rows, stat in (("Cross-speaker proportion ¹", "ratio", t["table_v_ratio"], "mean"),
                                      ("Margin (same, cross) ²", "margins", t["table_v_margin"], "max")):
            values = sorted({r[key] for r in rows}, key=lambda x: x if isinstance(x, float) else parse_margins(x))
            for i, value in enumerate(values):
                cells = []
                for a in audios:
                    hit = [r for r in rows if r["audio"] == a and r[key] == value]
                    cells.append(f"{hit[0][stat]:.2f}" if hit else "–")
                label = f"{value:g}" if isinstance(value, float) else "({})".format(", ".join(
                    f"{x:g}" for x in parse_margins(value)))
                lines.append(f"| {name if i == 0 else ''} | {label} | " + " | ".join(cells) + " |")
        lines += ["", "¹ mean accuracy over seeds (the paper: mean over well-converged runs).",
                  "² maximum accuracy over seeds (the paper: maximum achieved).", ""]
    if skipped:
        lines += ["Skipped (fields missing from the store):", ""]
        lines += [f"- {c}: {why}" for c, why in skipped.items()]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        wanted = list(args.combos)
        if not args.no_table_v:
            wanted += [f"{a}_{args.ablation_visual}" for a in args.ablation_audio]
        wanted = list(dict.fromkeys(wanted))
        combos, skipped = available(args.store, wanted)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    runs = plan(args, set(combos))
    if args.dry_run:
        for run in runs:
            print(json.dumps({k: run[k] for k in ("combo", "ratio", "margins", "seed")}
                             | {"dir": str(run_dir(Path(args.out), run))}))
        for combo, why in skipped.items():
            print(f"skipped {combo}: {why}", file=sys.stderr)
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = execute(args, runs)
    t = tables(runs, args.metric)
    report = {"store": str(args.store), "metric": args.metric, "settings": {
        k: getattr(args, k) for k in ("seeds", "steps", "minutes", "width", "lr", "batch_size",
                                      "ablation_visual", "ablation_audio", "ratios", "margin_grid")},
        "skipped": skipped, "runs": runs, **t}
    (out / "ablation.json").write_text(json.dumps(report, indent=2))
    text = markdown(t, args, skipped)
    (out / "ablation.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
