"""`make demo`: synthetic corpus -> Ray extraction -> catalog -> UniSync on two combos -> summary.

    python pipelines/demo.py --out demo_out

Every step is the same code a user runs by hand: pipelines/synthetic.py, pipelines/extract.py,
python -m catalog summary, training/fit.py and python -m catalog.preview.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from catalog.build import read_table
from catalog.summary import format_summary, summarize
from features.cli import HelpFormatter

from features import whisper
from features.hubert import DEFAULT_MODEL, HubertLoadError, load_model
from catalog.preview import render_preview
from pipelines.synthetic import generate_corpus

# The UniSync paper's representations and SyncTalklip's inputs (hubert and whisper join when their
# weights load). The generator-era fields (aligned crops, dlib's, FAN's) are left to the user:
# FAN needs --fan-weights, and the demo's time budget is for training.
DEMO_FIELDS = ("audio", "rgb", "landmarks", "mel", "parsing", "tdmm", "lip", "fbank")


# Image combos on 2 CPU cores in minutes: windows at half resolution (decoded at half size in the
# JPEG's DCT domain; the adapters are convolutional, the pool adaptive: the same model), the small
# demo store's decoded frames kept after first use, a learning rate for the narrow model (the
# paper's 1e-4 is for paper size; the geometry combos keep it) and the best-val weights chosen
# among evaluations every 100 steps (an image step costs ~10 geometry steps: a few hundred fit).
IMAGE_COMBO_SETTINGS = {"image_scale": 0.5, "cache_frames": True, "lr": 1e-3, "eval_every": 100}
# The demo trains for a fixed number of steps, so its result does not depend on the machine's load
# (a wall-clock budget gave mel_landmarks 0.866 on a busy machine, 0.938 on a quiet one); the time
# budget is only a guard. About 3 min per combo on 2 idle cores.
DEMO_STEPS = {"geometry": 1000, "image": 600}


def is_image_combo(combo: str) -> bool:
    return combo.endswith(("_rgb", "_parsing"))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", type=Path, default=Path("demo_out"), help="where corpus, store and runs go")
    p.add_argument("--speakers", type=int, default=8, help="synthetic speakers")
    p.add_argument("--utterances", type=int, default=6, help="utterances per speaker")
    p.add_argument("--seed", type=int, default=0, help="corpus and training seed")
    p.add_argument("--workers", type=int, default=2, help="Ray extraction workers")
    p.add_argument("--combos", nargs="+", default=["mel_landmarks", "mel_rgb"], help="combos to train")
    p.add_argument("--width", type=float, default=0.25,
                   help="model width multiplier (1.0 = paper size; the demo trains a narrower model)")
    p.add_argument("--steps", type=int, default=None,
                   help=f"training steps per combo (default: {DEMO_STEPS['geometry']} for geometry combos, "
                        f"{DEMO_STEPS['image']} for image combos)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for training: one, so a busy machine slows the demo without "
                        "changing its result (two OpenMP threads beside other work ran 6x fewer steps)")
    p.add_argument("--minutes", type=float, default=20.0,
                   help="guard: stop a combo's training after this many minutes (a slow machine; the "
                        "result then depends on its speed and the summary says so)")
    p.add_argument("--hubert-model", default=DEFAULT_MODEL,
                   help="HuBERT id or local directory; the field is skipped when it cannot load")
    p.add_argument("--whisper-model", default=whisper.DEFAULT_MODEL,
                   help="Whisper id or local directory; the field is skipped when it cannot load")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = args.out.resolve()
    corpus, store = out / "corpus", out / "store"
    started = time.perf_counter()

    print(f"[1/5] synthetic corpus: {args.speakers} speakers x {args.utterances} utterances -> {corpus}")
    if not any(corpus.glob("*/*.mp4")):
        generate_corpus(corpus, n_speakers=args.speakers, n_utterances=args.utterances, seed=args.seed)

    fields = [*DEMO_FIELDS, "meta"]
    try:
        load_model(args.hubert_model)
        fields.append("hubert")
    except HubertLoadError as exc:
        print(f"skipping the hubert field: {exc}")
    try:
        whisper.load_model(args.whisper_model)
        fields.append("whisper")
    except whisper.WhisperLoadError as exc:
        print(f"skipping the whisper field: {exc}")
    print(f"[2/5] extraction of {' '.join(fields)} with local Ray ({args.workers} workers) -> {store}")
    subprocess.run([sys.executable, str(Path(__file__).with_name("extract.py")), "--dataset", "synthetic",
                    "--root", str(corpus), "--store", str(store), "--workers", str(args.workers),
                    "--shard-size", "6", "--fields", *fields, "--hubert-model", args.hubert_model,
                    "--whisper-model", args.whisper_model],
                   check=True, env={**os.environ, "RAY_ADDRESS": ""})
    report = json.loads((store / "extract_report.json").read_text())

    print("[3/5] catalog")
    summary = summarize(store)
    print(format_summary(summary))

    utts = read_table(store, "utterances").to_pylist()
    shown = next(u for u in utts if u["status"] == "ok" and u["split"] == "test")
    preview = render_preview(store, shown["utt_id"], out / "preview.png")
    print(f"[4/5] preview of {shown['utt_id']} -> {preview}")

    from training.config import TrainConfig
    from training.fit import train

    results = {}
    for combo in args.combos:
        image = is_image_combo(combo)
        steps = args.steps or DEMO_STEPS["image" if image else "geometry"]
        print(f"[5/5] training {combo} (width {args.width}, {steps} steps, guard {args.minutes} min)")
        results[combo] = train(TrainConfig(
            combo=combo, store=str(store), out=str(out / "runs" / combo), width=args.width,
            max_minutes=args.minutes, steps=steps, seed=args.seed, threads=args.threads,
            **(IMAGE_COMBO_SETTINGS if image else {})))
        if results[combo]["steps"] < steps:
            print(f"  note: the {args.minutes} min guard stopped {combo} at step {results[combo]['steps']} "
                  f"of {steps}; its accuracy depends on this machine's speed")

    final = {
        "utterances": summary["utterances"], "ok": summary["ok"], "speakers": summary["speakers"],
        "frames": summary["frames"], "bytes_per_field": {f: v["bytes"] for f, v in summary["fields"].items()},
        "extraction_frames_per_second": report["frames_per_second"],
        "balanced_accuracy": {c: {"val": r["val"]["balanced_accuracy"], "test": r["test"]["balanced_accuracy"]}
                              for c, r in results.items()},
        "steps": {c: r["steps"] for c, r in results.items()},
        "model_width": args.width, "preview": str(preview),
        "minutes": round((time.perf_counter() - started) / 60, 2),
    }
    (out / "summary.json").write_text(json.dumps(final, indent=2))
    print("\n== demo summary ==")
    print(f"utterances {final['utterances']} ({final['ok']} ok), speakers {final['speakers']}, "
          f"frames {final['frames']}")
    for f, b in final["bytes_per_field"].items():
        print(f"  {f:<10} {b / 1e6:8.2f} MB")
    print(f"extraction: {final['extraction_frames_per_second']:.1f} frames/s")
    for c, acc in final["balanced_accuracy"].items():
        print(f"  {c:<14} held-out balanced accuracy: val {acc['val']:.3f}  test {acc['test']:.3f}")
    print(f"preview: {preview}\ntotal: {final['minutes']} min; written to {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
