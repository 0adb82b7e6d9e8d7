"""One utterance's fields on a shared time axis, so a person can see whether they line up.

    python -m features.preview --store STORE --utt spk00/u00 --out preview.png
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from catalog.lookup import find_utterance, read_members
from features.fields import ERROR_EXT, FIELDS
from features.landmarks import LIPS, mouth_opening
from features.timebase import FPS


def render_preview(store: Path, utt_id: str, out: Path, n_thumbs: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = find_utterance(store, utt_id)
    wanted = [f for f in ("audio", "rgb", "landmarks", "mel") if row.get(f"field_{f}") == "ok"]
    members = read_members(store, row, wanted)
    data = {f: FIELDS[f].decode(b) for f, (name, b) in members.items() if not name.endswith(ERROR_EXT)}
    n = row["n_frames"]
    seconds = n / FPS
    fig = plt.figure(figsize=(12, 8), dpi=100)
    grid = fig.add_gridspec(4, n_thumbs, height_ratios=[1.2, 1, 1, 1])
    frames_at = np.linspace(0, n - 1, n_thumbs).astype(int)
    if "rgb" in data:
        for i, t in enumerate(frames_at):
            ax = fig.add_subplot(grid[0, i])
            ax.imshow(data["rgb"][t])
            if "landmarks" in data:
                lm = data["landmarks"][t].astype(np.float32)
                ax.scatter(lm[:, 0], lm[:, 1], s=0.3, c="cyan")
                ax.scatter(lm[LIPS, 0], lm[LIPS, 1], s=1.5, c="red")
            ax.set_title(f"t={t / FPS:.2f}s", fontsize=8)
            ax.axis("off")
    axes = [fig.add_subplot(grid[r, :]) for r in (1, 2, 3)]
    if "mel" in data:
        axes[0].imshow(data["mel"].astype(np.float32), aspect="auto", origin="lower",
                       extent=[0, seconds, 0, 80], cmap="magma")
        axes[0].set_ylabel("mel band")
    if "audio" in data:
        audio = data["audio"]
        axes[1].plot(np.arange(len(audio)) / 16000, audio, lw=0.3, c="k")
        axes[1].set_ylabel("audio")
    if "landmarks" in data:
        open_ = mouth_opening(data["landmarks"])
        axes[2].plot((np.arange(n) + 0.5) / FPS, open_, c="r", label="mouth opening (landmarks)")
        if "audio" in data:
            rms = np.sqrt((data["audio"][: n * 640].reshape(n, 640) ** 2).mean(1))
            axes[2].plot((np.arange(n) + 0.5) / FPS, rms / max(rms.max(), 1e-9) * open_.max(), c="b",
                         label="audio loudness (scaled)")
        axes[2].legend(fontsize=8, loc="upper right")
    for ax in axes:
        ax.set_xlim(0, seconds)
        for t in frames_at:
            ax.axvline(t / FPS, c="gray", lw=0.5, ls=":")
    axes[2].set_xlabel("seconds")
    fig.suptitle(f"{row['dataset']} {utt_id} ({row['speaker_id']}, {n} frames)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m features.preview", description=__doc__,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", required=True, type=Path)
    p.add_argument("--utt", required=True, help="utterance id, e.g. spk00/u00")
    p.add_argument("--out", type=Path, default=Path("preview.png"))
    args = p.parse_args(argv)
    print(render_preview(args.store, args.utt, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
