"""A training run's settings: one typed dataclass, and the fit.py command line built from it.

demo.py, ablate.py and tests build a `TrainConfig` directly (`TrainConfig(combo=..., store=...)`);
the CLI's flags, defaults and help come from the same fields, so the two never drift apart.
"""
from __future__ import annotations

import argparse
from dataclasses import MISSING, asdict, dataclass, field, fields

from features.cli import HelpFormatter
from training.combos import AVSYNC_COMBOS, COMBOS, DEFAULT_MARGINS, parse_combo

ALL_COMBOS = COMBOS + tuple(c for c in AVSYNC_COMBOS if c not in COMBOS)


def _opt(default, help: str, **cli):
    return field(default=default, metadata={"help": help, **cli})


@dataclass
class TrainConfig:
    combo: str = _opt(MISSING, f"<audio>_<visual> representations: {', '.join(COMBOS)} ('all': "
                               "--print-model only); --model avsync: "
                               f"{', '.join(AVSYNC_COMBOS)}", choices=ALL_COMBOS + ("all",), required=True,
                    metavar="COMBO")
    store: str | None = _opt(None, "store root (holds catalog/ and shards/)")
    out: str | None = _opt(None, "run directory for checkpoints and metrics")
    steps: int = _opt(20000, "optimiser steps (total, resume included)")
    batch_size: int = _opt(64, "pairs per step per rank")
    lr: float = _opt(1e-4, "Adam learning rate (paper: 1e-4)")
    lr_schedule: str = _opt("constant", "constant, or cosine: a half cosine from --lr to --lr-floor x --lr "
                                        "at --steps (a function of the step: --resume lands on the same rate)",
                            choices=("constant", "cosine"))
    lr_floor: float = _opt(0.1, "--lr-schedule cosine: the last step's rate as a share of --lr")
    weight_decay: float = _opt(1e-4, "coupled L2 (paper: 1e-4)")
    width: float = _opt(1.0, "channel multiplier: 1.0 is paper size (~16.3M params), 0.25 a CPU demo")
    depth: float | None = _opt(None, "residual-block multiplier; unset: 1 at width >= 0.5, else 0")
    seed: int = _opt(0, "model init and pair sampling seed")
    cross_speaker_ratio: float = _opt(0.2, "share of negatives taken from another speaker")
    margins: str | None = _opt(None, "Eq. 1 margins 'same,cross'; unset: 0.1,0.3 for mel, 0.3,0.7 for hubert")
    eval_every: int = _opt(500, "evaluate on val every N steps (0: end only)")
    eval_pairs: int = _opt(1000, "fixed seeded pairs per held-out split")
    eval_cross_speaker_ratio: float = _opt(
        0.2, "cross-speaker share of the held-out negatives (fixed, whatever the training ratio, "
             "so runs of an ablation are scored on the same pairs)")
    offset_windows: int = _opt(200, "at most this many windows in the final per-window offset "
                                    "protocol (0: skip both offset protocols)")
    offset_shifts: str = _opt("-10,10", "injected audio shifts 'lo,hi' of the final per-utterance offset protocol")
    log_every: int = _opt(50, "log the mean training loss every N steps")
    save_every: int = _opt(0, "also write checkpoint.pt every N steps (it is written at every eval and at the end)")
    max_minutes: float = _opt(0.0, "stop training after this many minutes (0: no limit)")
    resume: bool = _opt(False, "continue from --out/checkpoint.pt (same step, same sampler position)")
    workers: int | None = _opt(None, "loader worker processes per rank (unset: the rank's cores less one on "
                                     "a GPU, 0 on a CPU, where the model step is the bottleneck and "
                                     "torch takes the cores; 0: load in the training process)")
    prefetch: int = _opt(2, "messages (--handoff-pairs pairs each) each loader worker prepares ahead")
    handoff_pairs: int = _opt(512, "pairs a loader worker sends per message, in whole batches (fewer, "
                                   "larger hand-offs: training/handoff.py)")
    buffer_shards: int = _opt(0, "keep only N of a rank's shards in memory (split over its loader "
                                 "workers), swapping one every --refresh-every steps (0: all of them)")
    refresh_every: int = _opt(200, "steps between shard swaps")
    cache_frames: bool = _opt(False, "keep decoded rgb frames (lower halves, ~14 KB a frame) after first "
                                     "use instead of decoding a window's JPEGs every time it is drawn")
    image_scale: float = _opt(1.0, "rgb / parsing windows at this scale (0.5: 24 x 48 lower halves, "
                                   "decoded at half size; ~4x cheaper image adapters on CPU)")
    threads: int = _opt(0, "torch CPU threads (0: torch's default)")
    device: str = _opt("auto", "'auto' (cuda if available), 'cpu', 'cuda', ...")
    dtype: str = _opt("bf16", "autocast dtype on CUDA (CPU always runs float32)", choices=("bf16", "fp32"))
    sync_correct: bool = _opt(False, "apply each utterance's catalog sync_offset (python -m training.sync.sync_pass) to "
                                     "its audio fields when cutting windows; the unpaired end frames are "
                                     "dropped and counted (catalog/sync_correction.py)")
    landmarks_center: bool = _opt(True, "subtract each utterance's mean landmark shape / 3DMM coefficients",
                                  aliases=("--center",))
    model: str = _opt("unisync", "the expert: unisync (UniSync, Eq. 1 margin BCE) or avsync (SyncTalklip's "
                                 "AV-SyncNet, Eq. 6 = L_av + L_lip: training/avsync_train.py)",
                      choices=("unisync", "avsync"))
    preset: str = _opt("tiny", "--model avsync size: micro (tests), tiny (2-core demo), small, paper "
                               "(24 blocks x 1024: training/avsync.py PRESETS)",
                       choices=("micro", "tiny", "small", "paper"))
    lambda_av: float = _opt(1.0, "--model avsync: weight of the sync term (Eq. 6's lambda_av; 0: L_lip only)")
    lambda_lip: float = _opt(1.0, "--model avsync: weight of L_lip (Eq. 6's lambda_lip; 0: L_av only)")
    contrastive: str = _opt("theta", "--model avsync sync term: theta (Eq. 5's L_av on the sampler's pairs) "
                                     "or infonce (the conventional contrastive loss on its positives)",
                            choices=("theta", "infonce"))
    tau: float = _opt(5.0, "--model avsync: Eq. 5's tau (multiplies |f^a - f^v| before F: the sync "
                           "logit's scale at the start)")
    infonce_temperature: float = _opt(0.1, "--contrastive infonce: the cosine logits' temperature")
    lip_ctc: float = _opt(0.0, "--model avsync: weight of an auxiliary CTC loss on the lip reader's encoder "
                               "(hybrid CTC / attention; 0: Eq. 4's decoder loss alone)")
    lip_batch: int = _opt(8, "--model avsync: whole transcribed train utterances per step for L_lip")
    lip_augment: bool = _opt(True, "--model avsync: stretch, move and contrast-scale each L_lip utterance's "
                                   "mouth ROIs by one random draw (training/lipread.py augment_frames)")
    select: str = _opt("auto", "which val state best.pt keeps: sync (val balanced accuracy), sync+lip "
                               "(val balanced accuracy minus val vowel CER: --model avsync with L_lip), "
                               "auto (sync+lip when the run trains a lip reader, else sync)",
                       choices=("auto", "sync", "sync+lip"))
    lip_max_frames: int = _opt(250, "--model avsync: utterances longer than this are left out of L_lip")
    print_model: bool = _opt(False, "print parameters and multiply-adds per pair of --combo at --width and exit")
    no_progress: bool = _opt(False, "no progress bar")

    def selection(self) -> str:
        """What best.pt is chosen on (--select with 'auto' resolved)."""
        if self.select != "auto":
            return self.select
        return "sync+lip" if self.model == "avsync" and self.lambda_lip > 0 else "sync"

    def margins_pair(self) -> tuple[float, float]:
        if self.margins in (None, ""):  # fbank combos train AV-SyncNet only, which has no margins
            return DEFAULT_MARGINS.get(parse_combo(self.combo)[0], DEFAULT_MARGINS["mel"])
        same, cross = (float(x) for x in str(self.margins).split(","))
        return same, cross

    def shifts(self) -> tuple[int, ...]:
        lo, hi = (int(x) for x in self.offset_shifts.split(","))
        return tuple(range(lo, hi + 1))

    def as_dict(self) -> dict:
        return asdict(self)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train a UniSync sync expert on a unisync store.",
                                formatter_class=HelpFormatter)
    for f in fields(TrainConfig):
        meta = dict(f.metadata)
        flags = ["--" + f.name.replace("_", "-"), *meta.pop("aliases", ())]
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        if kind == "bool":
            action = argparse.BooleanOptionalAction if f.default is True else "store_true"
            p.add_argument(*flags, action=action, default=f.default, help=meta["help"])
            continue
        base = {"int": int, "float": float}.get(kind.split(" ")[0])
        kwargs = {"type": base} if base else {}
        if f.default is not MISSING:
            kwargs["default"] = f.default
        p.add_argument(*flags, dest=f.name, **kwargs, **meta)
    return p


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    return TrainConfig(**vars(build_parser().parse_args(argv)))
