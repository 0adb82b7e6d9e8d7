"""One utterance's fields on a shared time axis, so a person can see whether they line up.

    python -m catalog.preview --store STORE --utt spk00/u00 --out preview.png

Rows (each drawn when the field is in the store): face crops with landmarks and the parsing map
overlaid; the 3DMM reconstruction in the frame; mouth ROIs; then mel, HuBERT (heat map), filterbank,
and the mouth opening against the audio loudness, all over the same seconds.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from catalog.layout import models_dir
from catalog.lookup import find_utterance, read_members, read_sample
from features.cli import HelpFormatter
from features.fields import ERROR_EXT, FIELDS
from features.landmarks import LIPS, mouth_opening
from features.timebase import FPS

THUMB_ROWS = ["rgb", "tdmm", "lip"]
SERIES = ["mel", "hubert", "fbank", "sync"]


def _stored(store: Path, row: dict) -> dict:
    wanted = [f for f in FIELDS if row.get(f"field_{f}") == "ok"]
    out = {}
    for name, (member, data) in read_members(store, row, wanted).items():
        if not member.endswith(ERROR_EXT):
            out[name] = FIELDS[name].decode(data)
    if "tdmm" in out:  # the identity member sits beside the per-frame one
        from features.codecs import decode_npy
        from features.tdmm import MorphableModel, VERSION

        model_path = models_dir(store) / f"tdmm-{VERSION}.npz"
        ident = _identity(store, row)
        if model_path.exists() and ident is not None:
            out["tdmm_mesh"] = MorphableModel.load(model_path).reconstruct(out["tdmm"].astype(np.float64),
                                                                           decode_npy(ident))
    return out


def _identity(store: Path, row: dict) -> bytes | None:
    return read_sample(store, row, "tdmm").get("tdmm_id.npy")


def render_preview(store: Path, utt_id: str, out: Path, n_thumbs: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = find_utterance(store, utt_id)
    data = _stored(Path(store), row)
    n = row["n_frames"]
    seconds = n / FPS
    thumbs = [r for r in THUMB_ROWS if r in data and (r != "tdmm" or "tdmm_mesh" in data)]
    series = [s for s in SERIES if s in data or (s == "sync" and "landmarks" in data)]
    fig = plt.figure(figsize=(13, 1.5 * len(thumbs) + 1.6 * len(series) + 1), dpi=100)
    grid = fig.add_gridspec(len(thumbs) + len(series), n_thumbs,
                            height_ratios=[1.2] * len(thumbs) + [1] * len(series))
    frames_at = np.linspace(0, n - 1, n_thumbs).astype(int)
    for r, kind in enumerate(thumbs):
        for i, t in enumerate(frames_at):
            ax = fig.add_subplot(grid[r, i])
            if kind == "rgb":
                ax.imshow(data["rgb"][t])
                if "parsing" in data:
                    ax.imshow(np.ma.masked_equal(data["parsing"][t], 0), cmap="tab20", alpha=0.5,
                              vmin=0, vmax=19, interpolation="nearest")
                if "landmarks" in data:
                    lm = data["landmarks"][t].astype(np.float32)
                    ax.scatter(lm[::4, 0], lm[::4, 1], s=0.1, c="cyan")
                    ax.scatter(lm[LIPS, 0], lm[LIPS, 1], s=1.2, c="red")
                ax.set_title(f"t={t / FPS:.2f}s", fontsize=8)
            elif kind == "tdmm":
                mesh = data["tdmm_mesh"][t]
                ax.set_facecolor("black")
                ax.scatter(mesh[:, 0], mesh[:, 1], s=0.3, c=mesh[:, 2], cmap="viridis")
                ax.set_xlim(0, 96)
                ax.set_ylim(96, 0)
                ax.set_aspect("equal")
            else:
                ax.imshow(data["lip"][t], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel({"rgb": "rgb+parsing", "tdmm": "3DMM recon", "lip": "mouth ROI"}[kind],
                              fontsize=8)
    for r, kind in enumerate(series, start=len(thumbs)):
        ax = fig.add_subplot(grid[r, :])
        if kind in ("mel", "hubert", "fbank"):
            image = data[kind].astype(np.float32)
            image = image if kind == "mel" else image.T
            ax.imshow(image, aspect="auto", origin="lower", extent=[0, seconds, 0, image.shape[0]],
                      cmap="magma")
            ax.set_ylabel({"mel": "mel (80 Hz)", "hubert": "HuBERT (50 Hz)", "fbank": "fbank (100 Hz)"}[kind],
                          fontsize=8)
        else:
            open_ = mouth_opening(data["landmarks"])
            centres = (np.arange(n) + 0.5) / FPS
            ax.plot(centres, open_, c="r", label="mouth opening (landmarks)")
            if "audio" in data:
                rms = np.sqrt((data["audio"][: n * 640].reshape(n, 640) ** 2).mean(1))
                ax.plot(centres, rms / max(rms.max(), 1e-9) * open_.max(), c="b", label="audio loudness")
            ax.legend(fontsize=7, loc="upper right")
            ax.set_xlabel("seconds")
        ax.set_xlim(0, seconds)
        for t in frames_at:
            ax.axvline(t / FPS, c="gray", lw=0.5, ls=":")
    fig.suptitle(f"{row['dataset']} {utt_id} ({row['speaker_id']}, {n} frames)")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m catalog.preview", description=__doc__,
                                formatter_class=HelpFormatter)
    p.add_argument("--store", required=True, type=Path, help="feature store")
    p.add_argument("--utt", required=True, help="utterance id, e.g. spk00/u00")
    p.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write")
    args = p.parse_args(argv)
    print(render_preview(args.store, args.utt, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
