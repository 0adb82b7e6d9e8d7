"""One utterance's fields on a shared time axis, so a person can see whether they line up.

    python -m catalog.preview --store STORE --utt spk00/u00 --out preview.png

Rows (each drawn when the field is in the store): face crops with landmarks and the parsing map
overlaid; the 3DMM reconstruction in the frame; mouth ROIs; then mel, HuBERT (heat map), filterbank,
and the mouth opening against the audio loudness, all over the same seconds. A field whose tar is
missing is left out with a warning. Exit codes: 0 written; 2 no store, no such utterance (the
message names the nearest ids), or nothing the preview can draw.
"""
from __future__ import annotations

import argparse
import difflib
import sys
from pathlib import Path

import numpy as np

from catalog.build import read_table
from catalog.layout import models_dir
from catalog.lookup import find_utterance, read_members, read_sample
from features.cli import HelpFormatter
from features.fields import ERROR_EXT, FIELDS
from features.landmarks import LIPS, mouth_opening
from features.timebase import CROP_SIZE, FPS, SAMPLES_PER_FRAME

THUMB_ROWS = ["rgb", "tdmm", "lip"]
SERIES = ["mel", "hubert", "fbank", "sync"]
PARSING_CLASSES = 19  # CelebAMask-HQ ids 0..18 (colour scale of the overlay)
SUGGESTIONS = 3


class PreviewError(Exception):
    """What the preview cannot draw (no store, no such utterance, no drawable field): one line."""


def locate(store: Path, utt_id: str, dataset: str | None = None) -> dict:
    """The utterance's catalog row, or a PreviewError naming the store and the nearest ids."""
    if not Path(store).is_dir():
        raise PreviewError(f"no store at {store}")
    try:
        return find_utterance(store, utt_id, dataset)
    except FileNotFoundError as exc:
        raise PreviewError(f"{store} is not an extracted store ({exc})") from None
    except KeyError:
        table = read_table(store, "utterances")
        ids, datasets = table["utt_id"].to_pylist(), table["dataset"].to_pylist()
    if utt_id in ids and dataset is None:  # the same id in several datasets
        found = sorted({d for i, d in zip(ids, datasets) if i == utt_id})
        raise PreviewError(f"utterance {utt_id} is in several datasets of store {store}: pass "
                           f"--dataset ({', '.join(found)})")
    where = f" of dataset {dataset}" if dataset is not None else ""
    known = [i for i, d in zip(ids, datasets) if dataset is None or d == dataset]
    raise PreviewError(f"no utterance {utt_id}{where} in store {store} ({_hint(utt_id, known, where)})")


def _hint(utt_id: str, known: list[str], where: str) -> str:
    """The nearest ids, else a few of the store's, so the next try can be right."""
    near = difflib.get_close_matches(utt_id, known, n=SUGGESTIONS, cutoff=0.5)
    if near:
        return f"did you mean {', '.join(near)}?"
    if not known:
        return f"it has no utterance{where}"
    return f"{len(known)} utterance{'s' if len(known) != 1 else ''}{where}, e.g. {', '.join(known[:SUGGESTIONS])}"


def _stored(store: Path, row: dict) -> dict:
    wanted = [f for f in FIELDS if row.get(f"field_{f}") == "ok"]
    out = {}
    for name in wanted:
        try:
            member, data = read_members(store, row, [name])[name]
        except FileNotFoundError as exc:  # the catalog says ok but the tar is gone
            print(f"warning: {exc}; not drawn", file=sys.stderr)
            continue
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


def render_preview(store: Path, utt_id: str, out: Path, n_thumbs: int = 8,
                   dataset: str | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    row = locate(store, utt_id, dataset)
    n = row.get("n_frames")
    if not n:
        raise PreviewError(f"utterance {utt_id} in store {store} has no decoded frames (status "
                           f"{row.get('status')})")
    data = _stored(Path(store), row)
    seconds = n / FPS
    thumbs = [r for r in THUMB_ROWS if r in data and (r != "tdmm" or "tdmm_mesh" in data)]
    series = [s for s in SERIES if s in data or (s == "sync" and "landmarks" in data)]
    if not thumbs and not series:
        raise PreviewError(f"utterance {utt_id} in store {store} has no field the preview draws "
                           f"(stored: {', '.join(data) or 'none'}; drawn: {', '.join(THUMB_ROWS + SERIES[:-1])}, "
                           "landmarks)")
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
                              vmin=0, vmax=PARSING_CLASSES, interpolation="nearest")
                if "landmarks" in data:
                    lm = data["landmarks"][t].astype(np.float32)
                    ax.scatter(lm[::4, 0], lm[::4, 1], s=0.1, c="cyan")
                    ax.scatter(lm[LIPS, 0], lm[LIPS, 1], s=1.2, c="red")
                ax.set_title(f"t={t / FPS:.2f}s", fontsize=8)
            elif kind == "tdmm":
                mesh = data["tdmm_mesh"][t]
                ax.set_facecolor("black")
                ax.scatter(mesh[:, 0], mesh[:, 1], s=0.3, c=mesh[:, 2], cmap="viridis")
                ax.set_xlim(0, CROP_SIZE)
                ax.set_ylim(CROP_SIZE, 0)
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
            label = {"mel": "mel", "hubert": "HuBERT", "fbank": "fbank"}[kind]
            ax.set_ylabel(f"{label} ({FIELDS[kind].rate} Hz)", fontsize=8)
        else:
            open_ = mouth_opening(data["landmarks"])
            centres = (np.arange(n) + 0.5) / FPS
            ax.plot(centres, open_, c="r", label="mouth opening (landmarks)")
            if "audio" in data:
                per_frame = data["audio"][: n * SAMPLES_PER_FRAME].reshape(n, SAMPLES_PER_FRAME)
                rms = np.sqrt((per_frame ** 2).mean(1))
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
    p.add_argument("--dataset", help="dataset of --utt, when several datasets of the store share the id")
    p.add_argument("--out", type=Path, default=Path("preview.png"), help="PNG to write")
    args = p.parse_args(argv)
    try:
        print(render_preview(args.store, args.utt, args.out, dataset=args.dataset))
    except PreviewError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
