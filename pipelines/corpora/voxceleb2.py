"""VoxCeleb2 (Chung et al.): `{dev,test}/mp4/idNNNNN/<video>/<NNNNN>.mp4`, audio possibly separate
as `{dev,test}/aac/idNNNNN/<video>/<NNNNN>.m4a`.

Speaker = the identity folder idNNNNN (real identity labels; dev and test identities are
disjoint). Official split = dev or test. No transcripts; the corpus is multilingual, so the
language is left unknown (""). When the separate .m4a exists it is the audio source (its own
time zero is the video's first frame), otherwise the mp4's own audio stream.
"""
from __future__ import annotations

from pathlib import Path

from pipelines.adapters import LANGUAGES, Utterance
from pipelines.corpora.common import require_dir

PARTS = ("dev", "test")


def voxceleb2_utterances(root: Path) -> list[Utterance]:
    root = require_dir(root, "VoxCeleb2")
    parts = [(p, root / p) for p in PARTS if (root / p / "mp4").is_dir()]
    if not parts and (root / "mp4").is_dir():  # a single part unpacked on its own
        parts = [("", root)]
    if not parts:
        raise FileNotFoundError(f"{root}: no dev/mp4 or test/mp4 folder (VoxCeleb2 layout)")
    utts = []
    for part, base in parts:
        for video in sorted((base / "mp4").glob("id*/*/*.mp4")):
            rel = video.relative_to(base / "mp4").with_suffix("")
            audio = base / "aac" / rel.with_suffix(".m4a")
            utts.append(Utterance(utt_id=rel.as_posix(), speaker_id=rel.parts[0], video_path=str(video.resolve()),
                                  audio_path=str(audio.resolve()) if audio.is_file() else None,
                                  official_split=part, language=LANGUAGES["voxceleb2"]))
    return utts
