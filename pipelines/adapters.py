"""Corpus adapters: each turns a corpus root into Utterance records, nothing more.

An adapter is a function `root -> list[Utterance]` (optionally taking keyword options such as
`max_seconds`); register it in ADAPTERS under the dataset name. The published layouts of LRS2,
LRS3, VoxCeleb2 and CN-CVS live in `pipelines/corpora/`.

An adapter may return a `Listing` (a list with `.skipped`: the files it passed over and why);
the extraction job lists them in its report. A folder corpus (`folder`, `synthetic`) skips a
second file with the same utterance id (`a.mp4` beside `a.avi`), and the job skips files that
open but hold no video stream (`skip_without_video`, for utterances not planned yet).
"""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


@dataclass(frozen=True)
class Utterance:
    utt_id: str  # unique within the dataset, e.g. "spk01/a" or "pretrain/<prog>/00001_seg00"
    speaker_id: str
    video_path: str
    audio_path: str | None = None  # separate audio file (VoxCeleb2, CN-CVS); None: the video's own
    transcript: str = ""
    official_split: str = ""  # the corpus's own split list, where it has one
    start_s: float | None = None  # a segment of a long source (seconds from its first frame)
    end_s: float | None = None
    language: str = ""  # ISO 639-1 code ("en", "zh"); "" unknown. Picks e.g. the HuBERT model

    def as_row(self) -> dict:
        return asdict(self)


class Listing(list):
    """An adapter's utterances, plus `skipped`: [{"path", "reason"}] for files it passed over."""

    def __init__(self, utterances=(), skipped: list[dict] | None = None):
        super().__init__(utterances)
        self.skipped = list(skipped or [])


def skipped_of(utterances) -> list[dict]:
    return list(getattr(utterances, "skipped", []))


def video_files(root: Path) -> list[Path]:
    """Every video under `root` (as seen from `root`, sorted), following symlinked folders and
    files; a folder reached twice (a link loop, or two links to one folder) is walked once and
    a dangling link is skipped with a warning."""
    seen: set[tuple[int, int]] = set()
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        stat = os.stat(folder)
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []  # a loop or a second link to a folder already walked
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        for name in files:
            path = Path(folder) / name
            if path.suffix.lower() not in VIDEO_EXTENSIONS:
                continue
            if not path.exists():
                print(f"warning: {path}: dangling symlink, skipped", file=sys.stderr)
                continue
            found.append(path)
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def folder_utterances(root: Path) -> list[Utterance]:
    """Any folder of videos: speaker = the parent folder's name, utt_id = path without extension.

    Symlinked folders and files are followed (ids use the names seen from the root). A
    transcript is read from a .txt file of the same stem when present.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} is not a directory")
    utts, first = Listing(), {}
    for path in video_files(root):
        rel = path.relative_to(root).with_suffix("")
        if rel.as_posix() in first:  # a.mp4 and a.avi: one utterance id; the first one is kept
            utts.skipped.append({"path": str(path), "reason": f"same utterance id {rel.as_posix()!r} as "
                                                              f"{first[rel.as_posix()]}"})
            continue
        first[rel.as_posix()] = str(path)
        text = path.with_suffix(".txt")
        utts.append(Utterance(
            utt_id=rel.as_posix(), speaker_id=path.parent.name if path.parent != root else "unknown",
            video_path=str(path.resolve()),
            transcript=text.read_text(errors="replace").strip() if text.exists() else ""))
    return utts


folder_utterances.probes_streams = True  # the job checks new files for a video stream


def video_stream_problem(path: str) -> str | None:
    """Why a file that opens is not a video (no video stream), else None. A file that does not
    open is left to the extraction, whose error row says why."""
    import av

    try:
        with av.open(path) as container:
            if container.streams.video:
                return None
            kinds = sorted({s.type for s in container.streams}) or ["none"]
    except Exception:  # unreadable, empty, truncated: an error row with the decoder's reason
        return None
    return f"no video stream (streams: {', '.join(kinds)})"


def skip_without_video(dataset: str, utterances: list, planned: set[str], threads: int = 8
                       ) -> tuple[list, list[dict]]:
    """(utterances to plan, skipped files) for a folder corpus: new files that hold no video
    stream are skipped; planned ones are not opened again (a re-run opens only new files)."""
    if not getattr(ADAPTERS.get(dataset), "probes_streams", False):
        return utterances, []
    from concurrent.futures import ThreadPoolExecutor

    fresh = sorted({u.video_path for u in utterances if u.utt_id not in planned})
    with ThreadPoolExecutor(max(1, threads)) as pool:  # header reads: I/O bound, a network mount too
        problems = dict(zip(fresh, pool.map(video_stream_problem, fresh)))
    kept = [u for u in utterances if not problems.get(u.video_path) or u.utt_id in planned]
    skipped = [{"path": v, "reason": r} for v, r in sorted(problems.items()) if r]
    return kept, skipped


def synthetic_utterances(root: Path) -> list[Utterance]:
    """The built-in synthetic corpus; generated into `root` with the defaults when absent."""
    root = Path(root)
    if not any(root.glob("*/*.mp4")):
        from pipelines.synthetic import generate_corpus

        generate_corpus(root)
    return folder_utterances(root)


synthetic_utterances.probes_streams = True


def _corpus(module: str, function: str) -> Callable[..., list[Utterance]]:
    """An adapter living in pipelines/corpora/, imported on first use."""
    def adapter(root: Path, **options) -> list[Utterance]:
        return getattr(importlib.import_module(f"pipelines.corpora.{module}"), function)(root, **options)

    adapter.__name__ = function
    adapter.options = ("max_seconds",) if module in ("lrs2", "lrs3") else ()
    return adapter


ADAPTERS: dict[str, Callable[..., list[Utterance]]] = {
    "folder": folder_utterances,
    "synthetic": synthetic_utterances,
    "lrs2": _corpus("lrs2", "lrs2_utterances"),
    "lrs3": _corpus("lrs3", "lrs3_utterances"),
    "voxceleb2": _corpus("voxceleb2", "voxceleb2_utterances"),
    "cncvs": _corpus("cncvs", "cncvs_utterances"),
}

# Spoken language per corpus ("" = unknown / mixed); adapters stamp it on every Utterance so a
# language-dependent extractor (HuBERT: English vs Chinese model) can read row["language"].
LANGUAGES: dict[str, str] = {"folder": "", "synthetic": "", "lrs2": "en", "lrs3": "en",
                             "voxceleb2": "", "cncvs": "zh"}


def adapter_options(dataset: str) -> tuple[str, ...]:
    """Keyword options the dataset's adapter accepts (e.g. max_seconds for word-timed corpora)."""
    fn = ADAPTERS[dataset]
    if hasattr(fn, "options"):
        return tuple(fn.options)
    params = inspect.signature(fn).parameters
    return tuple(n for n, p in params.items() if p.kind == p.KEYWORD_ONLY)


def list_utterances(dataset: str, root: Path, **options) -> list[Utterance]:
    """The dataset's utterances; options left at None are not passed on.

    Raises ValueError for an unknown dataset, an option the adapter does not support (e.g.
    max_seconds on a corpus without word timings) or duplicate utterance ids.
    """
    if dataset not in ADAPTERS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}")
    options = {k: v for k, v in options.items() if v is not None}
    unsupported = sorted(set(options) - set(adapter_options(dataset)))
    if unsupported:
        raise ValueError(f"dataset {dataset!r} does not support {unsupported} "
                         f"(supported: {list(adapter_options(dataset)) or 'none'})")
    utts = ADAPTERS[dataset](Path(root), **options)
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
        raise ValueError(f"{root}: duplicate utterance ids in dataset {dataset!r}: {dupes}")
    return utts if isinstance(utts, Listing) else Listing(utts)
