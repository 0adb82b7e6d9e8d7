"""CN-CVS (Chen et al., Mandarin): `<subset>/sNNNNN/video/<name>.mp4`, audio `<subset>/sNNNNN/audio/<name>.wav`.

Subsets are the corpus's source folders (e.g. news, speech). Speaker = sNNNNN. The .wav, where
present, is the audio source; otherwise the mp4's own audio. A same-stem transcript in
`<subset>/sNNNNN/text/<name>.txt` is read when present. Language "zh" (Mandarin), so HuBERT
can default to the Chinese model. No official split lists are read (official_split = "").
"""
from __future__ import annotations

from pathlib import Path

from pipelines.adapters import LANGUAGES, Utterance
from pipelines.corpora.common import require_dir


def speaker_dirs(root: Path) -> list[tuple[str, Path]]:
    """(subset, speaker folder) for every sNNNNN/video folder one or two levels below root."""
    out = [("", d.parent) for d in sorted(root.glob("s*/video")) if d.is_dir()]
    out += [(d.parent.parent.name, d.parent) for d in sorted(root.glob("*/s*/video")) if d.is_dir()]
    return out


def cncvs_utterances(root: Path) -> list[Utterance]:
    root = require_dir(root, "CN-CVS")
    dirs = speaker_dirs(root)
    if not dirs:
        raise FileNotFoundError(f"{root}: no <subset>/sNNNNN/video folder (CN-CVS layout)")
    utts = []
    for subset, spk in dirs:
        for video in sorted((spk / "video").glob("*.mp4")):
            audio, text = spk / "audio" / f"{video.stem}.wav", spk / "text" / f"{video.stem}.txt"
            utt_id = "/".join(p for p in (subset, spk.name, video.stem) if p)
            utts.append(Utterance(utt_id=utt_id, speaker_id=spk.name, video_path=str(video.resolve()),
                                  audio_path=str(audio.resolve()) if audio.is_file() else None,
                                  transcript=text.read_text(errors="replace").strip() if text.is_file() else "",
                                  language=LANGUAGES["cncvs"]))
    return utts
