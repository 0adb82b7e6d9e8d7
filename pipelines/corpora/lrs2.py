"""LRS2 (BBC, Afouras et al.): `mvlrs_v1/main/<programme>/<NNNNN>.mp4|.txt` and `mvlrs_v1/pretrain/...`.

Official split lists `pretrain.txt`, `train.txt`, `val.txt`, `test.txt` (beside or inside
`mvlrs_v1/`) hold `<programme>/<NNNNN>` lines; test lines may carry a tag (`NF`, `MV`). The
pretrain list names pretrain/ clips, the other three name main/ clips.

LRS2 has no speaker labels: the programme folder is the speaker proxy (one broadcast; a
presenter can appear in several programmes and a programme holds several people), so
speaker-disjoint splits are programme-disjoint, not person-disjoint.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.adapters import LANGUAGES, Utterance
from pipelines.corpora.common import read_list, read_transcript, require_dir, segment, warn

SUBSETS = ("main", "pretrain")
LISTS = {"pretrain": "pretrain", "train": "main", "val": "main", "test": "main"}  # list -> subset


def corpus_dir(root: Path) -> Path:
    """The folder holding main/ and pretrain/: `root` itself or `root/mvlrs_v1`."""
    root = require_dir(root, "LRS2")
    for base in (root / "mvlrs_v1", root):
        if any((base / s).is_dir() for s in SUBSETS):
            return base
    raise FileNotFoundError(f"{root}: no mvlrs_v1/main or mvlrs_v1/pretrain folder (LRS2 layout)")


def official_lists(root: Path, base: Path) -> dict[tuple[str, str], str]:
    """(subset, '<programme>/<NNNNN>') -> official split name, from whichever lists exist."""
    out = {}
    for split, subset in LISTS.items():
        for folder in dict.fromkeys([Path(root), base, base.parent]):
            path = folder / f"{split}.txt"
            if path.is_file():
                for name in read_list(path):
                    out[(subset, name)] = split
                break
    return out


def lrs2_utterances(root: Path, *, max_seconds: float | None = None) -> list[Utterance]:
    """Every clip under main/ and pretrain/; speaker = programme folder (proxy).

    max_seconds cuts pretrain clips whose word timings run longer into word-boundary segments
    (`<utt_id>_segNN`); main clips (train/val/test) are never cut.
    """
    base = corpus_dir(root)
    splits = official_lists(root, base)
    utts, seen = [], set()
    for subset in SUBSETS:
        for video in sorted((base / subset).glob("*/*.mp4")):
            name = f"{video.parent.name}/{video.stem}"
            seen.add((subset, name))
            text = read_transcript(video.with_suffix(".txt"))
            utt = Utterance(utt_id=f"{subset}/{name}", speaker_id=video.parent.name,
                            video_path=str(video.resolve()), transcript=text.text,
                            official_split=splits.get((subset, name), "pretrain" if subset == "pretrain" else ""),
                            language=LANGUAGES["lrs2"])
            utts.extend(segment(utt, text.words, max_seconds if subset == "pretrain" else None))
    missing = sorted(set(splits) - seen)
    if missing:
        warn(f"LRS2: {len(missing)} clips named in the split lists are not on disk, "
             f"e.g. {missing[0][0]}/{missing[0][1]}")
    return utts
