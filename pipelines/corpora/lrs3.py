"""LRS3 (TED/TEDx, Afouras et al.): `{pretrain,trainval,test}/<video_id>/<NNNNN>.mp4|.txt`.

The folder is the official split. Transcripts carry `Text:`, `Conf:`, `Ref:` (the YouTube id),
an optional face-track table and a `WORD START END ASDSCORE` table. Speaker = the video-id
folder (one talk, nearly always one speaker; a speaker giving several talks has several ids).
pretrain and trainval share video ids, so those two official splits overlap in speakers by
construction; test is disjoint from both.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.adapters import LANGUAGES, Utterance
from pipelines.corpora.common import read_transcript, require_dir, segment

SUBSETS = ("pretrain", "trainval", "test")


def lrs3_utterances(root: Path, *, max_seconds: float | None = None) -> list[Utterance]:
    """Every clip of the three folders; max_seconds cuts long pretrain clips at word boundaries."""
    root = require_dir(root, "LRS3")
    if not any((root / s).is_dir() for s in SUBSETS):
        raise FileNotFoundError(f"{root}: none of {SUBSETS} (LRS3 layout)")
    utts = []
    for subset in SUBSETS:
        for video in sorted((root / subset).glob("*/*.mp4")):
            text = read_transcript(video.with_suffix(".txt"))
            utt = Utterance(utt_id=f"{subset}/{video.parent.name}/{video.stem}", speaker_id=video.parent.name,
                            video_path=str(video.resolve()), transcript=text.text, official_split=subset,
                            language=LANGUAGES["lrs3"])
            utts.extend(segment(utt, text.words, max_seconds if subset == "pretrain" else None))
    return utts
