"""One PNG per scored video: distance against offset (the chosen offset marked) and the
framewise confidence, so a bad clip shows at a glance (a flat curve, an offset far from 0, a
confidence that drops in the middle)."""
from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Iterable

import numpy as np


def plot_stems(videos: Iterable[str]) -> dict[str, str]:
    """video -> the stem of its plot files: the file's own stem (a.mp4 -> a), with a short hash of
    its path when two different videos share that stem (spk1/a.mp4, spk2/a.mp4 -> a-3f2c1e, a-9b07d4)."""
    videos = list(dict.fromkeys(str(v) for v in videos))
    stems = {v: re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(v).stem)[:120] or "video" for v in videos}
    taken: dict[str, int] = {}
    for stem in stems.values():
        taken[stem] = taken.get(stem, 0) + 1
    return {v: stem if taken[stem] == 1 else f"{stem}-{hashlib.sha1(v.encode()).hexdigest()[:6]}"
            for v, stem in stems.items()}


def plot_name(stem: str, protocol: str, scorer: str, io: str = "exact") -> str:
    """The PNG of one video (its `plot_stems` stem), scorer, protocol and I/O mode (`exact`, the
    default path, is left out of the name)."""
    return f"{stem}.{scorer}.{protocol}{'' if io == 'exact' else '.' + io}.png"


def edge_note(row: dict) -> str:
    """'' or the warning for an offset at the search edge: the curve has no minimum inside
    +-vshift, so the offset and LSE-C say nothing about sync (random weights, silence, a wrong crop)."""
    vshift = int(row["vshift"])
    return f"no sync peak in +-{vshift}" if abs(int(row["offset"])) >= vshift else ""


def plot_score(row: dict, path: Path | str) -> Path:
    """`row` is a score row of training/sync/score.py (offset, lse_d, lse_c, mean_dist, framewise...)."""
    import matplotlib

    from training.sync.scorers import SCORERS

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vshift = int(row["vshift"])
    offsets = vshift - np.arange(2 * vshift + 1)  # entry k stands for offset V - k
    mean = np.asarray(row["mean_dist"], float)
    frames = np.asarray(row["framewise_confidence"], float)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.4]})
    ax1.plot(offsets, mean, "o-", ms=3, color="tab:blue")
    ax1.axvline(row["offset"], color="tab:red", ls="--", lw=1)
    ax1.plot([row["offset"]], [row["lse_d"]], "o", color="tab:red", ms=8,
             label=f"offset {row['offset']:+d}  (min dist {row['lse_d']:.3f})")
    ax1.axhline(np.median(mean), color="grey", lw=0.8, ls=":", label=f"median (conf {row['lse_c']:.3f})")
    if edge_note(row):
        ax1.text(0.5, 0.96, edge_note(row), transform=ax1.transAxes, ha="center", va="top", fontsize=10,
                 color="tab:red", weight="bold", bbox={"facecolor": "white", "edgecolor": "tab:red"})
    ax1.set_xlabel("offset (frames; audio delayed by d gives -d)")
    ax1.set_ylabel(SCORERS[row["scorer"]].distance_label if row["scorer"] in SCORERS else "mean distance")
    ax1.legend(fontsize=8, loc="best")
    ax1.grid(alpha=0.3)
    ax2.plot(np.arange(len(frames)), frames, color="tab:green", lw=1.2)
    ax2.axhline(0, color="grey", lw=0.8)
    ax2.set_xlabel("window (start frame)")
    ax2.set_ylabel("framewise confidence (medfilt 9)")
    ax2.grid(alpha=0.3)
    track = f"   track {row['track']}" if "track" in row else ""
    fig.suptitle(f"{row['video']}{track}   scorer {row['scorer']}   protocol {row['protocol']}   "
                 f"io {row.get('io', 'exact')}   windows {row['frames_scored']}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
