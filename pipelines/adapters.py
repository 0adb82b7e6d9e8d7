"""Corpus adapters: each turns a corpus root into Utterance records, nothing more.

An adapter is a function `root -> list[Utterance]`; register it in ADAPTERS under the dataset
name. The real corpora (LRS2, LRS3, VoxCeleb2, CN-CVS) plug in the same way.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"}


@dataclass(frozen=True)
class Utterance:
    utt_id: str  # unique within the dataset, e.g. "spk01/a"
    speaker_id: str
    video_path: str
    audio_path: str | None = None  # separate audio file (VoxCeleb2, CN-CVS); None: the video's own
    transcript: str = ""
    official_split: str = ""  # the corpus's own split list, where it has one

    def as_row(self) -> dict:
        return asdict(self)


def folder_utterances(root: Path) -> list[Utterance]:
    """Any folder of videos: speaker = the parent folder's name, utt_id = path without extension.

    A transcript is read from a .txt file of the same stem when present.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"corpus root {root} is not a directory")
    utts = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS):
        rel = path.relative_to(root).with_suffix("")
        text = path.with_suffix(".txt")
        utts.append(Utterance(
            utt_id=rel.as_posix(), speaker_id=path.parent.name if path.parent != root else "unknown",
            video_path=str(path.resolve()),
            transcript=text.read_text(errors="replace").strip() if text.exists() else ""))
    return utts


def synthetic_utterances(root: Path) -> list[Utterance]:
    """The built-in synthetic corpus; generated into `root` with the defaults when absent."""
    root = Path(root)
    if not any(root.glob("*/*.mp4")):
        from pipelines.synthetic import generate_corpus

        generate_corpus(root)
    return folder_utterances(root)


ADAPTERS: dict[str, Callable[[Path], list[Utterance]]] = {
    "folder": folder_utterances,
    "synthetic": synthetic_utterances,
}


def list_utterances(dataset: str, root: Path) -> list[Utterance]:
    if dataset not in ADAPTERS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(ADAPTERS)}")
    utts = ADAPTERS[dataset](Path(root))
    ids = [u.utt_id for u in utts]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{root}: duplicate utterance ids in dataset {dataset!r}")
    return utts
